# Prefix tuning of GPT-2 small on WikiText-2: 50 virtual tokens per layer (the users' larger setting; 20 is the
# other: --prefix_length 20), learned through a 512-wide reparameterisation MLP as Li & Liang do, collapsed to the
# plain table for inference. The prefix takes 50 of GPT-2's 1024 positions, so windows are 974 tokens.
#   python finetune.py configs/finetune_prefix.py
#   python finetune.py configs/finetune_prefix.py --prefix_length 20 --block_size 1004 --prefix_projection 0
out_dir = "out-finetune-prefix"
method = "prefix"
prefix_length = 50
prefix_projection = 512

block_size = 974  # 1024 - prefix_length

learning_rate = 5e-4  # higher than full fine-tuning (5e-5), as for the other PEFT methods; tune it for your data
weight_decay = 0.0
