"""
bench.py: how fast is nanogpt2, measured side by side with the obvious alternative in the same run.

Sub-benchmarks (pick one, or `all`):
  attention  the fused `scaled_dot_product_attention` kernel (default dispatch and each SDPA backend the
             device has: flash, memory-efficient, cuDNN, math) against the explicit reference attention of
             `nanogpt2/model.py`, forward and forward+backward, time and peak memory, over a sweep of
             sequence lengths; a PNG plot when matplotlib is installed.
  train      a full training step (forward, backward, grad clip, AdamW step) of `GPT`: ms/iter, tokens/s,
             MFU. `--vs hf` times the same config, batch, dtype and step built with
             `transformers.GPT2LMHeadModel` (attn_implementation="sdpa") and a plain AdamW loop, in the same
             process, interleaved with ours, and prints the ratio. `--profile` writes torch.profiler traces.
  classify   a training step of the sequence classifier (`nanogpt2.heads.GPTForSequenceClassification`: loss on
             the last real token of right-padded rows of mixed lengths), examples/s; `--vs hf` times
             `transformers.GPT2ForSequenceClassification` loaded from our weights, on the same batch and padding,
             interleaved with ours (the first losses must agree).
  generate   KV-cache decoding (`nanogpt2.benchmarks.decode.benchmark_decode`).
  finetune   a fine-tuning step (`--method lora|adapter|prompt|full`, LoRA r/alpha/targets and prompt_length as
             finetune.py's) of `GPT`; `--vs peft` times transformers' GPT2LMHeadModel wrapped by HF peft with the
             same LoRA or prompt-tuning config, batch, dtype and optimizer (ours), both eager or both compiled
             (--compile), interleaved: tokens/s and step peak memory ratios (`ratio_tokens_per_sec`,
             `ratio_peak_memory`). With prompt tuning a row holds block_size - prompt_length real tokens.
             train and finetune with `--gradient_checkpointing`: our step with each block recomputed in the
             backward (GPT.gradient_checkpointing_enable) beside the same model's step without it ("plain"),
             interleaved: the time and step peak memory ratios (checkpointed / plain).
  tokenizer  BPE encode throughput, the python backend against tiktoken
             (`nanogpt2.benchmarks.tokenizer.benchmark_tokenizer`; `--tokenizer_text FILE` picks the text).
  instruct   forward + backward of the instruct task's response-only loss on right-padded rows of varied
             length: no attention mask (what the task does), the padding mask passed, and every row padded to
             block_size instead of the longest (static padding); the loss with and without the mask compared.
  distill    a distillation training step (the teacher's forward, then the student's step on
             `nanogpt2.distill.kd_loss`) against the student's plain step, interleaved; greedy decoding tokens/s of
             the student and the teacher side by side. The teacher is the run's model, the student its half.
  monitor    the training monitor's cost (nanogpt2/monitor.py: the gradient norm of each part of the model and
             the peak memory, on every `--log_interval`-th step) against the training step: both timed in
             interleaved rounds, the monitor's work on a twin model holding gradients; its share of a step.

Timing: warmup iterations are excluded, the device is synchronised around each timed block, compared
variants are interleaved (A B B A ...) and each figure is the median of `--repeats` blocks, so that load
from other processes on a shared machine hits both sides alike; the ours/hf ratio is also given as the
median of per-round ratios (the two sides timed back to back) and, on a CPU, in process CPU time. On a
CPU the MFU peak is a matmul probe timed in the same rounds. Peak memory on CUDA is
`torch.cuda.max_memory_allocated` above what was allocated before the call; on CPU it is the running
peak of the allocations and frees that torch.profiler records during the call (see docs/benchmarks.md).

Output: a table on stdout and, with `--json PATH`, every figure with its unit (schema in docs/benchmarks.md).

    python bench.py all                                   # CPU-sized defaults on a CPU, GPT-2 124M on a GPU
    python bench.py train --vs hf --json out-bench/train.json
    python bench.py train --preset gpt2 --block_size 1024 --batch_size 16 --dtype bfloat16 --compile --vs hf
    python bench.py attention --seq_lens 128,256,512,1024
    python bench.py finetune --method lora --vs peft --preset gpt2-6x384   # LoRA step vs transformers + peft
    python bench.py train --preset gpt2 --batch_size 1 --gradient_checkpointing   # memory and time, with vs without
    python bench.py classify --vs hf --preset gpt2 --block_size 256 --batch_size 8 --threads 1
    python bench.py train --n_layer 2 --n_head 2 --n_embd 64 --vocab_size 256 --block_size 32 --batch_size 2 \\
        --steps 2 --warmup 1 --json out.json              # a tiny model, seconds

References: Karpathy's nanoGPT `bench.py` (MFU as in `estimate_mfu`), PaLM appendix B (6N + 12·L·T·C).
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from nanogpt2 import perf
from nanogpt2.errors import NanoGPT2Error, read_text, run_cli
from nanogpt2.model import PRESETS, CausalSelfAttention, GPT, GPTConfig
from nanogpt2.optim import make_adamw, param_groups
from nanogpt2.runtime import DTYPE_ALIASES, DTYPES, autocast, resolve_device, resolve_dtype

BENCHMARKS = ("attention", "train", "classify", "generate", "tokenizer", "finetune", "instruct", "distill", "monitor")
# Bench-only sizes beside the model presets (GPT-2 family: vocab 50257, block 1024). "shakespeare-char" is
# nanoGPT's config/train_shakespeare_char.py model (6 layers, 6 heads, 384 wide, block 256, 65-character
# vocabulary): the default on a CPU and the CPU goal in docs/benchmarks.md.
BENCH_PRESETS = {"shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=65, block_size=256),
                 # GPT-2-shaped (its vocabulary) at shakespeare-char's size: the CPU fine-tuning benchmark
                 "gpt2-6x384": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=50257, block_size=256)}
MiB = 2 ** 20
# How long a bare `python bench.py` (every benchmark, the device's default sizes) takes, measured (docs/benchmarks.md)
ALL_MINUTES = {"cpu": "about 1.5-2.5 minutes on a 2-core CPU (several times that when other jobs load it)",
               "cuda": "not yet run on a GPU, so not yet timed"}

# ----------------------------------------------------------------------------------------------------
# Options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="nanogpt2 benchmarks: fused attention, training throughput and MFU (optionally vs "
                    "transformers), decoding, tokenizer. Defaults are sized for the device; "
                    "see docs/benchmarks.md.", allow_abbrev=False)
    # No argparse `choices` here: Python 3.11+ checks a nargs="*" positional's list default against them and
    # refuses a bare `python bench.py`; the names are checked in resolve() instead.
    p.add_argument("which", nargs="*", default=[], metavar="BENCHMARK",
                   help=f"benchmarks to run, in this order: {', '.join(BENCHMARKS)} or all (default: all, sized for "
                        f"the device)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS) + sorted(BENCH_PRESETS),
                   help="model size (default: gpt2 on a GPU, shakespeare-char on a CPU)")
    p.add_argument("--n_layer", type=int, default=None)
    p.add_argument("--n_head", type=int, default=None)
    p.add_argument("--n_embd", type=int, default=None)
    p.add_argument("--vocab_size", type=int, default=None, help="default: the preset's (50257 GPT-2, 65 shakespeare-char)")
    p.add_argument("--block_size", type=int, default=None, help="sequence length (default: the preset's, 1024 GPT-2, 256 shakespeare-char)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout of both models (nanoGPT's shakespeare-char uses 0.2)")
    p.add_argument("--batch_size", type=int, default=None, help="default 16 GPU, 8 CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", *sorted([*DTYPES, *DTYPE_ALIASES])],
                   help="compute dtype (autocast; weights stay fp32). auto: bfloat16 on a GPU that supports it (else float16), float32 elsewhere")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile our model for the train benchmark, and time compiled decoding beside eager in generate (default: on for CUDA, off for CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed iterations per repeat (default 20 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 5 GPU, 1 CPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved timed blocks per variant; the median is reported (default 5; every benchmark on "
                        "a CPU: 3)")
    p.add_argument("--tokenizer_text", default=None, metavar="FILE",
                   help="tokenizer: the UTF-8 text to encode (default: the bundled Tiny Shakespeare; the figures in "
                        "docs/benchmarks.md use WikiText-2's wiki.test.raw)")
    p.add_argument("--seq_lens", default=None,
                   help="attention sweep, comma-separated (default 128..4096 GPU, 128..1024 CPU, 128..512 for every "
                        "benchmark on a CPU)")
    p.add_argument("--attn_block_time", type=float, default=None,
                   help="attention: seconds per timed block, iterations calibrated to it (default 0.1 GPU, 0.25 CPU)")
    p.add_argument("--vs", default=None, choices=["hf", "peft"],
                   help="train: hf times transformers' GPT2LMHeadModel; classify: hf times GPT2ForSequenceClassification; "
                        "finetune: peft times transformers + HF peft LoRA")
    p.add_argument("--method", default="lora", choices=["lora", "adapter", "prompt", "full"], help="finetune: the method (default %(default)s)")
    p.add_argument("--lora_rank", type=int, default=8, help="finetune: LoRA rank (default %(default)s)")
    p.add_argument("--lora_alpha", type=float, default=16.0, help="finetune: LoRA alpha (default %(default)s)")
    p.add_argument("--lora_targets", default="c_attn", help="finetune: LoRA targets, comma-separated (default %(default)s)")
    p.add_argument("--adapter_size", type=int, default=64, help="finetune: adapter bottleneck (default %(default)s)")
    p.add_argument("--prompt_length", type=int, default=20, help="finetune: prompt tuning's virtual tokens (default %(default)s)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="train, finetune: time our step with gradient checkpointing beside the same step without it "
                        "(interleaved; time and peak-memory ratios); excludes --vs")
    p.add_argument("--log_interval", type=int, default=10,
                   help="monitor: the trainer's log_interval, whose steps pay the monitor's work (default %(default)s)")
    p.add_argument("--num_labels", type=int, default=4, help="classes of the classify benchmark (default %(default)s)")
    p.add_argument("--compile_mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode when compiling (default: torch's default); reduce-overhead adds CUDA graphs")
    p.add_argument("--hf_compile", action="store_true", help="torch.compile the transformers model too")
    p.add_argument("--hf_optim", default="plain", choices=["plain", "same"],
                   help="plain: torch.optim.AdamW(hf.parameters()) with library defaults; same: our "
                        "optimizer setup (groups, fused on CUDA and CPU), to separate optimizer from model speed")
    p.add_argument("--lr", type=float, default=6e-4, help="default %(default)s (same for both models)")
    p.add_argument("--weight_decay", type=float, default=0.1, help="default %(default)s (same for both models)")
    p.add_argument("--beta1", type=float, default=0.9, help="default %(default)s (same for both models)")
    p.add_argument("--beta2", type=float, default=0.95, help="default %(default)s (same for both models)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="default %(default)s (same for both models)")
    p.add_argument("--peak_tflops", type=float, default=None, help="override the peak used for MFU")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--profile", action="store_true", help="write torch.profiler traces of the train step")
    p.add_argument("--out_dir", default="out-bench", help="where plots and profiler traces go (default %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure with its unit as JSON")
    p.add_argument("--seed", type=int, default=1337, help="default %(default)s")
    p.add_argument("--init_from", default=None, metavar="NAME_OR_PATH",
                   help="time a real model (GPT-2 name, HF folder, run folder or .pt, nanoGPT ckpt.pt, llm.c .bin: as "
                        "train.py's init_from) instead of a randomly initialised one; its shape replaces --preset and "
                        "the size options")
    return p


def resolve(args) -> argparse.Namespace:
    """Fill the device-dependent defaults; validate."""
    unknown = [w for w in args.which if w not in BENCHMARKS + ("all",)]
    if unknown:
        raise NanoGPT2Error(f"unknown benchmark {unknown[0]!r}; pick from {', '.join(BENCHMARKS)} or all "
                            f"(none: all)")
    args.run_all = not args.which or "all" in args.which
    args.which = BENCHMARKS if args.run_all else tuple(dict.fromkeys(args.which))
    device = resolve_device(args.device or "auto")
    gpu = device.type == "cuda"
    args.device = device
    if args.threads:
        torch.set_num_threads(args.threads)

    dims = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                block_size=args.block_size)
    given_preset = args.preset
    preset = args.preset or ("gpt2" if gpu else "shakespeare-char")
    base = {"vocab_size": 50257, "block_size": 1024, **{**PRESETS, **BENCH_PRESETS}[preset]}
    overridden = [k for k, v in dims.items() if v is not None and v != base[k]]
    args.preset = preset + (f" ({', '.join(overridden)} overridden)" if overridden else "")
    model_kw = {k: (v if v is not None else base[k]) for k, v in dims.items()}
    args.block_size, args.vocab_size = model_kw["block_size"], model_kw["vocab_size"]
    args.batch_size = args.batch_size or (16 if gpu else 8)
    args.dtype = resolve_dtype(args.dtype, device)
    args.compile = gpu if args.compile is None else args.compile
    if args.gradient_checkpointing and args.vs:
        raise NanoGPT2Error(f"--gradient_checkpointing compares our step with and without checkpointing; drop --vs "
                            f"{args.vs} (run that comparison on its own)")
    if args.compile_mode and not args.compile:
        raise NanoGPT2Error(f"--compile_mode {args.compile_mode} needs --compile (compiling is off on a CPU by default)")
    args.steps = args.steps if args.steps is not None else (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    # every benchmark on a CPU: fewer repeats, a shorter attention sweep, decoding at batch 1 only (minutes, not 25)
    overview = args.overview = args.run_all and not gpu
    args.repeats = args.repeats if args.repeats is not None else (3 if overview else 5)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        raise NanoGPT2Error("--steps and --repeats must be >= 1 and --warmup >= 0")
    if args.seq_lens:
        try:
            args.seq_lens = [int(s) for s in args.seq_lens.split(",") if s.strip()]
        except ValueError:
            raise NanoGPT2Error(f"--seq_lens must be comma-separated integers, e.g. 128,256,512 (got {args.seq_lens!r})")
    else:
        args.seq_lens = [128, 256, 512, 1024, 2048, 4096] if gpu else [128, 256, 512] if overview else [128, 256, 512, 1024]
    try:
        args.model_config = GPTConfig(dropout=args.dropout, **model_kw)
    except ValueError as e:
        raise NanoGPT2Error(f"bad model size: {e}")
    args.init_state = None
    if args.init_from:
        _load_init_from(args, [k for k, v in dims.items() if v is not None and k != "block_size"] + (["--preset"] if given_preset else []),
                        dims["block_size"])
    if args.json:
        check_writable(Path(args.json))
    if args.tokenizer_text is not None:  # a missing or non-UTF-8 file is one line now, not a failure at the end
        read_text(args.tokenizer_text, "benchmark text")
    if gpu:
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 work, as nanoGPT does
    return args


def _load_init_from(args, clashing: list, requested_block) -> None:
    """--init_from: the model comes from the one loader (nanogpt2.loader), as in train.py; its shape and weights
    are used by the train and generate benchmarks (its own context, or a shorter --block_size: cropped)."""
    if clashing:
        raise NanoGPT2Error(f"--init_from sets the model's shape; drop {', '.join(clashing)}")
    from nanogpt2.loader import load_model

    model, info = load_model(args.init_from, dropout=args.dropout)
    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"--init_from {args.init_from}: bench.py times plain GPT models, not a {type(model).__name__}")
    if requested_block is not None and requested_block > model.config.block_size:
        raise NanoGPT2Error(f"--block_size {requested_block} is longer than the context of {args.init_from} "
                            f"({model.config.block_size}); leave it out or pick at most that")
    if requested_block is not None and requested_block < model.config.block_size:
        model.crop_block_size(requested_block)
    args.model_config = model.config
    args.block_size, args.vocab_size = model.config.block_size, model.config.vocab_size
    args.init_state = model.state_dict()
    args.preset = info["description"]


def new_model(args, **overrides) -> GPT:
    """A model of this run's shape from the one loader: random (seeded by the caller), or --init_from's weights."""
    from nanogpt2.loader import load_model

    model, _ = load_model("scratch", config=GPTConfig(**{**args.model_config.to_dict(), **overrides}))
    if args.init_state is not None:
        model.load_state_dict(args.init_state)
    return model


def check_writable(path: Path) -> None:
    """--json must be writable before the benchmarks run, not found out after them: its folder is created
    and a temporary file written (and removed) there."""
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(20, f"{path.parent} is not a folder") from None
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "the file is read-only")
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as e:
        raise NanoGPT2Error(f"--json {path}: cannot write there ({e.strerror or e}); pick a path in a writable "
                            f"folder") from None


# ----------------------------------------------------------------------------------------------------
# Measuring: synchronisation, interleaved timing, peak memory


def fig(value, unit):
    """One figure of the JSON output."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # JSON has no NaN
    return {"value": value, "unit": unit}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict, iters, repeats: int, device, cpu_times: dict = None) -> dict:
    """Seconds per call of each function: `repeats` timed blocks of `iters` calls each (an int, or a dict
    name -> int), the variants taking turns in A B B A order so that a drift in machine load hits all
    alike. Returns name -> list of wall-clock seconds per call, one per block. When `cpu_times` is a
    dict, it receives name -> list of process CPU seconds per call (all threads of this process), a
    figure that time spent descheduled by other processes does not inflate."""
    out = {name: [] for name in fns}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in fns})
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, n = fns[name], (iters[name] if isinstance(iters, dict) else iters)
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            sync(device)
            out[name].append((time.perf_counter() - t0) / n)
            if cpu_times is not None:
                cpu_times[name].append((time.process_time() - c0) / n)
    return out


