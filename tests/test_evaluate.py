"""
Strided perplexity, checked against Hugging Face's perplexity-guide loop run through
transformers.GPT2LMHeadModel on the same weights and tokens; the window bookkeeping; bits per byte;
the real-data path (a slice of WikiText-2 test from ../shared/data) and the CLI.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, oracle, shared_data
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.evaluate import evaluate_dataset, evaluate_perplexity, evaluate_text
from nanogpt2.samplers import stride_windows
from nanogpt2.model import GPT

transformers = oracle("transformers")

# ----------------------------------------------------------------------------------------------------
# helpers


def make_pair(folder, vocab=96, block=48, n_embd=32, n_layer=2, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        hf.transformer.wpe.weight.normal_(0, 0.5)
    hf.save_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    return GPT.from_pretrained(str(folder)).eval(), hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-eval")
    ours, hf = make_pair(folder)
    return ours, hf, folder


def hf_guide_loop(hf, ids, max_length, stride):
    """The loop of HF's "Perplexity of fixed-length models" guide, written out as it is there, except that
    each window's mean loss is weighted by the number of labels it actually averaged over."""
    encodings = torch.as_tensor(ids)[None]  # (1, seq_len)
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc  # may be different from stride on last loop
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = hf(input_ids, labels=target_ids)
        num_loss_tokens = int((target_ids[:, 1:] != -100).sum())  # labels after the model's internal shift
        nll_sum += outputs.loss.double().item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum / n_tokens, n_tokens


# ----------------------------------------------------------------------------------------------------
# Windows


@pytest.mark.parametrize("n, block, stride", [(2, 8, 8), (100, 16, 16), (100, 16, 8), (101, 16, 5), (37, 16, 1), (16, 16, 4), (17, 16, 16)])
def test_windows_score_each_token_once(n, block, stride):
    windows = stride_windows(n, block, stride)
    scored = [j for b, e, first in windows for j in range(first, e)]
    assert len(scored) == len(set(scored))  # never twice
    assert all(e - b <= block and b < first for b, e, first in windows)  # fits, and has context
    if stride < block:
        assert sorted(scored) == list(range(1, n))  # every token but the very first
    else:
        assert sorted(scored) == [j for j in range(1, n) if j % block != 0]  # each window's first is context-free


def test_window_arguments():
    with pytest.raises(NanoGPT2Error, match="stride"):
        stride_windows(100, 16, 0)
    with pytest.raises(NanoGPT2Error, match="stride"):
        stride_windows(100, 16, 17)


# ----------------------------------------------------------------------------------------------------
# Parity with the guide's loop in transformers


@pytest.mark.parametrize("stride_frac", [1.0, 0.5])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_strided_perplexity_equals_hf_guide(pair, stride_frac, batch_size):
    ours, hf, _ = pair
    block = 48
    stride = int(block * stride_frac)
    ids = np.random.default_rng(0).integers(0, 96, size=301)
    ref_loss, ref_tokens = hf_guide_loop(hf, ids, block, stride)
    res = evaluate_perplexity(ours, ids, stride=stride, batch_size=batch_size)
    assert res["tokens"] == ref_tokens
    assert res["loss"] == pytest.approx(ref_loss, rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(ref_loss), rel=1e-6)
    assert res["windows"] == len(stride_windows(301, block, stride))


def test_smaller_window_and_default_stride(pair):
    ours, hf, _ = pair
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 96, size=200))
    ref_loss, _ = hf_guide_loop(hf, ids, 32, 32)
    res = evaluate_perplexity(ours, ids, block_size=32)  # stride 512 is clamped to the window
    assert res["stride"] == 32 and res["loss"] == pytest.approx(ref_loss, rel=1e-6)
    ref_loss, _ = hf_guide_loop(hf, ids, 32, 10)
    assert evaluate_perplexity(ours, ids.tolist(), block_size=32, stride=10)["loss"] == pytest.approx(ref_loss, rel=1e-6)


def test_token_counts_for_both_strides(pair):
    """240 tokens, window 48: disjoint windows (stride 48) leave the first token of each of the 5 windows
    unscored; stride 8 scores every token after the first."""
    ours, hf, _ = pair
    ids = np.tile(np.random.default_rng(2).integers(0, 96, size=40), 6)
    a = evaluate_perplexity(ours, ids, stride=48)
    b = evaluate_perplexity(ours, ids, stride=8)
    assert a["tokens"] == 240 - 5 and b["tokens"] == 239
    assert a["loss"] == pytest.approx(hf_guide_loop(hf, ids, 48, 48)[0], rel=1e-6)
    assert b["loss"] == pytest.approx(hf_guide_loop(hf, ids, 48, 8)[0], rel=1e-6)


