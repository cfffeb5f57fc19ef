# LoRA on GPT-2 small, WikiText-2: r=16, alpha=32 on the attention and MLP projections (the users' larger
# recipe; the smaller one is configs/finetune_lora_r4.py). Base frozen; about 2.4M trainable parameters.
#   python finetune.py configs/finetune_lora.py
#   python finetune.py configs/finetune_lora.py --init_from gpt2 --method lora --lora_rank 8 --lora_alpha 16
#   python finetune.py configs/finetune_lora.py --merge_and_export out-lora-hf   # an HF GPT-2 folder at the end
out_dir = "out-finetune-lora"
method = "lora"
lora_rank = 16
lora_alpha = 32.0
lora_dropout = 0.05
lora_targets = "c_attn,c_proj,c_fc"

learning_rate = 2e-4  # finetune.py's default, written out: LoRA takes a higher rate than full fine-tuning (5e-5)
