"""
Tests of bench.py and nanogpt2/perf.py: the JSON a tiny run writes, the FLOPs/token formula against a hand
computation, the `--vs hf` comparison (and its skip when transformers is absent), the attention memory
measurement, the peak table, the tokenizer benchmark module (nanogpt2/benchmarks/tokenizer.py) and its command
line. No speed is asserted here: speed goals live in docs/benchmarks.md.

    python -m pytest -q tests/test_bench.py
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, oracle
from nanogpt2.errors import NanoGPT2Error

SHAKESPEARE = ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt"
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--vocab_size", "256",
        "--block_size", "32", "--batch_size", "2", "--device", "cpu", "--threads", "1"]

# ----------------------------------------------------------------------------------------------------
# Helpers


def run_bench(args, tmp_path, prelude=None, timeout=300):
    """Run bench.py in a fresh interpreter (optionally after `prelude` code); return (proc, json or None)."""
    out = tmp_path / "out.json"
    argv = ["bench.py", *args, "--json", str(out), "--out_dir", str(tmp_path / "bench")]
    if prelude is None:
        cmd = [sys.executable, *argv]
    else:
        code = (f"{prelude}\nimport runpy, sys\nsys.argv = {argv!r}\nsys.path.insert(0, {str(ROOT)!r})\n"
                "runpy.run_path('bench.py', run_name='__main__')")
        cmd = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NANOGPT2_PEAK_FLOPS", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout}\n{proc.stderr}"
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def hand_params(V, C, L, block):
    """GPT-2 parameter count written out from the layer shapes (weights and biases), tied lm_head."""
    wte = V * C
    wpe = block * C
    ln = C + C  # gain and bias
    c_attn = C * 3 * C + 3 * C
    attn_proj = C * C + C
    c_fc = C * 4 * C + 4 * C
    mlp_proj = 4 * C * C + C
    per_layer = ln + c_attn + attn_proj + ln + c_fc + mlp_proj
    ln_f = C + C
    return wte, wpe, wte + wpe + L * per_layer + ln_f


def hand_flops_per_token(V, C, L, T, block):
    """6 N (N without the position table: it is a lookup, not a matmul) + 12 L T C (attention)."""
    wte, wpe, total = hand_params(V, C, L, block)
    return 6 * (total - wpe) + 12 * L * T * C


def value(f):
    assert set(f) == {"value", "unit"} and isinstance(f["unit"], str) and f["unit"], f
    return f["value"]


# ----------------------------------------------------------------------------------------------------
# FLOPs per token


def test_flops_per_token_gpt2_by_hand():
    from nanogpt2.model import GPT, GPTConfig

    with torch.device("meta"):  # no memory, no init cost
        model = GPT(GPTConfig.from_preset("gpt2"))
    # Written out for GPT-2 124M: V=50257, C=768, L=12, block=1024.
    wte = 50257 * 768                                    # 38,597,376
    per_layer = (2 * 768                                 # ln_1
                 + 768 * 2304 + 2304                     # c_attn
                 + 768 * 768 + 768                       # attn.c_proj
                 + 2 * 768                               # ln_2
                 + 768 * 3072 + 3072                     # mlp.c_fc
                 + 3072 * 768 + 768)                     # mlp.c_proj   = 7,087,872
    n = wte + 12 * per_layer + 2 * 768                   # + ln_f; no wpe = 123,653,376
    assert per_layer == 7_087_872 and n == 123_653_376
    assert model.param_counts()["total"] == n + 1024 * 768 == 124_439_808
    expected = 6 * n + 12 * 12 * 1024 * 768             # 741,920,256 + 113,246,208
    assert expected == 855_166_464
    assert model.flops_per_token(1024) == expected
    assert model.flops_per_token(256) == 6 * n + 12 * 12 * 256 * 768
    assert hand_flops_per_token(50257, 768, 12, 1024, 1024) == expected  # the helper the JSON test uses


# ----------------------------------------------------------------------------------------------------
# bench.py train


def test_train_tiny_writes_valid_json(tmp_path):
    proc, report = run_bench(["train", *TINY, "--steps", "2", "--warmup", "1", "--repeats", "2"], tmp_path)
    assert "tokens/s" in proc.stdout and "MFU" in proc.stdout  # the human table
    assert report["torch"] == torch.__version__
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert len(report["date"]) == 10
    cfg = report["config"]
    assert (cfg["batch_size"], cfg["block_size"], cfg["steps"], cfg["warmup"]) == (2, 32, 2, 1)
    assert cfg["model"]["n_layer"] == 2 and cfg["model"]["n_embd"] == 64

    train = report["results"]["train"]
    ours = train["ours"]
    ms, tok_s, mfu_pct = value(ours["ms_per_iter"]), value(ours["tokens_per_sec"]), value(ours["mfu"])
    assert ms > 0 and tok_s > 0 and 0 < mfu_pct < 100
    assert len(ours["ms_per_iter_blocks"]) == 2
    assert tok_s == pytest.approx(2 * 32 / (ms / 1e3), rel=1e-6)
    # FLOPs/token in the report = the hand computation for this tiny config (T = block = 32).
    flops = value(train["flops_per_token"])
    assert flops == hand_flops_per_token(256, 64, 2, 32, 32)
    peak = value(train["peak"]) * 1e12
    assert peak > 0 and "probe" in train["peak_source"]
    assert value(train["cpu_probe"]["flops"]) == pytest.approx(peak / 1e9)
    assert mfu_pct == pytest.approx(100 * flops * tok_s / peak, rel=1e-6)
    # A freshly initialised model predicts about uniformly: loss near ln(vocab).
    assert abs(value(ours["first_loss"]) - math.log(256)) < 0.5
    assert value(ours["step_peak_memory"]) > 0
    assert value(ours["cpu_ms_per_iter"]) > 0
    assert report["device"]["threads"] == 1  # --threads 1
    assert "hf" not in train  # not asked for


def test_vs_hf_gives_ratio(tmp_path):
    oracle("transformers")
    proc, report = run_bench(["train", *TINY, "--steps", "1", "--warmup", "1", "--repeats", "2", "--vs", "hf"], tmp_path)
    train = report["results"]["train"]
    ours, hf = train["ours"], train["hf"]
    assert "GPT2LMHeadModel" in hf["model"] and "sdpa" in hf["model"]
    assert hf["params"] == ours["params"]  # the same model on both sides
    assert value(hf["tokens_per_sec"]) > 0
    ratio = value(train["ratio_tokens_per_sec"])
    assert ratio == pytest.approx(value(ours["tokens_per_sec"]) / value(hf["tokens_per_sec"]))
    assert abs(value(hf["first_loss"]) - math.log(256)) < 0.5
    rounds = train["ratio_paired_rounds"]
    assert len(rounds) == 2 and value(train["ratio_paired"]) == pytest.approx(sum(rounds) / 2, abs=1e-3)
    assert value(train["ratio_cpu_time"]) > 0
    assert "ours/hf" in proc.stdout


def test_vs_hf_skipped_without_transformers(tmp_path):
    # `sys.modules[name] = None` makes `import transformers` raise ImportError, as when it is not installed.
    proc, report = run_bench(["train", *TINY, "--steps", "1", "--warmup", "0", "--repeats", "1", "--vs", "hf"],
                             tmp_path, prelude="import sys; sys.modules['transformers'] = None")
    assert "--vs hf skipped" in proc.stdout and "transformers is not installed" in proc.stdout
    train = report["results"]["train"]
    assert "transformers is not installed" in train["hf"]["skipped"]
    assert value(train["ours"]["tokens_per_sec"]) > 0
    assert "ratio_tokens_per_sec" not in train


def test_finetune_lora_vs_peft_gives_both_ratios(tmp_path):
    oracle("transformers")
    oracle("peft")
    proc, report = run_bench(["finetune", *TINY, "--steps", "1", "--warmup", "1", "--repeats", "2", "--vs", "peft",
                              "--lora_rank", "4", "--lora_targets", "c_attn,c_fc"], tmp_path)
    res = report["results"]["finetune"]
    ours, theirs = res["ours"], res["peft"]
    assert "peft" in theirs["model"] and "r=4" in theirs["model"]
    assert ours["trainable"] == theirs["trainable"] == 2 * 4 * ((64 + 192) + (64 + 256))  # 2 layers, c_attn + c_fc
    assert ours["params"] == theirs["params"]
    assert value(res["ratio_tokens_per_sec"]) == pytest.approx(value(ours["tokens_per_sec"]) / value(theirs["tokens_per_sec"]))
    assert value(res["ratio_peak_memory"]) == pytest.approx(value(ours["step_peak_memory"]) / value(theirs["step_peak_memory"]))
    assert "fused" in theirs["optimizer"] and "fused" in ours["optimizer"]  # like for like: the same optimizer
    assert "ours/peft" in proc.stdout


def test_finetune_prompt_vs_peft_trains_the_same_prompt_on_rows_that_fill_the_context(tmp_path):
    oracle("transformers")
    oracle("peft")
    proc, report = run_bench(["finetune", *TINY, "--steps", "1", "--warmup", "1", "--repeats", "2", "--vs", "peft",
                              "--method", "prompt", "--prompt_length", "5"], tmp_path)
    res = report["results"]["finetune"]
    ours, theirs = res["ours"], res["peft"]
    assert res["method"] == "prompt" and "PromptTuningConfig(num_virtual_tokens=5)" in theirs["model"]
    assert ours["trainable"] == theirs["trainable"] == 5 * 64 and ours["params"] == theirs["params"]
    assert value(ours["first_loss"]) == pytest.approx(value(theirs["first_loss"]), rel=0.05)  # both near log(256)
    assert "ours/peft" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# bench.py attention


def test_attention_sweep_and_memory(tmp_path):
    proc, report = run_bench(["attention", "--device", "cpu", "--threads", "1", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                              "--batch_size", "1", "--seq_lens", "64,256", "--repeats", "1", "--attn_block_time", "0.01"], tmp_path)
    res = report["results"]["attention"]
    rows = {(r["seq_len"], r["variant"], r["mode"]): r for r in res["rows"]}
    for T in (64, 256):
        for variant in ("reference", "sdpa", "sdpa-math"):
            for mode in ("forward", "forward+backward"):
                assert value(rows[(T, variant, mode)]["time"]) > 0
    assert "sdpa-efficient" in res["unavailable"]  # no memory-efficient kernel on a CPU
    # The reference path materialises the (B, nh, T, T) fp32 scores: its measured peak must hold them.
    scores = 1 * 2 * 256 * 256 * 4 / 2 ** 20
    assert value(res["scores_matrix"]["256"]) == pytest.approx(scores)
    ref = value(rows[(256, "reference", "forward")]["peak_memory"])
    fused = value(rows[(256, "sdpa", "forward")]["peak_memory"])
    assert ref >= scores
    assert fused < ref
    assert {(s["seq_len"], s["mode"]) for s in res["summary"]} == {(64, "forward"), (64, "forward+backward"),
                                                                  (256, "forward"), (256, "forward+backward")}
    assert "sdpa is" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# Other sub-benchmarks, errors, the peak table


def test_generate_and_tokenizer_sub_benchmarks(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    proc, report = run_bench(["generate", "tokenizer", *TINY, "--repeats", "1", "--tokenizer_text", str(text)], tmp_path)
    gen, tok = (report["results"][k] for k in ("generate", "tokenizer"))
    assert gen["status"] == "ok" and gen["source"] == "nanogpt2.benchmarks.decode.benchmark_decode"
    for row in gen["figures"]["rows"]:
        assert row["cache_tok_s"] > 0 and row["no_cache_tok_s"] > 0
        assert row["same_tokens"] is not False  # transformers' generate gave our tokens
    assert tok["status"] == "ok" and tok["source"] == "nanogpt2.benchmarks.tokenizer.benchmark_tokenizer"
    assert tok["figures"]["text"] == str(text) and report["config"]["tokenizer_text"] == str(text)
    assert tok["figures"]["ids_equal"] is True and "tiktoken" in tok["table"]
    # the summary at the end: one row per benchmark that ran, its headline figure from the report, its times
    rows = proc.stdout[proc.stdout.index("== summary"):].splitlines()
    gen_row = next(r for r in rows if r.startswith("generate "))
    assert f"{gen['figures']['rows'][0]['cache_tok_s']:,.0f} tokens/s with the KV cache (batch 1)" in gen_row
    tok_row = next(r for r in rows if r.startswith("tokenizer "))
    assert f"tiktoken {tok['figures']['tiktoken_warm_mbps']:.2f} MB/s" in tok_row
    wall, cpu = (report["timings"]["tokenizer"][k]["value"] for k in ("wall", "cpu"))
    assert tok_row.split()[1:3] == [f"{wall:.1f}", f"{cpu:.1f}"] and wall > 0 and cpu > 0
    assert "running every benchmark" not in proc.stdout  # only a bare run (or `all`) says so


def test_distill_sub_benchmark_times_both_steps_and_both_decoders(tmp_path):
    assert TINY[:2] == ["--n_layer", "2"]
    proc, report = run_bench(["distill", "--n_layer", "4", *TINY[2:], "--steps", "1", "--repeats", "1"], tmp_path)
    res = report["results"]["distill"]
    assert res["layers"] == [0, 3] and res["blocks"] == {"student": 2, "teacher": 4}
    assert res["parameters"]["student"] < res["parameters"]["teacher"]
    for name in ("distill", "plain"):
        assert value(res[name]["tokens_per_sec"]) == pytest.approx(2 * 32 / (value(res[name]["ms_per_iter"]) / 1e3))
    assert value(res["step_cost"]) == pytest.approx(value(res["distill"]["ms_per_iter"]) / value(res["plain"]["ms_per_iter"]))
    assert value(res["decode"]["student"]) > 0 and value(res["decode"]["teacher"]) > 0
    assert "distillation step" in proc.stdout


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """--compile_mode is handed to torch.compile (recorded here: compiling takes minutes on this CPU; the
    compiled decoder's tokens are checked in tests/test_generate.py and, with CUDA graphs, test_cuda.py)."""
    sys.path.insert(0, str(ROOT))
    import bench

    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: modes.append(kw.get("mode")) or model)
    tiny = TINY[:TINY.index("--threads")]  # in-process: leave this process's thread count alone
    report = bench.main(["generate", *tiny, "--repeats", "1", "--compile", "--compile_mode", "reduce-overhead"])
    assert modes == ["reduce-overhead"] and report["config"]["compile_mode"] == "reduce-overhead"
    assert all(row["compiled_tok_s"] > 0 for row in report["results"]["generate"]["figures"]["rows"])


