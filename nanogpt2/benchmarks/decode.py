"""
Decode benchmark: tokens/s of `nanogpt2.generate.generate` with the KV cache, without it, compiled (static
cache), and of transformers' `generate` on the same weights (greedy, same tokens checked).

    python bench.py generate --preset gpt2 --threads 1
    python -c "from nanogpt2.benchmarks.decode import benchmark_decode as b, format_benchmark as f; print(f(b(threads=1)))"

`transformers` is imported lazily by `benchmark_decode(compare_hf=True)`, never by the package at import time.
"""

import platform
import tempfile
import time
from typing import Optional, Sequence

import torch

from nanogpt2.generate import generate
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.runtime import autocast


def benchmark_decode(
    model=None,
    preset: str = "gpt2",
    batch_sizes: Sequence[int] = (1, 8),
    prompt_len: int = 16,
    new_tokens: int = 32,
    repeats: int = 3,
    no_cache: bool = True,
    compare_hf: bool = True,
    device: str = "cpu",
    dtype: str = "float32",
    threads: Optional[int] = None,
    seed: int = 0,
    quiet: bool = True,
    compile: bool = False,
    compile_mode: Optional[str] = None,
) -> dict:
    """Decode speed (tokens/s) of `generate` with and without the KV cache, and of transformers'
    `generate` on the same weights, greedy, `new_tokens` new tokens after a `prompt_len` prompt. Weights
    stay fp32; `dtype` "bfloat16"/"float16" runs both under autocast. `threads` sets torch's CPU threads
    for the run (None: leave as is). `compile`: also time the cache path through `torch.compile(model)`
    (the fixed-shape StaticKVCache: prefill and step compile once, in the warm-up), in `compile_mode`
    (torch.compile's mode: None/"default", "reduce-overhead" for CUDA graphs, "max-autotune").

    `model`: a GPT, or None for a randomly initialised one shaped like `preset` (124M for "gpt2").
    The timings include the prefill; each figure is the best of `repeats` runs, and ours and transformers'
    runs alternate so background load hits both alike. transformers' model is loaded from our weights
    through `convert.save_pretrained` (a temp folder) and its output is checked to match ours.
    Returns {"device", "threads", "model", "prompt_len", "new_tokens", "rows": [{batch, cache_tok_s,
    no_cache_tok_s, hf_tok_s, cache_vs_hf, cache_vs_no_cache, same_tokens}], "notes": [...]}.
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    notes = []
    try:
        torch.manual_seed(seed)
        desc = "custom model"
        if model is None:
            model = GPT(GPTConfig.from_preset(preset))
            desc = f"{preset}-shaped, random weights"
        else:
            desc = "given model"

        model = model.to(device).eval()
        n_params = model.param_counts()["total"]
        compiled = torch.compile(model, mode=compile_mode) if compile else None

        hf = _hf_twin(model, device, notes) if compare_hf else None

        def amp():
            return autocast(device, str(dtype).replace("torch.", ""))

        rows = []
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for B in batch_sizes:
            prompt = torch.randint(0, model.config.vocab_size, (B, prompt_len), generator=gen).to(device)
            row = _decode_row(model, compiled, hf, prompt, new_tokens, no_cache, repeats, amp, device)
            rows.append(row)
            if not quiet:
                print(format_benchmark({"rows": [row]}, header=False), flush=True)
        return {
            "device": device if device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "model": f"{desc}, {n_params / 1e6:.1f}M parameters, fp32 weights, {dtype} compute",
            "prompt_len": prompt_len,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "rows": rows,
            "notes": notes,
        }
    finally:
        torch.set_num_threads(old_threads)


def _decode_row(model, compiled, hf, prompt, new_tokens: int, no_cache: bool, repeats: int, amp, device: str) -> dict:
    """One batch size's row: tokens/s of each path and whether their greedy tokens agree."""
    B = prompt.size(0)
    runs = {
        "cache": lambda: generate(model, prompt, new_tokens, greedy=True),
    }
    if compiled is not None:
        runs["compiled"] = lambda: generate(compiled, prompt, new_tokens, greedy=True)
    if no_cache:
        runs["no_cache"] = lambda: generate(model, prompt, new_tokens, greedy=True, use_cache=False)
    if hf is not None:
        def run_hf():
            with torch.inference_mode():
                return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                   do_sample=False)
        runs["hf"] = run_hf
    best, outs = _best_of(runs, repeats, amp, device)
    row = {"batch": B}
    for k in runs:
        row[f"{k}_tok_s"] = B * new_tokens / best[k]
    if "compiled" in runs:
        row["same_tokens_compiled"] = bool(torch.equal(outs["cache"], outs["compiled"]))
    if "hf" in runs:
        row["cache_vs_hf"] = row["cache_tok_s"] / row["hf_tok_s"]
        if "compiled" in runs:
            row["compiled_vs_hf"] = row["compiled_tok_s"] / row["hf_tok_s"]
        row["same_tokens"] = bool(torch.equal(outs["cache"], outs["hf"]))
    if "no_cache" in runs:
        row["cache_vs_no_cache"] = row["cache_tok_s"] / row["no_cache_tok_s"]
        row["same_tokens_no_cache"] = bool(torch.equal(outs["cache"], outs["no_cache"]))
    return row


def _hf_twin(model, device: str, notes: list):
    """transformers' GPT2LMHeadModel with our weights (through save_pretrained, a temp folder), greedy without
    an eos; None (and a note) when transformers is not installed."""
    try:
        import transformers
        from transformers import GPT2LMHeadModel
    except ImportError:
        notes.append("transformers is not installed: no comparison with its generate")
        return None
    from nanogpt2.convert import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa").to(device).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    notes.append(f"transformers {transformers.__version__} GPT2LMHeadModel, sdpa attention, generate(do_sample=False)")
    return hf


def _best_of(runs: dict, repeats: int, amp, device: str) -> tuple:
    """({name: best seconds of `repeats`}, {name: its last output}) after one warm-up call each (allocator,
    first-call overheads); the runs alternate, so background load hits them alike."""
    outs = {}
    for k, fn in runs.items():
        with amp():
            outs[k] = fn()
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            with amp():
                outs[k] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, outs


def format_benchmark(res: dict, header: bool = True) -> str:
    """A small text table of benchmark_decode's rows."""
    lines = []
    if header:
        lines.append(f"decode benchmark: {res.get('model')}, {res.get('device')}, {res.get('threads')} threads, "
                     f"prompt {res.get('prompt_len')}, {res.get('new_tokens')} new tokens, best of {res.get('repeats')}")
        lines.append(f"{'batch':>5} {'cache tok/s':>12} {'no-cache tok/s':>15} {'HF tok/s':>9} {'cache/HF':>9} {'cache/no-cache':>15}"
                     + (f" {'compiled tok/s':>15} {'compiled/HF':>12}" if any("compiled_tok_s" in r for r in res["rows"]) else ""))
    for r in res["rows"]:
        def f(key, width, prec):
            return f"{r[key]:{width}.{prec}f}" if key in r else "-".rjust(width)
        lines.append(f"{r['batch']:>5} {f('cache_tok_s', 12, 1)} {f('no_cache_tok_s', 15, 1)} {f('hf_tok_s', 9, 1)} "
                     f"{f('cache_vs_hf', 9, 2)} {f('cache_vs_no_cache', 15, 2)}"
                     + (f" {f('compiled_tok_s', 15, 1)} {f('compiled_vs_hf', 12, 2)}" if "compiled_tok_s" in r else ""))
    return "\n".join(lines)
