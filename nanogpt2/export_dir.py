"""
Where an export may write: the one rule every export follows (`python -m nanogpt2.convert`, finetune.py's
`merge_and_export` and its `out_dir/adapter`, a classifier's HF folder, peft adapter folders, `.pt` files), and
the atomic file writes they make.

The rule. An export writes into
  - an absent or empty folder, or
  - a folder that holds an earlier export of the same kind and nothing else: that export is replaced (its files
    the new one does not write are removed) and a note says so.
Anything else is refused before anything is written, in one line that names what is there and the way on:
  - a train.py run folder (a checkpoint_*.pt, or config.json + metrics.jsonl) and the export's own source
    (SRC, init_from, the run's out_dir): always; give another destination;
  - foreign files, or an export of another kind: another destination, or `overwrite` (`--overwrite`), which
    replaces only the files this kind of export writes, keeps everything else, and says which.
A file export (a `.pt`) follows the same rule for its one file: absent, or an earlier export of its kind
(replaced, said so); a train.py checkpoint, a file in a run folder named like one, or a foreign file is refused
(`overwrite` replaces a foreign file, never a run's checkpoint).

Atomic writes: every file goes to a temporary name beside it (`.NAME.PID.HEX.tmp`), is flushed to disk and
renamed over its name (os.replace), as nanogpt2/checkpoint.py and nanogpt2/safetensors_io.py write theirs. A
marker file to be replaced (config.json, adapter_config.json: what makes a folder loadable) is removed first and
written last, so a killed export leaves a folder that loads whole or not at all, never half; the temporary
files a killed export left are part of its kind and are cleared by the next one.

    plan = ExportDir.open(folder, HF_MODEL, overwrite=False, reserved={"SRC": src})   # refuses here
    save_file(tensors, plan.target("model.safetensors"))       # a writer that is atomic itself
    plan.write_json("config.json", config)                     # the marker, last
    plan.finish(log)                                           # stale files of the replaced export, the note
    check_export_file(path, CONVERTED_PT, overwrite, reserved) # a one-file export

The rule, the cases and the messages: docs/conversion.md ("Where exports write"). Tests: tests/test_export_dir.py.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from nanogpt2.errors import NanoGPT2Error
from nanogpt2.hf_tokenizer import TOKENIZER_FILES
from nanogpt2.rundir import RunDir

# ----------------------------------------------------------------------------------------------------
# Atomic writes


def temp_name(path: Path) -> Path:
    """A unique temporary name beside `path` (same filesystem, so os.replace is atomic)."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write(path, write: Callable) -> Path:
    """Write a file through `write(f)` (f: a binary file opened on a temporary name), flush it to disk, and
    rename it over `path`; on any failure the temporary file is removed and `path` is as it was."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path, obj) -> Path:
    """`obj` as indented JSON (a trailing newline), atomically."""
    data = (json.dumps(obj, indent=2) + "\n").encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


# ----------------------------------------------------------------------------------------------------
# The kinds of export


def _json_has(path: Path, key: str) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and key in obj


def is_hf_config(path) -> bool:
    """An HF model config.json (it names its model_type), not a train.py run's settings."""
    return _json_has(Path(path), "model_type")


@dataclass(frozen=True)
class ExportKind:
    """A kind of export: its name in messages, every file it may write (the first is its marker: the file whose
    content says an export of this kind wrote it, written last), `identify(marker path) -> bool`, and the files
    that must not lie beside it even with overwrite (loaders would read them instead of the new files)."""
    name: str
    files: tuple
    identify: Callable[[Path], bool]
    suffix: str = "export"  # of the folder name suggested instead of a run folder
    conflicts: tuple = ()

    @property
    def marker(self) -> str:
        return self.files[0]


def _a(kind: ExportKind) -> str:
    """The kind's name with its article ("an HF model folder", "a peft adapter folder")."""
    return ("an " if kind.name.startswith(("HF", "a", "e", "i", "o", "u")) else "a ") + kind.name


HF_MODEL = ExportKind("HF model folder", ("config.json", "model.safetensors", "generation_config.json",
                                         *TOKENIZER_FILES), is_hf_config,
                      "hf", conflicts=("pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"))
PEFT_ADAPTER = ExportKind("peft adapter folder", ("adapter_config.json", "adapter_model.safetensors"),
                          lambda p: _json_has(p, "peft_type"), "peft")
ADAPTER_WEIGHTS = ExportKind("nanogpt2 adapter folder", ("adapter_weights.pt",), lambda p: p.is_file(), "adapter")
FOLDER_KINDS = (HF_MODEL, PEFT_ADAPTER, ADAPTER_WEIGHTS)


