"""
Model FLOPs utilisation (MFU): achieved training FLOP/s divided by the device's peak.

The FLOPs per token come from the model (`GPT.flops_per_token`, the 6N + 12·L·T·C form of the PaLM paper's
appendix B). The peak comes from a table of dense (no sparsity) tensor-core figures from the vendors'
datasheets, looked up by the device name and the compute dtype; on a CPU, where no table makes sense, the
peak is *measured* with a large matmul (the "probe") and reported as such.

Used by the training loop (MFU on every progress line) and by `bench.py`.

    from nanogpt2.perf import peak_flops, mfu
    peak, source = peak_flops("cuda", torch.bfloat16)
    print(mfu(model.flops_per_token(T), tokens_per_sec, peak))
"""

import time
from functools import lru_cache

import torch

# ----------------------------------------------------------------------------------------------------
# Peak table: dense FLOP/s by (name fragment, dtype). Matched in order against the lower-cased device
# name, so more specific fragments come first. Sources: NVIDIA datasheets (without sparsity).

_TF = 1e12
PEAK_TABLE = [
    # fragment,       bf16/fp16,  tf32,       fp32 (CUDA cores)
    ("h200",          989 * _TF,  494 * _TF,  67 * _TF),
    ("h100 pcie",     756 * _TF,  378 * _TF,  51 * _TF),
    ("h100",          989 * _TF,  494 * _TF,  67 * _TF),   # SXM
    ("a100",          312 * _TF,  156 * _TF,  19.5 * _TF),
    ("l40s",          362 * _TF,  183 * _TF,  91.6 * _TF),
    ("l4",            121 * _TF,  60 * _TF,   30.3 * _TF),
    ("a10g",          125 * _TF,  62.5 * _TF, 31.2 * _TF),
    ("a10",           125 * _TF,  62.5 * _TF, 31.2 * _TF),
    ("rtx 4090",      165 * _TF,  82.6 * _TF, 82.6 * _TF),
    ("rtx 3090",      71 * _TF,   35.6 * _TF, 35.6 * _TF),
    ("v100",          125 * _TF,  15.7 * _TF, 15.7 * _TF),  # no bf16 tensor cores: fp16 figure
    ("t4",            65 * _TF,   8.1 * _TF,  8.1 * _TF),
]


def _dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(dtype, dtype)


def peak_flops(device="cpu", dtype="float32") -> tuple:
    """(peak FLOP/s, where the figure comes from) for `device` computing in `dtype`."""
    device = torch.device(device)
    dtype = _dtype_name(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        low = name.lower()
        for fragment, half, tf32, fp32 in PEAK_TABLE:
            if fragment in low:
                if dtype in ("bfloat16", "float16"):
                    return half, f"{name} {dtype} datasheet"
                if torch.backends.cuda.matmul.allow_tf32:
                    return tf32, f"{name} tf32 datasheet"
                return fp32, f"{name} fp32 datasheet"
        return float("nan"), f"{name}: not in the peak table (MFU unknown)"
    if device.type == "cpu":
        peak = measured_matmul_flops(dtype)
        return peak, f"CPU {dtype} matmul probe ({peak / 1e9:.1f} GFLOP/s measured, {torch.get_num_threads()} threads)"
    return float("nan"), f"{device.type}: no peak figure (MFU unknown)"


@lru_cache(maxsize=None)
def measured_matmul_flops(dtype="float32", n=1024, seconds=0.5) -> float:
    """The best FLOP/s of an n x n x n matmul on this CPU, over about `seconds` of repeats."""
    dt = getattr(torch, _dtype_name(dtype))
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    a @ b  # warm up
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the peak."""
    return flops_per_token * tokens_per_sec / peak
