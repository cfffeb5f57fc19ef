"""
Damaged, hostile and unfitting checkpoints, and full disks, end to end through the scripts (tiny config, CPU):

- checksums: one flipped byte in a checkpoint is refused by sample.py, `python -m nanogpt2.evaluate` and
  train.py (--resume_from, --init_from), and in-process no single flipped byte anywhere in a file loads as
  a different state; non-finite weights are refused; checkpoints without a checksum (older ones) still load;
- `--resume_from auto` takes the highest stored step, not the newest file, and skips damaged checkpoints,
  saying so;
- a full disk (RLIMIT_FSIZE in the child, SIGXFSZ ignored: writes fail with EFBIG) while saving a
  checkpoint or building the token cache: one `error:` line naming the path and the free space, the previous
  files byte for byte as they were; the temporary file of a killed save is removed at the next start;
- resume guards (another vocabulary, a longer block_size, changed model settings) and every failure to
  rebuild a run from an edited checkpoint: one line naming the file;
- random and hostile files: "not a valid checkpoint", never torch's advice to load with weights_only=False.

Each failing script must exit 2 with exactly one `error:` line on stderr and no traceback.

    python -m pytest -q tests/test_checkpoint_damage.py
"""

import errno
import hashlib
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_checkpoint_model

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
SHAKESPEARE = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
# 10 steps: checkpoint_step_5.pt (step 5), checkpoint_best.pt and checkpoint_final.pt (step 10)
TRAIN = [TINY, "--max_iters=10", "--checkpoint_interval=5", "--eval_interval=5"]

# train.py, but a write past the file-size limit kills the process (SIGXFSZ's default action), as a kill -9
# would in the middle of a save. (Python itself starts with SIGXFSZ ignored.)
KILLED_BY_SIGXFSZ = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    from nanogpt2.errors import run_cli
    from nanogpt2.trainer import main
    run_cli(main, sys.argv[1:])
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "NANOGPT2_CACHE": str(cache), "PYTHONPATH": str(ROOT)}


def run(env, *args, script="train.py", fsize_limit=None, driver=None):
    """Run a script (train.py, sample.py, or "evaluate" for python -m nanogpt2.evaluate) in a subprocess;
    with fsize_limit, under RLIMIT_FSIZE with SIGXFSZ ignored (a write past the limit fails with EFBIG)."""
    if script == "evaluate":
        cmd = [sys.executable, "-m", "nanogpt2.evaluate"]
    else:
        cmd = [sys.executable, str(driver or ROOT / script)]
    cmd += [str(a) for a in args]

    def limits():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=limits if fsize_limit else None)


def ok(res):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    return res


def one_error(res, *words) -> str:
    """Exit status 2, exactly one `error:` line on stderr (holding `words`), no traceback; returns the line."""
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    assert "weights_only" not in res.stderr + res.stdout  # torch's advice to unpickle anything
    return errors[0]


