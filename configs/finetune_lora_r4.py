# LoRA on GPT-2 small, WikiText-2: r=4, alpha=8 on c_attn (the users' small recipe, 147,456 trainable
# parameters; the larger one is configs/finetune_lora.py).
#   python finetune.py configs/finetune_lora_r4.py
out_dir = "out-finetune-lora-r4"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "lora"
lora_rank = 4
lora_alpha = 8.0
lora_dropout = 0.05
lora_targets = "c_attn"

block_size = 1024
dropout = 0.1
batch_size = 8
gradient_accumulation_steps = 2  # 16,384 tokens per step
max_iters = 0
max_epochs = 3

learning_rate = 2e-4  # LoRA takes a higher rate than full fine-tuning (5e-5)
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
