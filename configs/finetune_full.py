# Full fine-tuning of GPT-2 small on WikiText-2 (every weight trains; the same run as
# configs/wikitext2_finetune.py, through finetune.py so that its extras apply: --merge_and_export, --head_only_steps).
#   python finetune.py configs/finetune_full.py
#   python finetune.py configs/finetune_full.py --merge_and_export out-full-hf
out_dir = "out-finetune-full"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "full"

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