def _cpu_peak_bytes(fn) -> int:
    """Peak of (bytes allocated - bytes freed) on the CPU allocator while `fn` runs, from the [memory]
    events torch.profiler records (profile_memory=True), replayed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    cur = peak = 0
    for _, nbytes in mem:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def peak_memory(fn, device):
    """(bytes, method): the most memory the call held at once above what was allocated before it."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated above the allocation before the call"
    if device.type == "cpu":
        try:
            return _cpu_peak_bytes(fn), "torch.profiler CPU allocator events: running peak of allocated-minus-freed bytes during the call"
        except Exception as e:  # a profiler without memory events: say so rather than guess
            return None, f"unavailable ({type(e).__name__}: {e})"
    return None, f"unavailable on {device.type}"


def device_info(device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return dict(type="cuda", name=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))), cuda=torch.version.cuda)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = dict(type=device.type, name=name, threads=torch.get_num_threads(), cores=os.cpu_count())
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]  # other processes' share
    return info


# ----------------------------------------------------------------------------------------------------
# Attention: fused SDPA (each backend) vs the reference path, one CausalSelfAttention layer


def _sdpa_variants(device):
    """(name, attn_impl, SDPBackend or None) for every variant to try on `device`."""
    from torch.nn.attention import SDPBackend

    variants = [("reference", "reference", None), ("sdpa", "sdpa", None),
                ("sdpa-flash", "sdpa", SDPBackend.FLASH_ATTENTION),
                ("sdpa-efficient", "sdpa", SDPBackend.EFFICIENT_ATTENTION)]
    if device.type == "cuda":
        variants.append(("sdpa-cudnn", "sdpa", SDPBackend.CUDNN_ATTENTION))
    variants.append(("sdpa-math", "sdpa", SDPBackend.MATH))
    return variants