def test_bits_per_byte_restores_mode_and_errors(pair):
    ours, _, _ = pair
    ids = np.arange(90) % 96
    res = evaluate_perplexity(ours, ids, stride=24, n_bytes=360)
    assert res["bits_per_byte"] == pytest.approx(res["loss"] / math.log(2) * 90 / 360)
    ours.train()
    evaluate_perplexity(ours, ids)
    assert ours.training
    ours.eval()
    with pytest.raises(NanoGPT2Error, match="context"):
        evaluate_perplexity(ours, ids, block_size=49)
    with pytest.raises(NanoGPT2Error, match="at least 2"):
        evaluate_perplexity(ours, [5])
    with pytest.raises(NanoGPT2Error, match="outside"):
        evaluate_perplexity(ours, [5, 96])


def test_bf16_autocast_is_close(pair):
    ours, _, _ = pair
    ids = np.random.default_rng(3).integers(0, 96, size=150)
    a = evaluate_perplexity(ours, ids, stride=24)
    b = evaluate_perplexity(ours, ids, stride=24, dtype="bfloat16")
    assert b["loss"] == pytest.approx(a["loss"], rel=3e-2)


# ----------------------------------------------------------------------------------------------------
# Real data and the CLI


@pytest.fixture(scope="module")
def gpt2_vocab_pair(tmp_path_factory):
    """A tiny model with GPT-2's vocabulary (so real text can be scored), in both libraries."""
    folder = tmp_path_factory.mktemp("tiny-gpt2-vocab")
    ours, hf = make_pair(folder, vocab=50257, block=64, n_embd=16, n_layer=1)
    return ours, hf, folder


def test_wikitext2_slice_equals_hf_guide(gpt2_vocab_pair):
    from nanogpt2.tokenizer import get_tokenizer

    data = shared_data("wikitext-2-raw")
    ours, hf, _ = gpt2_vocab_pair
    tok = get_tokenizer("gpt2")
    res = evaluate_dataset(ours, tok, "wikitext2", "test", data_path=str(data), max_tokens=700, stride=32, batch_size=4)
    text = (data / "wiki.test.raw").read_text(encoding="utf-8")
    ids = tok.encode_ordinary(text)[:700]
    assert res["tokens_total"] == 700 and res["tokens"] == 699
    ref_loss, _ = hf_guide_loop(hf, ids, 64, 32)
    assert res["loss"] == pytest.approx(ref_loss, rel=1e-6)
    assert res["bytes"] == len(tok.decode_bytes(ids))
    # evaluate_text on the same slice agrees (bits per byte over the slice's bytes)
    res2 = evaluate_text(ours, tok, tok.decode(ids), stride=32)
    assert res2["loss"] == pytest.approx(res["loss"], rel=1e-6)


