# LoRA instruction tuning of GPT-2 small on Stanford Alpaca (loss on the responses only): the users' recipe, r=4
# alpha=8 on c_attn (147,456 trainable parameters), lr 3e-4 (LoRA trains a few parameters from zero: it takes a
# rate some 30x full fine-tuning's 1e-5), 3 epochs of batch 8, max_length 512, linear warmup over 3 % then linear
# decay (docs/instruct.md).
#   python finetune.py configs/instruct_alpaca_lora.py
#   python sample.py --init_from out-instruct-lora --instruction "Name three primary colors." --greedy
out_dir = "out-instruct-lora"
task = "instruct"
dataset = "alpaca"  # downloaded once (22.8 MB); or data_path = "/path/to/alpaca_data.json", or a .json/.jsonl of yours
method = "lora"
lora_rank = 4
lora_alpha = 8.0
lora_dropout = 0.05
lora_targets = "c_attn"
max_length = 512
val_fraction = 0.02  # 1,040 held-out records

dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_epochs = 3  # 3 x 6,371 steps

learning_rate = 3e-4
warmup_ratio = 0.03
min_lr = 0.0
weight_decay = 0.0

eval_interval = 1000
checkpoint_interval = 1000
sample_interval = 1000  # answers to a few fixed instructions, in out_dir/answers.txt
sample_tokens = 128
sample_temperature = 0.7
