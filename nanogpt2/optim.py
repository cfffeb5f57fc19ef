"""
Optimization pieces of the one training loop: the learning-rate schedule, AdamW parameter groups that carry an
`lr_scale`, freezing, and the AdamW factory.

- The schedule is a pure function of the step (`get_lr`, nanoGPT's warmup + cosine / linear / constant), so a
  resumed run needs no scheduler state.
- Every parameter group carries `lr_scale`; each step the trainer sets `group["lr"] = lr_at(step) *
  group["lr_scale"]` (`set_lr`), so per-group learning rates (a head at 10x, lower layers at 0.1x) are one
  number per group. The default groups have scale 1.0: the plain schedule.
- `freeze(model, patterns)` / `unfreeze(...)` switch `requires_grad` by parameter name (fnmatch patterns);
  frozen parameters are left out of the groups. `set_trainable(model, method, ...)`: what a fine-tuning method
  trains (finetune.py's `selective` freezing by block, embeddings and head; a task's new head under PEFT).

References: Loshchilov & Hutter 2019 (AdamW); Karpathy's nanoGPT `configure_optimizers` and `get_lr`.

    from nanogpt2.optim import make_adamw, param_groups, freeze
    freeze(model, ["transformer.h.0.*", "transformer.wte.*"])
    opt = make_adamw(param_groups(model, 0.1), lr=6e-4, betas=(0.9, 0.95), eps=1e-8, device_type="cpu")
"""

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Callable, Optional

import torch
import torch.nn as nn

from nanogpt2.errors import NanoGPT2Error

# ----------------------------------------------------------------------------------------------------
# Learning-rate schedule (pure functions of the step)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule, resolved: `lr_at(step)` is the rate used by optimizer step `step` (0-based)."""

    kind: str  # "cosine" | "linear" | "constant"
    learning_rate: float
    min_lr: float
    warmup_iters: int
    lr_decay_iters: int

    def lr_at(self, step: int) -> float:
        return get_lr(step, self.kind, self.learning_rate, self.min_lr, self.warmup_iters, self.lr_decay_iters)


def get_lr(step, kind, learning_rate, min_lr, warmup_iters, lr_decay_iters) -> float:
    """nanoGPT's schedule. Warmup: learning_rate * (step + 1) / (warmup_iters + 1) for step < warmup_iters.
    Then, until lr_decay_iters, from learning_rate down to min_lr:
      cosine:   min_lr + 0.5 * (1 + cos(pi * r)) * (learning_rate - min_lr)
      linear:   min_lr + (1 - r) * (learning_rate - min_lr)
      constant: learning_rate
    with r = (step - warmup_iters) / (lr_decay_iters - warmup_iters); min_lr from lr_decay_iters on
    (constant: learning_rate throughout)."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if kind == "constant":
        return learning_rate
    if step >= lr_decay_iters:
        return min_lr
    r = (step - warmup_iters) / (lr_decay_iters - warmup_iters)
    if kind == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * r))
    elif kind == "linear":
        coeff = 1.0 - r
    else:
        raise ValueError(f"unknown lr schedule {kind!r}")
    return min_lr + coeff * (learning_rate - min_lr)


def run_length(cfg, steps_per_epoch) -> int:
    """A run's optimizer steps: max_iters, or max_epochs x steps_per_epoch, the fewer when both are set (0: none)."""
    total = cfg.max_iters if cfg.max_iters > 0 else None
    if cfg.max_epochs > 0:
        if not steps_per_epoch:
            raise NanoGPT2Error("max_epochs needs to know the epoch length; set max_iters instead")
        by_epochs = cfg.max_epochs * steps_per_epoch
        total = by_epochs if total is None else min(total, by_epochs)
    return total or 0


def resolve_schedule(cfg, total_steps: int) -> Schedule:
    """The schedule of a run config: lr_decay_iters 0 means the run's length; warmup_ratio > 0 sets the warmup
    from lr_decay_iters."""
    decay = cfg.lr_decay_iters or total_steps
    warmup = round(cfg.warmup_ratio * decay) if cfg.warmup_ratio > 0 else cfg.warmup_iters
    return Schedule(cfg.lr_schedule, cfg.learning_rate, cfg.min_lr, warmup, decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The step's rate into every group, times the group's `lr_scale` (1.0 when a group has none, e.g. an
    optimizer state saved before groups carried it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------------
# Parameter groups and freezing


def param_groups(model: nn.Module, weight_decay: float, decay_pos_emb: bool = True,
                 lr_scale: Optional[Callable[[str], float]] = None) -> list:
    """AdamW groups: weight decay for matrices (embeddings included), none for biases and LayerNorm weights
    (every tensor of dim < 2), nor for the positional table when `decay_pos_emb` is false. Frozen parameters
    (requires_grad False) are left out.

    lr_scale: name -> multiplier of the scheduled rate (default 1.0 for all). The first two groups are always
    (decay, scale 1.0) and (no decay, scale 1.0), possibly empty; every other (decay, scale) pair gets a group
    of its own after them, in order of first appearance.
    """
    groups = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.dim() < 2 or (not decay_pos_emb and name.endswith("wpe.weight")))
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"lr_scale for {name} must be a finite number >= 0, not {scale}")
        groups.setdefault((decay, scale), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in groups.items()]


