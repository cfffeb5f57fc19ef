"""
Model FLOPs utilisation (MFU): achieved training FLOP/s divided by the device's peak.

The FLOPs per token come from the model (`GPT.flops_per_token`, the 6N + 12·L·T·C form of the PaLM paper's
appendix B). The peak comes from a table of dense (no sparsity) tensor-core figures from the vendors'
datasheets, looked up by the device name and the compute dtype; on a CPU, where no table makes sense, the
peak is *measured* with a large matmul (the "probe") and reported as such. `NANOGPT2_PEAK_FLOPS` (FLOP/s,
e.g. `989e12`) overrides both, for a device the table does not know.

Used by the training loop (MFU on every progress line) and by `bench.py`.

    from nanogpt2.perf import peak_flops, mfu
    peak, source = peak_flops("cuda", torch.bfloat16)
    print(mfu(model.flops_per_token(T), tokens_per_sec, peak))
"""

import math
import os
import time
from functools import lru_cache

import torch

# ----------------------------------------------------------------------------------------------------
# Peak table: dense FLOP/s by (name fragment, dtype). Matched in order against the lower-cased device
# name (`torch.cuda.get_device_name`, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA L4"), so
# more specific fragments come first ("h100 pcie" before "h100", "l40s" and "l40" before "l4").
# Sources: NVIDIA datasheets, figures without sparsity.

_TF = 1e12
PEAK_TABLE = [
    # fragment,       bf16/fp16,   tf32,        fp32 (CUDA cores)
    ("b200",          2250 * _TF,  1100 * _TF,  75 * _TF),
    ("gh200",         989 * _TF,   494 * _TF,   67 * _TF),
    ("h200 nvl",      835 * _TF,   418 * _TF,   60 * _TF),
    ("h200",          989 * _TF,   494 * _TF,   67 * _TF),   # SXM
    ("h100 pcie",     756 * _TF,   378 * _TF,   51 * _TF),
    ("h100 nvl",      835 * _TF,   418 * _TF,   60 * _TF),
    ("h100",          989 * _TF,   494 * _TF,   67 * _TF),   # SXM ("NVIDIA H100 80GB HBM3")
    ("h800",          989 * _TF,   494 * _TF,   67 * _TF),
    ("a100",          312 * _TF,   156 * _TF,   19.5 * _TF),  # SXM and PCIe
    ("a800",          312 * _TF,   156 * _TF,   19.5 * _TF),
    ("l40s",          362 * _TF,   183 * _TF,   91.6 * _TF),
    ("l40",           181 * _TF,   90.5 * _TF,  90.5 * _TF),
    ("l4",            121 * _TF,   60 * _TF,    30.3 * _TF),
    ("a10g",          125 * _TF,   62.5 * _TF,  31.2 * _TF),
    ("a10",           125 * _TF,   62.5 * _TF,  31.2 * _TF),
    ("rtx 4090",      165 * _TF,   82.6 * _TF,  82.6 * _TF),
    ("rtx 3090",      71 * _TF,    35.6 * _TF,  35.6 * _TF),
    ("v100",          125 * _TF,   15.7 * _TF,  15.7 * _TF),  # no bf16 tensor cores: fp16 figure
    ("t4",            65 * _TF,    8.1 * _TF,   8.1 * _TF),
]


def _dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    return {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}.get(dtype, dtype)


def table_peak(device_name: str, dtype="bfloat16", tf32: bool = False):
    """(peak FLOP/s, source) from PEAK_TABLE for a GPU called `device_name`, or None when it is not listed.

    bf16/fp16 use the tensor-core figure; fp32 uses the TF32 tensor-core figure when `tf32` is on
    (`torch.set_float32_matmul_precision("high")`), else the CUDA-core figure.
    """
    low = device_name.lower()
    dtype = _dtype_name(dtype)
    for fragment, half, tf32_peak, fp32 in PEAK_TABLE:
        if fragment in low:
            if dtype in ("bfloat16", "float16"):
                return half, f"{device_name} {dtype} datasheet (dense)"
            if tf32:
                return tf32_peak, f"{device_name} tf32 datasheet (dense)"
            return fp32, f"{device_name} fp32 datasheet"
    return None


def _tf32_enabled() -> bool:
    return torch.get_float32_matmul_precision() != "highest"


# ----------------------------------------------------------------------------------------------------
# Peak lookup