def bench_attention(args) -> dict:
    from torch.nn.attention import sdpa_kernel

    device, cfg = args.device, args.model_config
    B, nh, C = args.batch_size, cfg.n_head, cfg.n_embd
    torch.manual_seed(args.seed)
    layer_cfg = GPTConfig(**{**cfg.to_dict(), "block_size": max(args.seq_lens), "dropout": 0.0})
    attn = CausalSelfAttention(layer_cfg, 0).to(device)
    params = list(attn.parameters())
    amp = lambda: autocast(device, args.dtype)  # noqa: E731
    elem = 4 if args.dtype == "float32" else 2
    target = args.attn_block_time or (0.1 if device.type == "cuda" else 0.25)  # seconds per timed block
    memory_method = None

    def make(impl, backend, x, mode):
        kernel = (lambda: sdpa_kernel(backend)) if backend is not None else contextlib.nullcontext

        def forward():
            layer_cfg.attn_impl = impl
            with torch.no_grad(), kernel(), amp():
                attn(x)

        def forward_backward():
            layer_cfg.attn_impl = impl
            x.grad = None
            for p in params:
                p.grad = None
            with kernel(), amp():
                y = attn(x)
            y.float().sum().backward()
        return forward if mode == "forward" else forward_backward

    # Which backends run here (a backend that cannot serve this device/dtype raises "No available kernel").
    variants, unavailable = [], {}
    x0 = torch.randn(B, args.seq_lens[0], C, device=device, requires_grad=True)
    for name, impl, backend in _sdpa_variants(device):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make(impl, backend, x0, "forward+backward")()
            variants.append((name, impl, backend))
        except RuntimeError as e:
            unavailable[name] = str(e).strip().splitlines()[0][:160]

    rows = []
    modes = ("forward", "forward+backward")

    def clear_grads(x):
        x.grad = None
        for p in params:
            p.grad = None

    for T in args.seq_lens:
        x = torch.randn(B, T, C, device=device, requires_grad=True)
        # Every (variant, mode) of this length is timed in the same interleaved rounds, each block sized to
        # about `target` seconds from one calibration call after a warm-up call.
        fns, iters, failed = {}, {}, {}
        for name, impl, backend in variants:
            for mode in modes:
                fn = make(impl, backend, x, mode)
                try:
                    fn()  # warm up (and check it fits)
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    one = time.perf_counter() - t0
                except torch.OutOfMemoryError:
                    failed[(name, mode)] = "out of memory"
                    torch.cuda.empty_cache()
                    continue
                except RuntimeError as e:  # e.g. a backend that serves short sequences but not this one
                    failed[(name, mode)] = "error: " + str(e).strip().splitlines()[0][:120]
                    continue
                fns[(name, mode)] = fn
                iters[(name, mode)] = max(1, min(1000, round(target / max(one, 1e-6))))
        times = interleaved_times(fns, iters, args.repeats, device)
        for name, _, _ in variants:
            for mode in modes:
                row = dict(seq_len=T, variant=name, mode=mode)
                if (name, mode) in failed:
                    row.update(status=failed[(name, mode)])
                else:
                    clear_grads(x)  # so that freeing the last call's gradients is not part of the measurement
                    mem, memory_method = peak_memory(fns[(name, mode)], device)
                    row.update(time=fig(1e3 * statistics.median(times[(name, mode)]), "ms"),
                               time_blocks_ms=[round(1e3 * t, 4) for t in times[(name, mode)]],
                               peak_memory=fig(None if mem is None else mem / MiB, "MiB"))
                rows.append(row)
        del x, fns
        if device.type == "cuda":
            torch.cuda.empty_cache()

    result = dict(
        what=("one nanogpt2 CausalSelfAttention layer (qkv projection, attention, output projection; the "
              "projections are the same in every variant), eager; forward under no_grad, forward+backward "
              "with input and weight gradients"),
        batch_size=B, n_head=nh, head_size=C // nh, n_embd=C, dtype=args.dtype, time_note=f"median over {args.repeats} interleaved blocks of about {target} s each (at least one call)",
        memory_method=memory_method,
        scores_matrix={str(T): fig(B * nh * T * T * elem / MiB, "MiB") for T in args.seq_lens},
        unavailable=unavailable, rows=rows,
        summary=_attention_summary(rows, args.seq_lens),
    )
    plot = _attention_plot(rows, args, Path(args.out_dir) / "attention.png")
    result["plot"] = plot
    return result


def _attention_summary(rows, seq_lens):
    """sdpa (default dispatch) against reference at each length: speedup and memory ratio."""
    index = {(r["seq_len"], r["variant"], r["mode"]): r for r in rows}
    out = []
    for T in seq_lens:
        for mode in ("forward", "forward+backward"):
            ref, fused = index.get((T, "reference", mode)), index.get((T, "sdpa", mode))
            if not ref or not fused or "time" not in ref or "time" not in fused:
                continue
            entry = dict(seq_len=T, mode=mode,
                         speedup=fig(ref["time"]["value"] / fused["time"]["value"], "x (reference ms / sdpa ms)"))
            rm, fm = ref["peak_memory"]["value"], fused["peak_memory"]["value"]
            if rm and fm:
                entry["memory_ratio"] = fig(fm / rm, "x (sdpa peak / reference peak)")
            out.append(entry)
    return out


