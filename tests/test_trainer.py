"""
The training loop in-process on a tiny model (CPU): schedule, parameter groups, overfitting one batch,
gradient accumulation, float16 + GradScaler overflow handling, non-finite losses, epochs, checkpoints,
TensorBoard/plot outputs. The subprocess tests (SIGTERM exact resume, wall-clock stop, CLI errors, DDP)
are in tests/test_train_resume.py, tests/test_config.py and tests/test_ddp.py.

    python -m pytest -q tests/test_trainer.py
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from http_fixture import serve
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.config import load_config
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_checkpoint_model
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.perf import measured_matmul_flops
from nanogpt2.tokenizer import CharTokenizer
from nanogpt2.optim import get_lr, make_optimizer, param_groups, resolve_schedule
from nanogpt2.outputs import fmt_duration
from nanogpt2.trainer import Trainer, resolve_compile, split_batch

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
TEXT = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
TOK = CharTokenizer.from_text(TEXT)


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    """Datasets are tokenized into a cache shared by this module's tests (not ~/.cache)."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def cfg_for(tmp_path, *overrides):
    return load_config([TINY, f"--out_dir={tmp_path / 'run'}", *overrides])


def records(cfg):
    return [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]


class WindowsSampler:
    """Real text windows (the first `rows` windows from `offset` on), the same batch every call when fixed."""

    def __init__(self, rows, block, fixed=True):
        self.rows, self.block, self.fixed, self.calls = rows, block, fixed, 0

    def next_batch(self, device=None):
        start = 0 if self.fixed else self.calls * self.rows * (self.block + 1)
        self.calls += 1
        ids = torch.tensor(TOK.encode(TEXT[start:start + self.rows * (self.block + 1)]))
        w = ids.view(self.rows, self.block + 1)  # (rows, T + 1)
        return w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, d):
        self.calls = d["calls"]


def tiny_trainer(cfg, fixed=True, **kw):
    return Trainer(cfg, tokenizer=TOK, make_sampler=lambda t: WindowsSampler(t.rows_per_step, cfg.block_size, fixed), **kw)


class RandomIds:
    """Random windows of the HF fixture's 96-token vocabulary (16 tokens + 1), from its own generator."""

    def __init__(self, rows):
        self.g, self.rows = torch.Generator().manual_seed(0), rows

    def next_batch(self, device=None):
        w = torch.randint(0, 96, (self.rows, 17), generator=self.g)  # (rows, T + 1)
        return w[:, :-1], w[:, 1:]

    def state_dict(self):
        return {}

    def load_state_dict(self, d):
        pass


HF_TINY = ROOT / "tests" / "fixtures" / "openai-gpt2-tiny-hf"


# ----------------------------------------------------------------------------------------------------
# Learning-rate schedule


def test_cosine_schedule_matches_formula():
    lr, min_lr, warm, decay = 6e-4, 6e-5, 100, 1000
    f = lambda s: get_lr(s, "cosine", lr, min_lr, warm, decay)  # noqa: E731
    assert f(0) == lr * 1 / 101  # warmup start
    assert f(99) == lr * 100 / 101  # last warmup step
    assert f(100) == lr  # warmup end: the peak
    mid = 100 + (decay - 100) // 2  # halfway through the cosine: cos(pi/2) = 0
    assert f(mid) == pytest.approx(min_lr + 0.5 * (lr - min_lr), rel=1e-12)
    quarter = 100 + (decay - 100) // 4
    assert f(quarter) == pytest.approx(min_lr + 0.5 * (1 + math.cos(math.pi / 4)) * (lr - min_lr), rel=1e-12)
    assert f(decay) == min_lr and f(decay + 5000) == min_lr  # end and beyond: the floor
    assert all(f(s) >= f(s + 1) for s in range(100, 1500))  # monotone after the warmup


def test_linear_and_constant_schedules():
    lr, min_lr = 5e-5, 1e-7
    sched = resolve_schedule(load_config(["--max_iters=1000", "--lr_schedule=linear", "--warmup_ratio=0.1",
                                          f"--learning_rate={lr}", f"--min_lr={min_lr}"]), total_steps=1000)
    assert (sched.warmup_iters, sched.lr_decay_iters) == (100, 1000)  # 10% of the run
    assert sched.lr_at(0) == lr / 101
    assert sched.lr_at(100) == lr
    assert sched.lr_at(550) == pytest.approx(min_lr + 0.5 * (lr - min_lr), rel=1e-12)
    assert sched.lr_at(775) == pytest.approx(min_lr + 0.25 * (lr - min_lr), rel=1e-12)
    assert sched.lr_at(1000) == min_lr
    const = resolve_schedule(load_config(["--lr_schedule=constant", "--warmup_iters=10", "--learning_rate=1e-3"]), 50)
    assert const.lr_at(4) == 1e-3 * 5 / 11 and const.lr_at(10) == const.lr_at(49) == const.lr_at(500) == 1e-3
    # lr_decay_iters set explicitly wins over the run length
    assert resolve_schedule(load_config(["--lr_decay_iters=300"]), 1000).lr_decay_iters == 300