def peak_flops(device="cpu", dtype="float32") -> tuple:
    """(peak FLOP/s, where the figure comes from) for `device` computing in `dtype`.

    Order: $NANOGPT2_PEAK_FLOPS, the datasheet table (CUDA), the matmul probe (CPU); NaN when none applies
    (MFU is then reported as unknown, never guessed).
    """
    env = os.environ.get("NANOGPT2_PEAK_FLOPS")
    if env:
        try:
            return float(env), f"$NANOGPT2_PEAK_FLOPS={env}"
        except ValueError:
            pass  # a malformed override is ignored rather than failing a training run
    device = torch.device(device)
    dtype = _dtype_name(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = table_peak(name, dtype, tf32=_tf32_enabled())
        if found is not None:
            return found
        return float("nan"), f"{name}: not in the peak table (MFU unknown; set NANOGPT2_PEAK_FLOPS)"
    if device.type == "cpu":
        peak = measured_matmul_flops(dtype)
        return peak, f"CPU {dtype} matmul probe ({peak / 1e9:.1f} GFLOP/s measured, {torch.get_num_threads()} threads)"
    return float("nan"), f"{device.type}: no peak figure (MFU unknown; set NANOGPT2_PEAK_FLOPS)"


# ----------------------------------------------------------------------------------------------------
# CPU probe


class MatmulProbe:
    """An n x n x n matmul in `dtype` on the CPU, kept ready to time again (2 n^3 FLOPs a call).

    `bench.py` calls it in the same interleaved rounds as the training steps, so that the peak and the
    steps see the same load on a shared machine; `measured_matmul_flops` takes the best of a short burst.
    """

    def __init__(self, dtype="float32", n=1024):
        dt = getattr(torch, _dtype_name(dtype))
        self.n = n
        self.flops = 2 * n ** 3
        gen = torch.Generator().manual_seed(0)  # its own generator: timing must not move the global RNG
        self.a = torch.randn(n, n, generator=gen).to(dt)
        self.b = torch.randn(n, n, generator=gen).to(dt)
        self()  # warm up

    def __call__(self):
        return self.a @ self.b


PROBE_CALL_SECONDS = 0.02  # the probe's matmul grows (from 128, doubling) until one call takes this long


@lru_cache(maxsize=None)
def measured_matmul_flops(dtype="float32", n=1024, seconds=0.5) -> float:
    """The best FLOP/s of a square matmul on this CPU, over about `seconds` of repeats.

    "Best" rather than mean: the probe estimates what the hardware can do with the current thread count,
    so time lost to other processes on a shared machine should not lower the peak (it would inflate MFU).
    The size starts at 128 and doubles up to `n` while one call takes under PROBE_CALL_SECONDS: float32 reaches
    1024 (17 ms here), while a dtype the CPU has no native matmul for (float16 and bfloat16 without AVX-512 FP16 /
    BF16: about 1 GFLOP/s, 3 s for one 1024^3 call) stops at 256, so the probe costs a fraction of a second at
    the start of a run instead of about 6 s.
    """
    size = min(n, 128)
    while True:
        probe = MatmulProbe(dtype, size)  # warms up with one call
        t0 = time.perf_counter()
        probe()
        took = time.perf_counter() - t0
        if size * 2 > n or took >= PROBE_CALL_SECONDS:
            break
        size *= 2
    best = took
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        probe()
        best = min(best, time.perf_counter() - t0)
    return probe.flops / best


# ----------------------------------------------------------------------------------------------------
# MFU


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (NaN when the peak is unknown).

    Not clamped: against a datasheet peak it is below 1; against a CPU probe measured once, it can read above
    1 when the machine was busier during the probe than during the steps (bench.py times the probe in the same
    rounds as the steps for that reason)."""
    if not peak or math.isnan(peak):
        return float("nan")
    return flops_per_token * tokens_per_sec / peak


def mfu_denominator(model, block_size: int, device, dtype) -> tuple:
    """(FLOPs per token of `model` at the run's window, the device's peak FLOP/s, where the peak comes from):
    what a training run's MFU divides by. A model without `flops_per_token` gets NaN (MFU n/a)."""
    fpt = getattr(model, "flops_per_token", None)
    block = getattr(getattr(model, "config", None), "block_size", block_size)
    flops_per_token = fpt(min(block_size, block)) if callable(fpt) else float("nan")
    # The CPU peak is a matmul probe on random matrices, run once per process (cached): keep it off the
    # global RNG, or a run's dropout masks would depend on whether an earlier run in the process probed.
    with torch.random.fork_rng(devices=[]):
        peak, source = peak_flops(device, dtype)
    return flops_per_token, peak, source