def test_failing_sub_benchmark_is_reported():
    sys.path.insert(0, str(ROOT))
    import bench

    def broken():
        raise RuntimeError("boom")

    res = bench._external(broken, str, lambda f: f())
    assert res["status"] == "failed: RuntimeError: boom" and res["source"].endswith(".broken")


def test_no_argument_means_every_benchmark_sized_for_the_device():
    """A bare `python bench.py` (Python 3.11+ once refused it: argparse checked the list default against choices):
    every benchmark, in order; on a CPU 3 repeats, a sweep to 512 and decoding at batch 1 unless given."""
    sys.path.insert(0, str(ROOT))
    import bench

    args = bench.resolve(bench.build_parser().parse_args(["--device", "cpu"]))
    assert args.run_all and args.overview and args.which == bench.BENCHMARKS
    assert (args.repeats, args.seq_lens, args.preset) == (3, [128, 256, 512], "shakespeare-char")
    assert "sized for a CPU" in bench.all_notice(args) and "about 1.5-2.5 minutes" in bench.all_notice(args)
    args = bench.resolve(bench.build_parser().parse_args(["all", "--device", "cpu", "--repeats", "2"]))
    assert args.run_all and args.repeats == 2
    args = bench.resolve(bench.build_parser().parse_args(["train", "train", "attention", "--device", "cpu"]))
    assert not args.run_all and not args.overview and args.which == ("train", "attention") and args.repeats == 5
    with pytest.raises(NanoGPT2Error, match="unknown benchmark 'trian'; pick from attention, train"):
        bench.resolve(bench.build_parser().parse_args(["trian", "--device", "cpu"]))