def test_trainer_applies_schedule_per_step(tmp_path):
    cfg = cfg_for(tmp_path, "--max_iters=12", "--warmup_iters=3", "--checkpoint_interval=0", "--vocab_size=65")
    tr = tiny_trainer(cfg)
    tr.train()
    logged = {r["step"]: r["lr"] for r in records(cfg)}
    assert len(logged) == 12
    for step, lr in logged.items():
        assert lr == tr.schedule.lr_at(step - 1)  # record `step` is optimizer step step-1 (0-based)
    assert tr.optimizer.param_groups[0]["lr"] == tr.schedule.lr_at(11)
    assert tr.last_loss_tokens == tr.rows_per_step * cfg.block_size  # default loss_fn: every target scored


# ----------------------------------------------------------------------------------------------------
# Optimizer groups and accumulation


def test_param_groups_decay_only_matrices():
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any(names[id(p)].endswith("wpe.weight") for p in decay["params"])
    assert any(names[id(p)].endswith("ln_1.weight") for p in no_decay["params"])
    assert any(names[id(p)].endswith("c_attn.bias") for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied head once
    decay2, no_decay2 = param_groups(model, 0.1, decay_pos_emb=False)
    assert any(names[id(p)].endswith("wpe.weight") for p in no_decay2["params"])
    assert len(decay2["params"]) == len(decay["params"]) - 1


def test_adamw_fused_on_cuda_and_cpu_with_configured_hyperparameters():
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32))
    cfg = load_config(["--learning_rate=3e-4", "--beta1=0.85", "--beta2=0.99", "--eps=1e-7", "--weight_decay=0.01"])
    cpu = make_optimizer(model, cfg, "cpu")
    assert cpu.defaults["fused"] is True
    assert (cpu.defaults["lr"], cpu.defaults["betas"], cpu.defaults["eps"]) == (3e-4, (0.85, 0.99), 1e-7)
    assert [g["weight_decay"] for g in cpu.param_groups] == [0.01, 0.0]
    assert make_optimizer(model, cfg, "cuda").defaults["fused"] is True
    assert not make_optimizer(model, cfg, "mps").defaults.get("fused")  # the default implementation elsewhere
    # the fused update is AdamW's: equal to the reference for-loop implementation after a few steps
    ref_model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32))
    ref_model.load_state_dict(model.state_dict())
    ref = torch.optim.AdamW(param_groups(ref_model, 0.01, cfg.decay_pos_emb), lr=3e-4, betas=(0.85, 0.99), eps=1e-7,
                            foreach=False)
    x = torch.randint(0, 65, (2, 16))
    for _ in range(3):
        for m, opt in ((model, cpu), (ref_model, ref)):
            m(x, x)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (k, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_accumulation_equals_one_big_batch(tmp_path):
    """8 rows in one micro-batch vs 4 micro-batches of 2 (loss / 4 each): same loss, same update."""
    results = []
    for batch, accum in ((8, 1), (2, 4)):
        cfg = cfg_for(tmp_path / f"b{batch}", f"--batch_size={batch}", f"--gradient_accumulation_steps={accum}",
                      "--max_iters=3", "--checkpoint_interval=0", "--vocab_size=65")
        tr = tiny_trainer(cfg, fixed=False)
        assert tr.rows_per_step == 8 and tr.micro_steps == accum
        tr.train()
        results.append(([r["loss"] for r in records(cfg)], tr.raw_model.state_dict()))
    (l1, w1), (l2, w2) = results
    assert l1 == pytest.approx(l2, abs=1e-6)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-5)


def test_loss_terms_are_averaged_over_micro_steps_into_the_record_and_progress_line(tmp_path, capsys):
    """A loss_fn's third item, {name: scalar}, is averaged like the loss: "same" (the micro-batch's loss) comes out
    as the step's loss, "count" (1, 2, 3, 4 over the 4 micro-steps) as 2.5."""
    cfg = cfg_for(tmp_path, "--batch_size=2", "--gradient_accumulation_steps=4", "--max_iters=2",
                  "--checkpoint_interval=0", "--eval_interval=0", "--vocab_size=65")
    calls = []

    def loss_fn(trainer, model, batch):
        calls.append(1)
        loss = model(*batch)[1]
        return loss, batch[1].numel(), {"same": loss, "count": torch.tensor(float((len(calls) - 1) % 4 + 1))}

    tr = tiny_trainer(cfg, fixed=False, loss_fn=loss_fn)
    tr.train()
    recs = [r for r in records(cfg) if "loss" in r]
    assert len(recs) == 2 and tr.loss_terms == ("same", "count")
    for r in recs:
        assert r["same"] == pytest.approx(r["loss"], rel=1e-6) and r["count"] == 2.5
    assert re.search(r"loss \S+ \| same \S+ \| count 2\.5000 \| ppl", capsys.readouterr().out)


