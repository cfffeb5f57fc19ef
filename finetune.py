"""
Fine-tune a GPT-2: LoRA, Houlsby adapters, selective freezing or all weights, on the one training loop.

    python finetune.py configs/finetune_lora.py                       # LoRA r=8 on gpt2, WikiText-2
    python finetune.py configs/finetune_lora.py --init_from out-shakespeare --dataset shakespeare
    python finetune.py configs/finetune_adapter.py --adapter_size 32
    python finetune.py configs/finetune_selective.py --freeze_layers 0,1,2,3
    torchrun --nproc_per_node=4 finetune.py configs/finetune_lora.py
    python finetune.py --help                                         # every setting with its default

The methods and tasks live in nanogpt2/finetuning.py (and nanogpt2/peft.py); docs in docs/finetuning.md.
"""

import sys

from nanogpt2.errors import run_cli
from nanogpt2.finetuning import main

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
