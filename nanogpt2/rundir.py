"""
The run folder (`out_dir`): what a run writes there, and choosing the checkpoint a run resumes from.

A run folder holds (written by rank 0; the format of each file is in docs/training.md):

  config.json              the run's settings (written once the run's setup passed: a refused run writes nothing)
  metrics.jsonl            one JSON record per logged step, evaluation and the final test
  checkpoint_<name>.pt     best, final, step_<N>, epoch_<N>, interrupted, time_limit (nanogpt2/checkpoint.py)
  samples.txt              the samples generated every sample_interval steps
  training_curves.png      the plot at the end (nanogpt2/outputs.py)
  tensorboard/             event files, when tensorboard=True

Its rules: nothing is written before the run's setup succeeded; a checkpoint save killed half-way leaves a
temp file that the next run removes (and says so); a resume takes the checkpoint of the highest stored step,
skipping damaged ones with a line each.

    run = RunDir(cfg.out_dir)
    run.check_writable()                   # before any work: the folder can be made and written
    state = run.find_resume(cfg, log)      # None, or the checkpoint dict to resume from (its path in "_path")
    run.create(cfg, log)                   # mkdir, config.json, stray temp files removed
"""

import os
from pathlib import Path
from typing import Callable, Optional

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.config import RunConfig, save_config
from nanogpt2.errors import NanoGPT2Error, write_error


class RunDir:
    """One run folder: its file names, the writability check, its checkpoints, and the resume choice."""

    def __init__(self, path):
        self.path = Path(path)

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

    def prune(self, kind: str, keep_last: int) -> list:
        """Remove all but the newest `keep_last` checkpoints of a kind ("step", "epoch"); returns the removed."""
        return ckpt_io.prune_checkpoints(self.path, kind, keep_last)

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

    def create(self, cfg: RunConfig, log: Callable[[str], None]) -> None:
        """Make the folder, write config.json, and remove the temp files of a checkpoint save that was killed."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
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

    # --- the checkpoint to resume from ------------------------------------------------------------------

    def find_resume(self, cfg: RunConfig, log: Callable[[str], None], master: bool = True) -> Optional[dict]:
        """The checkpoint a run resumes from (its dict, path in "_path"), or None for a fresh run. `resume_from`:
        "auto" (this folder's latest, or a fresh start when it has none), a run folder, or a checkpoint file;
        init_from=resume means resume_from=auto with a checkpoint required."""
        spec = cfg.resume_from or ("auto" if cfg.init_from == "resume" else "")
        if not spec:
            if master and self.checkpoints():
                log(f"note: {self.path} already holds checkpoints from an earlier run; this run starts "
                    f"fresh (use --resume_from auto to continue it)")
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