def _attention_plot(rows, args, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not written: matplotlib is not installed (pip install matplotlib)"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_, axes = plt.subplots(1, 2, figsize=(11, 4))
    variants = sorted({r["variant"] for r in rows})
    for ax, key, label in ((axes[0], "time", "forward+backward time (ms)"), (axes[1], "peak_memory", "forward+backward peak memory (MiB)")):
        for v in variants:
            pts = [(r["seq_len"], r[key]["value"]) for r in rows
                   if r["variant"] == v and r["mode"] == "forward+backward" and key in r and r[key]["value"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig_.suptitle(f"attention layer, B={args.batch_size}, {args.model_config.n_head} heads, {args.dtype}, {device_info(args.device)['name']}")
    fig_.tight_layout()
    fig_.savefig(path, dpi=110)
    plt.close(fig_)
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Train: one full step (forward, backward, clip, AdamW step), ours vs transformers


def configure_optimizer(model, args):
    """Our AdamW, built as the training loop's default (`nanogpt2.optim.make_optimizer` of a RunConfig with the
    defaults eps 1e-8 and decay_pos_emb on): `param_groups` (weight decay on matrices, none on biases and
    LayerNorm gains) and `make_adamw` (fused on CUDA and CPU), so the step times the trainer's optimizer
    update. Returns (optimizer, source)."""
    groups = param_groups(model, args.weight_decay)
    return make_adamw(groups, args.lr, (args.beta1, args.beta2), device_type=args.device.type), "nanogpt2.optim.make_adamw"


def build_hf(args):
    """transformers' GPT2LMHeadModel with our config (sdpa attention, no KV cache in training), or
    (None, reason) when transformers is not installed or cannot express the config."""
    try:
        import transformers
        from transformers import AutoModelForCausalLM, GPT2Config
    except ImportError as e:
        return None, f"transformers is not installed ({e}); pip install transformers to compare"
    cfg = args.model_config
    if not cfg.bias:
        return None, "transformers' GPT-2 always has biases; --vs hf needs bias=True"
    transformers.logging.set_verbosity_error()
    hcfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.n_inner, activation_function=cfg.activation,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_epsilon, scale_attn_weights=cfg.scale_attn_weights,
        scale_attn_by_inverse_layer_idx=cfg.scale_attn_by_inverse_layer_idx,
        tie_word_embeddings=cfg.tie_word_embeddings, use_cache=False,
        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1,
    )
    model = AutoModelForCausalLM.from_config(hcfg, attn_implementation="sdpa").to(args.device)
    return model, f"transformers {transformers.__version__} GPT2LMHeadModel, attn_implementation={model.config._attn_implementation}"


def _make_train_step(loss_fn, model, optimizer, args):
    """The timed training step, one closure for our model and for transformers' (so both sides do the same
    work). It mirrors `OptimizerStep` (nanogpt2/trainer.py) with one micro-batch and one process, call
    for call: forward under `nanogpt2.runtime.autocast`, backward through a GradScaler that is enabled only for
    float16 (otherwise its calls pass straight through, as in the trainer), unscale, clip the global gradient
    norm at --grad_clip (not called at --grad_clip 0, where the trainer still computes the norm for its log),
    optimizer step, `zero_grad(set_to_none=True)`. Our optimizer is the trainer's too (`configure_optimizer`).

    It does not call the trainer because `OptimizerStep` works on a `Trainer`, built from a RunConfig
    around a prepared dataset, and it does more than the step: it draws the batch from the run's sampler,
    sets the scheduled learning rate, all-reduces the loss under DDP, and reads the loss and gradient norm
    back to the host every step (`.tolist()`, a device sync) to log them and skip non-finite steps. None of
    that is timed here: the batch is fixed and already on the device, the learning rate constant, and the
    device is synchronised around each timed block rather than after each step."""
    device = args.device
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "float16")
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with autocast(device, args.dtype):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # no-op unless float16: clip the true gradients
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        scaler.step(optimizer)  # optimizer.step(), skipped by an enabled scaler on inf/NaN gradients
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def _compiled_name(args) -> str:
    return "torch.compile" + (f", mode={args.compile_mode}" if args.compile_mode else "")


def _ckpt_note(args) -> str:
    return ", gradient checkpointing" if args.gradient_checkpointing else ""


def _plain_twin(args, make_model, x, y, ours: str):
    """--gradient_checkpointing: the other side, the same model built again (same seed, same method) without
    checkpointing, with an optimizer of its own; returns (its step, its info)."""
    torch.manual_seed(args.seed)
    twin = make_model().to(args.device)
    twin.train()
    optimizer, optim_source = configure_optimizer(twin, args)
    fwd = torch.compile(twin, mode=args.compile_mode) if args.compile else twin
    step = _make_train_step(lambda: fwd(x, y, return_logits=False)[1], twin, optimizer, args)
    return step, dict(model=ours.replace(_ckpt_note(args), ", no gradient checkpointing"),
                      optimizer=f"{optim_source}: {_describe_optimizer(optimizer)}", params=twin.param_counts()["total"],
                      trainable=sum(p.numel() for p in twin.parameters() if p.requires_grad))


def bench_train(args) -> dict:
    device, cfg = args.device, args.model_config
    B, T = args.batch_size, args.block_size
    torch.manual_seed(args.seed)
    model = new_model(args).to(device)
    model.train()
    model.gradient_checkpointing_enable(args.gradient_checkpointing)
    optimizer, optim_source = configure_optimizer(model, args)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)  # (B, T)
    y = torch.roll(x, -1, dims=1)  # (B, T) next-token targets (random data: speed does not depend on it)
    # return_logits=False: the trainer's loss (nanogpt2.trainer.default_loss_fn), in chunks, no (B, T, vocab) logits
    steps = {"ours": _make_train_step(lambda: fwd(x, y, return_logits=False)[1], model, optimizer, args)}
    info = {"ours": dict(model=f"nanogpt2 GPT ({_compiled_name(args) if args.compile else 'eager'}), "
                               f"attn_impl={cfg.attn_impl}, chunked loss (return_logits=False)" + _ckpt_note(args),
                         optimizer=f"{optim_source}: {_describe_optimizer(optimizer)}",
                         params=model.param_counts()["total"])}
    if args.gradient_checkpointing:
        steps["plain"], info["plain"] = _plain_twin(args, lambda: new_model(args), x, y, info["ours"]["model"])
        return _measure(steps, info, args, model.flops_per_token(T), B * T, other="plain")
    skipped = None

    if args.vs == "hf":
        hf, note = build_hf(args)
        if hf is None:
            skipped = note
            print(f"--vs hf skipped: {note}")
        else:
            hf.train()
            if args.hf_optim == "same":
                hf_opt, _ = configure_optimizer(hf, args)
            else:  # the plain loop a transformers user writes: library defaults for the implementation
                hf_opt = torch.optim.AdamW(hf.parameters(), lr=args.lr, betas=(args.beta1, args.beta2),
                                           weight_decay=args.weight_decay)
            hf_fwd = torch.compile(hf, mode=args.compile_mode) if args.hf_compile else hf
            # labels=x: transformers shifts the labels inside (the last position is ignored), so both sides
            # compute the loss over the same (B, T, vocab) logits.
            steps["hf"] = _make_train_step(lambda: hf_fwd(input_ids=x, labels=x).loss, hf, hf_opt, args)
            info["hf"] = dict(model=f"{note} ({_compiled_name(args) if args.hf_compile else 'eager'})",
                              optimizer=f"{args.hf_optim}: {_describe_optimizer(hf_opt)}",
                              params=sum(p.numel() for p in hf.parameters()))

    out = _measure(steps, info, args, model.flops_per_token(T), B * T, other="hf")
    if args.vs == "hf" and "hf" not in steps:
        out["hf"] = dict(skipped=skipped)
    if args.profile:
        out["profile"] = _profile_steps(steps, args)
    return out


def build_peft(args, hf):
    """transformers' model wrapped by HF peft with our LoRA or prompt-tuning settings (None, reason when peft is
    missing)."""
    try:
        import peft
    except ImportError as e:
        return None, f"peft is not installed ({e}); pip install peft to compare"
    if args.method == "prompt":
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.prompt_length)
        return peft.get_peft_model(hf, config), f"peft {peft.__version__} PromptTuningConfig(num_virtual_tokens={args.prompt_length})"
    config = peft.LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, fan_in_fan_out=True,
                             target_modules=args.lora_targets.split(","), bias="none")
    return peft.get_peft_model(hf, config), f"peft {peft.__version__} LoraConfig(r={args.lora_rank}, alpha={args.lora_alpha})"


def _finetune_model(args) -> GPT:
    """A new model of the run's shape with --method applied (LoRA, adapters, a prompt; full: as it is)."""
    from nanogpt2.peft import apply_adapters, apply_lora, apply_prompt

    model = new_model(args)
    if args.method == "lora":
        apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_targets.split(","))
    elif args.method == "adapter":
        apply_adapters(model, args.adapter_size)
    elif args.method == "prompt":
        apply_prompt(model, args.prompt_length)
    return model


def bench_finetune(args) -> dict:
    """A fine-tuning step of `--method` (LoRA, adapters, a prompt or all weights) on our GPT; `--vs peft` (LoRA,
    prompt) times transformers + peft with the same config, batch, dtype and optimizer (ours, fused AdamW over the
    trainable parameters), compiled when --compile, interleaved with ours."""
    device, cfg = args.device, args.model_config
    B, T = args.batch_size, args.block_size
    torch.manual_seed(args.seed)
    model = _finetune_model(args).to(device)
    T = min(T, model.context_length)  # real tokens a row: a prompt's virtual tokens fill the rest of the context
    model.train()
    model.gradient_checkpointing_enable(args.gradient_checkpointing)
    optimizer, optim_source = configure_optimizer(model, args)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)  # (B, T)
    y = torch.roll(x, -1, dims=1)  # (B, T)
    compiled = _compiled_name(args) if args.compile else "eager"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # return_logits=False: the trainer's loss, in chunks, no (B, T, vocab) logits
    steps = {"ours": _make_train_step(lambda: fwd(x, y, return_logits=False)[1], model, optimizer, args)}
    info = {"ours": dict(model=f"nanogpt2 GPT + method {args.method} ({compiled}), chunked loss (return_logits=False)"
                               + _ckpt_note(args), params=model.param_counts()["total"],
                         trainable=trainable, optimizer=f"{optim_source}: {_describe_optimizer(optimizer)}")}
    # Frozen weights need no weight gradient: 4N + 8LTC FLOPs per token instead of 6N + 12LTC (2/3 of training);
    # per real token, a prompt's virtual positions counted in.
    flops = model.flops_per_token(args.block_size) * (1.0 if args.method == "full" else 2 / 3) * args.block_size / T
    if args.gradient_checkpointing:
        steps["plain"], info["plain"] = _plain_twin(args, lambda: _finetune_model(args), x, y, info["ours"]["model"])
        out = _measure(steps, info, args, int(flops), B * T, other="plain")
        out["method"] = args.method
        return out
    skipped = None
    if args.vs == "peft":
        hf, note = (build_hf(args) if args.method in ("lora", "prompt")
                    else (None, "--vs peft compares LoRA and prompt tuning (--method lora | prompt)"))
        theirs, peft_note = build_peft(args, hf) if hf is not None else (None, note)
        if theirs is None:
            skipped = peft_note
            print(f"--vs peft skipped: {peft_note}")
        else:
            theirs.train()
            their_opt, _ = configure_optimizer(theirs, args)  # like for like: the same groups, fused AdamW
            their_fwd = torch.compile(theirs, mode=args.compile_mode) if args.compile else theirs
            steps["peft"] = _make_train_step(lambda: their_fwd(input_ids=x, labels=x).loss, theirs, their_opt, args)
            info["peft"] = dict(model=f"{note} + {peft_note} ({compiled})", params=sum(p.numel() for p in theirs.parameters()),
                                trainable=sum(p.numel() for p in theirs.parameters() if p.requires_grad),
                                optimizer=f"same: {_describe_optimizer(their_opt)}")
    out = _measure(steps, info, args, int(flops), B * T, other="peft")
    out["method"] = args.method
    if args.vs == "peft" and "peft" not in steps:
        out["peft"] = dict(skipped=skipped)
    return out


