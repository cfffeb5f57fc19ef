# A small character-level GPT on Tiny Shakespeare: the default of a plain `python train.py`.
# CPU-friendly (nanoGPT's shakespeare_char, shrunk for a laptop): the loss falls from ~4.2 to below 2.0 and
# samples start to look like verse within a few minutes on a laptop CPU; much faster on a GPU.
#   python train.py configs/shakespeare.py
#   python train.py configs/shakespeare.py --device=cuda --n_layer=6 --n_embd=384 --block_size=256 --batch_size=64
out_dir = "out-shakespeare"
dataset = "shakespeare_char"  # bundled with the package: no download

n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
dropout = 0.0

max_iters = 2000
learning_rate = 1e-3  # a small model can take a high rate
lr_schedule = "cosine"
warmup_iters = 100
min_lr = 1e-4
weight_decay = 0.1
beta2 = 0.99  # nanoGPT: a bit larger because there are few tokens per step
grad_clip = 1.0

eval_interval = 250
eval_iters = 20
log_interval = 25
checkpoint_interval = 500
keep_last = 2
sample_interval = 250
sample_tokens = 200
