# Full fine-tuning of GPT-2 small on Stanford Alpaca (52,002 instructions, loss on the responses only): the users'
# recipe, lr 1e-5, 3 epochs of batch 8, max_length 512, linear warmup over 3 % of the steps then cosine to 0 (as
# Stanford Alpaca's own run; docs/instruct.md).
#   python -m nanogpt2.instruct --show 5                        # look at the tokenized data first
#   python finetune.py configs/instruct_alpaca_full.py
#   python sample.py --init_from out-instruct-full --instruction "Name three primary colors." --greedy
out_dir = "out-instruct-full"
task = "instruct"
dataset = "alpaca"  # downloaded once (22.8 MB); or data_path = "/path/to/alpaca_data.json", or a .json/.jsonl of yours
method = "full"
max_length = 512
val_fraction = 0.02  # 1,040 held-out records

dropout = 0.0
batch_size = 8
gradient_accumulation_steps = 1
max_epochs = 3  # 3 x 6,371 steps

learning_rate = 1e-5
lr_schedule = "cosine"
warmup_ratio = 0.03
min_lr = 0.0
weight_decay = 0.0

eval_interval = 1000
checkpoint_interval = 1000
sample_interval = 1000  # answers to a few fixed instructions, in out_dir/answers.txt
sample_tokens = 128
sample_temperature = 0.7
