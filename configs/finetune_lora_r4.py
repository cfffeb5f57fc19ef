# LoRA on GPT-2 small, WikiText-2: r=4, alpha=8 on c_attn (the users' small recipe, 147,456 trainable
# parameters; the larger one is configs/finetune_lora.py).
#   python finetune.py configs/finetune_lora_r4.py
out_dir = "out-finetune-lora-r4"
method = "lora"
lora_rank = 4
lora_alpha = 8.0
lora_dropout = 0.05
lora_targets = "c_attn"

learning_rate = 2e-4  # finetune.py's default, written out: LoRA takes a higher rate than full fine-tuning (5e-5)
