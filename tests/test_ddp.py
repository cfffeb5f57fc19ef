"""
DDP with torchrun on CPU (gloo): 2 processes x 2 micro-steps give the same per-step loss as 1 process x 4
micro-steps (gradient_accumulation_steps is the global count and the sampler hands each rank its slice of
the same windows), and only rank 0 writes files or prints. A SIGTERM to rank 1 alone stops both ranks
at the same step with a checkpoint, and `--resume_from auto` under torchrun continues bit for bit.

    python -m pytest -q tests/test_ddp.py
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ARGS = [str(ROOT / "configs" / "tiny.py"), "--gradient_accumulation_steps=4", "--max_iters=6", "--eval_interval=3",
        "--checkpoint_interval=3", "--dropout=0.0"]


# main() as train.py runs it, plus a real SIGTERM sent to rank 1 only, after step 3.
SIGTERM_RANK1 = textwrap.dedent("""
    import os, signal, sys
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main

    def hook(trainer, event):
        if event == "step_end" and trainer.step == 3 and trainer.dist.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    run_cli(main, sys.argv[1:], hooks=[hook])
""")


def torchrun(script, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(script), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env):
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run([sys.executable, str(ROOT / "train.py"), *ARGS, f"--out_dir={single}"], env)
    res = run(torchrun(ROOT / "train.py", *ARGS, f"--out_dir={ddp}"), env)

    assert "2 process(es) on cpu" in res.stdout and "(2 per process)" in res.stdout
    a, b = records(single), records(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # one writer: no duplicates
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-6, (ra["step"], ra["loss"], rb["loss"])
        assert ra["lr"] == rb["lr"]
        assert ra["tokens"] == rb["tokens"] == 4 * 4 * 32 * ra["step"]
    assert [r["step"] for r in b if "val_loss" in r] == [3, 6]
    for ra, rb in zip(a, b):
        if "val_loss" in ra:
            assert abs(ra["val_loss"] - rb["val_loss"]) < 1e-6
    # rank 0 alone prints and writes
    for step in range(1, 7):
        assert res.stdout.count(f"step {step}/6 |") == 1
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    ck = torch.load(ddp / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]["per_rank"]) == 2
    assert not torch.equal(ck["rng"]["per_rank"][0]["torch"], ck["rng"]["per_rank"][1]["torch"])  # seed + rank
    ref = torch.load(single / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    for k, v in ref.items():
        torch.testing.assert_close(ck["model"][k], v, atol=1e-5, rtol=1e-5)

    # Interrupt the DDP run with a SIGTERM to rank 1 only, resume under torchrun: the same run, bit for bit.
    cut = tmp_path / "cut"
    driver = tmp_path / "sigterm_rank1.py"
    driver.write_text(SIGTERM_RANK1)
    first = run(torchrun(driver, *ARGS, f"--out_dir={cut}"), env)
    assert "stopped by a signal on another process after step 3" in first.stdout  # rank 0 stopped with rank 1
    assert ck_step(cut / "checkpoint_interrupted.pt") == 3
    second = run(torchrun(ROOT / "train.py", *ARGS, f"--out_dir={cut}", "--resume_from=auto"), env)
    assert "checkpoint_interrupted.pt at step 3" in second.stdout
    assert [float.hex(r["loss"]) for r in records(cut)] == [float.hex(r["loss"]) for r in b]
    final = torch.load(cut / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in ck["model"].items())


def ck_step(path):
    return torch.load(path, map_location="cpu", weights_only=True)["step"]
