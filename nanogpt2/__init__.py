"""
nanogpt2: a pure-PyTorch, minimal-dependency GPT-2 toolkit.

    from nanogpt2 import GPT, GPTConfig
    model = GPT.from_pretrained("gpt2")

Modules: model (GPT-2), convert (HF and OpenAI checkpoints; `python -m nanogpt2.convert`), tokenizer, data, config,
trainer, checkpoint, generate, evaluate, perf, download, safetensors_io, tf_checkpoint, errors. See README.md.
"""

from nanogpt2.model import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
__version__ = "0.1.0"
