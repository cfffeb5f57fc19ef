# A tiny model on Tiny Shakespeare (characters), for the test suite: a few seconds on a 2-core CPU.
#   python train.py configs/tiny.py
out_dir = "out-tiny"
dataset = "shakespeare_char"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
batch_size = 4
dropout = 0.0

max_iters = 20
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 4
lr_schedule = "cosine"

eval_interval = 10
eval_iters = 4
log_interval = 1
checkpoint_interval = 10
keep_last = 2
sample_interval = 0
sample_tokens = 32

device = "cpu"
dtype = "float32"
compile = False
tensorboard = False
plot = False
