# Selective fine-tuning of GPT-2 small on WikiText-2: blocks 0-3 frozen, the rest at layer-wise rates (the lower /
# middle / top thirds of the blocks at 0.1x / 0.5x / 1x; the frozen blocks sit in the lowest third).
#   python finetune.py configs/finetune_selective.py
#   python finetune.py configs/finetune_selective.py --freeze_layers "" --head_only_steps 200   # head first
out_dir = "out-finetune-selective"
method = "selective"
freeze_layers = "0,1,2,3"
layer_lr_scales = "0.1,0.5,1.0"

learning_rate = 5e-5