def test_bad_option_is_one_line_error():
    proc = subprocess.run([sys.executable, "bench.py", "attention", "--seq_lens", "12x"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --seq_lens must be comma-separated integers")
    proc = subprocess.run([sys.executable, "bench.py", "train", "--device", "cpu", "--compile_mode", "max-autotune"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.startswith("error: --compile_mode max-autotune needs --compile")


def test_bad_tokenizer_text_fails_before_the_benchmarks(tmp_path):
    """A non-UTF-8 --tokenizer_text is one line at start, not a failed sub-benchmark after the others ran."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("na\u00efve text\n".encode("latin-1"))
    proc = subprocess.run([sys.executable, "bench.py", "train", "tokenizer", *TINY, "--tokenizer_text", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: the benchmark text {bad} is not UTF-8 text") and proc.stdout == ""


@pytest.mark.parametrize("target", ["a_file/out.json", "a_folder"])
def test_unwritable_json_path_fails_before_the_benchmarks(tmp_path, target):
    """--json that cannot be written (a file where its folder should be; an existing folder) is refused up front,
    not after minutes of benchmarking; nothing of the user's is touched."""
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_folder").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "train", *TINY, "--json", target], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --json {target}: cannot write there"), proc.stderr
    assert "train step" not in proc.stdout and proc.stdout == ""  # no benchmark ran
    assert (tmp_path / "a_file").read_text() == "keep me" and not any((tmp_path / "a_folder").iterdir())


def test_peak_table_lookup():
    from nanogpt2.perf import mfu, peak_flops, table_peak

    assert table_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert table_peak("NVIDIA H100 PCIe", torch.bfloat16)[0] == 756e12
    assert table_peak("NVIDIA H200", "bf16")[0] == 989e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "float32", tf32=True)[0] == 156e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "float32")[0] == 19.5e12
    assert table_peak("NVIDIA L4", "float16")[0] == 121e12
    assert table_peak("NVIDIA L40", "bfloat16")[0] == 181e12  # not mistaken for an L4
    assert table_peak("NVIDIA GH200 480GB", "bfloat16")[0] == 989e12  # not mistaken for an H200 NVL
    assert table_peak("Some Future GPU", "bfloat16") is None
    assert math.isnan(mfu(1e9, 1e3, float("nan")))
    assert mfu(6e8, 1e5, 1e14) == pytest.approx(0.6)
    os.environ["NANOGPT2_PEAK_FLOPS"] = "123e12"
    try:
        assert peak_flops("cpu", "float32")[0] == 123e12
    finally:
        del os.environ["NANOGPT2_PEAK_FLOPS"]


def test_cpu_probe_grows_until_one_call_takes_long_enough(monkeypatch):
    """The CPU peak probe doubles its matmul from 128 while a call is quicker than PROBE_CALL_SECONDS, up to n: a
    slow dtype (half precision without hardware support) stops small instead of spending seconds at 1024."""
    from nanogpt2 import perf

    sizes = []

    class Recorded(perf.MatmulProbe):
        def __init__(self, dtype="float32", n=1024):
            sizes.append(n)
            super().__init__(dtype, n)

    monkeypatch.setattr(perf, "MatmulProbe", Recorded)
    probe = perf.measured_matmul_flops.__wrapped__  # without the per-process cache
    monkeypatch.setattr(perf, "PROBE_CALL_SECONDS", float("inf"))  # never long enough: up to n
    assert probe("float32", n=512, seconds=0.01) > 0 and sizes == [128, 256, 512]
    sizes.clear()
    monkeypatch.setattr(perf, "PROBE_CALL_SECONDS", 0.0)  # always long enough: the first size
    assert probe("bfloat16", n=1024, seconds=0.01) > 0 and sizes == [128]


# ----------------------------------------------------------------------------------------------------
# The tokenizer benchmark module (nanogpt2/benchmarks/tokenizer.py) on its own


def test_tokenizer_benchmark_defaults_to_the_bundled_text(tmp_path, monkeypatch):
    from nanogpt2.benchmarks import tokenizer as B

    assert B.DEFAULT_TEXT == ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt" and B.DEFAULT_TEXT.is_file()
    small = tmp_path / "small.txt"
    small.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:3_000], encoding="utf-8")
    monkeypatch.setattr(B, "DEFAULT_TEXT", small)  # what text_path=None reads, kept small for speed
    res = B.benchmark_tokenizer(repeats=1, num_workers=1)
    assert res["text"] == str(small) and res["ids_equal"] is True and res["n_tokens"] > 500


