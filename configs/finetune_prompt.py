# Prompt tuning of GPT-2 small on WikiText-2 (Lester et al. 2021): 50 learned input embeddings before the tokens'
# (50 x 768 = 38,400 trainable parameters, 0.03 % of GPT-2's 124M: the users' Alpaca PEFT recipe's "prefix"; 20 is
# the other setting: --prompt_length 20 --block_size 1004), started from the embeddings of a text, as peft's
# prompt_tuning_init=TEXT. The virtual tokens take 50 of GPT-2's 1024 positions, so windows are 974 tokens.
#   python finetune.py configs/finetune_prompt.py
#   python finetune.py configs/finetune_prompt.py --task instruct --dataset alpaca --max_length 512 --block_size 974
out_dir = "out-finetune-prompt"
method = "prompt"
prompt_length = 50
prompt_init_text = "Continue the Wikipedia article in the same style and on the same subject:"

block_size = 974  # 1024 - prompt_length

learning_rate = 3e-2  # prompt tuning trains a few embeddings from far away: rates of 1e-2 to 3e-1 (Lester et al.: 0.3)
weight_decay = 0.0