def _pt_keys(path: Path) -> set:
    """The top-level keys of a torch.save'd dict (read memory-mapped, weights only); empty for anything else."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return set()
    return set(state) if isinstance(state, dict) else set()


def _is_converted_pt(path: Path) -> bool:
    """A .pt written by `python -m nanogpt2.convert`: it records `converted_from`, and holds no optimizer."""
    keys = _pt_keys(path)
    return "converted_from" in keys and "optimizer" not in keys


CONVERTED_PT = ExportKind("converted nanogpt2 checkpoint", (), _is_converted_pt)


# ----------------------------------------------------------------------------------------------------
# What a folder holds


def _listing(names, most: int = 4) -> str:
    names = sorted(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _temp_of(name: str, kind: ExportKind) -> bool:
    """A temporary file that a killed write of one of the kind's files left (.NAME.PID.HEX.tmp)."""
    m = re.fullmatch(r"\.(.+)\.\d+\.[0-9a-f]+\.tmp", name)
    return bool(m) and m.group(1) in kind.files


def run_folder_files(folder) -> list:
    """The names that make `folder` a train.py run folder (its checkpoints, or config.json + metrics.jsonl of a
    run that has not saved yet); [] when it is not one."""
    run = RunDir(folder)
    found = [p.name for p in run.checkpoints()]
    if found or (run.config_path.is_file() and run.metrics_path.is_file() and not is_hf_config(run.config_path)):
        found += [p.name for p in (run.config_path, run.metrics_path) if p.is_file()]
    return found


def _within(a, b) -> bool:
    """a is b, or lies inside it."""
    try:
        a, b = Path(a).resolve(), Path(b).resolve()
    except (OSError, RuntimeError):
        return False
    return a == b or b in a.parents


def _refuse_reserved(path: Path, reserved: Optional[dict], name: str) -> None:
    """`path` must not be a reserved path ({label: path}: the source, the run's out_dir), nor hold one."""
    for label, other in (reserved or {}).items():
        if other and _within(other, path):
            what = "is" if _within(path, other) else "holds"
            raise NanoGPT2Error(f"{name} {path} {what} {label} ({other}): an export never writes over what it reads "
                                f"or what a run writes; give another {name}")


def other_kind(folder: Path, files: set, kind: ExportKind) -> Optional[ExportKind]:
    """The export kind, other than `kind`, that the folder's files are one of, if any."""
    for k in FOLDER_KINDS:
        if k is not kind and files <= set(k.files) and k.marker in files and k.identify(folder / k.marker):
            return k
    return None


# ----------------------------------------------------------------------------------------------------
# A folder export


