"""
DDP with torchrun on CPU (gloo): 2 processes x 2 micro-steps give the same per-step loss as 1 process x 4
micro-steps (gradient_accumulation_steps is the global count and the sampler hands each rank its slice of
the same windows), and only rank 0 writes files or prints (rank 1's writes under out_dir are recorded by an
audit hook: none). Gradients are all-reduced once per optimizer step (no_sync on the other micro-steps,
counted by a DDP comm hook) and the process group is destroyed on the way out. A SIGTERM to rank 1 alone
stops both ranks at the same step with a checkpoint, and `--resume_from auto` under torchrun continues bit
for bit. The final test evaluation is sharded over the ranks and gives the single process's figure.

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


# main() as train.py runs it, plus: a real SIGTERM sent to rank 1 only, after step 3; a DDP comm hook that
# counts the gradient all-reduces ending a backward pass per optimizer step (no_sync on all micro-steps but
# the last: one per step); an audit hook that records every write rank 1 makes under out_dir (there must be
# none); and whether the process group is left after main() returns.
DRIVER = textwrap.dedent("""
    import os, signal, sys
    import torch.distributed as td
    import torch.nn.parallel
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main

    RANK = int(os.environ["RANK"])
    OUT = os.path.abspath(os.environ["RUN_OUT_DIR"])
    syncs = [0]  # of the current optimizer step
    writes = []

    class CountingDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

            def hook(process_group, bucket):
                if bucket.is_last():
                    syncs[-1] += 1
                return allreduce_hook(process_group, bucket)

            self.register_comm_hook(None, hook)

    torch.nn.parallel.DistributedDataParallel = CountingDDP  # the trainer imports it from there when wrapping

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            if not (any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return
        elif event not in ("os.rename", "os.remove", "os.mkdir", "os.truncate", "shutil.rmtree"):
            return
        if isinstance(args[0], (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(args[0])).startswith(OUT):
            writes.append((event, os.fsdecode(args[0])))

    if RANK != 0:
        sys.addaudithook(audit)

    # Each rank reports through a file of its own (two processes printing to one pipe can interleave).
    REPORT = open(os.path.join(os.environ["RUN_REPORT_DIR"], f"rank{RANK}.txt"), "a")

    def report(line):
        REPORT.write(line + "\\n")
        REPORT.flush()

    def hook(trainer, event):
        if event == "step_end":
            report(f"rank {RANK} step {trainer.step} syncs {syncs[-1]}")
            syncs.append(0)
            if trainer.step == 3 and RANK == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        run_cli(main, sys.argv[1:], hooks=[hook])
    except SystemExit as e:  # 75: stopped by a signal (main exits with it, as train.py does)
        report(f"rank {RANK} exit status {e.code}")
        raise
    finally:
        report(f"rank {RANK} writes under out_dir: {writes}")
        report(f"rank {RANK} process group left: {not td.is_initialized()}")
""")


def torchrun(script, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(script), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env, ok=True):
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (res.returncode == 0) == ok, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    # Tiny Shakespeare as a folder with a test split, so the runs end with the final (sharded) test evaluation.
    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, (begin, end) in dict(train=(0, 200_000), val=(200_000, 220_000), test=(220_000, 240_000)).items():
        (corpus / f"{split}.txt").write_text(text[begin:end])
    args = [*ARGS, f"--dataset={corpus}", "--tokenizer=char", "--test_stride=16"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run([sys.executable, str(ROOT / "train.py"), *args, f"--out_dir={single}"], env)
    res = run(torchrun(ROOT / "train.py", *args, f"--out_dir={ddp}"), env)

    assert "2 process(es) on cpu" in res.stdout and "(2 per process)" in res.stdout
    (test_a,), (test_b,) = ([r for r in records(out) if "test_loss" in r] for out in (single, ddp))
    assert test_a["test_tokens"] == test_b["test_tokens"] == 20_000 - 1  # both processes' shares, summed
    assert abs(test_a["test_loss"] - test_b["test_loss"]) < 1e-5
    assert res.stdout.count("test (19,999 tokens") == 1  # rank 0 alone logs it
    a, b = ([r for r in records(out) if "test_loss" not in r] for out in (single, ddp))
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
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(DRIVER)
    reports = [tmp_path / "report_first", tmp_path / "report_second"]
    for d in reports:
        d.mkdir()
    env_cut = {**env, "RUN_OUT_DIR": str(cut), "RUN_REPORT_DIR": str(reports[0])}
    # Both ranks exit with status 75 (interrupted, resumable); torchrun reports its workers' failure (non-zero).
    first = run(torchrun(driver, *args, f"--out_dir={cut}"), env_cut, ok=False)
    assert "stopped by a signal on another process after step 3" in first.stdout  # rank 0 stopped with rank 1
    for rank in (0, 1):
        assert f"rank {rank} exit status 75" in (reports[0] / f"rank{rank}.txt").read_text().splitlines()
    assert ck_step(cut / "checkpoint_interrupted.pt") == 3
    second = run(torchrun(driver, *args, f"--out_dir={cut}", "--resume_from=auto"), {**env_cut, "RUN_REPORT_DIR": str(reports[1])})
    assert "checkpoint_interrupted.pt at step 3" in second.stdout
    assert [float.hex(r["loss"]) for r in records(cut) if "loss" in r] == [float.hex(r["loss"]) for r in b]
    final = torch.load(cut / "checkpoint_final.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in ck["model"].items())
    for report, steps in zip(reports, (range(1, 4), range(4, 7))):
        for rank in (0, 1):
            lines = (report / f"rank{rank}.txt").read_text().splitlines()
            # 2 micro-steps per rank and step, gradients all-reduced once: no_sync on the first
            assert lines[:3] == [f"rank {rank} step {s} syncs 1" for s in steps], lines
            assert lines[-1] == f"rank {rank} process group left: True", lines
        # checkpoints, metrics, config: rank 0 only
        assert "rank 1 writes under out_dir: []" in (report / "rank1.txt").read_text().splitlines()


def ck_step(path):
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


@pytest.mark.slow
def test_torchrun_unwritable_out_dir_stops_every_rank(tmp_path):
    # Rank 0 cannot create out_dir (a file stands in its way); rank 1 must stop with it, not wait at the
    # next collective: torchrun exits non-zero within the timeout, and rank 0's message is the one line printed.
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    (tmp_path / "a_file").write_text("")
    res = subprocess.run(torchrun(ROOT / "train.py", *ARGS, f"--out_dir={tmp_path / 'a_file' / 'run'}"),
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    # rank 1 stopped on the shared flag, silently: one voice, rank 0's line alone
    assert len(ours) == 1 and ours[0].startswith("error: cannot write to out_dir="), res.stderr[-2000:]
    # (torchrun's own agent then reports the failed children with a traceback of its own; ours print none)
    assert "NanoGPT2Error" not in res.stderr
