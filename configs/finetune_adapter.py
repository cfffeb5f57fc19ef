# Houlsby adapters in GPT-2 small, WikiText-2: bottleneck 64 (the users' middle size; 32 and 256 are the others:
# --adapter_size 32 / 256), two per block, LayerNorms trainable as in the paper. About 2.4M trainable parameters.
#   python finetune.py configs/finetune_adapter.py
#   python finetune.py configs/finetune_adapter.py --adapter_size 256
out_dir = "out-finetune-adapter"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "adapter"
adapter_size = 64

block_size = 1024
dropout = 0.1
batch_size = 8
gradient_accumulation_steps = 2
max_iters = 0
max_epochs = 3

learning_rate = 1e-4
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
