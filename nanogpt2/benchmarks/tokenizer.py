"""
Tokenizer benchmark: encode throughput (MB of UTF-8 per second) of the hand-written BPE backend and of
tiktoken, one text on one core (cold and warm pre-token cache) and the batch encoders (serial, and on worker
processes / threads), both backends in one process and their ids checked equal.

    python -m nanogpt2.benchmarks.tokenizer                                  # the bundled Tiny Shakespeare
    python -m nanogpt2.benchmarks.tokenizer --bench-text ../shared/data/wikitext-2-raw/wiki.test.raw --repeats 5
    python bench.py tokenizer --tokenizer_text ../shared/data/wikitext-2-raw/wiki.test.raw
    python -c "from nanogpt2.benchmarks.tokenizer import benchmark_tokenizer as b, format_benchmark as f; print(f(b()))"

The text is any UTF-8 file (`text_path` / `--bench-text`; a missing or non-UTF-8 file is one `error:` line);
the default is the Tiny Shakespeare copy the package ships (nanogpt2/assets/tinyshakespeare.txt, 1.1 MB).
The figures in docs/tokenizer.md and docs/benchmarks.md are on WikiText-2 raw test (1.29 MB): pass its
`wiki.test.raw`, e.g. from the `wikitext-2-raw-v1.zip` that `python -m nanogpt2.data wikitext2` downloads
into the cache, or a checkout's ../shared/data/wikitext-2-raw/. Docs: docs/tokenizer.md#benchmark.
"""

import os
import sys
import time
from pathlib import Path

from nanogpt2.data import DATASETS
from nanogpt2.errors import NanoGPT2Error, read_text
from nanogpt2.tokenizer import ASSETS, BPETokenizer, TiktokenTokenizer, resolve_num_workers, load_tiktoken_ranks

DEFAULT_TEXT = ASSETS / DATASETS["shakespeare"].bundled  # the bundled Tiny Shakespeare (the data registry's copy)

# ---------------------------------------------------------------------------------------------------------
# Timing: wall and CPU seconds, the batch encoder's worker processes included
# ---------------------------------------------------------------------------------------------------------


def _timed(fn, pool=None):
    """(wall seconds, CPU seconds of this process and of the pool's workers, result of fn())"""
    w0, c0, p0 = time.perf_counter(), time.process_time(), _workers_cpu(pool)
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return wall, cpu + (_workers_cpu(pool) - p0 if pool is not None else 0.0), out


def _workers_cpu(pool) -> float:
    """CPU seconds used so far by a process pool's workers (from /proc on Linux; 0.0 where unknown)."""
    if pool is None:
        return 0.0
    total = 0.0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return total


# ---------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------


