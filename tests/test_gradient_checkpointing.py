"""
Gradient checkpointing (`gradient_checkpointing`, `GPT.gradient_checkpointing_enable`): each block runs again in
the backward instead of keeping its activations. The losses and gradients equal the plain pass's (dropout 0: to
1e-6; with dropout the RNG state of the forward is replayed, so the masks are the same too); the blocks really
run twice and keep far fewer saved tensors; eval, no_grad and decoding are untouched. It works with LoRA,
adapters, prefix and prompt tuning and the classifier, under torch.compile, in the trainer (train.py and every finetune.py
method and task; with dropout a stopped run resumes bit for bit) and under DDP (2 processes, gloo).

    python -m pytest -q tests/test_gradient_checkpointing.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt2.config import load_config
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.heads import GPTForSequenceClassification
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import apply_adapters, apply_lora, apply_prefix, apply_prompt
from nanogpt2.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def tiny_gpt(dropout=0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=dropout))


def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 65, (4, 24), generator=gen)  # (B, T): room for a prefix of 4 in block 32
    return x, torch.roll(x, -1, dims=1)  # (B, T)


class BlockCalls:
    """Counts the calls of a model's blocks' forward (a checkpointed block runs twice per training step; the
    recomputation bypasses forward hooks, so the count wraps `forward` itself). grad_only: count only the calls
    with gradients on (training, not the evaluations)."""

    def __init__(self, blocks, grad_only=False):
        self.n, self.grad_only = 0, grad_only
        self.blocks = list(blocks)
        for b in self.blocks:
            b.forward = self.counted(b.forward)

    def counted(self, forward):
        def call(*args, **kwargs):
            self.n += torch.is_grad_enabled() or not self.grad_only
            return forward(*args, **kwargs)
        return call

    def remove(self):
        for b in self.blocks:
            del b.forward  # the class's method again


def step(model, checkpointing: bool, forward=None, seed=2, **kw):
    """One forward + backward in training mode from RNG seed `seed`: (loss, {name: grad}, saved-tensor bytes, block
    calls, the RNG state after)."""
    model.train()
    model.gradient_checkpointing_enable(checkpointing)
    x, y = batch()
    calls, saved = BlockCalls(model.transformer.h), []
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        out = (model if forward is None else forward)(x, y, **kw)
    loss = out[1]
    loss.backward()
    calls.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, sum(saved), calls.n, torch.get_rng_state()


def assert_same(a, b, tol):
    (loss_a, grads_a, *_), (loss_b, grads_b, *_) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=tol, atol=tol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=tol, atol=tol, msg=name)


# ----------------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("return_logits", [False, True])
def test_losses_and_gradients_equal_the_plain_pass_and_the_blocks_run_twice(return_logits):
    model = tiny_gpt()
    plain = step(model, False, return_logits=return_logits)
    ckpt = step(model, True, return_logits=return_logits)
    assert_same(plain, ckpt, 1e-6)
    assert (plain[3], ckpt[3]) == (3, 6)  # each block once, then again in the backward
    assert ckpt[2] < plain[2] / 4  # the activations are not kept: a fraction of the saved bytes


def test_with_dropout_the_forwards_rng_is_replayed():
    """The recomputed blocks draw the forward's dropout masks (the RNG state is preserved), and the global
    stream continues where the plain pass leaves it (what a bit-exact resume needs)."""
    model = tiny_gpt(dropout=0.2)
    plain, ckpt = step(model, False), step(model, True)
    assert_same(plain, ckpt, 1e-6)
    assert torch.equal(plain[4], ckpt[4])
    assert abs(step(model, True, seed=3)[0] - plain[0]) > 1e-4  # other masks, another loss: the masks matter


def test_eval_no_grad_and_decoding_do_not_recompute():
    model = tiny_gpt()
    model.gradient_checkpointing_enable()
    x, y = batch()
    calls = BlockCalls(model.transformer.h)
    model.eval()
    _, loss = model(x, y)
    loss.backward()  # eval mode: the plain pass
    model.train()
    with torch.no_grad():
        model(x, y)
    assert calls.n == 6
    out = model.generate(x[:1, :4], 5, greedy=True)  # KV-cache decoding under no_grad
    model.gradient_checkpointing_enable(False)
    assert torch.equal(out, model.generate(x[:1, :4], 5, greedy=True))
    calls.remove()


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prefix_projection", "prompt", "classifier"])
def test_peft_methods_and_the_classifier(method):
    model = tiny_gpt(dropout=0.1)
    if method == "lora":
        apply_lora(model, 4, 8.0, ["c_attn", "c_fc"])
        torch.nn.init.normal_(model.transformer.h[0].attn.c_attn.lora_B, std=0.1)  # a non-zero update
    elif method == "adapter":
        apply_adapters(model, 8)
    elif method.startswith("prefix"):
        apply_prefix(model, 4, 16 if method == "prefix_projection" else None)
    elif method == "prompt":  # the body runs over the prompt's embeddings too: those blocks are recomputed as well
        apply_prompt(model, 4)
    else:
        model = GPTForSequenceClassification.from_gpt(model, num_labels=3)
    kw = {}
    if method == "classifier":
        x, _ = batch()
        forward = lambda x_, y_: model(x_, labels=torch.tensor([0, 1, 2, 1]))  # noqa: E731
        kw = {"forward": forward}
    plain, ckpt = step(model, False, **kw), step(model, True, **kw)
    assert_same(plain, ckpt, 1e-6)
    assert plain[3] * 2 == ckpt[3]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt[1]) == trainable  # frozen weights get no gradient, with checkpointing too


@pytest.mark.slow
def test_torch_compile_with_checkpointing_matches_eager():
    model = tiny_gpt(dropout=0.0)
    eager = step(model, False, return_logits=False)
    torch._dynamo.reset()
    compiled = torch.compile(model)
    try:
        got = step(model, True, forward=compiled, return_logits=False)
    finally:
        torch._dynamo.reset()
    assert_same(eager, got, 1e-5)  # the compiler's fused kernels sum in another order
    assert got[2] < eager[2]


# ----------------------------------------------------------------------------------------------------
# The trainer: train.py and finetune.py


def losses(out: Path) -> list:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def counting_hook(seen: dict):
    """A trainer hook that counts the block calls of the run's model (GPT or classifier) over the training."""
    def hook(trainer, event):
        if event == "train_start":
            seen["calls"] = BlockCalls(trainer.raw_model.transformer.h, grad_only=True)
            seen["blocks"] = len(trainer.raw_model.transformer.h)
        elif event == "train_end":
            seen["calls"].remove()
            seen["steps"] = trainer.step
    return hook