def files(folder) -> dict:
    """sha256 of every file in a folder (and below): to show that nothing was lost or changed."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoints(folder) -> dict:
    return {k: v for k, v in files(folder).items() if k.endswith(".pt")}


def tensor_data_offset(path) -> tuple:
    """(offset in the file, size) of the largest tensor record of a checkpoint (a zip archive)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = Path(path).read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_tensor_byte(src, dst=None) -> Path:
    """Copy of `src` (or src itself) with one bit flipped in the middle of its largest tensor."""
    dst = Path(dst or src)
    raw = bytearray(Path(src).read_bytes())
    offset, size = tensor_data_offset(src)
    raw[offset + size // 2] ^= 0x04
    dst.write_bytes(raw)
    return dst


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    ok(run(env, *TRAIN, f"--out_dir={out}"))
    assert sorted(checkpoints(out)) == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_5.pt"]
    return out


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run folder (fresh files, so new modification times: `cp -r`)."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst, copy_function=shutil.copyfile)
    return dst


def edited(src, dst, edit, keep_checksum=True) -> Path:
    """A checkpoint changed by `edit(state)`, saved with a valid checksum (a deliberate edit) or, with
    keep_checksum=False, with plain torch.save and no checksum (as an older nanogpt2 wrote them)."""
    state = torch.load(src, map_location="cpu", weights_only=True)
    edit(state)
    if keep_checksum:
        ckpt_io.save_checkpoint(dst, state)
    else:
        state.pop(ckpt_io.CHECKSUM, None)
        torch.save(state, dst)
    return Path(dst)


# ----------------------------------------------------------------------------------------------------
# Checksums


def test_checksum_is_stored_and_plain_torch_load_still_works(trained):
    path = trained / "checkpoint_final.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state[ckpt_io.CHECKSUM] == ckpt_io.checksum(state) and state[ckpt_io.CHECKSUM].startswith("sha256:")
    assert ckpt_io.load_checkpoint(path)["step"] == 10


def test_no_single_flipped_byte_loads_as_another_state(tmp_path):
    """Flip each byte of the pickle and of every tensor record, and every 3rd byte of the rest (zip headers),
    of a small checkpoint: each copy either fails to load with a NanoGPT2Error or loads exactly the saved state
    (a byte torch never reads). Nothing loads silently changed."""
    path = tmp_path / "checkpoint_step_1.pt"
    state = {"model": {"w": torch.randn(8, 4), "b": torch.arange(3, dtype=torch.bfloat16)},
             "model_config": {"n_layer": 1}, "step": 1, "rng": {"python": (3, (1, 2), None)}, "note": "é"}
    ckpt_io.save_checkpoint(path, state)
    good = ckpt_io.load_checkpoint(path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        records = [(i.header_offset, i.file_size) for i in z.infolist() if i.filename.endswith(("data.pkl", "/0", "/1"))]
    must = set()
    for header, size in records:
        name_len, extra_len = struct.unpack("<HH", raw[header + 26:header + 30])
        start = header + 30 + name_len + extra_len
        must.update(range(start, start + size))
    assert len(must) > 300
    positions = sorted(must | set(range(0, len(raw), 3)))
    refused = 0
    bad = tmp_path / "checkpoint_bad.pt"
    for i in positions:
        b = bytearray(raw)
        b[i] ^= 0x01
        bad.write_bytes(b)
        try:
            loaded = ckpt_io.load_checkpoint(bad)
        except NanoGPT2Error:
            refused += 1
            continue
        assert ckpt_io.checksum(loaded) == good[ckpt_io.CHECKSUM], f"a flip at byte {i} loaded a different state"
    assert refused >= len(must)  # every byte that torch reads is caught


def test_a_flipped_byte_is_refused_by_every_script(env, trained, tmp_path):
    bad = flip_tensor_byte(trained / "checkpoint_final.pt", tmp_path / "checkpoint_final.pt")
    before = files(tmp_path)
    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE[:3000])
    one_error(run(env, "--init_from", bad, "--device", "cpu", "--max_new_tokens", 5, script="sample.py"),
              str(bad), "damaged", "checksum")
    one_error(run(env, "--init_from", bad, "--dataset", text, "--split", "all", script="evaluate"),
              str(bad), "damaged")
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'resumed'}", f"--resume_from={bad}"), str(bad), "damaged")
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'init'}", f"--init_from={bad}"), str(bad), "damaged")
    assert {k: v for k, v in files(tmp_path).items() if k in before} == before  # the file is kept as it was


def test_non_finite_weights_are_refused(env, trained, tmp_path):
    def nan_weight(state):
        state["model"]["transformer.wte.weight"][3, 1] = float("nan")

    bad = edited(trained / "checkpoint_final.pt", tmp_path / "checkpoint_nan.pt", nan_weight)
    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE[:3000])
    one_error(run(env, "--init_from", bad, "--dataset", text, "--split", "all", script="evaluate"),
              str(bad), "non-finite", "transformer.wte.weight")  # was: "loss nan", exit status 0
    one_error(run(env, "--init_from", bad, "--device", "cpu", "--max_new_tokens", 5, script="sample.py"),
              "non-finite")


