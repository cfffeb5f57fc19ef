"""
Interruptions, end to end through train.py in subprocesses (tiny config, CPU):

- exact resume: 20 uninterrupted steps vs 10 steps stopped by a real SIGTERM + `--resume_from auto` to 20:
  the losses of steps 11-20 and the final weights are equal bit for bit (dropout on, so the RNG states
  must be restored too);
- wall-clock stop: a tiny max_training_hours saves checkpoint_time_limit.pt and exits 0; resuming continues
  and again reproduces the uninterrupted run.

    python -m pytest -q tests/test_train_resume.py
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
COMMON = [TINY, "--max_iters=20", "--dropout=0.1", "--eval_interval=5", "--checkpoint_interval=5"]

# Runs main() exactly as train.py does, plus a hook that sends this process a real SIGTERM at a step.
SIGTERM_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main

    STOP_AT = int(os.environ["STOP_AT_STEP"])

    def hook(trainer, event):
        if event == "step_end" and trainer.step == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)

    run_cli(main, sys.argv[1:], hooks=[hook])
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "NANOGPT2_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def run(args, env, script=None, status=0, **extra_env):
    cmd = [sys.executable, script or str(ROOT / "train.py"), *args]
    res = subprocess.run(cmd, env={**env, **extra_env}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == status, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    return res


def losses(out_dir):
    recs = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), f"duplicate or unordered records: {steps}"
    return {r["step"]: float.hex(r["loss"]) for r in recs}


def final_weights(out_dir):
    return torch.load(Path(out_dir) / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run([*COMMON, f"--out_dir={out}"], env)
    return losses(out), final_weights(out)


def test_sigterm_then_resume_is_bit_exact(env, reference, tmp_path):
    ref_losses, ref_weights = reference
    assert sorted(ref_losses) == list(range(1, 21))
    out = tmp_path / "run"
    driver = tmp_path / "sigterm_driver.py"
    driver.write_text(SIGTERM_DRIVER)

    first = run([*COMMON, f"--out_dir={out}"], env, script=str(driver), status=75, STOP_AT_STEP="10")
    assert "SIGTERM received" in first.stdout
    assert "stopped by SIGTERM after step 10" in first.stdout
    saved = torch.load(out / "checkpoint_interrupted.pt", map_location="cpu", weights_only=True)
    assert set(saved) >= {"model", "model_config", "run_config", "tokenizer", "optimizer", "scaler", "scheduler", "step",
                          "epoch", "best_val_loss", "sampler", "rng"}
    assert saved["step"] == 10 and saved["sampler"]["step"] == 10 and saved["run_config"]["dropout"] == 0.1
    assert set(saved["rng"]) >= {"python", "numpy", "torch", "cuda"}
    assert len(saved["optimizer"]["state"]) == len(saved["optimizer"]["param_groups"][0]["params"]) + len(
        saved["optimizer"]["param_groups"][1]["params"])  # AdamW moments of every parameter
    assert saved["best_val_loss"] == min(r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                                         if "val_loss" in r)
    assert not (out / "checkpoint_final.pt").exists()
    assert sorted(losses(out)) == list(range(1, 11))

    second = run([*COMMON, f"--out_dir={out}", "--resume_from", "auto"], env)
    assert "checkpoint_interrupted.pt at step 10" in second.stdout
    assert "step 11/20" in second.stdout and "step 10/20" not in second.stdout
    resumed = losses(out)
    assert resumed == ref_losses  # steps 1-10 from the first run, 11-20 from the resumed one: bit for bit
    assert_same_weights(final_weights(out), ref_weights)


def test_wall_clock_limit_saves_and_exits_zero_then_resumes(env, reference, tmp_path):
    ref_losses, ref_weights = reference
    out = tmp_path / "run"
    first = run([*COMMON, f"--out_dir={out}", "--max_training_hours=1e-9"], env)
    assert f"effective config (config files: {TINY}; * = not the default):" in first.stdout
    assert {"*max_training_hours=1e-09", "*dropout=0.1", "*max_iters=20"} <= set(first.stdout.split())
    assert json.loads((out / "config.json").read_text())["max_training_hours"] == 1e-9
    assert re.search(r"\| elapsed \d+s \| ETA 0s \(time limit\) \| budget left 0s$", first.stdout, re.M)
    assert "wall-clock limit max_training_hours=1e-09 reached after step 1" in first.stdout
    assert (out / "checkpoint_time_limit.pt").exists() and not (out / "checkpoint_final.pt").exists()
    assert sorted(losses(out)) == [1]

    # --resume_from PATH (the SIGTERM test uses auto); a newer checkpoint in the folder must not be picked
    (out / "checkpoint_step_99.pt").write_bytes((out / "checkpoint_time_limit.pt").read_bytes()[:100])
    second = run([*COMMON, f"--out_dir={out}", "--resume_from", str(out / "checkpoint_time_limit.pt")], env)
    (out / "checkpoint_step_99.pt").unlink(missing_ok=True)
    assert "checkpoint_time_limit.pt at step 1" in second.stdout
    assert "done: 20 steps" in second.stdout
    assert losses(out) == ref_losses
    assert_same_weights(final_weights(out), ref_weights)


# The SIGTERM driver with a GradScaler that starts high and grows every 3 clean steps, so that within a short
# run its scale both backs off (inf gradients, skipped steps) and grows: a resume that lost the scaler's
# state (scale or growth tracker) would take other steps.
FP16_DRIVER = textwrap.dedent("""
    import functools, os, runpy, sys
    import torch
    torch.amp.GradScaler = functools.partial(torch.amp.GradScaler, init_scale=2.0**24, growth_interval=3)
    exec(compile(os.environ["SIGTERM_DRIVER"], "sigterm_driver", "exec"))