def twice(make_cfg, runner=None):
    """Run the config without and with gradient_checkpointing: (losses, losses, block calls per step per block
    in the second run)."""
    runner = runner or (lambda cfg, hooks: run(cfg, hooks=hooks))
    plain_seen, ckpt_seen = {}, {}
    runner(make_cfg("plain", "--gradient_checkpointing=false"), [counting_hook(plain_seen)])
    runner(make_cfg("ckpt", "--gradient_checkpointing=true"), [counting_hook(ckpt_seen)])
    per_step = lambda s: s["calls"].n / s["steps"] / s["blocks"]  # noqa: E731
    return per_step(plain_seen), per_step(ckpt_seen)


def test_train_py_losses_equal_and_the_run_says_so(tmp_path, capsys):
    def cfg(name, *extra):
        return load_config([TINY, f"--out_dir={tmp_path / name}", "--max_iters=6", "--eval_interval=3",
                            "--checkpoint_interval=0", "--test_eval=false", *extra])

    plain, ckpt = twice(cfg, lambda c, hooks: Trainer(c, hooks=hooks).train())
    assert "gradient checkpointing: each block's activations are recomputed in the backward" in capsys.readouterr().out
    assert ckpt == 2 * plain == 2  # each training micro-step runs each block twice
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)


def test_dropout_run_with_checkpointing_resumes_bit_for_bit(tmp_path):
    args = ("--max_iters=6", "--dropout=0.1", "--eval_interval=0", "--checkpoint_interval=0", "--test_eval=false",
            "--gradient_checkpointing=true")

    def cfg(name, *extra):
        return load_config([TINY, f"--out_dir={tmp_path / name}", *args, *extra])

    Trainer(cfg("whole")).train()
    Trainer(cfg("plain", "--gradient_checkpointing=false")).train()

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert Trainer(cfg("cut"), hooks=[stop_at_3]).train()["stopped"] == "signal"
    Trainer(cfg("cut", "--resume_from=auto")).train()
    whole, cut = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert [float.hex(v) for v in cut] == [float.hex(v) for v in whole]
    final = [torch.load(tmp_path / n / "checkpoint_final.pt", weights_only=True)["model"] for n in ("whole", "cut")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert whole == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)  # the same masks as without checkpointing


def ft_cfg(tmp_path, *overrides):
    def make(name, *extra):
        return load_config([TINY, f"--out_dir={tmp_path / name}", "--init_from=scratch", "--max_iters=4",
                            "--eval_interval=2", "--checkpoint_interval=0", "--learning_rate=1e-2", "--test_eval=false",
                            "--dropout=0.0", "--sample_interval=0", f"--results_dir={tmp_path / 'results'}", *overrides,
                            *extra], cls=FinetuneConfig)  # the results tree under tmp, not the current folder
    return make


