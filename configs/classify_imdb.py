# GPT-2 small as a sentiment classifier on IMDB (positive / negative), the users' recipe: all weights, 3 epochs,
# AdamW lr 2e-5 with 10 % warmup then linear decay to 1e-7, weight decay 0.01, clip 1.0, label smoothing 0.1,
# batch 8, AMP (bfloat16 / float16) on a GPU. Baseline before, test after: results/gpt2/<timestamp>/summary.md.
#   python finetune.py configs/classify_imdb.py
#   python finetune.py configs/classify_imdb.py configs/classify_distilgpt2.py     # DistilGPT2, batch 16
#   python finetune.py configs/classify_imdb.py --head_only_epochs 1 --layer_lr_scales 0.1,0.5,1.0
#   python finetune.py configs/classify_imdb.py --data_path ../shared/data/imdb/aclImdb_v1_test.tar.gz  # test set only:
#                                                                   # a seeded stratified train / val / test hold-out
out_dir = "out-classify-imdb"
task = "classify"
dataset = "imdb"
method = "full"
label_smoothing = 0.1

max_length = 1024  # reviews: 293 GPT-2 tokens on average; the 1.8 % longer than 1024 keep their first 1024
gradient_accumulation_steps = 1

learning_rate = 2e-5

eval_interval = 0  # validation at each epoch end
eval_iters = 0     # the whole validation split
log_interval = 50
checkpoint_interval = 0  # epoch checkpoints only
keep_last = 1
sample_interval = 0
