# DistilGPT2's recipe on WikiText-2: GPT-2 small (12 layers) teaches a 6-layer student made of its blocks
# 0, 2, 4, 7, 9, 11 (with its embeddings, final LayerNorm and head); loss 0.5 * T^2 KL (T = 2) + 0.5 * the LM loss.
# Every student weight trains; the teacher only runs forward (eval mode, no_grad, the student's autocast).
#   python finetune.py configs/distill_gpt2.py
#   python finetune.py configs/distill_gpt2.py --merge_and_export out-distill-gpt2-hf    # + an HF GPT-2 folder
#   torchrun --nproc_per_node=4 finetune.py configs/distill_gpt2.py
# Not yet run (no GPU and no GPT-2 weights on the development machines): the rates below are a starting point.
out_dir = "out-distill-gpt2"
task = "distill"
method = "full"
teacher = "gpt2"  # student_layers: the default for 12 layers, blocks 0,2,4,7,9,11 (DistilGPT2's)

batch_size = 8  # the micro-batch: teacher and student logits, 8 x 1024 x 50257 each, dominate the memory
gradient_accumulation_steps = 4  # global: 4 x 8 x 1024 = 32,768 tokens per step

learning_rate = 3e-4
lr_schedule = "cosine"
warmup_ratio = 0.05
min_lr = 3e-5

eval_interval = 200
checkpoint_interval = 500
sample_interval = 500
