"""
Where and in what precision code runs: one meaning of `device="auto"` and `dtype="auto"` for every script
(train.py, finetune.py, sample.py, bench.py, `python -m nanogpt2.evaluate`), the dtype table, and autocast.

- device `auto`: CUDA when available (under torchrun, `cuda:LOCAL_RANK`: one GPU per process), else Apple's
  MPS when available (one process only: gloo cannot all-reduce MPS tensors), else the CPU. Explicit: `cpu`, `cuda`, `cuda:N`, `mps`, each checked against this
  machine (a missing CUDA or MPS, a GPU index out of range, an unknown name: one clear error).
- dtype `auto`: bfloat16 on a CUDA device that supports it, float16 on an older CUDA device (with a
  GradScaler when training), float32 everywhere else. Half precision is refused on MPS.
- Weights stay float32; the dtype is the autocast compute dtype (`autocast(device, dtype)`).

    from nanogpt2.runtime import resolve_device, resolve_dtype, autocast
    device = resolve_device("auto")                  # torch.device
    dtype = resolve_dtype("auto", device)            # "float32" | "bfloat16" | "float16"
    with autocast(device, dtype):
        logits, loss = model(x, y)
"""

from contextlib import nullcontext
from typing import Optional

import torch

from nanogpt2.errors import NanoGPT2Error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto", local_rank: Optional[int] = None) -> torch.device:
    """The torch.device for a --device setting (see the module docstring). `local_rank`: this process's
    rank on its machine under torchrun; a CUDA device is then always `cuda:local_rank`."""
    spec = str(spec).strip()
    if spec == "auto":  # (under torchrun without CUDA: the CPU, since gloo cannot all-reduce MPS tensors)
        spec = "cuda" if torch.cuda.is_available() else ("mps" if _mps_available() and local_rank is None else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise NanoGPT2Error(f"device {spec!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NanoGPT2Error(f"device {spec} was asked for but this torch has no usable CUDA device; use --device cpu")
        if local_rank is not None:
            if local_rank >= torch.cuda.device_count():
                raise NanoGPT2Error(f"torchrun started more processes per node than this machine has CUDA devices "
                                    f"({torch.cuda.device_count()}); use --nproc_per_node={torch.cuda.device_count()}")
            return torch.device("cuda", local_rank)  # one GPU per process
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NanoGPT2Error(f"device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return device
    if device.type == "mps":
        if local_rank is not None:
            raise NanoGPT2Error("device=mps cannot run under torchrun (DDP's gloo backend has no MPS support); "
                                "use --device=cpu, or one process")
        if not _mps_available():
            raise NanoGPT2Error(f"device {spec} was asked for but MPS is not available here; use --device cpu")
        return device
    if device.type != "cpu":
        raise NanoGPT2Error(f"device {spec!r} is not supported; use {DEVICE_CHOICES}")
    return device


def resolve_dtype(spec: str, device) -> str:
    """The compute dtype's name for a --dtype setting on `device` (see the module docstring); aliases fp32,
    bf16, fp16 are accepted."""
    device = torch.device(device)
    spec = DTYPE_ALIASES.get(spec, spec)
    if spec == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if spec not in DTYPES:
        raise NanoGPT2Error(f"dtype {spec!r} is not one of auto, {', '.join(DTYPES)}")
    if spec != "float32" and device.type == "mps":
        raise NanoGPT2Error(f"dtype={spec} is not supported on mps here; use --dtype=float32")
    return spec


def autocast(device, dtype):
    """A context running the forward in `dtype` (a name from DTYPES or a torch dtype) on `device`: torch.autocast,
    or nothing for float32 (None counts as float32)."""
    if dtype is None or dtype in ("float32", torch.float32):
        return nullcontext()
    dt = DTYPES[DTYPE_ALIASES.get(dtype, dtype)] if isinstance(dtype, str) else dtype
    return torch.autocast(device_type=torch.device(device).type, dtype=dt)