def test_checkpoints_without_a_checksum_still_load(env, trained, tmp_path):
    legacy = edited(trained / "checkpoint_final.pt", tmp_path / "checkpoint_final.pt", lambda s: None,
                    keep_checksum=False)
    assert ckpt_io.CHECKSUM not in torch.load(legacy, weights_only=True)
    model, info = load_checkpoint_model(legacy)
    assert info["step"] == 10 and info["verified"] is False
    res = ok(run(env, *TRAIN[:1], "--max_iters=11", f"--out_dir={tmp_path / 'run'}", f"--resume_from={legacy}"))
    assert "has no checksum" in res.stdout and "at step 10" in res.stdout and "done: 11 steps" in res.stdout


# ----------------------------------------------------------------------------------------------------
# Which checkpoint a resume takes


def test_resume_auto_takes_the_highest_step_not_the_newest_file(env, run_copy):
    now = time.time()
    os.utime(run_copy / "checkpoint_step_5.pt", (now + 100, now + 100))  # newest file, oldest state
    os.utime(run_copy / "checkpoint_best.pt", (now - 100, now - 100))
    res = ok(run(env, *TRAIN[:1], "--max_iters=12", f"--out_dir={run_copy}", "--resume_from=auto"))
    assert "checkpoint_final.pt at step 10" in res.stdout and "step 11/12" in res.stdout


def test_resume_auto_skips_damaged_checkpoints_and_says_so(env, run_copy, tmp_path):
    flip_tensor_byte(run_copy / "checkpoint_final.pt")
    flip_tensor_byte(run_copy / "checkpoint_best.pt")
    before = checkpoints(run_copy)

    sampled = ok(run(env, "--init_from", run_copy, "--device", "cpu", "--max_new_tokens", 5, "--num_samples", 1,
                     script="sample.py"))
    assert "warning: skipping checkpoint_final.pt" in sampled.stderr and "checkpoint_step_5.pt (step 5)" in sampled.stderr

    res = ok(run(env, *TRAIN, f"--out_dir={run_copy}", "--resume_from=auto"))
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        assert f"warning: skipping {name}: {run_copy / name} is damaged" in res.stdout
    assert "warning: falling back to checkpoint_step_5.pt (step 5)" in res.stdout
    assert "checkpoint_step_5.pt at step 5" in res.stdout and "done: 10 steps" in res.stdout
    assert checkpoints(run_copy)["checkpoint_step_5.pt"] == before["checkpoint_step_5.pt"]

    # every checkpoint damaged: one line naming each, nothing deleted
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    for name in before:
        flip_tensor_byte(run_copy / name, nothing / name)
    kept = checkpoints(nothing)
    one_error(run(env, *TRAIN, f"--out_dir={nothing}", "--resume_from=auto"), "no usable checkpoint",
              "checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_step_5.pt")
    assert checkpoints(nothing) == kept


# ----------------------------------------------------------------------------------------------------
# Full disks and killed saves


def test_disk_full_while_saving_a_checkpoint(env, run_copy):
    before = checkpoints(run_copy)
    limit = (run_copy / "checkpoint_final.pt").stat().st_size // 2  # the next checkpoint cannot be written
    res = run(env, *TRAIN[:1], "--max_iters=20", "--checkpoint_interval=5", "--eval_interval=0",
              f"--out_dir={run_copy}", "--resume_from=auto", fsize_limit=limit)
    line = one_error(res, f"cannot write the checkpoint {run_copy / 'checkpoint_step_15.pt'}", "free in",
                     "previous checkpoints are untouched")
    assert "File too large" in line
    assert "step 15/20" in res.stdout
    assert checkpoints(run_copy) == before  # byte for byte
    assert not list(run_copy.glob(".checkpoint_*"))  # no temporary file left