def test_cli_on_a_local_text_file(gpt2_vocab_pair, tmp_path):
    _, hf, folder = gpt2_vocab_pair
    text = "The quick brown fox jumps over the lazy dog. " * 30
    path = tmp_path / "fox.txt"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "nanogpt2.evaluate", "--init_from", str(folder), "--dataset", str(path),
                          "--split", "all", "--stride", "32", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    from nanogpt2.tokenizer import get_tokenizer
    ids = get_tokenizer("gpt2").encode_ordinary(text)
    assert res["tokens_total"] == len(ids)
    assert res["loss"] == pytest.approx(hf_guide_loop(hf, ids, 64, 32)[0], rel=1e-6)
    assert res["bits_per_byte"] == pytest.approx(res["loss"] / math.log(2) * len(ids) / len(text.encode()), rel=1e-9)
    bad = subprocess.run([sys.executable, "-m", "nanogpt2.evaluate", "--init_from", str(folder), "--dataset", str(path),
                          "--split", "all", "--block_size", "100"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "context" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--max_tokens", "-5"], "--max_tokens must be >= 2"),  # was: the last 5 tokens silently dropped
    (["--max_tokens", "0"], "--max_tokens must be >= 2"),
    (["--device", "gpu"], "device 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),  # was: a traceback
    (["--device", "cuda:99"], "device cuda:99"),
    (["--stride", "0"], "--stride must be >= 1"),
    (["--batch_size", "-1"], "--batch_size must be >= 1"),
])
def test_cli_refuses_bad_options_before_loading(gpt2_vocab_pair, tmp_path, args, message):
    _, _, folder = gpt2_vocab_pair
    path = tmp_path / "fox.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    res = subprocess.run([sys.executable, "-m", "nanogpt2.evaluate", "--init_from", str(folder), "--dataset", str(path),
                          "--split", "all", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_evaluate_dataset_refuses_a_negative_max_tokens(gpt2_vocab_pair, tmp_path):
    from nanogpt2.tokenizer import get_tokenizer

    ours, _, _ = gpt2_vocab_pair
    path = tmp_path / "fox.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    with pytest.raises(NanoGPT2Error, match="max_tokens must be >= 2"):
        evaluate_dataset(ours, get_tokenizer("gpt2"), str(path), "all", max_tokens=-5, stride=32)
    res = evaluate_dataset(ours, get_tokenizer("gpt2"), str(path), "all", max_tokens=50, stride=32)
    assert res["tokens_total"] == 50


def test_cli_wikitext2_test_split_with_default_stride(gpt2_vocab_pair):
    """The issue's command, `python -m nanogpt2.evaluate --init_from ... --dataset wikitext2 --split test`, on
    the real split (first 700 tokens): the default stride (512) is clamped to this model's 64-token
    context, i.e. disjoint windows, and the figures are the guide loop's."""
    from nanogpt2.tokenizer import get_tokenizer

    data = shared_data("wikitext-2-raw")
    _, hf, folder = gpt2_vocab_pair
    out = subprocess.run([sys.executable, "-m", "nanogpt2.evaluate", "--init_from", str(folder), "--dataset", "wikitext2",
                          "--split", "test", "--data_path", str(data), "--max_tokens", "700", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    tok = get_tokenizer("gpt2")
    ids = tok.encode_ordinary((data / "wiki.test.raw").read_text(encoding="utf-8"))[:700]
    assert (res["dataset"], res["split"], res["stride"], res["block_size"]) == ("wikitext2", "test", 64, 64)
    assert res["tokens"] == 700 - math.ceil(700 / 64)  # each disjoint window's first token has no context
    assert res["loss"] == pytest.approx(hf_guide_loop(hf, ids, 64, 64)[0], rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]), rel=1e-12)
    assert res["bits_per_byte"] == pytest.approx(res["loss"] / math.log(2) * 700 / len(tok.decode_bytes(ids)), rel=1e-9)


SHARDED = """
import json, sys
import torch
import torch.distributed as td
from nanogpt2.evaluate import evaluate_perplexity
from nanogpt2.model import GPT, GPTConfig

td.init_process_group("gloo")
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50))
ids = torch.randint(0, 50, (700,), generator=torch.Generator().manual_seed(1))
calls = []

def all_reduce(t):
    calls.append(1)
    td.all_reduce(t)
    return t

res = evaluate_perplexity(model, ids, block_size=32, stride=16, batch_size=3, rank=td.get_rank(),
                          world_size=td.get_world_size(), all_reduce=all_reduce)
alone = evaluate_perplexity(model, ids, block_size=32, stride=16, batch_size=3)
# one file per rank: two processes printing to one pipe can interleave their lines
with open(f"{sys.argv[1]}/rank{td.get_rank()}.json", "w") as f:
    json.dump({"rank": td.get_rank(), "loss": res["loss"], "tokens": res["tokens"], "calls": len(calls),
               "alone_loss": alone["loss"], "alone_tokens": alone["tokens"]}, f)
td.destroy_process_group()
"""


def test_sharded_evaluation_over_two_processes_equals_one(tmp_path):
    """Under DDP (2 gloo processes via torchrun) each process scores every other batch of windows and the
    sums are all-reduced once: both return the single-process loss and token count."""
    import socket

    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                           f"--master_port={port}", str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["calls"] == 1 and r["tokens"] == r["alone_tokens"] == 699
        assert r["loss"] == pytest.approx(r["alone_loss"], rel=1e-9)


def test_sharded_evaluation_arguments():
    from nanogpt2.model import GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    with pytest.raises(ValueError, match="all_reduce"):
        evaluate_perplexity(model, torch.arange(10) % 10, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        evaluate_perplexity(model, torch.arange(10) % 10, rank=2, world_size=2, all_reduce=lambda t: t)
