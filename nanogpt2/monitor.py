"""
The training monitor's measurements: layer-wise gradient norms and the process's peak memory.

What they are (nanogpt2/outputs.py reports them: the progress line, metrics.jsonl, TensorBoard, the plot):
  - gradient norms by layer: the L2 norm of the gradients of each part of the model, before clipping (the
    parts of `grad_norm`, the global norm: the root of the sum of their squares). The parts, by parameter name:
    `embeddings` (wte, wpe; a tied LM head's matrix is wte, so it counts here), `block_0` ... `block_{L-1}`
    (everything inside transformer.h.i: attention, MLP, LayerNorms, LoRA and adapter weights), `head` (ln_f,
    an untied lm_head, a classifier's score) and `other` (the rest: a prefix's table). Parts with no gradient
    (frozen) are left out.
  - peak memory: on CUDA `torch.cuda.max_memory_allocated` and `max_memory_reserved` of the run's device (the
    caching allocator's high-water marks since the process started); elsewhere the process's peak resident set
    size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the CPU, or MPS's unified memory), in MiB.

    groups = GradNormGroups(model)          # once: the parameters of each part
    norms = groups.norms()                  # {part: 0-dim tensor} of the gradients now (no device sync)
    peak_memory(device)                     # {"peak_mem_allocated_mib": ..., "peak_mem_reserved_mib": ...} or
                                            # {"peak_rss_mib": ...}
"""

import re
import sys
from typing import Dict, List

import torch
import torch.nn as nn

MiB = 2 ** 20
_BLOCK = re.compile(r"(?:^|\.)h\.(\d+)\.")  # transformer.h.3.attn.c_attn.weight -> block 3
_EMBEDDINGS = re.compile(r"(?:^|\.)(wte|wpe)\.")
_HEAD = re.compile(r"(?:^|\.)(ln_f|lm_head|score)\.")


def part_of(name: str) -> str:
    """The part of the model a parameter belongs to, by its name (see the module docstring)."""
    block = _BLOCK.search(name)
    if block:
        return f"block_{int(block.group(1))}"
    if _EMBEDDINGS.search(name):
        return "embeddings"
    return "head" if _HEAD.search(name) else "other"


class GradNormGroups:
    """The parameters of a model by part (embeddings, each block, head, other), in that order; `norms()` gives the
    L2 norm of each part's current gradients."""

    def __init__(self, model: nn.Module):
        parts: Dict[str, List[torch.nn.Parameter]] = {}
        for name, p in model.named_parameters():  # a shared (tied) tensor comes once, under its first name
            parts.setdefault(part_of(name), []).append(p)
        blocks = sorted((k for k in parts if k.startswith("block_")), key=lambda k: int(k.split("_")[1]))
        order = ["embeddings", *blocks, "head", "other"]
        self.parts = {k: parts[k] for k in order if k in parts}

    @torch.no_grad()
    def norms(self) -> Dict[str, torch.Tensor]:
        """{part: the L2 norm of its gradients, a 0-dim float32 tensor on the gradients' device}: parts whose
        parameters have no gradient (frozen, or not used this step) are left out."""
        out = {}
        for part, params in self.parts.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                out[part] = torch.nn.utils.get_total_norm(grads, 2.0).float()
        return out


def peak_memory(device: torch.device) -> dict:
    """The process's peak memory so far, in MiB (see the module docstring): CUDA's allocated and reserved peaks on
    `device`, else the peak resident set size (absent where the platform cannot tell: Windows)."""
    if device.type == "cuda":
        return {"peak_mem_allocated_mib": torch.cuda.max_memory_allocated(device) / MiB,
                "peak_mem_reserved_mib": torch.cuda.max_memory_reserved(device) / MiB}
    try:
        import resource
    except ImportError:  # Windows
        return {}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_mib": rss / MiB if sys.platform == "darwin" else rss / 1024}