""")


def test_float16_gradscaler_resume_is_bit_exact(env, tmp_path):
    """float16 autocast (CPU supports it) trains through a GradScaler: its state (scale, growth tracker) is
    saved at the interruption and restored, so the resumed run equals the uninterrupted one bit for bit."""
    fp16 = [*COMMON, "--dtype=float16", "--max_iters=14"]
    driver = tmp_path / "fp16_driver.py"
    driver.write_text(FP16_DRIVER)
    env = {**env, "SIGTERM_DRIVER": SIGTERM_DRIVER}
    ref = tmp_path / "ref"
    run([*fp16, f"--out_dir={ref}"], env, script=str(driver), STOP_AT_STEP="-1")
    scales = [r["loss_scale"] for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines()) if "loss_scale" in r]
    assert len(scales) == 14
    assert any(b < a for a, b in zip(scales, scales[1:])) and any(b > a for a, b in zip(scales, scales[1:])), scales

    out = tmp_path / "run"
    run([*fp16, f"--out_dir={out}"], env, script=str(driver), status=75, STOP_AT_STEP="7")
    saved = torch.load(out / "checkpoint_interrupted.pt", map_location="cpu", weights_only=True)["scaler"]
    assert saved["scale"] == scales[6]  # the scale after step 7
    run([*fp16, f"--out_dir={out}", "--resume_from", "auto"], env, script=str(driver), STOP_AT_STEP="-1")
    assert losses(out) == losses(ref)
    assert_same_weights(final_weights(out), final_weights(ref))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_train_py_saves_and_exits_75(env, tmp_path, sig):
    """The real script, a real signal from outside (a scheduler's preemption, Ctrl-C) in the middle of a long run:
    checkpoint_interrupted.pt is saved and the exit status is 75 ("interrupted, resumable"), not 0 (finished or
    stopped at max_training_hours) nor 2 (an error); no `error:` line, no traceback."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), TINY, "--max_iters=100000", "--log_interval=1",
           "--eval_interval=0", "--checkpoint_interval=0", f"--out_dir={out}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:  # wait for a few steps
            lines.append(line)
            if line.startswith("step 3/100000 |"):
                break
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = "".join(lines) + stdout
    assert proc.returncode == 75, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr and "error:" not in stderr, stderr
    assert f"stopped by {sig.name} after step" in stdout and "continue with --resume_from auto" in stdout
    saved = torch.load(out / "checkpoint_interrupted.pt", map_location="cpu", weights_only=True)
    assert 3 <= saved["step"] < 100000 and not (out / "checkpoint_final.pt").exists()
