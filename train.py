"""
Train a GPT-2: from scratch, from pretrained weights, or resumed, on one process or many (torchrun).

    python train.py                                   # configs/shakespeare.py: a small char model on CPU
    python train.py configs/wikitext2.py --max_iters=5000 --batch_size 16
    torchrun --nproc_per_node=8 train.py configs/wikitext2.py
    python train.py configs/wikitext2.py --resume_from auto
    python train.py --help                            # every setting with its default

The loop lives in nanogpt2/trainer.py; settings in nanogpt2/config.py; docs in docs/training.md.
"""

import sys
from pathlib import Path

from nanogpt2.errors import run_cli
from nanogpt2.trainer import main

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "shakespeare.py"

if __name__ == "__main__":
    run_cli(main, sys.argv[1:], default_config=DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
