# GPT-2 small as a topic classifier on AG News (World / Sports / Business / Sci/Tech), the users' recipe (as
# configs/classify_imdb.py): all weights, 3 epochs, lr 2e-5, 10 % warmup then linear decay to 1e-7, weight decay
# 0.01, clip 1.0, label smoothing 0.1, batch 8, AMP on a GPU.
#   python finetune.py configs/classify_ag_news.py
#   python finetune.py configs/classify_ag_news.py configs/classify_distilgpt2.py  # DistilGPT2, batch 16
#   python finetune.py configs/classify_ag_news.py --data_path ../shared/data/ag_news  # a local copy (test.csv only:
#                                                                   # a seeded stratified train / val / test hold-out)
#   python finetune.py configs/classify_ag_news.py --method lora --lora_rank 8 --learning_rate 2e-4
out_dir = "out-classify-ag_news"
task = "classify"
dataset = "ag_news"
method = "full"
label_smoothing = 0.1

max_length = 256  # title + description: 51 GPT-2 tokens on average, 259 at most (test set)
gradient_accumulation_steps = 1

learning_rate = 2e-5

eval_interval = 0  # validation at each epoch end
log_interval = 100
checkpoint_interval = 0
keep_last = 1
sample_interval = 0
