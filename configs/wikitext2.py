# GPT-2 small (124M) from scratch on WikiText-2 (2.4M GPT-2 train tokens; downloaded once, ~4.7 MB zip).
# AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.01; 2,000 warmup steps, then cosine to 0;
# clip 1.0; block 1024; evaluation every 500 steps, checkpoint every 1,000.
#   python train.py configs/wikitext2.py
#   torchrun --nproc_per_node=8 train.py configs/wikitext2.py
# WikiText-2 is small for a 124M model: expect the validation loss to bottom out and rise again
# (checkpoint_best.pt keeps the best); dropout 0.1 delays that.
out_dir = "out-wikitext2"
dataset = "wikitext2"
tokenizer = "gpt2"
init_from = "scratch"

n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.1
bias = True

batch_size = 8  # per process and micro-step
gradient_accumulation_steps = 4  # global: 4 x 8 x 1024 = 32,768 tokens per step
max_iters = 20000

learning_rate = 3e-4
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.01
lr_schedule = "cosine"
warmup_iters = 2000
min_lr = 0.0
grad_clip = 1.0

eval_interval = 500
eval_iters = 0  # the whole validation split (~250k tokens)
log_interval = 50
checkpoint_interval = 1000
keep_last = 3
sample_interval = 1000
