# Fine-tune pretrained GPT-2 small on WikiText-2: lr 5e-5, linear warmup over the first 10% of the steps,
# then linear decay to 1e-7. Three epochs of the 2.4M train tokens.
#   python train.py configs/wikitext2_finetune.py
#   torchrun --nproc_per_node=4 train.py configs/wikitext2_finetune.py
out_dir = "out-wikitext2-finetune"
dataset = "wikitext2"
tokenizer = "gpt2"
init_from = "gpt2"  # downloaded once from the Hugging Face Hub (or a local HF folder path)

block_size = 1024
dropout = 0.1  # GPT-2's own

batch_size = 8
gradient_accumulation_steps = 2  # global: 2 x 8 x 1024 = 16,384 tokens per step
max_iters = 0  # the length comes from max_epochs
max_epochs = 3

learning_rate = 5e-5
lr_schedule = "linear"
warmup_ratio = 0.1
min_lr = 1e-7
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
grad_clip = 1.0

eval_interval = 100
eval_iters = 0
log_interval = 10
checkpoint_interval = 200
keep_last = 2
sample_interval = 200