def test_disk_full_message_for_enospc(tmp_path, monkeypatch):
    """The same for a real ENOSPC (what a full disk gives; RLIMIT_FSIZE above gives EFBIG)."""
    path = tmp_path / "checkpoint_step_1.pt"
    ckpt_io.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "model_config": {}, "step": 1})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(NanoGPT2Error, match=rf"cannot write the checkpoint {path}: No space left on device; "
                                            rf"[0-9.]+ [KMGT]?B(ytes)? free in {tmp_path}"):
        ckpt_io.save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "model_config": {}, "step": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_temp_file_of_a_killed_save_is_removed_at_the_next_start(env, run_copy, tmp_path):
    before = checkpoints(run_copy)
    driver = tmp_path / "killed_by_sigxfsz.py"
    driver.write_text(KILLED_BY_SIGXFSZ)
    limit = (run_copy / "checkpoint_final.pt").stat().st_size // 2
    res = run(env, *TRAIN[:1], "--max_iters=20", "--checkpoint_interval=5", "--eval_interval=0",
              f"--out_dir={run_copy}", "--resume_from=auto", fsize_limit=limit, driver=driver)
    assert res.returncode == -signal.SIGXFSZ, res.stdout[-2000:] + res.stderr[-2000:]
    stray = list(run_copy.glob(".checkpoint_step_15.pt.tmp-*"))
    assert len(stray) == 1 and 0 < stray[0].stat().st_size <= limit  # killed in the middle of the write
    assert checkpoints(run_copy) == before

    res = ok(run(env, *TRAIN[:1], "--max_iters=16", "--checkpoint_interval=5", "--eval_interval=0",
                 f"--out_dir={run_copy}", "--resume_from=auto"))
    assert f"removed {stray[0].name}, left by a checkpoint save that was killed" in res.stdout
    assert not list(run_copy.glob(".checkpoint_*")) and "checkpoint_final.pt at step 10" in res.stdout, res.stdout


def test_disk_full_while_building_the_token_cache(env, tmp_path):
    from nanogpt2.data import prepare_dataset

    text = tmp_path / "plays.txt"
    text.write_text(SHAKESPEARE[:20_000])
    cache_root = Path(env["NANOGPT2_CACHE"]) / "data"
    ds = prepare_dataset(str(text), tokenizer="char", cache_root=cache_root, quiet=True)
    before = files(ds.dir)
    text.write_text(SHAKESPEARE[:200_000])  # changed: the cache is rebuilt, ~400 KB of uint16 token ids
    res = run(env, TINY, f"--dataset={text}", "--tokenizer=char", f"--out_dir={tmp_path / 'run'}",
              fsize_limit=100_000)
    one_error(res, f"cannot write the token cache {ds.dir}", "File too large", "free in", "NANOGPT2_CACHE",
              "previous cache is untouched")
    assert files(ds.dir) == before
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------------------------------
# Resume guards and checkpoints that do not rebuild


def test_resume_with_another_vocabulary_or_a_longer_context_is_refused(env, trained, tmp_path):
    final = trained / "checkpoint_final.pt"
    before = checkpoints(trained)
    lower = tmp_path / "lower.txt"
    lower.write_text(SHAKESPEARE[:50_000].lower())
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'a'}", f"--resume_from={final}", f"--dataset={lower}",
                  "--tokenizer=char"), str(final), "'char' (65 characters)", "dataset and tokenizer settings")
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'b'}", f"--resume_from={final}", f"--dataset={lower}",
                  "--tokenizer=gpt2"), str(final), "'char' (65 characters)", "uses 'gpt2'")
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'c'}", f"--resume_from={final}", "--block_size=64"),
              "block_size=64", str(final), "(32 positions)", "--block_size=32")
    assert checkpoints(trained) == before
    assert not any((tmp_path / d).exists() for d in "abc")  # refused runs create no out_dir (nor config.json)


def test_a_refused_resume_leaves_every_file_of_the_run_as_it_was(env, run_copy):
    files = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    one_error(run(env, *TRAIN, f"--out_dir={run_copy}", "--resume_from=auto", "--block_size=64"), "--block_size=32")
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == files  # config.json included


def test_resume_names_each_ignored_model_setting(env, run_copy):
    res = ok(run(env, *TRAIN[:1], "--max_iters=11", f"--out_dir={run_copy}", "--resume_from=auto", "--n_layer=3",
                 "--n_embd=48", "--dropout=0.1"))
    warning, = [line for line in res.stdout.splitlines() if line.startswith("warning: resuming keeps the model")]
    assert "n_layer=3 (checkpoint: 2)" in warning and "n_embd=48 (checkpoint: 32)" in warning
    assert "dropout=0.1 (checkpoint: 0.0)" in warning and "n_head" not in warning
    assert "done: 11 steps" in res.stdout


def _exp_avg_cut(state):
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = moments["exp_avg"][:1]


