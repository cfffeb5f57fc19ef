# Distil a 4-layer character-level Tiny Shakespeare model into 2 layers (its blocks 0 and 3), on a CPU in minutes.
# The teacher is a train.py run of configs/shakespeare.py (4 layers, 128 wide); docs/distill.md has the numbers.
#   python train.py configs/shakespeare.py --sample_interval 0                            # the teacher: out-shakespeare
#   python finetune.py configs/distill_shakespeare.py                                     # the student
#   python finetune.py configs/distill_shakespeare.py --task lm --init_from scratch --out_dir out-shakespeare-2l
#                                                                   # the baseline: the same shape from scratch
out_dir = "out-distill-shakespeare"
task = "distill"
method = "full"
teacher = "out-shakespeare"  # student_layers: the default, blocks 0 and 3 of the 4
dataset = "shakespeare_char"

# the student's shape, for --student_init scratch and the --task lm baseline (a student from teacher blocks
# has the teacher's width and heads)
n_layer = 2
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
gradient_accumulation_steps = 1
dropout = 0.0

max_iters = 500
max_epochs = 0
learning_rate = 1e-3
lr_schedule = "cosine"
warmup_iters = 50
warmup_ratio = 0.0  # finetune.py's default is 0.1 of the run: use warmup_iters here
min_lr = 1e-4
weight_decay = 0.1
beta2 = 0.99
grad_clip = 1.0

eval_interval = 100
eval_iters = 20
log_interval = 25
checkpoint_interval = 250
keep_last = 2
sample_interval = 0