def _measure(steps: dict, info: dict, args, flops_tok: int, tokens_per_step: int, other: str) -> dict:
    """Warm up, then time the training steps `steps` (name -> step function; "ours" and maybe `other`) in
    interleaved rounds with a CPU matmul probe; per side ms/iter, tokens/s, MFU, step peak memory; and the
    ours/other ratios (of the medians, paired per round, in CPU time; peak memory)."""
    device = args.device
    # Warm up (compilation, allocator, first-touch); record the first losses as a sanity check.
    losses = {}
    for name, step in steps.items():
        for i in range(max(1, args.warmup)):
            loss = step()
            if i == 0:
                losses[name] = float(loss.detach())

    # On a CPU the peak is a matmul probe timed in the same interleaved rounds as the steps, so that the
    # peak and the steps see the same share of a machine other processes may be using.
    probe = None
    if device.type == "cpu" and not args.peak_tflops and not os.environ.get("NANOGPT2_PEAK_FLOPS"):
        probe = perf.MatmulProbe(args.dtype)
    timed = {**steps, **({"probe": probe} if probe is not None else {})}
    iters = {name: args.steps for name in steps}
    iters["probe"] = 5
    cpu_times = {}
    times = interleaved_times(timed, iters, args.repeats, device, cpu_times)

    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, f"--peak_tflops {args.peak_tflops}"
    elif probe is not None:
        rounds = [probe.flops / t for t in times["probe"]]
        peak = statistics.median(rounds)
        peak_source = (f"CPU {args.dtype} matmul probe, {peak / 1e9:.1f} GFLOP/s (median of {len(rounds)} rounds "
                       f"interleaved with the steps, {torch.get_num_threads()} threads)")
    else:
        peak, peak_source = perf.peak_flops(device, args.dtype)
    out = dict(tokens_per_step=tokens_per_step, flops_per_token=fig(flops_tok, "FLOP/token"),
               peak=fig(peak / 1e12, "TFLOP/s"), peak_source=peak_source)
    if probe is not None:
        out["cpu_probe"] = dict(
            what=f"{probe.n}x{probe.n}x{probe.n} matmul, 5 calls per round, one round beside each round of steps",
            dtype=args.dtype, threads=torch.get_num_threads(), flops=fig(peak / 1e9, "GFLOP/s"),
            rounds_gflops=[round(r / 1e9, 2) for r in rounds], best=fig(max(rounds) / 1e9, "GFLOP/s"))
    for name in steps:
        sec = statistics.median(times[name])
        tok_s = tokens_per_step / sec
        mem, method = peak_memory(steps[name], device)
        out[name] = dict(
            **info[name],
            ms_per_iter=fig(1e3 * sec, "ms"),
            ms_per_iter_blocks=[round(1e3 * t, 3) for t in times[name]],
            tokens_per_sec=fig(tok_s, "tokens/s"),
            mfu=fig(100 * perf.mfu(flops_tok, tok_s, peak), "%"),
            first_loss=fig(losses[name], "nats"),
            step_peak_memory=fig(None if mem is None else mem / MiB, "MiB"),
        )
        if device.type == "cpu":
            out[name]["cpu_ms_per_iter"] = fig(1e3 * statistics.median(cpu_times[name]), "CPU-ms (process time, all threads)")
        out["memory_method"] = method
    if other in steps:
        out["ratio_tokens_per_sec"] = fig(out["ours"]["tokens_per_sec"]["value"] / out[other]["tokens_per_sec"]["value"],
                                          f"x (ours / {other}, ratio of the medians)")
        mine, theirs = out["ours"]["step_peak_memory"]["value"], out[other]["step_peak_memory"]["value"]
        out["ratio_peak_memory"] = fig(mine / theirs if mine is not None and theirs else None,
                                       f"x (ours / {other} step peak memory)")
        # Each round times ours and hf back to back, so their ratio within a round is immune to load that
        # drifts between rounds; the median of these per-round ratios is the robust figure on a busy machine.
        paired = [h / o for o, h in zip(times["ours"], times[other])]
        out["ratio_paired"] = fig(statistics.median(paired), f"x (median over rounds of {other} ms / ours ms)")
        out["ratio_paired_rounds"] = [round(p, 3) for p in paired]
        if device.type == "cpu":
            # The work each side does, in CPU-seconds: robust to time spent descheduled on a busy machine.
            cpu_paired = [h / o for o, h in zip(cpu_times["ours"], cpu_times[other])]
            out["ratio_cpu_time"] = fig(statistics.median(cpu_paired), f"x (median over rounds of {other} CPU-s / ours CPU-s)")
            out["ratio_cpu_time_rounds"] = [round(p, 3) for p in cpu_paired]
    return out


def _describe_optimizer(opt) -> str:
    d = opt.defaults
    impl = "fused" if d.get("fused") else ("foreach" if d.get("foreach") else "torch default (foreach on CUDA, for-loop on CPU)")
    wds = sorted({g["weight_decay"] for g in opt.param_groups})
    return f"{type(opt).__name__} lr={d['lr']} betas={tuple(d['betas'])} weight_decay={wds} {impl}"


def _profile_steps(steps, args) -> dict:
    """torch.profiler traces (Chrome/Perfetto JSON) of `--steps` steps of each variant, plus the top ops."""
    from torch.profiler import ProfilerActivity, profile

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    sort_key = "self_device_time_total" if args.device.type == "cuda" else "self_cpu_time_total"
    traces = {}
    for name, step in steps.items():
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
            sync(args.device)
        path = out_dir / f"trace_train_{name}.json"
        prof.export_chrome_trace(str(path))
        traces[name] = str(path)
        print(f"\nprofile of {args.steps} {name} step(s), top ops (trace: {path}):")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=15))
    return traces


# ----------------------------------------------------------------------------------------------------
# Monitor: what the trainer's layer-wise gradient norms and peak memory cost per step


def bench_monitor(args) -> dict:
    """The monitor's work on a logged step (GradNormGroups.norms(), their read-back, peak_memory()) timed beside the
    training step of the same model in interleaved rounds; per step it costs that work / --log_interval. The work
    runs on a twin model whose gradients stay (the step zeroes its own)."""
    from nanogpt2.monitor import GradNormGroups, peak_memory

    device, cfg = args.device, args.model_config
    B, T = args.batch_size, args.block_size
    if args.log_interval < 1:
        raise NanoGPT2Error("--log_interval must be >= 1")
    torch.manual_seed(args.seed)
    model = new_model(args).to(device)
    model.train()
    optimizer, _ = configure_optimizer(model, args)
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)  # (B, T)
    y = torch.roll(x, -1, dims=1)  # (B, T)
    step = _make_train_step(lambda: model(x, y, return_logits=False)[1], model, optimizer, args)
    twin = new_model(args).to(device)
    twin.train()
    twin(x, y, return_logits=False)[1].backward()  # gradients for the monitor to read
    groups = GradNormGroups(twin)

    def monitor():
        norms = groups.norms()
        torch.stack(list(norms.values())).tolist()  # the trainer reads them back with the step's loss
        return peak_memory(device)

    for _ in range(max(1, args.warmup)):
        step(), monitor()
    iters = {"step": args.steps, "monitor": 10 * args.steps}
    times = interleaved_times({"step": step, "monitor": monitor}, iters, args.repeats, device)
    step_s, monitor_s = statistics.median(times["step"]), statistics.median(times["monitor"])
    return dict(parts=len(groups.parts), log_interval=args.log_interval, tokens_per_step=B * T,
                step_ms=fig(1e3 * step_s, "ms"), monitor_ms=fig(1e3 * monitor_s, "ms per logged step"),
                cost_per_step=fig(100 * monitor_s / args.log_interval / step_s, "% of a step"),
                step_ms_blocks=[round(1e3 * t, 3) for t in times["step"]],
                monitor_ms_blocks=[round(1e3 * t, 4) for t in times["monitor"]])


# ----------------------------------------------------------------------------------------------------
# Generate and tokenizer: the benchmarks their modules provide


def _external(benchmark, formatter, call) -> dict:
    """Run another module's benchmark function through `call`; its figures, and its table when the
    module's `format_benchmark` can print them. A failure is reported (and turned into a failing exit
    status by main), not hidden."""
    source = f"{benchmark.__module__}.{benchmark.__name__}"
    try:
        figures = call(benchmark)
    except Exception as e:
        return dict(status=f"failed: {type(e).__name__}: {e}", source=source)
    out = dict(status="ok", source=source, figures=_jsonable(figures))
    try:
        out["table"] = formatter(figures)
    except Exception as e:  # the figures are what matters; a formatting slip must not lose them
        out["table"] = f"(format_benchmark failed: {type(e).__name__}: {e})"
    return out


# ----------------------------------------------------------------------------------------------------
# Classification: a training step of the sequence classifier, ours vs transformers'


def classify_batch(args, pad_id: int) -> dict:
    """A seeded batch of the run's size: rows of random lengths between a quarter and all of block_size,
    right-padded with pad_id (as nanogpt2.classify pads), random labels."""
    g = torch.Generator().manual_seed(args.seed)
    B, T = args.batch_size, args.block_size
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)  # (B,)
    lengths[0] = T  # the longest row sets the padded width, as in a real batch
    mask = (torch.arange(T)[None] < lengths[:, None]).long()  # (B, T) 1 real, 0 padding
    idx = torch.randint(0, pad_id, (B, T), generator=g).masked_fill(mask == 0, pad_id)  # (B, T)
    labels = torch.randint(0, args.num_labels, (B,), generator=g)  # (B,)
    return {"idx": idx.to(args.device), "attention_mask": mask.to(args.device), "labels": labels.to(args.device),
            "mean_length": float(lengths.float().mean())}