def benchmark_tokenizer(text_path=None, repeats=5, num_workers=None) -> dict:
    """Encode throughput (MB of UTF-8 per second) of the python backend and of tiktoken, in this process.

    text_path: a UTF-8 text file (default: the bundled Tiny Shakespeare, DEFAULT_TEXT).
    - One text, one core: "cold" is the first pass of a fresh tokenizer (empty pre-token cache), "warm"
      the best of `repeats` later passes, python and tiktoken taking turns so that both see the same
      machine load. `*_cpu_mbps` divide by CPU seconds instead of wall seconds: on a shared machine those
      barely move with the load, wall figures do.
    - Batch: the text's lines as a list, serially (num_workers=1) and with `num_workers` workers (default
      one per core), warm. "cores busy" is the CPU seconds of the parent and its workers over the wall
      seconds (2.0 = both cores of a 2-core machine all the time); "cpu cost" is that CPU over the serial
      call's CPU (1.0 = parallelism costs nothing extra).
    Returns a dict of figures; `format_benchmark` prints them.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise NanoGPT2Error(f"repeats must be a positive int (timed passes per figure), got {repeats!r}")
    text_path = DEFAULT_TEXT if text_path is None else text_path
    text = read_text(text_path, "benchmark text")
    mb = len(text.encode("utf-8")) / 1e6
    ranks = load_tiktoken_ranks()  # the bundled GPT-2 ranks, read and checked once, outside the timings
    res = {"text": str(text_path), "mb": round(mb, 3), "cpus": resolve_num_workers(None),
           "num_workers": resolve_num_workers(num_workers), "date": time.strftime("%Y-%m-%d"),
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    try:
        tk = TiktokenTokenizer(ranks)
    except NanoGPT2Error:
        tk = None
        res["tiktoken"] = "not installed"
    _one_text(res, text, mb, ranks, tk, repeats)
    _batch(res, text.splitlines(keepends=True), mb, ranks, tk, repeats)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}


def _one_text(res, text, mb, ranks, tk, repeats):
    """One text, one core: cold then warm, python and tiktoken taking turns."""
    py = BPETokenizer(ranks)
    wall, cpu, ids = _timed(lambda: py.encode_ordinary(text))
    res.update(n_tokens=len(ids), python_cold_mbps=mb / wall, python_cold_cpu_mbps=mb / cpu)
    if tk is not None:
        wall, cpu, tk_ids = _timed(lambda: tk.encode_ordinary(text))
        res.update(tiktoken_first_mbps=mb / wall, ids_equal=ids == tk_ids)
    py_runs, tk_runs = [], []
    for _ in range(repeats):
        py_runs.append(_timed(lambda: py.encode_ordinary(text))[:2])
        if tk is not None:
            tk_runs.append(_timed(lambda: tk.encode_ordinary(text))[:2])
    res["python_warm_mbps"] = mb / min(w for w, _ in py_runs)
    res["python_warm_cpu_mbps"] = mb / min(c for _, c in py_runs)
    if tk is not None:
        res["tiktoken_warm_mbps"] = mb / min(w for w, _ in tk_runs)
        res["tiktoken_warm_cpu_mbps"] = mb / min(c for _, c in tk_runs)
        res["ratio_warm"] = res["tiktoken_warm_mbps"] / res["python_warm_mbps"]
        res["ratio_warm_cpu"] = res["tiktoken_warm_cpu_mbps"] / res["python_warm_cpu_mbps"]


def _batch(res, lines, mb, ranks, tk, repeats):
    """The batch encoders on the text's lines: serial, then parallel, warm."""
    workers = res["num_workers"]

    def batch(prefix, tok, pool_of=lambda: None):
        serial = [_timed(lambda: tok.encode_batch(lines, 1)) for _ in range(repeats)]
        out = tok.encode_batch(lines, workers)  # starts the workers, warms their caches
        par = [_timed(lambda: tok.encode_batch(lines, workers), pool_of()) for _ in range(repeats)]
        res[f"{prefix}_batch_serial_mbps"] = mb / min(w for w, _, _ in serial)
        res[f"{prefix}_batch_mbps"] = mb / min(w for w, _, _ in par)
        res[f"{prefix}_batch_cores_busy"] = sum(c for _, c, _ in par) / sum(w for w, _, _ in par)
        res[f"{prefix}_batch_cpu_cost"] = sum(c for _, c, _ in par) / sum(c for _, c, _ in serial)
        return out

    py_batch = BPETokenizer(ranks)
    # the python backend's worker processes (BPETokenizer._pool: (num_workers, executor, finalizer)), for their CPU
    batch_ids = batch("python", py_batch, lambda: py_batch._pool[1] if py_batch._pool else None)
    py_batch.close()
    if tk is not None:
        tk_batch_ids = batch("tiktoken", tk)
        res["ids_equal"] = res["ids_equal"] and batch_ids == tk_batch_ids == [tk.encode_ordinary(t) for t in lines]


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------


def format_benchmark(res: dict) -> str:
    """A small text table of benchmark_tokenizer's figures."""
    rows = [f"tokenizer benchmark, {res['date']}: {res['text']} ({res['mb']} MB, {res.get('n_tokens')} tokens); "
            f"{res['cpus']} CPU(s), {res['num_workers']} batch workers, load average {res['load_avg_1min']}",
            f"  {'':<44} {'MB/s':>7} {'MB/cpu-s':>9}"]
    for key, label in [
        ("python_cold", "python backend, one text, cold cache"),
        ("python_warm", "python backend, one text, warm cache"),
        ("tiktoken_first", "tiktoken, one text, first call"),
        ("tiktoken_warm", "tiktoken, one text, warm"),
        ("python_batch_serial", "python encode_batch(lines, 1)"),
        ("python_batch", f"python encode_batch(lines, {res['num_workers']}), processes"),
        ("tiktoken_batch_serial", "tiktoken encode_batch(lines, 1)"),
        ("tiktoken_batch", f"tiktoken encode_batch(lines, {res['num_workers']}), threads"),
    ]:
        if f"{key}_mbps" in res:
            cpu = res.get(f"{key}_cpu_mbps")
            extra = ""
            if f"{key}_cores_busy" in res:
                extra = f"   cores busy {res[key + '_cores_busy']:.2f}, cpu cost {res[key + '_cpu_cost']:.2f}x serial"
            rows.append(f"  {label:<44} {res[key + '_mbps']:7.2f} {cpu if cpu is not None else '':>9}{extra}")
    if "ratio_warm" in res:
        rows.append(f"  tiktoken / python, warm: {res['ratio_warm']:.2f}x wall, {res['ratio_warm_cpu']:.2f}x CPU; "
                    f"same ids: {res['ids_equal']}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m nanogpt2.benchmarks.tokenizer",
                                description="GPT-2 BPE encode throughput: the python backend against tiktoken.")
    p.add_argument("--bench-text", default=None, metavar="FILE",
                   help="UTF-8 text file to encode (default: the bundled Tiny Shakespeare; the documented "
                        "figures use WikiText-2's wiki.test.raw)")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed passes per figure, the best is kept (default 5)")
    args = p.parse_args(argv)
    print(format_benchmark(benchmark_tokenizer(args.bench_text, repeats=args.repeats)))


if __name__ == "__main__":
    from nanogpt2.errors import run_cli

    run_cli(main, sys.argv[1:])