@pytest.mark.parametrize("content", [None, "na\u00efve text\n".encode("latin-1")], ids=["missing", "latin-1"])
def test_tokenizer_benchmark_bad_text_is_one_line_naming_the_file(tmp_path, content):
    """--bench-text with a Latin-1 file was a UnicodeDecodeError traceback; now: status 2, one line, before any timing."""
    bad = tmp_path / "text.txt"
    if content is not None:
        bad.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "nanogpt2.benchmarks.tokenizer", "--bench-text", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    want = f"error: the benchmark text {bad} is not UTF-8 text" if content else f"error: cannot read the benchmark text {bad}"
    assert len(lines) == 1 and lines[0].startswith(want), r.stderr
    assert (content is None or "0xef" in lines[0]) and r.stdout == ""


@pytest.mark.slow
def test_tokenizer_benchmark_returns_figures(tmp_path):
    from nanogpt2.benchmarks.tokenizer import benchmark_tokenizer, format_benchmark

    (tmp_path / "t.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:250_000], encoding="utf-8")
    res = benchmark_tokenizer(tmp_path / "t.txt", repeats=1, num_workers=2)
    for key in ["python_cold_mbps", "python_warm_mbps", "python_warm_cpu_mbps", "python_batch_serial_mbps", "python_batch_mbps",
                "python_batch_cores_busy", "tiktoken_warm_mbps", "tiktoken_warm_cpu_mbps", "tiktoken_batch_mbps", "ratio_warm"]:
        assert res[key] > 0, key
    assert res["ids_equal"] is True and res["num_workers"] == 2
    assert "MB/s" in format_benchmark(res)


def test_init_from_times_the_loaded_model(tmp_path):
    """--init_from goes through the one loader: the train and generate benchmarks run the fixture's shape and
    weights (its description in the report), and a size option beside it is refused."""
    hf = ROOT / "tests" / "fixtures" / "openai-gpt2-tiny-hf"
    proc, report = run_bench(["train", "--init_from", str(hf), "--block_size", "16", "--batch_size", "2", "--device",
                              "cpu", "--threads", "1", "--steps", "1", "--warmup", "0", "--repeats", "1"], tmp_path)
    config = report["config"]
    assert "openai-gpt2-tiny-hf" in config["preset"] and config["block_size"] == 16
    assert config["model"]["vocab_size"] == 96 and config["model"]["n_embd"] == 16  # the fixture's shape
    bad = subprocess.run([sys.executable, "bench.py", "train", "--init_from", str(hf), "--n_layer", "4"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --init_from sets the model's shape; drop n_layer"


def test_init_from_weights_and_context_in_process():
    import bench
    from nanogpt2.model import GPT

    hf = ROOT / "tests" / "fixtures" / "openai-gpt2-tiny-hf"
    args = bench.resolve(bench.build_parser().parse_args(["train", "--init_from", str(hf), "--device", "cpu"]))
    loaded = GPT.from_pretrained(str(hf))
    assert args.block_size == 32  # the model's own context, not the preset's
    model = bench.new_model(args)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(NanoGPT2Error, match="longer than the context"):
        bench.resolve(bench.build_parser().parse_args(["train", "--init_from", str(hf), "--block_size", "64"]))
