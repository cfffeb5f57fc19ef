# Prefix tuning of GPT-2 small on WikiText-2: 50 virtual tokens per layer (the users' larger setting; 20 is the
# other: --prefix_length 20), learned through a 512-wide reparameterisation MLP as Li & Liang do, collapsed to the
# plain table for inference. The prefix takes 50 of GPT-2's 1024 positions, so windows are 974 tokens.
#   python finetune.py configs/finetune_prefix.py
#   python finetune.py configs/finetune_prefix.py --prefix_length 20 --block_size 1004 --prefix_projection 0
out_dir = "out-finetune-prefix"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "prefix"
prefix_length = 50
prefix_projection = 512

block_size = 974  # 1024 - prefix_length
dropout = 0.1
batch_size = 8
gradient_accumulation_steps = 2
max_iters = 0
max_epochs = 3

learning_rate = 5e-4  # higher than full fine-tuning (5e-5), as for the other PEFT methods; tune it for your data
lr_schedule = "linear"
warmup_ratio = 0.1
min_lr = 1e-7
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0

eval_interval = 100
eval_iters = 0
log_interval = 10
checkpoint_interval = 200
keep_last = 2
sample_interval = 200