@pytest.mark.parametrize("method, extra", [
    ("full", ()),
    ("lora", ("--lora_targets=c_attn,c_fc", "--lora_rank=4")),
    ("adapter", ("--adapter_size=8",)),
    ("selective", ("--freeze_layers=0",)),
    ("prefix", ("--prefix_length=4", "--prefix_projection=8", "--block_size=28", "BASE")),
    ("prompt", ("--prompt_length=4", "--block_size=28", "BASE")),
])
def test_finetune_methods(tmp_path, method, extra):
    if "BASE" in extra:  # a prefix or a prompt needs positions beyond the windows: a base model of block 32 for windows of 28
        base = tmp_path / "base"
        Trainer(load_config([TINY, f"--out_dir={base}", "--max_iters=1", "--eval_interval=0", "--test_eval=false"])).train()
        extra = [f"--init_from={base}" if e == "BASE" else e for e in extra]
    plain, ckpt = twice(ft_cfg(tmp_path, f"--method={method}", *extra))
    assert ckpt == 2 * plain
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)


def test_finetune_tasks_classify_instruct_distill(tmp_path):
    ag_news = ROOT / "tests" / "fixtures" / "classify" / "ag_news_tiny.csv"
    alpaca = ROOT / "tests" / "fixtures" / "alpaca_tiny_50.json"
    teacher = tmp_path / "teacher"
    Trainer(load_config([TINY, f"--out_dir={teacher}", "--max_iters=2", "--eval_interval=0", "--test_eval=false",
                         "--n_layer=3"])).train()
    tasks = {
        "classify": ("--task=classify", "--dataset=ag_news", f"--data_path={ag_news}", f"--results_dir={tmp_path / 'r'}",
                     "--block_size=48", "--method=lora", "--baseline_eval=false", "--gradient_accumulation_steps=1"),
        "instruct": ("--task=instruct", "--tokenizer=gpt2", f"--dataset={alpaca}", "--block_size=64", "--max_length=64",
                     "--method=full", "--val_fraction=0.2", "--eval_iters=0", "--gradient_accumulation_steps=1"),
        "distill": ("--task=distill", "--dataset=shakespeare_char", f"--teacher={teacher}", "--method=full",
                    "--student_layers=0,2"),
    }
    for task, extra in tasks.items():
        plain, ckpt = twice(ft_cfg(tmp_path / task, *extra))
        assert ckpt == 2 * plain, task
        assert losses(tmp_path / task / "ckpt") == pytest.approx(losses(tmp_path / task / "plain"), rel=1e-6), task


def test_a_model_without_the_switch_is_refused_before_anything_is_written(tmp_path):
    class NoSwitch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 4)

    cfg = load_config([TINY, f"--out_dir={tmp_path / 'run'}", "--gradient_checkpointing=true"])
    with pytest.raises(NanoGPT2Error, match=r"gradient_checkpointing=true needs a model with "
                                            r"gradient_checkpointing_enable\(\) .*this NoSwitch has none"):
        Trainer(cfg, model=NoSwitch())
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------
# DDP


@pytest.mark.slow
def test_torchrun_two_processes_with_checkpointing_match_one_without(tmp_path):
    from test_ddp import torchrun

    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    args = [TINY, "--gradient_accumulation_steps=4", "--max_iters=4", "--eval_interval=2", "--checkpoint_interval=0",
            "--dropout=0.0", "--test_eval=false"]
    single = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"--out_dir={tmp_path / 'single'}"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(torchrun(ROOT / "train.py", *args, f"--out_dir={tmp_path / 'ddp'}",
                                  "--gradient_checkpointing=true"),
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert "2 process(es) on cpu" in ddp.stdout and ddp.stdout.count("gradient checkpointing:") == 1
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-6, abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# bench.py --gradient_checkpointing


def test_bench_times_the_step_with_and_without_on_twin_models(tmp_path):
    import bench

    tiny = ["--device", "cpu", "--n_layer", "3", "--n_head", "2", "--n_embd", "64", "--vocab_size", "256",
            "--block_size", "128", "--batch_size", "2", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    report = bench.main(["train", "finetune", *tiny, "--gradient_checkpointing", "--json", str(tmp_path / "b.json")])
    assert report["config"]["gradient_checkpointing"] is True
    for name in ("train", "finetune"):
        res = report["results"][name]
        assert "gradient checkpointing" in res["ours"]["model"] and "no gradient checkpointing" in res["plain"]["model"]
        assert res["ours"]["first_loss"] == res["plain"]["first_loss"]  # twins: the same weights, the same batch
        assert res["ratio_peak_memory"]["value"] < 0.9  # the blocks' activations are not kept
        assert res["ratio_tokens_per_sec"]["value"] > 0
    assert report["results"]["finetune"]["ours"]["trainable"] == report["results"]["finetune"]["plain"]["trainable"]


def test_bench_refuses_checkpointing_with_vs():
    from conftest import one_error_line

    res = subprocess.run([sys.executable, "bench.py", "train", "--device", "cpu", "--gradient_checkpointing", "--vs",
                          "hf"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert one_error_line(res) == ("error: --gradient_checkpointing compares our step with and without checkpointing; "
                                   "drop --vs hf (run that comparison on its own)")
