# LoRA on GPT-2 small, WikiText-2: r=16, alpha=32 on the attention and MLP projections (the users' larger
# recipe; the smaller one is configs/finetune_lora_r4.py). Base frozen; about 2.4M trainable parameters.
#   python finetune.py configs/finetune_lora.py
#   python finetune.py configs/finetune_lora.py --init_from gpt2 --method lora --lora_rank 8 --lora_alpha 16
#   python finetune.py configs/finetune_lora.py --merge_and_export out-lora-hf   # an HF GPT-2 folder at the end
out_dir = "out-finetune-lora"
init_from = "gpt2"
dataset = "wikitext2"
tokenizer = "gpt2"
method = "lora"
lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
lora_targets = "c_attn,c_proj,c_fc"

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
