# Selective fine-tuning of GPT-2 small on WikiText-2: blocks 0-3 frozen, the rest at layer-wise rates (the lower /
# middle / top thirds of the blocks at 0.1x / 0.5x / 1x; the frozen blocks sit in the lowest third).
#   python finetune.py configs/finetune_selective.py
#   python finetune.py configs/finetune_selective.py --freeze_layers "" --head_only_steps 200   # head first
out_dir = "out-finetune-selective"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "selective"
freeze_layers = "0,1,2,3"
layer_lr_scales = "0.1,0.5,1.0"

block_size = 1024
dropout = 0.1
batch_size = 8
gradient_accumulation_steps = 2
max_iters = 0
max_epochs = 3

learning_rate = 5e-5
lr_schedule = "linear"
warmup_ratio = 0.1
min_lr = 1e-7
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0

eval_interval = 100
eval_iters = 0
log_interval = 10
checkpoint_interval = 200
keep_last = 2
sample_interval = 200