def bench_classify(args) -> dict:
    """examples/s of a classification training step (forward, loss on the last real token, backward, clip,
    AdamW), ours and with --vs hf transformers' GPT2ForSequenceClassification with the same weights, batch and
    padding, timed interleaved as the train benchmark does."""
    from nanogpt2.heads import GPTForSequenceClassification, classification_loss

    if args.num_labels < 2:
        raise NanoGPT2Error(f"--num_labels must be >= 2, not {args.num_labels}")
    device, pad = args.device, args.model_config.vocab_size - 1  # GPT-2's habit: pad = eos, the last id
    torch.manual_seed(args.seed)
    model = GPTForSequenceClassification.from_gpt(new_model(args), args.num_labels, pad_token_id=pad,
                                                  classifier_dropout=args.dropout).to(device).train()
    batch = classify_batch(args, pad)
    optimizer, optim_source = configure_optimizer(model, args)
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    steps = {"ours": _make_train_step(
        lambda: classification_loss(fwd(batch["idx"], batch["attention_mask"])[0], batch["labels"]), model, optimizer, args)}
    info = {"ours": dict(model=f"nanogpt2 GPTForSequenceClassification ({_compiled_name(args) if args.compile else 'eager'})",
                         optimizer=f"{optim_source}: {_describe_optimizer(optimizer)}")}
    skipped = None
    if args.vs == "hf":
        hf, note = _build_hf_classifier(args, model)
        if hf is None:
            skipped = note
            print(f"--vs hf skipped: {note}")
        else:
            hf_opt = (configure_optimizer(hf, args)[0] if args.hf_optim == "same" else torch.optim.AdamW(
                hf.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), weight_decay=args.weight_decay))
            hf_fwd = torch.compile(hf, mode=args.compile_mode) if args.hf_compile else hf
            steps["hf"] = _make_train_step(lambda: hf_fwd(input_ids=batch["idx"], attention_mask=batch["attention_mask"],
                                                          labels=batch["labels"]).loss, hf, hf_opt, args)
            info["hf"] = dict(model=f"{note} ({_compiled_name(args) if args.hf_compile else 'eager'})",
                              optimizer=f"{args.hf_optim}: {_describe_optimizer(hf_opt)}")
    losses = {name: [float(step().detach()) for _ in range(max(1, args.warmup))][0] for name, step in steps.items()}
    cpu_times = {}
    times = interleaved_times(steps, args.steps, args.repeats, device, cpu_times)
    out = dict(examples_per_step=args.batch_size, padded_length=args.block_size, mean_length=batch["mean_length"],
               num_labels=args.num_labels)
    for name in steps:
        sec = statistics.median(times[name])
        out[name] = dict(**info[name], ms_per_iter=fig(1e3 * sec, "ms"),
                         ms_per_iter_blocks=[round(1e3 * t, 3) for t in times[name]],
                         examples_per_sec=fig(args.batch_size / sec, "examples/s"), first_loss=fig(losses[name], "nats"))
        if device.type == "cpu":
            out[name]["cpu_ms_per_iter"] = fig(1e3 * statistics.median(cpu_times[name]), "CPU-ms (process time, all threads)")
    if "hf" in steps:
        out["ratio_examples_per_sec"] = fig(statistics.median(times["hf"]) / statistics.median(times["ours"]),
                                            "x (ours / transformers, ratio of the medians)")
        out["ratio_paired"] = fig(statistics.median([h / o for o, h in zip(times["ours"], times["hf"])]),
                                  "x (median over rounds of hf ms / ours ms)")
        if device.type == "cpu":
            out["ratio_cpu_time"] = fig(statistics.median([h / o for o, h in zip(cpu_times["ours"], cpu_times["hf"])]),
                                        "x (median over rounds of hf CPU-s / ours CPU-s)")
    elif args.vs == "hf":
        out["hf"] = dict(skipped=skipped)
    return out


def _build_hf_classifier(args, model):
    """transformers' GPT2ForSequenceClassification with `model`'s weights (through our HF export), sdpa attention,
    or (None, reason)."""
    try:
        import transformers
    except ImportError as e:
        return None, f"transformers is not installed ({e}); pip install transformers to compare"
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        hf = transformers.GPT2ForSequenceClassification.from_pretrained(
            tmp, attn_implementation="sdpa", use_cache=False, resid_pdrop=args.dropout, embd_pdrop=args.dropout,
            attn_pdrop=args.dropout)
    return hf.to(args.device).train(), (f"transformers {transformers.__version__} GPT2ForSequenceClassification, "
                                        f"attn_implementation={hf.config._attn_implementation}")


