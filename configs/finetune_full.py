# Full fine-tuning of GPT-2 small on WikiText-2 (every weight trains; the same run as
# configs/wikitext2_finetune.py, through finetune.py so that its extras apply: --merge_and_export, --head_only_steps).
#   python finetune.py configs/finetune_full.py
#   python finetune.py configs/finetune_full.py --merge_and_export out-full-hf
out_dir = "out-finetune-full"
method = "full"

learning_rate = 5e-5