def test_chunked_default_loss_trains_as_the_plain_loss(tmp_path, monkeypatch):
    """The default loss_fn (the chunked loss, return_logits=False; here 10 rows per chunk) against the plain loss
    over the full logits, with accumulation and dropout: the same losses, evaluations and final weights."""
    import nanogpt2.model as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 10 * 65 * 4)  # 128-row micro-batches in 13 chunks
    plain = lambda trainer, model, mb: (model(*mb)[1], (mb[1] != -100).sum())  # noqa: E731 (the loss_fn of before)
    results = []
    for name, loss_fn in (("chunked", None), ("plain", plain)):
        cfg = cfg_for(tmp_path / name, "--max_iters=8", "--gradient_accumulation_steps=2", "--dropout=0.1",
                      "--eval_interval=4", "--checkpoint_interval=0", "--vocab_size=65")
        tr = Trainer(cfg, loss_fn=loss_fn)  # the dataset's seeded sampler and validation split; seeded dropout
        tr.train()
        recs = records(cfg)
        results.append(([r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r],
                        tr.raw_model.state_dict()))
    (l1, v1, w1), (l2, v2, w2) = results
    assert len(l1) == 8 and l1 == pytest.approx(l2, rel=1e-6)
    assert len(v1) == 2 and v1 == pytest.approx(v2, rel=1e-6)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-5)


def test_tokens_per_step_sets_accumulation(tmp_path):
    tr = tiny_trainer(cfg_for(tmp_path, "--tokens_per_step=512", "--vocab_size=65"))  # 512 / (4 * 32) = 4
    assert tr.accum_steps == 4 and tr.rows_per_step == 16 and tr.tokens_per_step == 512
    with pytest.raises(NanoGPT2Error, match="not a multiple of batch_size"):
        tiny_trainer(cfg_for(tmp_path, "--tokens_per_step=500", "--vocab_size=65"))


def test_split_batch_shapes():
    x = torch.arange(24).view(6, 4)
    parts = split_batch((x, x + 1), 3)
    assert len(parts) == 3 and parts[1][0].tolist() == x[2:4].tolist() and parts[1][1].tolist() == (x + 1)[2:4].tolist()
    assert split_batch({"a": x}, 2)[1]["a"].shape == (3, 4)
    with pytest.raises(NanoGPT2Error, match="multiple"):
        split_batch(x, 4)


# ----------------------------------------------------------------------------------------------------
# Learning works


def test_overfits_a_single_batch(tmp_path):
    cfg = cfg_for(tmp_path, "--max_iters=100", "--n_embd=64", "--lr_schedule=constant", "--warmup_iters=0",
                  "--learning_rate=3e-3", "--weight_decay=0", "--checkpoint_interval=0", "--vocab_size=65")
    tiny_trainer(cfg).train()
    losses = [r["loss"] for r in records(cfg)]
    assert losses[0] > 3.5  # about ln(65) at the start
    assert min(losses) < 0.1, f"never below 0.1 in 100 steps: {losses[-5:]}"


