"""
CUDA checks, skipped without a GPU (CI has none): the attention paths agree on the device, bf16 / fp16 AMP
training (fused AdamW, GradScaler) lowers the loss, the chunked LM-head loss equals the plain one under AMP,
`torch.compile` trains and saves from the raw model, decoding on the GPU gives the CPU's tokens (and through
CUDA graphs, eager's), and `bench.py train` reads its MFU peak from the device table.
Sized to run in well under a minute on one GPU, for the sessions that are lent one:

    python -m pytest -q tests/test_cuda.py

`NANOGPT2_TEST_DEVICE=cpu` runs the same bodies on the CPU (except compile), to check the tests themselves.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.config import load_config
from nanogpt2.generate import generate
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.trainer import Trainer

DEVICE = os.environ.get("NANOGPT2_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_sdpa_and_reference_agree_on_the_device():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=100)).to(DEVICE).eval()
    idx = torch.randint(0, 100, (2, 128), device=DEVICE)
    mask = torch.ones(2, 128, dtype=torch.long, device=DEVICE)
    mask[1, :17] = 0  # left padding in row 1
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 matmuls, for a tight comparison
    try:
        with torch.no_grad():
            for m in (None, mask):
                model.set_attn_impl("sdpa")
                a, _ = model(idx, attention_mask=m)
                model.set_attn_impl("reference")
                b, _ = model(idx, attention_mask=m)
                rows = slice(None) if m is None else (mask.bool())  # padded positions' outputs are meaningless
                assert (a[rows] - b[rows]).abs().max().item() < 1e-4
                if m is None:
                    full = a
            model.set_attn_impl("sdpa")
            with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
                c, _ = model(idx)
            assert c.dtype == torch.bfloat16 and (c.float() - full).abs().max().item() < 0.1
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_training_lowers_the_loss(tmp_path, dtype):
    if DEVICE == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    cfg = load_config([TINY, f"--out_dir={tmp_path}", f"--device={DEVICE}", f"--dtype={dtype}", "--max_iters=30",
                       "--eval_interval=0", "--checkpoint_interval=0", "--log_interval=1", "--compile=false",
                       "--learning_rate=1e-2"])
    tr = Trainer(cfg)
    assert tr.optimizer.defaults.get("fused") is True
    assert (tr.scaler is not None and tr.scaler.is_enabled()) == (dtype == "float16")
    tr.train()
    losses = [r["loss"] for r in records(tmp_path) if "loss" in r]
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert next(tr.raw_model.parameters()).dtype == torch.float32  # fp32 master weights


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_loss_under_amp_on_the_device(dtype, monkeypatch):
    """GPT.forward(return_logits=False) (the chunked lm_head_loss, 4 chunks here) under autocast on the device: the
    loss and every gradient as the plain path's, with the float16 loss scaled as a GradScaler would (2^16)."""
    import nanogpt2.model as model_module

    if DEVICE == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=1000)).to(DEVICE)
    x = torch.randint(0, 1000, (4, 64), device=DEVICE)  # (B, T)
    y = x.roll(-1, 1)  # (B, T)
    y[0, :10] = -100
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 64 * 1000 * 4)  # 64 rows per chunk
    scale = 2.0 ** 16 if dtype == torch.float16 else 1.0
    results = []
    for return_logits in (True, False):
        model.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(DEVICE).type, dtype=dtype):
            _, loss = model(x, y, return_logits=return_logits)
        (loss * scale).backward()
        results.append((loss.detach().float(), {n: p.grad.float() / scale for n, p in model.named_parameters()}))
    (plain, plain_grads), (ours, our_grads) = results
    assert ours.dtype == torch.float32 and abs(ours.item() - plain.item()) < 1e-2 * plain.item()
    for name, g in plain_grads.items():
        assert torch.isfinite(our_grads[name]).all(), name
        assert (our_grads[name] - g).norm() <= 0.05 * g.norm() + 1e-6, name


def test_compile_trains_and_saves_from_the_raw_model(tmp_path):
    if DEVICE != "cuda":
        pytest.skip("compile on a CPU takes minutes here")
    cfg = load_config([TINY, f"--out_dir={tmp_path}", "--device=cuda", "--dtype=bfloat16", "--max_iters=4",
                       "--eval_interval=0", "--checkpoint_interval=0"])  # compile defaults to on for CUDA
    tr = Trainer(cfg)
    assert tr.model is not tr.raw_model
    tr.train()
    state = ckpt_io.load_checkpoint(tmp_path / "checkpoint_final.pt")["model"]
    assert not any(k.startswith("_orig_mod.") or k.startswith("module.") for k in state)
    assert set(state) == set(tr.raw_model.state_dict())


def test_greedy_decoding_on_the_device_equals_the_cpu():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=100)).eval()
    idx = torch.randint(0, 100, (2, 5))
    on_cpu = generate(model, idx, 20, greedy=True)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        on_device = generate(model.to(DEVICE), idx.to(DEVICE), 20, greedy=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    assert torch.equal(on_device.cpu(), on_cpu)


def test_cuda_graph_decoding_equals_eager(monkeypatch):
    """torch.compile(mode="reduce-overhead") decodes through CUDA graphs: no graph is skipped (the static
    cache is written in place at a static address), the tokens equal eager decoding, and a second request
    of the same shapes records no graph (it reuses the kept cache, so the recorded graphs replay)."""
    if DEVICE != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    records = []
    record = cudagraph_trees.CUDAGraphTreeManager.record_function

    def counting_record(self, *args, **kwargs):
        records.append(1)
        return record(self, *args, **kwargs)

    monkeypatch.setattr(cudagraph_trees.CUDAGraphTreeManager, "record_function", counting_record)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=100)).to(DEVICE).eval()
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(model, mode="reduce-overhead")
        recorded = []
        for seed in (1, 2, 3):
            idx = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
            assert torch.equal(generate(compiled, idx, 24, greedy=True), generate(model, idx, 24, greedy=True))
            recorded.append(len(records))
        assert counters["inductor"]["cudagraph_skips"] == 0
        assert recorded[0] >= 1  # the first request recorded graphs (the step; the prefill on its next call)
        assert recorded[2] == recorded[1]  # by the third request of the same shapes, everything replays
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
        torch._dynamo.reset()


def test_bench_train_on_the_device(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "bench.py", "train", "--device", DEVICE, "--n_layer", "2", "--n_head", "2", "--n_embd", "64",
           "--vocab_size", "256", "--block_size", "64", "--batch_size", "4", "--steps", "3", "--warmup", "2",
           "--repeats", "2", "--no-compile", "--json", str(out), "--out_dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    train = json.loads(out.read_text())["results"]["train"]
    assert train["ours"]["tokens_per_sec"]["value"] > 0 and train["ours"]["mfu"]["value"] > 0
    if DEVICE == "cuda" and any(n in torch.cuda.get_device_name().lower() for n in ("h100", "h200", "a100")):
        assert "probe" not in train["peak_source"]  # a known GPU: the datasheet figure, not a probe
