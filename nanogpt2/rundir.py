"""
The run folder (`out_dir`): what a run writes there, and choosing the checkpoint a run resumes from.

A run folder holds (written by rank 0; the format of each file is in docs/training.md):

  config.json              the run's settings (written once the run's setup passed: a refused run writes nothing)
  metrics.jsonl            one JSON record per logged step, evaluation and the final test
  checkpoint_<name>.pt     best, final, step_<N>, epoch_<N>, interrupted, time_limit (nanogpt2/checkpoint.py)
  samples.txt              the samples generated every sample_interval steps
  training_curves.png      the plot at the end (nanogpt2/outputs.py)
  tensorboard/             event files, when tensorboard=True

  .lock                    the lock of the run that owns the folder (its PID, host and start time)

Its rules:
- one owner: a run holds an exclusive OS lock (flock) on out_dir/.lock for its whole life (under torchrun, rank 0);
  the kernel releases it when the process ends, however it ends, so a killed run leaves no stale lock. A second
  run into a folder whose owner is alive is refused at once, naming the owner's PID and host;
- never overwritten by accident: a fresh run (no resume_from) into a folder that holds another run's checkpoints
  or metrics is refused before anything is written, saying what is there and the ways on (--resume_from auto,
  another --out_dir, --overwrite, which removes that run's files first and says which);
- nothing is written before the run's setup succeeded; a checkpoint save killed half-way leaves a temp file that
  the next run removes (and says so); a resume takes the checkpoint of the highest stored step, skipping damaged
  ones with a line each.

    run = RunDir(cfg.out_dir)
    run.check_writable()                   # before any work: the folder can be made and written
    run.check_owner(); run.check_fresh_start(cfg)   # a live owner, an earlier run a fresh start would replace
    state = run.find_resume(cfg, log)      # None, or the checkpoint dict to resume from (its path in "_path")
    run.create(cfg, log)                   # mkdir, config.json, stray temp files removed
"""

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.config import RunConfig, save_config
from nanogpt2.errors import NanoGPT2Error, write_error

LOCK_NAME = ".lock"
# What an earlier run leaves that a fresh start would replace; --overwrite removes exactly these (and checkpoints).
RUN_FILES = ("metrics.jsonl", "samples.txt", "training_curves.png")
RUN_DIRS = ("tensorboard",)
_HELD: dict = {}  # resolved out_dir -> [open lock file, holders in this process]: re-entrant within a process