def _matching(model: nn.Module, patterns) -> list:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    hits = [(n, p) for n, p in model.named_parameters() if any(fnmatchcase(n, pat) for pat in patterns)]
    if patterns and not hits:
        raise ValueError(f"no parameter name matches {patterns} (names look like "
                         f"{next(iter(dict(model.named_parameters())), '?')!r})")
    return hits


def freeze(model: nn.Module, patterns=("*",)) -> int:
    """requires_grad = False for every parameter whose name matches one of the fnmatch `patterns` (default:
    all). Returns how many tensors were matched; a pattern list that matches nothing is an error."""
    hits = _matching(model, patterns)
    for _, p in hits:
        p.requires_grad_(False)
    return len(hits)


def unfreeze(model: nn.Module, patterns=("*",)) -> int:
    """requires_grad = True for the matching parameters (see `freeze`)."""
    hits = _matching(model, patterns)
    for _, p in hits:
        p.requires_grad_(True)
    return len(hits)


def block_of(name: str) -> Optional[int]:
    """The block index of a parameter name (`transformer.h.3.attn...` -> 3), None outside the blocks."""
    m = re.search(r"(?:^|\.)h\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def matches(name: str, patterns) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def frozen_blocks(text: str) -> list:
    """`freeze_layers` as sorted block indices ('' -> [])."""
    try:
        blocks = sorted({int(s) for s in text.split(",")}) if text.strip() else []
    except ValueError:
        raise NanoGPT2Error(f"freeze_layers must be comma-separated block indices, e.g. 0,1,2,3, not {text!r}") from None
    if blocks and blocks[0] < 0:
        raise NanoGPT2Error(f"freeze_layers holds a negative block index: {text!r}")
    return blocks


def check_frozen_blocks(blocks: list, n_layer: int, text: str) -> None:
    """Refuse a freeze list the model is too shallow for: a block past its last, or every block (a recipe's list,
    configs/finetune_selective.py's 0-3 of GPT-2 small's 12, on a 4-layer model would leave no block to train)."""
    keep = ",".join(map(str, range(n_layer // 2)))
    fix = f"--freeze_layers {keep} (the lower half)" if keep else "--freeze_layers ''"
    if blocks and blocks[-1] >= n_layer:
        raise NanoGPT2Error(f"freeze_layers={text!r} names block {blocks[-1]}, but this model has {n_layer} blocks "
                            f"(0-{n_layer - 1}): it is shallower than the freeze list; give blocks it has, e.g. {fix}")
    if n_layer and len(blocks) == n_layer:
        raise NanoGPT2Error(f"freeze_layers={text!r} freezes every block of this {n_layer}-block model, so only the "
                            f"embeddings and the head would train; freeze fewer, e.g. {fix}")


def set_trainable(model: nn.Module, method: str, head_patterns=(), modules_to_save=(), freeze_layers: str = "",
                  freeze_embeddings: bool = False, freeze_head: bool = False) -> None:
    """requires_grad by a fine-tuning method: "full" trains everything, "selective" all but the blocks of
    `freeze_layers` (and the embeddings / the `head_patterns` with `freeze_embeddings` / `freeze_head`); the PEFT
    methods froze the base when they were applied, and `modules_to_save` (a task's new head) train with them."""
    n_layer = len(model.transformer.h)
    if method == "selective":
        blocks = frozen_blocks(freeze_layers)
        check_frozen_blocks(blocks, n_layer, freeze_layers)
        for name, p in model.named_parameters():
            embedding = freeze_embeddings and re.search(r"(^|\.)(wte|wpe)\.", name) is not None
            head = freeze_head and matches(name, head_patterns)
            p.requires_grad_(not (block_of(name) in blocks or embedding or head))
    elif method != "full":
        for name, p in model.named_parameters():
            if matches(name, modules_to_save):
                p.requires_grad_(True)


# ----------------------------------------------------------------------------------------------------
# The optimizer


def make_adamw(groups: list, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW over `groups`, fused where PyTorch has the kernel. One fused kernel for the whole update (CUDA;
    CPU since torch 2.4): on the CPU benchmark model it takes 10 ms where the default for-loop implementation
    takes 74 ms (docs/benchmarks.md). (Resuming a checkpoint keeps the optimizer flags it was saved with: a run
    started unfused stays unfused.)"""
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **extra)


def make_optimizer(model: nn.Module, cfg, device_type: str) -> torch.optim.AdamW:
    """The training loop's default optimizer for a run config: `param_groups` + `make_adamw`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_pos_emb)
    return make_adamw(groups, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.eps, device_type)