@dataclass
class ExportDir:
    """An export folder that passed the rule: `mode` is "new" (absent or empty), "replace" (an earlier export of
    the kind) or "overwrite" (overwrite=True over other files); `present` its files before the export."""
    folder: Path
    kind: ExportKind
    mode: str
    present: set = field(default_factory=set)
    written: list = field(default_factory=list)

    @classmethod
    def check(cls, folder, kind: ExportKind, overwrite: bool = False, reserved: Optional[dict] = None,
              name: str = "DST") -> "ExportDir":
        """The rule (module docstring), without writing anything: the plan, or a NanoGPT2Error saying what is in
        the way. `reserved`: {label: path} that the folder must not be (e.g. {"SRC": src}); `name`: what the
        user calls the destination in messages (DST, merge_and_export, ...)."""
        folder = Path(folder)
        run = run_folder_files(folder) if folder.is_dir() else []
        if run:
            source = "".join(f" and {label} itself" for label, p in (reserved or {}).items() if p and _within(folder, p))
            raise NanoGPT2Error(f"{name} {folder} is a train.py run folder ({_listing(run)}){source}: an export never "
                                f"writes into a run folder{', even with --overwrite' if overwrite else ''}; give another "
                                f"{name} (an absent or empty folder), e.g. {folder}-{kind.suffix}")
        _refuse_reserved(folder, reserved, name)
        if folder.exists() and not folder.is_dir():
            raise NanoGPT2Error(f"{name} {folder} is a file, and {_a(kind)} is a folder; give a folder name")
        if not folder.exists():
            return cls(folder, kind, "new")
        present = {p.name for p in folder.iterdir()}
        files = {n for n in present if not _temp_of(n, kind)}
        if not files:
            return cls(folder, kind, "new" if not present else "replace", present)
        if files <= set(kind.files) and kind.marker in files and kind.identify(folder / kind.marker):
            return cls(folder, kind, "replace", present)
        conflicts = sorted(files & set(kind.conflicts))
        if overwrite and not conflicts:
            return cls(folder, kind, "overwrite", present)
        return cls._refuse(folder, kind, files, name, overwrite, conflicts)

    @staticmethod
    def _refuse(folder: Path, kind: ExportKind, files: set, name: str, overwrite: bool, conflicts: list):
        if conflicts:
            raise NanoGPT2Error(f"{name} {folder} holds {', '.join(conflicts)}, which loaders would read beside (or "
                                f"instead of) the new {kind.files[1]}; give another {name} (an absent or empty "
                                f"folder), or remove them (--overwrite does not: this export does not write them)")
        other = other_kind(folder, files, kind)
        what = (f"{_a(other)} ({_listing(files)})" if other else
                f"an incomplete {kind.name} ({_listing(files)}, no {kind.marker}: an export killed half-way?)"
                if files <= set(kind.files) else f"files this export did not write ({_listing(files)})")
        replaced = sorted(files & set(kind.files))
        way = (f"replace only {', '.join(replaced)} and keep the rest" if replaced else
               f"write {', '.join(kind.files)} beside them")
        raise NanoGPT2Error(f"{name} {folder} holds {what}, not {_a(kind)}; give another {name} (an absent or empty "
                            f"folder, or one holding only an earlier {kind.name}), or --overwrite to {way}")

    @classmethod
    def open(cls, folder, kind: ExportKind, overwrite: bool = False, reserved: Optional[dict] = None,
             name: str = "DST") -> "ExportDir":
        """check(), then make the folder; a marker file that will be replaced goes first (it is written last)."""
        plan = cls.check(folder, kind, overwrite, reserved, name)
        plan.folder.mkdir(parents=True, exist_ok=True)
        if plan.mode != "new":  # replaced anyway; gone first, the folder never mixes two exports (or yours and ours)
            (plan.folder / kind.marker).unlink(missing_ok=True)
        return plan

    def target(self, name: str) -> Path:
        """The path of one of the kind's files, for a writer that is atomic itself (save_file, save_checkpoint)."""
        if name not in self.kind.files:
            raise ValueError(f"{name} is not a file of a {self.kind.name}")  # a bug, not a user error
        self.written.append(name)
        return self.folder / name

    def write_json(self, name: str, obj) -> Path:
        return write_json(self.target(name), obj)

    def write(self, name: str, write: Callable) -> Path:
        """One of the kind's files through `write(f)`, atomically (atomic_write)."""
        return atomic_write(self.target(name), write)

    def finish(self, log: Optional[Callable[[str], None]] = None) -> Path:
        """Remove what the replaced export left that this one did not write (its files, temp files of a killed
        write), and say what was replaced or overwritten through `log`."""
        ours = {n for n in self.present if n in self.kind.files}
        stale = sorted(n for n in self.present if n not in self.written and (_temp_of(n, self.kind) or n in ours))
        for n in stale:
            (self.folder / n).unlink(missing_ok=True)
        removed = [n for n in stale if n in ours]
        gone = f"; removed {', '.join(removed)}, which this export does not write" if removed else ""
        if log is not None and self.mode == "replace" and ours:
            log(f"replaced the earlier {self.kind.name} in {self.folder} ({_listing(ours)}){gone}")
        elif log is not None and self.mode == "overwrite":
            replaced = sorted(ours & set(self.written))
            kept = sorted(self.present - set(self.kind.files))
            did = f"replaced {', '.join(replaced)}" if replaced else f"wrote {', '.join(self.written)}"
            log(f"--overwrite: {did} in {self.folder}{gone}; kept its {len(kept)} other file(s): {_listing(kept)}")
        return self.folder


# ----------------------------------------------------------------------------------------------------
# A one-file export


def check_export_file(path, kind: ExportKind, overwrite: bool = False, reserved: Optional[dict] = None,
                      name: str = "DST") -> str:
    """The rule for a one-file export (e.g. a .pt): "new" (absent), "replace" (an earlier export of the kind),
    "overwrite" (a foreign file, overwrite=True); else a NanoGPT2Error. Writes nothing."""
    path = Path(path)
    _refuse_reserved(path, reserved, name)
    in_run = run_folder_files(path.parent) if path.parent.is_dir() else []
    if in_run and path.name.startswith("checkpoint_"):
        raise NanoGPT2Error(f"{name} {path} would be a checkpoint of the train.py run in {path.parent} (it holds "
                            f"{_listing(in_run)}), and the run would read it; give another {name}")
    if path.is_dir():
        raise NanoGPT2Error(f"{name} {path} is a folder, and {_a(kind)} is one file; give a file name")
    if not path.exists():
        return "new"
    if kind.identify(path):
        return "replace"
    if {"model", "optimizer"} <= _pt_keys(path):
        raise NanoGPT2Error(f"{name} {path} is a train.py checkpoint (it holds an optimizer state): an export never "
                            f"replaces one{', even with --overwrite' if overwrite else ''}; give another {name}")
    if overwrite:
        return "overwrite"
    raise NanoGPT2Error(f"{name} {path} exists and is not {_a(kind)} (an earlier export); give another {name}, "
                        f"or --overwrite to replace it")