class RunDir:
    """One run folder: its file names, the writability check, its checkpoints, and the resume choice."""

    def __init__(self, path):
        self.path = Path(path)
        self._holds_lock = False  # this RunDir took the lock (acquire) and has not given it back

    # --- what it holds -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.txt"

    @property
    def plot_path(self) -> Path:
        return self.path / "training_curves.png"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def checkpoint_path(self, name: str) -> Path:
        """checkpoint_{name}.pt (name: best, final, step_<N>, epoch_<N>, interrupted, time_limit)."""
        return self.path / f"{ckpt_io.PREFIX}{name}{ckpt_io.SUFFIX}"

    def checkpoints(self) -> list:
        """The checkpoint files it holds."""
        return ckpt_io.list_checkpoints(self.path)

    def latest_checkpoint(self) -> Optional[Path]:
        """The checkpoint of the highest stored step, or None."""
        ordered, _ = ckpt_io.by_step(self.path)
        return ordered[0] if ordered else None

    def prune(self, keep_last: int, own=None) -> list:
        """keep_last's policy (nanogpt2.checkpoint.prune_checkpoints): the newest `keep_last` of the step, epoch,
        interrupted and time-limit checkpoints stay, best, final and the newest resumable one always; `own`: the
        names of the run's checkpoints (None: all of the folder's). Returns the removed."""
        return ckpt_io.prune_checkpoints(self.path, keep_last, own)

    # --- writing --------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse a folder that cannot be created or written, without creating it: a run refused later leaves the
        file system as it was."""
        existing = self.path.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        why = ("Not a directory" if not existing.is_dir() else
               "Permission denied" if not os.access(existing, os.W_OK | os.X_OK) else None)
        if why:
            raise NanoGPT2Error(f"cannot write to out_dir={self.path} ({why}: {existing}); pick a folder you can write to")

    def check_start(self, cfg: RunConfig) -> None:
        """What a run checks before any work, writing nothing: the folder is writable, no live run owns it, and a
        fresh start would not replace an earlier run."""
        self.check_writable()
        self.check_owner()
        self.check_fresh_start(cfg)

    def create(self, cfg: RunConfig, log: Callable[[str], None]) -> None:
        """Take the folder (its lock), write config.json, and remove the temp files of a checkpoint save that
        was killed; with --overwrite on a fresh start, the earlier run's files first."""
        self.acquire()
        self.check_fresh_start(cfg)  # again, now that it is ours: a run that finished meanwhile is not replaced
        try:
            if cfg.overwrite and not (cfg.resume_from or cfg.init_from == "resume"):
                self.remove_earlier_run(log)
            save_config(cfg, self.config_path)
            for stray in ckpt_io.remove_stray_temp_files(self.path):
                log(f"removed {stray.name}, left by a checkpoint save that was killed")
        except OSError as e:
            raise NanoGPT2Error(f"cannot write to out_dir={self.path} ({e.strerror or e}); "
                                f"pick a folder you can write to") from None

    def append(self, path: Path, text: str, what: str) -> None:
        """Append to one of its log files; a full disk is one line naming the file and the free space."""
        try:
            with open(path, "a") as f:
                f.write(text)
        except OSError as e:
            raise write_error(e, f"the {what} {path}", self.path,
                              "free some space (the checkpoints so far are intact), then --resume_from auto",
                              any_os_error=True) from None

    # --- one owner ----------------------------------------------------------------------------------------

    def check_owner(self) -> None:
        """Refuse a folder another live process owns (its lock is held), without writing anything."""
        key = str(self.path.resolve())
        if fcntl is None or key in _HELD or not self.lock_path.is_file():
            return
        try:
            with open(self.lock_path, "rb") as f:
                if not _try_lock(f):
                    raise NanoGPT2Error(self._in_use())
        except OSError:
            return  # an unreadable lock file: acquire() says what is wrong

    def acquire(self) -> None:
        """Take the folder's lock for this process's life (creating the folder and .lock); refuse when held."""
        key = str(self.path.resolve())
        if fcntl is None or self._holds_lock:
            return
        if key in _HELD:
            _HELD[key][1] += 1
            self._holds_lock = True
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.lock_path, "a+b")
        except OSError as e:
            raise NanoGPT2Error(f"cannot write to out_dir={self.path} ({e.strerror or e}); "
                                f"pick a folder you can write to") from None
        if not _try_lock(f):
            f.close()
            raise NanoGPT2Error(self._in_use())
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n")
        f.flush()
        _HELD[key] = [f, 1]
        self._holds_lock = True

    def release(self) -> None:
        """Give the lock back (idempotent; the kernel also releases it when the process ends)."""
        key = str(self.path.resolve())
        held = _HELD.get(key)
        if held is None or not self._holds_lock:
            return
        self._holds_lock = False
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            held[0].close()  # closing the file releases the flock

    def _in_use(self) -> str:
        try:
            owner = json.loads(self.lock_path.read_text())
            who = f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
        except (OSError, ValueError, AttributeError):
            who = "another process"
        return (f"out_dir={self.path} is in use by a run that is still going ({who}); wait for it to end, or "
                f"pick another out_dir")

    # --- an earlier run ------------------------------------------------------------------------------------

    def earlier_run(self) -> Optional[str]:
        """What an earlier run left here ("step 200, best val loss 3.0160"), or None when the folder holds no
        checkpoint and no metrics record (absent, empty, or only unrelated files)."""
        steps, best = [], None
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                    steps.append(rec["step"])
                    if isinstance(rec.get("val_loss"), (int, float)):
                        best = rec["val_loss"] if best is None else min(best, rec["val_loss"])
        checkpoints = self.checkpoints()
        if not steps and not checkpoints:
            return None
        what = f"step {max(steps)}" if steps else f"{len(checkpoints)} checkpoint(s)"
        return what + (f", best val loss {best:.4f}" if best is not None else "")

    def check_fresh_start(self, cfg: RunConfig) -> None:
        """Refuse a fresh run (no resume_from) into a folder holding an earlier run, unless cfg.overwrite."""
        if cfg.resume_from or cfg.init_from == "resume" or cfg.overwrite:
            return
        there = self.earlier_run()
        if there is not None:
            raise NanoGPT2Error(f"out_dir={self.path} holds an earlier run ({there}); a fresh run would replace it: "
                                f"continue it with --resume_from auto, pick another --out_dir, or start over with "
                                f"--overwrite (removes its checkpoints, metrics, samples and plots)")

    def remove_earlier_run(self, log: Callable[[str], None]) -> None:
        """--overwrite: delete the earlier run's checkpoints, metrics, samples, plot and TensorBoard events."""
        import shutil

        doomed = [*self.checkpoints(), *(self.path / f for f in RUN_FILES if (self.path / f).is_file())]
        for f in doomed:
            f.unlink(missing_ok=True)
        dirs = [self.path / d for d in RUN_DIRS if (self.path / d).is_dir()]
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        if doomed or dirs:
            log(f"overwrite: removed the earlier run's {', '.join(p.name for p in [*doomed, *dirs])} from {self.path}")

    # --- the checkpoint to resume from ------------------------------------------------------------------

    def find_resume(self, cfg: RunConfig, log: Callable[[str], None]) -> Optional[dict]:
        """The checkpoint a run resumes from (its dict, path in "_path"), or None for a fresh run. `resume_from`:
        "auto" (this folder's latest, or a fresh start when it has none), a run folder, or a checkpoint file;
        init_from=resume means resume_from=auto with a checkpoint required."""
        spec = cfg.resume_from or ("auto" if cfg.init_from == "resume" else "")
        if not spec:  # a fresh start (check_fresh_start refused one that would replace an earlier run)
            return None
        if spec == "auto" and not self.checkpoints():
            if cfg.init_from == "resume":
                raise NanoGPT2Error(f"init_from=resume but there is no checkpoint in {self.path}; "
                                    f"check out_dir or start with init_from=scratch")
            log(f"resume_from=auto: no checkpoint in {self.path} yet, starting fresh")
            return None
        folder = self.path if spec == "auto" else Path(spec)
        if folder.is_dir():  # the highest stored step; damaged checkpoints are skipped, and said so
            path, state, skipped = ckpt_io.load_latest(folder, check=check_resumable)
            for bad, why in skipped:
                log(f"warning: skipping {bad.name}: {why}")
            if skipped:
                log(f"warning: falling back to {path.name} (step {state['step']})")
        else:
            path = ckpt_io.find_checkpoint(spec, "latest")
            state = ckpt_io.load_checkpoint(path, map_location="cpu")
            check_resumable(path, state)
        if ckpt_io.CHECKSUM not in state:
            log(f"note: {path} has no checksum (written by an earlier nanogpt2): loaded without verification")
        state["_path"] = str(path)
        return state


def _try_lock(f) -> bool:
    """An exclusive, non-blocking flock on an open file: True when taken."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def check_resumable(path, state: dict) -> None:
    """Refuse a checkpoint that holds weights only (an export, a converted file): it cannot continue a run."""
    for key in ("optimizer", "step", "sampler", "rng"):
        if key not in state:
            raise NanoGPT2Error(f"{path} has no {key!r}: it holds weights only and cannot be resumed; "
                                f"use --init_from={path} to start a new run from its weights")


def run_folders(where=".") -> list:
    """The run folders directly inside `where` (folders holding a checkpoint), sorted by name; [] when it
    cannot be read."""
    try:
        return sorted(p for p in Path(where).iterdir() if p.is_dir() and ckpt_io.list_checkpoints(p))
    except OSError:
        return []