def _edit_config(**changes):
    """Edit the model's config as a hand-edit would: in the model spec the loader rebuilds (and model_config)."""
    def edit(state):
        state["model_spec"]["config"].update(changes)
        state["model_config"].update(changes)
    return edit


EDITS = {
    "n_head=0": (_edit_config(n_head=0), "the model", "ZeroDivisionError"),
    "extra config key": (_edit_config(n_experts=4), "the model", "n_experts"),
    "extra weight": (lambda s: s["model"].update({"extra.weight": torch.ones(2)}), "the model weights", "extra.weight"),
    "bad optimizer state": (_exp_avg_cut, "the optimizer state", "exp_avg of shape"),
    "bad rng state": (lambda s: s["rng"].update(python="garbage"), "the random number generator states", ""),
    "bad sampler state": (lambda s: s.update(sampler={"seed": "x"}), "not a RandomWindowSampler state", ""),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_failure_to_rebuild_a_run_is_one_line_naming_the_file(env, trained, tmp_path, edit):
    fn, what, detail = EDITS[edit]
    bad = edited(trained / "checkpoint_final.pt", tmp_path / "checkpoint_final.pt", fn)
    before = checkpoints(tmp_path)
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'run'}", f"--resume_from={bad}"), str(bad), what, detail)
    assert checkpoints(tmp_path) == before


def test_sample_and_init_from_on_checkpoints_that_do_not_rebuild(env, trained, tmp_path):
    heads = edited(trained / "checkpoint_final.pt", tmp_path / "heads.pt", EDITS["n_head=0"][0])
    one_error(run(env, "--init_from", heads, "--device", "cpu", script="sample.py"),
              str(heads), "cannot rebuild the model", "ZeroDivisionError")
    one_error(run(env, *TRAIN, f"--out_dir={tmp_path / 'run'}", f"--init_from={heads}"),
              str(heads), "cannot rebuild the model")
    vocab = edited(trained / "checkpoint_final.pt", tmp_path / "vocab.pt", lambda s: s["tokenizer"].pop("chars"))
    one_error(run(env, "--init_from", vocab, "--device", "cpu", script="sample.py"),
              str(vocab), "cannot rebuild the tokenizer")


# ----------------------------------------------------------------------------------------------------
# Random and hostile files


class _Hostile:
    """Unpickling this would create a file: a stand-in for running any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["random", "hostile"])
def test_random_and_hostile_files_are_not_valid_checkpoints(env, tmp_path, kind):
    path = tmp_path / "checkpoint_step_7.pt"
    marker = tmp_path / "code-was-run"
    if kind == "random":
        path.write_bytes(random.Random(7).randbytes(50_000))
        why = "not a PyTorch checkpoint"
    else:
        torch.save({"model": _Hostile(str(marker)), "model_config": {}, "step": 7}, path)
        why = "Python objects other than tensors"
    before = path.read_bytes()
    text = tmp_path / "text.txt"
    text.write_text(SHAKESPEARE[:3000])
    for res in (run(env, "--init_from", path, "--device", "cpu", script="sample.py"),
                run(env, "--init_from", path, "--dataset", text, "--split", "all", script="evaluate"),
                run(env, *TRAIN, f"--out_dir={tmp_path / 'run'}", f"--resume_from={path}")):
        one_error(res, str(path), "is not a valid checkpoint", why)
    assert not marker.exists() and path.read_bytes() == before


def test_full_disk_while_logging_metrics_is_one_line(env, tmp_path):
    """The file-size limit is reached by metrics.jsonl (no checkpoint is due before it): one error line naming
    the file and the free space, not a traceback."""
    ok(run(env, TINY, "--max_iters=1", f"--out_dir={tmp_path / 'warm'}"))  # the token cache, built without a limit
    out = tmp_path / "run"
    res = run(env, TINY, "--max_iters=200", "--checkpoint_interval=0", "--eval_interval=0", f"--out_dir={out}",
              fsize_limit=6000)
    one_error(res, "cannot write the metrics", str(out / "metrics.jsonl"), "free in", "--resume_from auto")
    assert 0 < (out / "metrics.jsonl").stat().st_size <= 6000