def bench_generate(args) -> dict:
    """Decode speed with and without the KV cache (and transformers' generate, when installed) of a
    randomly initialised model of this run's size (or --init_from's), fp32 weights (autocast with --dtype)."""
    from nanogpt2.benchmarks import decode

    def call(benchmark_decode):
        torch.manual_seed(args.seed)
        model = new_model(args, dropout=0.0)
        prompt_len = min(16, args.block_size // 2)
        new_tokens = min(32, args.block_size - prompt_len)  # prompt + new tokens must fit the context
        return benchmark_decode(model=model, device=str(args.device), dtype=args.dtype, seed=args.seed,
                                repeats=args.repeats, prompt_len=prompt_len, new_tokens=new_tokens, quiet=True,
                                compile=args.compile, compile_mode=args.compile_mode,
                                batch_sizes=(1,) if args.overview else (1, 8))
    return _external(decode.benchmark_decode, decode.format_benchmark, call)


def bench_tokenizer(args) -> dict:
    """GPT-2 BPE encode throughput of the pure-Python backend and of tiktoken (MB/s) on --tokenizer_text."""
    from nanogpt2.benchmarks import tokenizer

    return _external(tokenizer.benchmark_tokenizer, tokenizer.format_benchmark,
                     lambda benchmark: benchmark(args.tokenizer_text, repeats=args.repeats))


# ----------------------------------------------------------------------------------------------------
# Instruct: the response-only loss with and without the padding mask, dynamic vs static padding


def _instruct_rows(args):
    """batch_size rows like Alpaca's examples, random tokens: lengths from block_size / 8 to 5/8 of it, the first
    40 % of each a prompt (labels -100). Returns (rows, their lengths)."""
    from nanogpt2.model import IGNORE_INDEX

    T, V = args.block_size, args.model_config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    lengths = (T // 8 + torch.randint(0, T // 2 + 1, (args.batch_size,), generator=g)).tolist()
    rows = []
    for n in lengths:
        ids = torch.randint(0, V - 1, (n,), generator=g).tolist()
        rows.append((ids, [IGNORE_INDEX] * (2 * n // 5) + ids[2 * n // 5:]))
    return rows, lengths


def bench_instruct(args) -> dict:
    """The instruct task's step without the optimizer: forward + backward of the response-only loss. Variants on
    the same rows, interleaved: `no mask` (nanogpt2.instruct's loss_fn: trimmed to the longest row, SDPA's causal
    path), `with mask` (the same rows with the padding mask, an explicit attention bias), `static padding` (every
    row padded to block_size, no mask)."""
    from nanogpt2.instruct import collate, device_batch, make_loss_fn
    from nanogpt2.losses import masked_mean_loss

    device, T = args.device, args.block_size
    torch.manual_seed(args.seed)
    model = new_model(args).to(device).train()
    rows, lengths = _instruct_rows(args)
    pad = args.model_config.vocab_size - 1
    batch = collate(rows, pad)  # (B, longest) each
    dynamic = device_batch(batch, device)
    mask = batch["attention_mask"].to(device)  # (B, longest)
    width = T - batch["input_ids"].shape[1]
    static_ids = F.pad(batch["input_ids"], (0, width), value=pad).to(device)  # (B, T)
    static_labels = F.pad(batch["labels"], (0, width), value=-100).to(device)  # (B, T)
    loss_fn = make_loss_fn()

    def step(loss_of):
        def run():
            model.zero_grad(set_to_none=True)
            with autocast(device, args.dtype):
                loss = loss_of()
            loss.backward()
            return loss
        return run

    def masked():  # the same positions as loss_fn's, with the padding mask
        logits = model(dynamic["input_ids"][:, :-1], attention_mask=mask[:, :-1])[0]  # (B, T-1, V)
        return masked_mean_loss(logits, dynamic["labels"][:, 1:])[0]

    variants = {"no mask": step(lambda: loss_fn(None, model, dynamic)[0]), "with mask": step(masked),
                "static padding": step(lambda: masked_mean_loss(model(static_ids[:, :-1])[0], static_labels[:, 1:])[0])}
    losses = {name: float(fn().detach()) for name, fn in variants.items()}  # also the warmup
    for _ in range(args.warmup):
        for fn in variants.values():
            fn()
    times = interleaved_times(variants, args.steps, args.repeats, device)
    real = sum(lengths)
    out = dict(rows=args.batch_size, lengths=lengths, real_tokens=real, longest=max(lengths), block_size=T,
               loss_difference_mask=fig(abs(losses["no mask"] - losses["with mask"]), "nats"),
               loss_difference_static=fig(abs(losses["no mask"] - losses["static padding"]), "nats"))
    for name in variants:
        sec = statistics.median(times[name])
        out[name] = dict(ms_per_iter=fig(1e3 * sec, "ms"), ms_per_iter_blocks=[round(1e3 * t, 3) for t in times[name]],
                         real_tokens_per_sec=fig(real / sec, "tokens/s"), loss=fig(losses[name], "nats"))
    return out


# Distillation: what the teacher costs a training step, what the student gains at decoding


def bench_distill(args) -> dict:
    """The teacher is this run's model (random, or --init_from's), the student its default half
    (`nanogpt2.distill.default_layers`: gpt2 -> blocks 0,2,4,7,9,11). Timed like train (the same step closure,
    interleaved blocks): the distillation step (teacher forward under no_grad, student forward, kd_loss with
    its defaults, backward, clip, AdamW) and the student's plain LM step; then greedy KV-cache decoding of each
    model, side by side (`nanogpt2.distill.decode_speeds`)."""
    from nanogpt2.distill import decode_speeds, default_layers, init_student_from_teacher, kd_loss

    device, B, T = args.device, args.batch_size, args.block_size
    torch.manual_seed(args.seed)
    teacher = new_model(args, dropout=0.0).to(device).eval().requires_grad_(False)
    layers = default_layers(teacher.config.n_layer)
    student = init_student_from_teacher(teacher, layers).to(device).train()
    optimizer, _ = configure_optimizer(student, args)
    x = torch.randint(0, teacher.config.vocab_size, (B, T), device=device)  # (B, T)
    y = torch.roll(x, -1, dims=1)  # (B, T) next-token targets

    def distill_loss():
        with torch.no_grad():
            t_logits = teacher(x)[0]  # (B, T, V)
        return kd_loss(student(x)[0], t_logits, y)

    steps = {"distill": _make_train_step(distill_loss, student, optimizer, args),
             "plain": _make_train_step(lambda: student(x, y)[1], student, optimizer, args)}
    for step in steps.values():
        for _ in range(max(1, args.warmup)):
            step()
    times = {name: statistics.median(t) for name, t in interleaved_times(steps, args.steps, args.repeats, device).items()}
    prompt_len = min(16, T // 2)
    speeds = decode_speeds({"student": student.eval(), "teacher": teacher}, x[:1, :prompt_len],
                           min(32, T - prompt_len), device, lambda: autocast(device, args.dtype), rounds=args.repeats)
    return dict(
        layers=layers, tokens_per_step=B * T,
        parameters={name: m.param_counts()["total"] for name, m in (("student", student), ("teacher", teacher))},
        blocks={"student": len(layers), "teacher": teacher.config.n_layer},
        **{name: dict(ms_per_iter=fig(1e3 * sec, "ms"), tokens_per_sec=fig(B * T / sec, "tokens/s"))
           for name, sec in times.items()},
        step_cost=fig(times["distill"] / times["plain"], "x (distillation step ms / plain student step ms)"),
        decode={name: fig(tps, "tokens/s") for name, tps in speeds.items()},
        decode_speedup=fig(speeds["student"] / speeds["teacher"], "x (student / teacher decode tokens/s)"))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)


# ----------------------------------------------------------------------------------------------------
# Report: tables on stdout


def _v(f, fmt="{:.1f}"):
    return "n/a" if f is None or f.get("value") is None else fmt.format(f["value"])


def print_header(report):
    d, c = report["device"], report["config"]
    print(f"nanogpt2 bench  {report['date']}  torch {report['torch']}  device: {d['name']} ({d['type']}"
          + (f", {d['threads']} threads" if "threads" in d else "")
          + (f", load average {d['load_average_at_start'][0]:.1f} on {d['cores']} cores" if "load_average_at_start" in d else "")
          + ")")
    m = c["model"]
    print(f"model {c['preset']}: n_layer={m['n_layer']} n_head={m['n_head']} n_embd={m['n_embd']} vocab={m['vocab_size']}"
          f"  batch={c['batch_size']} block={c['block_size']} dtype={c['dtype']} compile={c['compile']}"
          f"  steps={c['steps']} warmup={c['warmup']} repeats={c['repeats']}")


def print_attention(res):
    print(f"\n== attention: {res['what']}")
    print(f"   B={res['batch_size']} n_head={res['n_head']} head_size={res['head_size']} dtype={res['dtype']}; "
          f"peak memory: {res['memory_method']}")
    for name, why in res["unavailable"].items():
        print(f"   {name}: not available here ({why})")
    index = {(r["seq_len"], r["variant"], r["mode"]): r for r in res["rows"]}
    variants = list(dict.fromkeys(r["variant"] for r in res["rows"]))
    print(f"{'T':>6} {'variant':<16} {'fwd ms':>10} {'fwd MiB':>10} {'fwd+bwd ms':>11} {'fwd+bwd MiB':>12}   T×T scores")
    for T in sorted({r["seq_len"] for r in res["rows"]}):
        for i, v in enumerate(variants):
            cells = []
            for mode in ("forward", "forward+backward"):
                r = index.get((T, v, mode), {})
                if r.get("status"):  # the full reason is in the JSON
                    cells += ["OOM" if r["status"] == "out of memory" else "error", ""]
                else:
                    cells += [_v(r.get("time"), "{:.2f}"), _v(r.get("peak_memory"))]
            scores = _v(res["scores_matrix"][str(T)], "{:.0f} MiB") if i == 0 else ""
            print(f"{T if i == 0 else '':>6} {v:<16} {cells[0]:>10} {cells[1]:>10} {cells[2]:>11} {cells[3]:>12}   {scores}")
    for s in res["summary"]:
        mem = f", peak memory {s['memory_ratio']['value']:.2f}x of reference" if "memory_ratio" in s else ""
        print(f"   T={s['seq_len']:<5} {s['mode']:<17} sdpa is {s['speedup']['value']:.2f}x as fast as reference{mem}")
    print(f"   plot: {res['plot']}")


def print_train(res, args, other="hf", title="train"):
    print(f"\n== {title}: forward + backward + clip + AdamW step, {res['tokens_per_step']} tokens/step "
          f"(median of {args.repeats} interleaved blocks of {args.steps} steps, {args.warmup} warmup steps excluded)")
    names = [n for n in ("ours", other) if n in res and "ms_per_iter" in res[n]]
    print(f"{'':<22}" + "".join(f"{n:>14}" for n in names) + (f"   ours/{other}" if len(names) == 2 else ""))
    rows = [("ms/iter", "ms_per_iter", "{:.1f}"), ("CPU-ms/iter", "cpu_ms_per_iter", "{:.1f}"),
            ("tokens/s", "tokens_per_sec", "{:.0f}"), ("MFU %", "mfu", "{:.2f}"),
            ("step peak mem MiB", "step_peak_memory", "{:.0f}"), ("first loss", "first_loss", "{:.3f}")]
    for label, key, fmt in rows:
        if not all(key in res[n] for n in names):
            continue
        line = f"{label:<22}" + "".join(f"{_v(res[n][key], fmt):>14}" for n in names)
        if len(names) == 2 and key == "tokens_per_sec":
            line += f"   {res['ratio_tokens_per_sec']['value']:.2f}x"
        print(line)
    if res.get("ratio_peak_memory", {}).get("value") is not None:
        print(f"   ours/{other} step peak memory: {res['ratio_peak_memory']['value']:.2f}x")
    if len(names) == 2:
        print(f"   ours/{other} tokens/s: {res['ratio_tokens_per_sec']['value']:.2f}x (ratio of medians), "
              f"{res['ratio_paired']['value']:.2f}x (median of per-round paired ratios: "
              f"{', '.join(f'{p:.2f}' for p in res['ratio_paired_rounds'])})")
        if "ratio_cpu_time" in res:
            print(f"   ours/{other} in process CPU time: {res['ratio_cpu_time']['value']:.2f}x (median of per-round ratios: "
                  f"{', '.join(f'{p:.2f}' for p in res['ratio_cpu_time_rounds'])})")
    for n in names:
        print(f"   {n}: {res[n]['model']}; {res[n]['optimizer']}")
    if other in res and "skipped" in res[other]:
        print(f"   {other}: skipped ({res[other]['skipped']})")
    flops_how = "6N + 12·L·T·C" if title == "train" or res.get("method") == "full" else "2/3 of 6N + 12·L·T·C: no weight gradients for frozen weights"
    print(f"   FLOPs/token {res['flops_per_token']['value']:,} ({flops_how}); peak {_v(res['peak'], '{:.3f}')} TFLOP/s "
          f"from {res['peak_source']}")
    print(f"   step peak memory: {res['memory_method']}")


def print_instruct(res, args):
    print(f"\n== instruct: forward + backward of the response-only loss, {res['rows']} rows of {res['real_tokens']} real "
          f"tokens (longest {res['longest']}, block {res['block_size']}; median of {args.repeats} interleaved blocks)")
    base = res["no mask"]["ms_per_iter"]["value"]
    for name in ("no mask", "with mask", "static padding"):
        r = res[name]
        print(f"   {name:<16} {_v(r['ms_per_iter'], '{:.2f}'):>9} ms   {_v(r['real_tokens_per_sec'], '{:.0f}'):>9} real tokens/s"
              f"   {r['ms_per_iter']['value'] / base:.2f}x the time of no mask")
    print(f"   loss no mask vs with mask: |diff| {res['loss_difference_mask']['value']:.2e} nats; vs static padding: "
          f"{res['loss_difference_static']['value']:.2e}")


def print_distill(res):
    p, b = res["parameters"], res["blocks"]
    print(f"\n== distill: teacher {b['teacher']} blocks ({p['teacher']:,} parameters) -> student {b['student']} blocks "
          f"{res['layers']} ({p['student']:,}), {res['tokens_per_step']} tokens/step")
    print(f"{'':<24}{'ms/iter':>10}{'tokens/s':>12}")
    for name, label in (("plain", "student step"), ("distill", "distillation step")):
        print(f"{label:<24}{_v(res[name]['ms_per_iter']):>10}{_v(res[name]['tokens_per_sec'], '{:.0f}'):>12}")
    print(f"   the distillation step takes {_v(res['step_cost'], '{:.2f}')}x the plain step (the teacher's forward "
          f"and the KD loss); decoding: student {_v(res['decode']['student'], '{:.0f}')} tokens/s, teacher "
          f"{_v(res['decode']['teacher'], '{:.0f}')} tokens/s ({_v(res['decode_speedup'], '{:.2f}')}x)")


def print_monitor(res, args):
    print(f"\n== monitor: gradient norms of {res['parts']} parts + peak memory, every {res['log_interval']} steps "
          f"(median of {args.repeats} interleaved blocks)")
    print(f"   training step {_v(res['step_ms'])} ms ({res['tokens_per_step']} tokens); the monitor's work "
          f"{_v(res['monitor_ms'], '{:.3f}')} ms per logged step: {_v(res['cost_per_step'], '{:.3f}')} % of a step at "
          f"log_interval {res['log_interval']}")


def print_classify(res, args):
    print(f"\n== classify: training step of the sequence classifier, {res['examples_per_step']} rows padded to "
          f"{res['padded_length']} (mean real length {res['mean_length']:.0f}), {res['num_labels']} labels "
          f"(median of {args.repeats} interleaved blocks of {args.steps} steps)")
    names = [n for n in ("ours", "hf") if n in res and "ms_per_iter" in res[n]]
    print(f"{'':<22}" + "".join(f"{n:>14}" for n in names))
    for label, key, fmt in (("ms/iter", "ms_per_iter", "{:.1f}"), ("CPU-ms/iter", "cpu_ms_per_iter", "{:.1f}"),
                            ("examples/s", "examples_per_sec", "{:.1f}"), ("first loss", "first_loss", "{:.4f}")):
        if all(key in res[n] for n in names):
            print(f"{label:<22}" + "".join(f"{_v(res[n][key], fmt):>14}" for n in names))
    if len(names) == 2:
        cpu = f", {res['ratio_cpu_time']['value']:.2f}x in process CPU time" if "ratio_cpu_time" in res else ""
        print(f"   ours/hf examples/s: {res['ratio_examples_per_sec']['value']:.2f}x (ratio of medians), "
              f"{res['ratio_paired']['value']:.2f}x (median of paired rounds){cpu}")
    for n in names:
        print(f"   {n}: {res[n]['model']}; {res[n]['optimizer']}")
    if "hf" in res and "skipped" in res["hf"]:
        print(f"   hf: skipped ({res['hf']['skipped']})")


def print_external(name, res):
    print(f"\n== {name}: {res['status']}" + (f" ({res['source']})" if "source" in res else ""))
    if res.get("table"):
        print(res["table"])
    else:
        for k, v in (res.get("figures") or {}).items():
            print(f"   {k}: {v}")


# ----------------------------------------------------------------------------------------------------
# Running them, the summary


def run_benchmark(name: str, args) -> dict:
    """One sub-benchmark: its results, its table printed."""
    if name == "attention":
        res = bench_attention(args)
        print_attention(res)
    elif name == "train":
        res = bench_train(args)
        print_train(res, args, other="plain" if args.gradient_checkpointing else "hf")
    elif name == "finetune":
        res = bench_finetune(args)
        print_train(res, args, other="plain" if args.gradient_checkpointing else "peft",
                    title=f"finetune ({res['method']})")
    elif name == "classify":
        res = bench_classify(args)
        print_classify(res, args)
    elif name == "instruct":
        res = bench_instruct(args)
        print_instruct(res, args)
    elif name == "distill":
        res = bench_distill(args)
        print_distill(res)
    elif name == "monitor":
        res = bench_monitor(args)
        print_monitor(res, args)
    else:
        res = bench_generate(args) if name == "generate" else bench_tokenizer(args)
        print_external(name, res)
    return res


def all_notice(args) -> str:
    """What a bare `python bench.py` (or `all`) runs, and how long it takes here."""
    where = "a GPU" if args.device.type == "cuda" else "a CPU"
    took = ALL_MINUTES["cuda" if args.device.type == "cuda" else "cpu"]
    return (f"running every benchmark ({', '.join(BENCHMARKS)}) sized for {where}: model {args.preset}, batch "
            f"{args.batch_size} x {args.block_size} tokens, {args.repeats} repeats of {args.steps} steps; {took} "
            f"(docs/benchmarks.md); name one or more to run only those, e.g. python bench.py train")


def _ratio(res: dict, key: str, other: str) -> str:
    value = (res.get(key) or {}).get("value")
    return f", {value:.2f}x {other}" if value is not None else ""


def headline(name: str, res: dict) -> str:
    """The figure of one benchmark that the summary shows (the tables above hold the rest)."""
    if str(res.get("status", "ok")) != "ok":
        return res["status"]
    if name == "attention":
        top = [s for s in res["summary"] if s["mode"] == "forward+backward"][-1]
        return f"sdpa {top['speedup']['value']:.2f}x as fast as reference (T={top['seq_len']}, forward+backward)"
    if name in ("train", "finetune"):
        ours = res["ours"]
        other = "plain" if "plain" in res else "peft" if name == "finetune" else "hf"
        return (f"{ours['tokens_per_sec']['value']:,.0f} tokens/s, MFU {ours['mfu']['value']:.2f} %"
                + _ratio(res, "ratio_tokens_per_sec", other))
    if name == "classify":
        return f"{res['ours']['examples_per_sec']['value']:,.1f} examples/s" + _ratio(res, "ratio_examples_per_sec", "hf")
    if name == "generate":
        row = res["figures"]["rows"][0]
        return (f"{row['cache_tok_s']:,.0f} tokens/s with the KV cache (batch {row['batch']}), "
                f"{row['cache_vs_no_cache']:.2f}x without it")
    if name == "tokenizer":
        f = res["figures"]
        return f"tiktoken {f['tiktoken_warm_mbps']:.2f} MB/s, python {f['python_warm_mbps']:.2f} MB/s"
    if name == "instruct":
        base = res["no mask"]["ms_per_iter"]["value"]
        return (f"the padding mask takes {res['with mask']['ms_per_iter']['value'] / base:.2f}x the time, static "
                f"padding {res['static padding']['ms_per_iter']['value'] / base:.2f}x")
    if name == "monitor":
        return (f"the monitor's work {res['cost_per_step']['value']:.3f} % of a training step at log_interval "
                f"{res['log_interval']}")
    return (f"distillation step {res['step_cost']['value']:.2f}x the plain step; the student decodes "
            f"{res['decode_speedup']['value']:.2f}x as fast as the teacher")


def print_summary(report: dict) -> None:
    """One row per benchmark that ran: its headline figure and the time it took."""
    if not report["results"]:
        return
    print(f"\n== summary ({report['device'].get('name', report['device'].get('type'))})")
    print(f"{'benchmark':<11}{'wall s':>8}{'CPU s':>8}   result")
    for name, res in report["results"].items():
        t = report["timings"][name]
        try:
            line = headline(name, res)
        except (KeyError, TypeError, IndexError, ZeroDivisionError):
            line = "see its table above"
        print(f"{name:<11}{t['wall']['value']:>8.1f}{t['cpu']['value']:>8.1f}   {line}")
    total = sum(t["wall"]["value"] for t in report["timings"].values())
    print(f"{'total':<11}{total:>8.1f}")


# ----------------------------------------------------------------------------------------------------
# Main


def main(argv=None):
    args = resolve(build_parser().parse_args(argv))
    cfg = args.model_config
    report = dict(
        device=device_info(args.device), torch=torch.__version__, python=platform.python_version(),
        date=datetime.date.today().isoformat(),
        command="python bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        config=dict(preset=args.preset, model=cfg.to_dict(), batch_size=args.batch_size, block_size=args.block_size,
                    dtype=args.dtype, compile=args.compile, compile_mode=args.compile_mode, device=str(args.device), steps=args.steps,
                    warmup=args.warmup, repeats=args.repeats, seq_lens=args.seq_lens, vs=args.vs,
                    hf_optim=args.hf_optim, hf_compile=args.hf_compile, lr=args.lr, betas=[args.beta1, args.beta2],
                    weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed, num_labels=args.num_labels,
                    tokenizer_text=args.tokenizer_text, gradient_checkpointing=args.gradient_checkpointing),
        results={}, timings={},
    )
    print_header(report)
    load = report["device"].get("load_average_at_start")
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load[0]:.1f} on {os.cpu_count()} cores: other processes compete for the CPU, so the "
              f"timings are noisy (the paired ratios are the robust figures; --threads 1 avoids thread stalls)")
    if args.run_all:
        print(f"note: {all_notice(args)}")
    for name in args.which:
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_benchmark(name, args)
        report["results"][name] = res
        report["timings"][name] = dict(wall=fig(time.perf_counter() - t0, "s"), cpu=fig(time.process_time() - c0, "s"))
        sys.stdout.flush()
    print_summary(report)
    if "load_average_at_start" in report["device"]:
        report["device"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=1) + "\n")
        except OSError as e:
            raise NanoGPT2Error(f"could not write --json {path} ({e.strerror or e}); the tables above hold the "
                                f"figures") from None
        print(f"\nwrote {path}")
    failed = [f"{name} ({res['status']})" for name, res in report["results"].items()
              if str(res.get("status", "")).startswith("failed")]
    if failed:
        raise NanoGPT2Error(f"benchmark failed: {'; '.join(failed)}")
    return report


if __name__ == "__main__":
    run_cli(main)
