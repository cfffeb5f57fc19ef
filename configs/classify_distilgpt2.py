# The DistilGPT2 variant of a classification recipe: give it after configs/classify_imdb.py or
# configs/classify_ag_news.py (later files win). DistilGPT2 (6 layers) takes batch 16.
#   python finetune.py configs/classify_imdb.py configs/classify_distilgpt2.py
#   python finetune.py configs/classify_ag_news.py configs/classify_distilgpt2.py --out_dir out-distil-ag_news
out_dir = "out-classify-distilgpt2"
init_from = "distilgpt2"
batch_size = 16
