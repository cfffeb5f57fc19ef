# Houlsby adapters in GPT-2 small, WikiText-2: bottleneck 64 (the users' middle size; 32 and 256 are the others:
# --adapter_size 32 / 256), two per block, LayerNorms trainable as in the paper. About 2.4M trainable parameters.
#   python finetune.py configs/finetune_adapter.py
#   python finetune.py configs/finetune_adapter.py --adapter_size 256
out_dir = "out-finetune-adapter"
method = "adapter"
adapter_size = 64

learning_rate = 1e-4
