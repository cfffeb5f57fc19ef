"""
Run safety, as users meet it (the real scripts in subprocesses): a run folder has one owner (an OS lock for the
run's life, released by the kernel however the run ends); a fresh run never replaces an earlier one unless asked
(`--overwrite`); two runs preparing one dataset at once share a sound cache; torchrun works for any number of
processes; one voice under torchrun; a lost process ends the run in bounded time and the run resumes, with
another process count too.

    python -m pytest -q tests/test_run_safety.py
"""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT, one_error_line
from nanogpt2.config import load_config
from nanogpt2.distributed import batch_geometry
from nanogpt2.finetuning import FinetuneConfig

TINY = [str(ROOT / "train.py"), str(ROOT / "configs" / "tiny.py"), "--dataset=shakespeare_char"]


def env_for(tmp_path):
    return {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


def train(env, *args, timeout=300):
    return subprocess.run([sys.executable, *TINY, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under a folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------
# A finished run is never replaced by a fresh one


def test_a_fresh_run_into_a_finished_run_is_refused_and_overwrite_starts_over(tmp_path):
    env, out = env_for(tmp_path), tmp_path / "run"
    first = train(env, "--max_iters=20", f"--out_dir={out}")
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(out)
    best = min(r["val_loss"] for r in records(out) if "val_loss" in r)
    line = one_error_line(train(env, "--max_iters=5", f"--out_dir={out}"))
    assert f"holds an earlier run (step 20, best val loss {best:.4f})" in line
    assert "--resume_from auto" in line and "another --out_dir" in line and "--overwrite" in line
    assert snapshot(out) == before  # refused before anything was written: byte-identical

    again = train(env, "--max_iters=5", f"--out_dir={out}", "--overwrite")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "overwrite: removed the earlier run's" in again.stdout and "checkpoint_final.pt" in again.stdout
    assert [r["step"] for r in records(out) if "loss" in r][-1] == 5 and max(r["step"] for r in records(out)) == 5
    assert not (out / "checkpoint_step_10.pt").exists()  # the earlier run's step checkpoint went with it


def test_an_empty_folder_or_unrelated_files_are_used_as_before(tmp_path):
    env, out = env_for(tmp_path), tmp_path / "notes"
    out.mkdir()
    (out / "README.txt").write_text("my notes")
    res = train(env, "--max_iters=3", f"--out_dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "README.txt").read_text() == "my notes" and (out / "checkpoint_final.pt").is_file()


# ----------------------------------------------------------------------------------------------------
# One owner


# train.py's main with a hook that holds the run at step 2 until the test lets it go (or kills it).
HELD = textwrap.dedent("""
    import os, sys, time
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main

    def hold(trainer, event):
        if event == "step_end" and trainer.step == 2:
            open(os.environ["HELD_FLAG"], "w").write(str(os.getpid()))
            for _ in range(600):
                if os.path.exists(os.environ["HELD_GO"]):
                    return
                time.sleep(0.1)

    run_cli(main, sys.argv[1:], hooks=[hold])
""")


def test_a_second_run_into_a_live_run_is_refused_at_once_naming_its_pid(tmp_path):
    env, out = env_for(tmp_path), tmp_path / "run"
    flag, go = tmp_path / "held", tmp_path / "go"
    env = {**env, "HELD_FLAG": str(flag), "HELD_GO": str(go)}
    driver = tmp_path / "held_train.py"
    driver.write_text(HELD)
    first = subprocess.Popen([sys.executable, str(driver), *TINY[1:], "--max_iters=6", "--checkpoint_interval=2",
                              f"--out_dir={out}"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(600):
            if flag.exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), first.communicate()[1][-2000:]
        before = snapshot(out)
        for extra in ([], ["--resume_from=auto"], ["--overwrite"]):
            t0 = time.time()
            line = one_error_line(train(env, "--max_iters=6", f"--out_dir={out}", *extra))
            assert "is in use by a run that is still going" in line and f"PID {first.pid} on " in line, line
            assert time.time() - t0 < 60  # at once: before the data and the model
        assert snapshot(out) == before

        first.send_signal(signal.SIGKILL)  # the kernel releases a killed run's lock: nothing stale is left
        first.wait(timeout=60)
        resumed = train(env, "--max_iters=6", f"--out_dir={out}", "--resume_from=auto")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resumed from" in resumed.stdout and "checkpoint_step_2.pt" in resumed.stdout
    finally:
        go.write_text("go")
        if first.poll() is None:
            first.kill()
        first.communicate()


# ----------------------------------------------------------------------------------------------------
# The dataset cache


def test_two_runs_preparing_one_dataset_at_once_share_a_sound_cache(tmp_path):
    env = env_for(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Two runs, one cache, no corruption. " * 20000, encoding="utf-8")
    runs = [subprocess.Popen([sys.executable, *TINY, f"--dataset={corpus}", "--tokenizer=gpt2", "--max_iters=2",
                              "--eval_iters=1", f"--out_dir={tmp_path / f'run{i}'}"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [o[1][-2000:] for o in outs]
    from nanogpt2.data import prepare_dataset
    from nanogpt2.tokenizer import get_tokenizer

    ds = prepare_dataset(corpus, tokenizer="gpt2", cache_root=tmp_path / "cache" / "data", quiet=True)
    assert not ds.built  # both runs left one complete cache: nothing to rebuild
    ids = get_tokenizer("gpt2").encode_ordinary(corpus.read_text(encoding="utf-8"))
    assert len(ds.tokens("train")) + len(ds.tokens("val")) == len(ids)
    assert ds.tokens("train").tolist() + ds.tokens("val").tolist() == ids


# ----------------------------------------------------------------------------------------------------
# torchrun for every N


@pytest.mark.parametrize("config", sorted(glob.glob(str(ROOT / "configs" / "*.py"))), ids=lambda p: Path(p).name)
def test_every_config_has_a_batch_geometry_for_1_to_8_processes(config):
    cfg = load_config([config], cls=FinetuneConfig)
    for n in range(1, 9):
        g = batch_geometry(cfg, n)
        accum = g.accum_steps
        assert g.micro_steps * n == accum and g.rows_per_step == cfg.batch_size * g.micro_steps
        assert g.tokens_per_step == cfg.batch_size * cfg.block_size * accum
        configured = cfg.tokens_per_step // (cfg.batch_size * cfg.block_size) if cfg.tokens_per_step else \
            cfg.gradient_accumulation_steps
        if configured % n == 0:  # nanoGPT's rule: the global count, shared
            assert accum == configured and g.notice is None
        else:  # each process runs ceil(count / N): a notice says what a step is now and how to get it back
            assert accum == -(-configured // n) * n and g.notice and f"{accum * cfg.batch_size * cfg.block_size:,}" \
                in g.notice and "--" in g.notice


def torchrun(n, *args, port):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
            f"--master_port={port}", *args]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_with_processes_that_do_not_divide_the_accumulation(tmp_path):
    """README's command with 3 processes and gradient_accumulation_steps=4: each runs 2 micro-steps (a step of
    6 micro-batches), rank 0 says so once, the run finishes."""
    env, out = env_for(tmp_path), tmp_path / "run"
    res = subprocess.run(torchrun(3, *TINY, "--gradient_accumulation_steps=4", "--max_iters=2", "--eval_iters=1",
                                  f"--out_dir={out}", port=free_port()),
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    notices = [line for line in res.stdout.splitlines() if "does not divide among 3 processes" in line]
    assert len(notices) == 1 and "each runs 2 micro-step(s), so a step is 6 micro-batches = 768 tokens" in notices[0]
    assert "--batch_size" in notices[0] or "--gradient_accumulation_steps" in notices[0]
    assert "6 micro-steps of 4 x 32 tokens per step (2 per process) = 768 tokens/step" in res.stdout
    assert [r for r in records(out) if "tokens" in r][-1]["tokens"] == 2 * 768


# ----------------------------------------------------------------------------------------------------
# One voice; a lost process; another process count on resume


@pytest.mark.slow
def test_under_torchrun_a_user_error_is_printed_once(tmp_path):
    env = env_for(tmp_path)
    missing = tmp_path / "no-such-checkpoint.pt"  # every process meets it, after the process group is up
    res = subprocess.run(torchrun(2, *TINY, f"--init_from={missing}", f"--out_dir={tmp_path / 'run'}",
                                  port=free_port()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and str(missing) in ours[0], res.stderr[-3000:]
    assert "Traceback" not in "\n".join(line for line in res.stderr.splitlines() if "nanogpt2" in line)


# Kills its own process with SIGKILL after `KILL_AT` steps on rank `KILL_RANK`: a process lost mid-run.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main

    def hook(trainer, event):
        if event == "step_end" and trainer.step == int(os.environ["KILL_AT"]) and \\
                int(os.environ["RANK"]) == int(os.environ["KILL_RANK"]):
            os.kill(os.getpid(), signal.SIGKILL)

    run_cli(main, sys.argv[1:], hooks=[hook])
""")


@pytest.mark.slow
def test_a_lost_process_ends_the_run_in_bounded_time_and_it_resumes_with_one_process(tmp_path):
    env, out = env_for(tmp_path), tmp_path / "run"
    env = {**env, "KILL_AT": "4", "KILL_RANK": "1"}
    driver = tmp_path / "killer.py"
    driver.write_text(KILLER)
    t0 = time.time()
    res = subprocess.run(torchrun(2, str(driver), *TINY[1:], "--max_iters=8", "--checkpoint_interval=3",
                                  "--eval_interval=0", "--dist_timeout=20", f"--out_dir={out}", port=free_port()),
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert time.time() - t0 < 200
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "lost rank 1 of the run" in ours[0] and "--resume_from auto" in ours[0], \
        res.stderr[-3000:]
    assert (out / "checkpoint_step_3.pt").is_file()
    # the survivor released the folder; the run continues with one process (a batch is a pure function of seed,
    # step and rank: the same global windows; the RNG streams of two processes cannot be split, said so)
    resumed = train(env, "--max_iters=8", "--checkpoint_interval=3", "--eval_interval=0", f"--out_dir={out}",
                    "--resume_from=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    assert "written with another number of processes" in resumed.stdout
    assert max(r["step"] for r in records(out)) == 8