def test_real_data_run_with_eval_best_checkpoints_and_sample(tmp_path, capsys):
    """The default data path (shakespeare_char memmaps): eval, best/step/final checkpoints, pruning, samples,
    the printed effective config and the progress lines."""
    cfg = cfg_for(tmp_path, "--max_iters=30", "--eval_interval=10", "--checkpoint_interval=5", "--keep_last=2",
                  "--sample_interval=15", "--sample_tokens=40", "--log_interval=10")
    tr = Trainer(cfg)
    summary = tr.train()
    stdout = capsys.readouterr().out
    assert f"effective config (config files: {TINY}; * = not the default):" in stdout
    assert {"*max_iters=30", "log_interval=10", "seed=1337", "*n_embd=32"} <= set(stdout.split())  # *: not default
    assert "--- sample at step 15 ---" in stdout
    progress = re.compile(r"^step (\d+)/30 \| loss (\d+\.\d{4}) \| ppl (\d+\.\d{2}) \| lr (\d\.\d{2}e-\d\d) \| "
                          r"grad (\d+\.\d{3}) \| ([\d,]+) tok/s \| [\d,]+\.\d\d samples/s \| MFU (\d+\.\d{2})% \| "
                          r"RSS [\d,]+ MiB \| elapsed (\w+) \| ETA (\w+) \| budget left (\w+)$", re.M)
    lines = {int(m.group(1)): m for m in progress.finditer(stdout)}
    assert sorted(lines) == [1, 10, 20, 30]  # log_interval, plus the first and the last step
    out = Path(cfg.out_dir)
    assert summary["stopped"] == "done" and summary["step"] == 30
    recs = records(cfg)
    assert [r["step"] for r in recs] == [1, 10, 20, 30]  # logged steps (evaluations fall on them too)
    for r in recs:
        m = lines[r["step"]]
        assert (m.group(2), m.group(3), m.group(4), m.group(5)) == (
            f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['lr']:.2e}", f"{r['grad_norm']:.3f}")
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
        assert r["tokens_per_sec"] > 0 and r["tokens"] == r["step"] * 4 * 32
        # MFU = model FLOPs per token x tokens/s over the peak (the CPU matmul probe)
        assert 0 < r["mfu"] == pytest.approx(tr.flops_per_token * r["tokens_per_sec"] / tr.peak_flops, rel=1e-9)
        assert m.group(7) == f"{100 * r['mfu']:.2f}"
        # the time fields: elapsed, ETA to the last step, what is left of max_training_hours (12h here)
        assert (m.group(8), m.group(9), m.group(10)) == tuple(
            fmt_duration(3600 * r[k]) for k in ("elapsed_h", "eta_h", "budget_left_h"))
        assert r["budget_left_h"] == pytest.approx(12.0 - r["elapsed_h"], abs=1e-6)
        assert 0 <= r["eta_h"] < r["budget_left_h"] and (r["eta_h"] == 0) == (r["step"] == 30)
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < math.log(65) + 0.2
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    assert recs[-1]["loss"] < recs[0]["loss"]
    names = sorted(p.name for p in out.glob("checkpoint_*.pt"))
    assert names == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_20.pt", "checkpoint_step_25.pt"]
    best = ckpt_io.load_checkpoint(out / "checkpoint_best.pt")
    assert best["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    samples = (out / "samples.txt").read_text()
    assert "--- step 15 ---" in samples and "--- step 30 ---" in samples
    # load_model gives back the trained weights and the char vocabulary
    model, info = load_checkpoint_model(out / "checkpoint_final.pt")
    tok = ckpt_io.tokenizer_from_info(info["tokenizer"])
    assert tok.chars == tr.tokenizer.chars and info["step"] == 30
    x = torch.tensor([tok.encode("ROMEO:")])
    tr.raw_model.eval()
    torch.testing.assert_close(model(x)[0], tr.raw_model(x)[0], rtol=0, atol=0)


def test_progress_line_eta_is_steps_left_times_step_time_within_the_budget(tmp_path):
    """ETA = steps left x recent step time, or what is left of the budget when that ends first (labelled);
    the budget is shown as such ("Budget left"), and "none" without max_training_hours."""
    tr = tiny_trainer(cfg_for(tmp_path, "--max_iters=100", "--max_training_hours=1"))
    tr.step, tr.t_start = 40, time.time() - 1800.5  # 40 of 100 steps done, half of the hour used (+ 0.5 s: whole seconds shown)
    rec = {"step": 40, "loss": 2.0, "ppl": math.exp(2.0), "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 1000.0,
           "mfu": 0.01}
    rec.update(tr._time_left(step_time=10.0))  # 60 steps x 10 s = 600 s, well within the 1800 s left
    assert rec["eta_h"] == pytest.approx(600 / 3600) and rec["budget_left_h"] == pytest.approx(0.5, abs=1e-3)
    assert tr._progress_line(rec).endswith("| elapsed 30m00s | ETA 10m00s | budget left 29m59s")
    rec.update(tr._time_left(step_time=60.0))  # 3600 s of steps: the budget ends first
    assert rec["eta_h"] == rec["budget_left_h"] == pytest.approx(0.5, abs=1e-3)
    assert tr._progress_line(rec).endswith("| ETA 29m59s (time limit) | budget left 29m59s")
    tr.cfg = tr.cfg.replace(max_training_hours=0.0)  # no budget: the steps alone
    rec.update(tr._time_left(step_time=60.0))
    assert rec["eta_h"] == pytest.approx(1.0) and rec["budget_left_h"] is None
    assert tr._progress_line(rec).endswith("| ETA 1h00m | budget left none")


def test_unencodable_sample_prompt_is_refused_at_start(tmp_path):
    """A sample_prompt the char vocabulary cannot encode stopped the run at its first sample (losing the steps
    since the last checkpoint); now the trainer refuses it before the first step."""
    cfg = cfg_for(tmp_path, "--sample_interval=5", "--sample_prompt=Zo\u00eb, \u2603")
    with pytest.raises(NanoGPT2Error, match=r"sample_prompt='Zoë, ☃' cannot be encoded by the char tokenizer: it "
                                            r"has characters the dataset's character vocabulary lacks: \['ë', '☃'\]"):
        tiny_trainer(cfg)
    assert not list(Path(cfg.out_dir).glob("checkpoint_*.pt")) and not (Path(cfg.out_dir) / "metrics.jsonl").exists()
    tiny_trainer(cfg.replace(sample_interval=0))  # a prompt that is never used is not checked
    tiny_trainer(cfg.replace(sample_prompt="ROMEO:"))


def test_train_py_unencodable_sample_prompt_keeps_the_run_files(tmp_path):
    """Resuming with a prompt the vocabulary cannot encode: status 2, one line, and the run's checkpoints and
    metrics (and config.json: it is written only once the data and prompt checks passed) are left exactly as
    they were."""
    env = {**os.environ, "NANOGPT2_CACHE": os.environ["NANOGPT2_CACHE"], "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), TINY, "--max_iters=4", "--eval_interval=2", f"--out_dir={out}"]
    first = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = subprocess.run([*args, "--max_iters=8", "--resume_from=auto", "--sample_interval=1",
                          "--sample_prompt=na\u00efve"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: sample_prompt='naïve' cannot be encoded"), res.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert "checkpoint_final.pt" in after and "step 5/8" not in res.stdout


def test_init_from_training_checkpoint(tmp_path):
    cfg = cfg_for(tmp_path, "--max_iters=3", "--checkpoint_interval=0", "--eval_interval=0")
    first = Trainer(cfg)
    first.train()
    cfg2 = cfg_for(tmp_path / "ft", f"--init_from={cfg.out_dir}", "--max_iters=1", "--eval_interval=0")
    second = Trainer(cfg2)
    for k, v in first.raw_model.state_dict().items():
        assert torch.equal(second.raw_model.state_dict()[k], v)
    assert second.step == 0  # weights only: a new run
    # eval_only: one evaluation of those weights, no training, no checkpoint
    ev = Trainer(cfg_for(tmp_path / "ev", f"--init_from={cfg.out_dir}", "--eval_only=true")).train()
    assert ev["stopped"] == "eval_only" and ev["step"] == 0
    assert ev["val_loss"] == pytest.approx(first.evaluate_val()["val_loss"], rel=1e-6)
    assert not list((tmp_path / "ev" / "run").glob("checkpoint_*.pt"))


def test_init_from_hf_folder_loads_reference_weights_and_crops(tmp_path):
    """init_from=<HF folder>: the transformers-written fixture, whose logits transformers computed."""
    hf = HF_TINY
    ids = torch.from_numpy(np.load(hf / "input_ids.npy")).long()  # (1, 32)
    want = torch.from_numpy(np.load(hf / "logits.npy"))  # (1, 32, 96)
    Ids = RandomIds

    cfg = cfg_for(tmp_path, f"--init_from={hf}", "--block_size=32", "--max_iters=2", "--checkpoint_interval=0")
    tr = Trainer(cfg, make_sampler=lambda t: Ids(t.rows_per_step))
    torch.testing.assert_close(tr.raw_model.eval()(ids)[0], want, atol=1e-5, rtol=1e-4)
    cropped = Trainer(cfg.replace(block_size=16), make_sampler=lambda t: Ids(t.rows_per_step))
    assert cropped.raw_model.config.block_size == 16 and cropped.raw_model.transformer.wpe.weight.shape == (16, 16)
    torch.testing.assert_close(cropped.raw_model.eval()(ids[:, :16])[0], want[:, :16], atol=1e-5, rtol=1e-4)
    assert cropped.train()["stopped"] == "done"
    fresh = cfg.replace(out_dir=str(tmp_path / "another"))  # the cropped run finished in cfg's out_dir
    with pytest.raises(NanoGPT2Error, match="exceeds the model's context of 32 tokens"):
        Trainer(fresh.replace(block_size=64), make_sampler=lambda t: Ids(t.rows_per_step))
    with pytest.raises(NanoGPT2Error, match="did you mean gpt2"):
        Trainer(fresh.replace(init_from="gtp2"), make_sampler=lambda t: Ids(t.rows_per_step))


def test_init_from_gpt2_name_downloads_once_from_the_hub_endpoint(tmp_path, monkeypatch):
    """init_from=gpt2: config.json + model.safetensors fetched from $NANOGPT2_HF_ENDPOINT (a loopback server
    serving the transformers-written fixture under openai-community/gpt2), cached, then loaded."""
    files = {f"/openai-community/gpt2/resolve/main/{name}": (HF_TINY / name).read_bytes()
             for name in ("config.json", "model.safetensors")}
    ids = torch.from_numpy(np.load(HF_TINY / "input_ids.npy")).long()  # (1, 32)
    want = torch.from_numpy(np.load(HF_TINY / "logits.npy"))  # (1, 32, 96)
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    cfg = cfg_for(tmp_path, "--init_from=gpt2", "--block_size=32", "--max_iters=1", "--checkpoint_interval=0")
    with serve(files) as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        tr = Trainer(cfg, make_sampler=lambda t: RandomIds(t.rows_per_step))
        torch.testing.assert_close(tr.raw_model.eval()(ids)[0], want, atol=1e-5, rtol=1e-4)
        Trainer(cfg, make_sampler=lambda t: RandomIds(t.rows_per_step))  # second run: from the cache
        assert all(srv.hits[path] == 1 for path in files), srv.hits
    assert (tmp_path / "cache" / "models" / "gpt2" / "model.safetensors").is_file()


def test_compile_default_and_checkpoints_come_from_the_raw_model(tmp_path):
    assert resolve_compile(None, torch.device("cuda")) is True and resolve_compile(None, torch.device("cpu")) is False
    assert resolve_compile(False, torch.device("cuda")) is False and resolve_compile(True, torch.device("cpu")) is True
    base = cfg_for(tmp_path, "--max_iters=1", "--compile=auto", "--vocab_size=65")
    plain = tiny_trainer(base)
    assert plain.model is plain.raw_model  # CPU default: no compile
    tr = tiny_trainer(base.replace(compile=True))  # wrapped lazily: nothing is compiled until a forward
    assert tr.model is not tr.raw_model and tr.model._orig_mod is tr.raw_model
    assert all(k.startswith("_orig_mod.") for k in tr.model.state_dict())
    saved = torch.load(tr.save("step_1"), map_location="cpu", weights_only=True)["model"]
    assert saved.keys() == tr.raw_model.state_dict().keys()  # no "_orig_mod." prefix


# ----------------------------------------------------------------------------------------------------
# Precision and bad steps


def test_float16_gradscaler_skips_inf_gradient_and_halves_scale(tmp_path):
    cfg = cfg_for(tmp_path, "--dtype=float16", "--max_iters=6", "--checkpoint_interval=0", "--vocab_size=65")
    snapshots = []

    def snapshot(trainer, event):
        if event == "step_end":
            snapshots.append(trainer.raw_model.lm_head.weight.detach().clone())

    tr = tiny_trainer(cfg, hooks=[snapshot])
    assert tr.scaler.is_enabled() and tr.device.type == "cpu"
    inject_at = 3  # optimizer step index 3 (0-based), logged as step 4

    def poison(grad):
        return torch.full_like(grad, float("inf")) if tr.step == inject_at else grad

    tr.raw_model.transformer.h[0].mlp.c_fc.weight.register_hook(poison)
    summary = tr.train()
    recs = {r["step"]: r for r in records(cfg)}
    assert recs[4].get("overflow") is True and not math.isfinite(recs[4]["grad_norm"])
    assert recs[4]["loss_scale"] == recs[3]["loss_scale"] / 2
    assert all(not recs[s].get("overflow") for s in (1, 2, 3, 5, 6))
    assert torch.equal(snapshots[3], snapshots[2])  # the poisoned step changed nothing
    assert not torch.equal(snapshots[2], snapshots[1]) and not torch.equal(snapshots[4], snapshots[3])
    assert summary["overflow_steps"] == 1 and summary["bad_steps"] == 0
    assert all(torch.isfinite(p).all() for p in tr.raw_model.parameters())
    assert all(s.dtype == torch.float32 for st in tr.optimizer.state.values() for s in st.values() if s.dim())


def test_float16_gradients_are_unscaled_before_their_norm_is_clipped(tmp_path):
    """The GradScaler's factor (2**16 at the start) comes off before the gradient norm is measured and clipped
    (scaler.unscale_ before clip_grad_norm_): a float16 run's first step logs float32's norm, not 65536 times it."""
    norms = {}
    for dtype in ("float32", "float16"):
        cfg = cfg_for(tmp_path / dtype, f"--dtype={dtype}", "--max_iters=1", "--checkpoint_interval=0",
                      "--vocab_size=65", "--grad_clip=0.01", "--eval_interval=0")
        tr = tiny_trainer(cfg)
        assert tr.scaler.is_enabled() == (dtype == "float16")
        tr.train()
        norms[dtype] = records(cfg)[0]["grad_norm"]
    assert norms["float32"] > 0.01  # so the clip acts
    assert norms["float16"] == pytest.approx(norms["float32"], rel=0.05)


def test_bfloat16_autocast_trains(tmp_path):
    cfg = cfg_for(tmp_path, "--dtype=bfloat16", "--max_iters=5", "--checkpoint_interval=0", "--vocab_size=65")
    tr = tiny_trainer(cfg)
    tr.train()
    assert not tr.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in tr.raw_model.parameters())
    assert records(cfg)[-1]["loss"] < records(cfg)[0]["loss"]


def test_non_finite_loss_is_skipped_then_stops_the_run(tmp_path):
    cfg = cfg_for(tmp_path, "--max_iters=20", "--checkpoint_interval=5", "--eval_interval=0", "--max_bad_steps=3",
                  "--vocab_size=65")
    bad = {2} | set(range(7, 20))  # one transient NaN (0-based step 2), then NaN from step 7 on

    def loss_fn(trainer, model, batch):
        assert trainer is tr
        loss = model(*batch)[1]
        return (loss * float("nan") if tr.step in bad else loss), batch[1].numel()

    weights = []
    tr = tiny_trainer(cfg, loss_fn=loss_fn,
                      hooks=[lambda t, e: e == "step_end" and weights.append(t.raw_model.lm_head.weight.detach().clone())])
    with pytest.raises(NanoGPT2Error, match=r"non-finite for 3 steps in a row \(steps 8-10\).*checkpoint_step_5"):
        tr.train()
    recs = {r["step"]: r for r in records(cfg)}
    assert recs[3].get("bad_step") and not recs[4].get("bad_step")
    assert torch.equal(weights[2], weights[1])  # the skipped step left the weights alone
    assert not torch.equal(weights[3], weights[2])  # and training went on
    assert tr.bad_steps_total == 4
    assert sorted(p.name for p in Path(cfg.out_dir).glob("checkpoint_*.pt")) == ["checkpoint_step_5.pt"]
    good = ckpt_io.load_checkpoint(Path(cfg.out_dir) / "checkpoint_step_5.pt")
    assert good["step"] == 5 and all(torch.isfinite(v).all() for v in good["model"].values())


# ----------------------------------------------------------------------------------------------------
# Epochs, eval_only, outputs


def test_epoch_end_evaluates_and_checkpoints(tmp_path):
    cfg = cfg_for(tmp_path, "--max_iters=0", "--max_epochs=4", "--eval_interval=0", "--checkpoint_interval=0",
                  "--keep_last=2", "--vocab_size=65")
    calls = []

    def eval_fn(trainer):
        calls.append(trainer.step)
        return {"val_loss": 10.0 - trainer.step}

    tr = tiny_trainer(cfg, eval_fn=eval_fn, steps_per_epoch=4)
    summary = tr.train()
    assert tr.max_steps == 16 and summary["step"] == 16
    assert calls == [4, 8, 12, 16]
    recs = records(cfg)
    assert [r["epoch"] for r in recs if "val_loss" in r] == [1, 2, 3, 4]
    names = sorted(p.name for p in Path(cfg.out_dir).glob("checkpoint_*.pt"))  # epoch 1 pruned (keep_last=2)
    assert names == ["checkpoint_best.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt", "checkpoint_final.pt"]
    assert ckpt_io.load_checkpoint(Path(cfg.out_dir) / "checkpoint_epoch_3.pt")["epoch"] == 3


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_for(tmp_path, "--max_iters=6", "--eval_interval=3", "--tensorboard=true", "--plot=false",
                  "--checkpoint_interval=0")
    Trainer(cfg).train()
    events = EventAccumulator(str(Path(cfg.out_dir) / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in loss] == list(range(1, 7))
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in records(cfg)], rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [3, 6]  # one tag scheme: train/..., val/...
    assert "val_loss" not in events.Tags()["scalars"]


def test_plot_png_when_matplotlib_installed(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = cfg_for(tmp_path, "--max_iters=6", "--eval_interval=3", "--tensorboard=false", "--plot=true",
                  "--checkpoint_interval=0")
    Trainer(cfg).train()
    png = (Path(cfg.out_dir) / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sigint_saves_then_init_from_resume_continues_bit_for_bit(tmp_path, capsys):
    """In-process: a real SIGINT at step 3 finishes the step, saves checkpoint_interrupted.pt and returns;
    init_from=resume continues to step 6 exactly like an uninterrupted run (dropout on: RNG states matter).
    The CPU MFU probe is cached per process; clearing it makes the first run probe and the second not, which
    must not change the training (the probe must not draw from the global RNG)."""
    args = ("--max_iters=6", "--dropout=0.1", "--checkpoint_interval=0", "--vocab_size=65")
    measured_matmul_flops.cache_clear()
    ref_cfg = cfg_for(tmp_path / "ref", *args)
    ref = tiny_trainer(ref_cfg, fixed=False)
    ref.train()

    def interrupt(trainer, event):
        if event == "step_end" and trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    cfg = cfg_for(tmp_path / "cut", *args)
    summary = tiny_trainer(cfg, fixed=False, hooks=[interrupt]).train()
    assert summary["stopped"] == "signal" and summary["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler_before  # our handlers are gone again
    out = capsys.readouterr().out
    assert "SIGINT received" in out and "stopped by SIGINT after step 3" in out
    assert sorted(p.name for p in Path(cfg.out_dir).glob("checkpoint_*.pt")) == ["checkpoint_interrupted.pt"]

    resumed = tiny_trainer(cfg.replace(init_from="resume"), fixed=False)
    assert resumed.step == 3
    assert resumed.train()["stopped"] == "done"
    hexes = lambda c: [float.hex(r["loss"]) for r in records(c)]  # noqa: E731
    assert hexes(cfg) == hexes(ref_cfg) and len(hexes(cfg)) == 6
    for k, v in ref.raw_model.state_dict().items():
        assert torch.equal(resumed.raw_model.state_dict()[k], v), k


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file intact and no temp file; publishing is a rename."""
    path = tmp_path / "checkpoint_step_1.pt"
    ckpt_io.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "model_config": {}, "step": 1})
    before = path.read_bytes()

    class Unwritable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ckpt_io.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "model_config": {}, "step": 2, "x": Unwritable()})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]

    renames, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b))[1])
    ckpt_io.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "model_config": {}, "step": 3})
    (src, dst), = renames
    assert dst == path and src.parent == path.parent and src != path and not src.exists()
    assert ckpt_io.load_checkpoint(path)["step"] == 3


def test_missing_tensorboard_and_matplotlib_are_not_errors(tmp_path, monkeypatch, capsys):
    for name in ("tensorboard", "torch.utils.tensorboard", "matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError, as when absent
    cfg = cfg_for(tmp_path, "--max_iters=3", "--tensorboard=true", "--plot=true", "--checkpoint_interval=0",
                  "--vocab_size=65")
    assert tiny_trainer(cfg).train()["stopped"] == "done"
    out = capsys.readouterr().out
    assert "tensorboard is not installed" in out and "matplotlib is not installed" in out
    run = Path(cfg.out_dir)
    assert not (run / "tensorboard").exists() and not (run / "training_curves.png").exists()
    assert len(records(cfg)) == 3


def test_resume_errors(tmp_path):
    cfg = cfg_for(tmp_path, "--init_from=resume", "--vocab_size=65")
    with pytest.raises(NanoGPT2Error, match="no checkpoint"):
        tiny_trainer(cfg)
    bad = tmp_path / "run" / "checkpoint_step_5.pt"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(NanoGPT2Error, match="unreadable"):
        tiny_trainer(cfg_for(tmp_path, "--resume_from=auto", "--vocab_size=65"))
    with pytest.raises(NanoGPT2Error, match="does not exist|neither"):
        tiny_trainer(cfg_for(tmp_path, f"--resume_from={tmp_path / 'nope.pt'}", "--vocab_size=65"))


def test_final_test_evaluation_on_a_dataset_with_a_test_split(tmp_path, monkeypatch):
    """A folder with train/val/test files: after the last step the trainer scores the test split with the
    strided perplexity of nanogpt2.evaluate, logs it and appends it to metrics.jsonl (test_eval)."""
    from nanogpt2.data import prepare_dataset
    from nanogpt2.evaluate import evaluate_perplexity

    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text()
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "train.txt").write_text(text[:20000])
    (data / "val.txt").write_text(text[20000:24000])
    (data / "test.txt").write_text(text[24000:27000])
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    cfg = cfg_for(tmp_path, f"--dataset={data}", "--tokenizer=char", "--max_iters=4", "--eval_interval=0",
                  "--checkpoint_interval=0", "--test_stride=16")
    tr = Trainer(cfg)
    tr.train()
    test = records(cfg)[-1]
    assert set(test) >= {"step", "test_loss", "test_ppl", "test_bits_per_byte"} and test["step"] == 4
    ds = prepare_dataset(str(data), tokenizer="char", quiet=True)
    tr.raw_model.eval()
    ref = evaluate_perplexity(tr.raw_model, ds.tokens("test"), block_size=32, stride=16, batch_size=4)
    assert test["test_loss"] == pytest.approx(ref["loss"], rel=1e-6) and test["test_stride"] == 16
    assert test["test_tokens"] == ref["tokens"] == len(text[24000:27000]) - 1  # every token but the first
    assert test["test_ppl"] == pytest.approx(math.exp(test["test_loss"]))
    # resuming the finished run redoes the test evaluation instead of adding a second record
    again = Trainer(cfg_for(tmp_path, f"--dataset={data}", "--tokenizer=char", "--max_iters=4", "--eval_interval=0",
                            "--checkpoint_interval=0", "--test_stride=16", "--resume_from=auto")).train()
    recs = records(cfg)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4] and [r for r in recs if "test_loss" in r] == [test]
    assert again["test"] == test
    # a test split too short to score: a warning, the finished run stands
    (data / "test.txt").write_text("a")  # one token: nothing to score
    short = Trainer(cfg_for(tmp_path / "short", f"--dataset={data}", "--tokenizer=char", "--max_iters=2",
                            "--eval_interval=0", "--checkpoint_interval=0")).train()
    assert short["stopped"] == "done" and short["test"] is None
    # turned off: no test record
    cfg2 = cfg_for(tmp_path / "off", f"--dataset={data}", "--tokenizer=char", "--max_iters=2",
                   "--eval_interval=0", "--checkpoint_interval=0", "--test_eval=false")
    Trainer(cfg2).train()
    assert not any("test_loss" in r for r in records(cfg2))
