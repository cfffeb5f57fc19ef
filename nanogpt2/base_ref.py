"""
The base model a PEFT run's checkpoints refer to, instead of holding it: which tensors are the base's own, the
files they were read from (path and sha256), and putting a checkpoint's weights back together from both.

A LoRA / adapter / prefix run trains a few thousand parameters on top of a frozen base; its checkpoints hold the
trainable tensors (and the buffers and anything else that is not the base's own, unchanged), their optimizer
state and the run state, plus the entry

    base   {"init_from": the run's init_from, as given,
            "load_from": what the loader is given to rebuild it: a GPT-2 name or OpenAI size (resolved through the
                         download cache, as init_from is), else the absolute path of the file or folder read (of a
                         run folder: its checkpoint that was read, not whatever is latest there now),
            "files":     [{"path", "sha256", "bytes"}] of the files the weights came from, hashed once per run,
            "tensors":   {model key: [base key, shape]}: the model's tensors that are the base's (a shape smaller
                         than the base's: its leading slice, e.g. a positional table cropped to block_size)}

Loading such a checkpoint (`complete`) checks every file (missing or changed: one NanoGPT2Error naming the path
and what to do), loads the base through the loader and fills in its tensors. A checkpoint without `base` holds
the whole model and loads as it always did.

Which tensors are the base's is found while the run's model is built (`BaseTrace`): the base's tensors are
remembered by identity, the task's and the method's wrapping keeps the very tensors (LoRA wraps the layer's own
weight, adapters the sublayer, a classifier takes the body), and after the context is cropped every traced tensor
is compared with the base's values (a tensor that is not an exact slice of the base is stored).

    trace = BaseTrace(base_model)            # before the task / method wrap it
    model = prepare(base_model); trace.wrapped(model); fit_context(model, block_size)
    ref = trace.reference(init_from, info, model).without(trainable_names).record()   # hashes the files
    weights = trainable_state(model.state_dict(), ref)                                # what a checkpoint stores
    full = complete(state, path, load_base)                                           # and back
"""

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from nanogpt2.checkpoint import strip_prefixes
from nanogpt2.download import file_sha256
from nanogpt2.errors import NanoGPT2Error

# The files of a model folder its weights are read from (HF, OpenAI's TensorFlow release); a file base is itself.
MODEL_FILES = ("config.json", "hparams.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
               "*.bin.index.json", "model.ckpt*")


def crop(t: torch.Tensor, shape) -> torch.Tensor:
    """The leading slice of `t` of `shape` (the same dims, each no longer)."""
    return t[tuple(slice(0, int(s)) for s in shape)]


def _is_slice_of(t: torch.Tensor, base: torch.Tensor) -> bool:
    if t.dim() != base.dim() or t.dtype != base.dtype or any(a > b for a, b in zip(t.shape, base.shape)):
        return False
    return torch.equal(t.detach().cpu(), crop(base.detach().cpu(), t.shape))


def is_name(load_from: str) -> bool:
    """A GPT-2 name or an OpenAI size (resolved through the cache), rather than a path."""
    from nanogpt2.hf_checkpoint import HF_REPOS
    from nanogpt2.openai_checkpoint import openai_size

    return load_from in HF_REPOS or openai_size(load_from) is not None


def model_files(load_from: str) -> list:
    """The files a base's weights are read from: the file itself, or a model folder's config and weight files; a
    name resolves through the download cache (downloaded if absent, as the loader would)."""
    where = Path(load_from)
    if is_name(load_from) and not where.exists():
        from nanogpt2.hf_checkpoint import HF_REPOS, download_hf_model
        from nanogpt2.openai_checkpoint import download_openai_model

        where = download_hf_model(load_from, quiet=True) if load_from in HF_REPOS else \
            download_openai_model(load_from, quiet=True)
    if where.is_file():
        return [where.resolve()]
    return sorted({p.resolve() for pattern in MODEL_FILES for p in where.glob(pattern) if p.is_file()})


class BaseRef:
    """The base of a run's model: where it is loaded from and which of the model's tensors are its own."""

    def __init__(self, init_from: str, load_from: str, tensors: dict):
        self.init_from, self.load_from, self.tensors = init_from, load_from, tensors
        self._record: Optional[dict] = None

    def without(self, names: Iterable[str]) -> "BaseRef":
        """The same reference less `names` (the tensors the run trains: they are stored, not referred to)."""
        names = set(names)
        return BaseRef(self.init_from, self.load_from, {k: v for k, v in self.tensors.items() if k not in names})

    def record(self) -> dict:
        """The checkpoint's `base` entry (see the module docstring); the files are hashed on the first call only."""
        if self._record is None:
            files = [{"path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size}
                     for p in model_files(self.load_from)]
            self._record = {"init_from": self.init_from, "load_from": self.load_from, "files": files,
                            "tensors": {k: [bk, list(shape)] for k, (bk, shape) in self.tensors.items()}}
        return self._record


class BaseTrace:
    """Finds which tensors of the model built from a base are the base's own (see the module docstring)."""

    def __init__(self, base: nn.Module):
        self.base = dict(base.state_dict(keep_vars=True))  # name -> the tensor object itself
        self.ids: dict = {}
        for name, t in self.base.items():
            self.ids.setdefault(id(t), name)  # tied tensors: the first name
        self.names: dict = {}

    def wrapped(self, model: nn.Module) -> None:
        """Call after the task and the method wrapped the base, before anything copies its tensors (the crop)."""
        self.names = {n: self.ids[id(t)] for n, t in model.state_dict(keep_vars=True).items() if id(t) in self.ids}

    def reference(self, init_from: str, info: dict, model: nn.Module) -> Optional[BaseRef]:
        """The BaseRef of the finished model (None when nothing of it is the base's); `info`: the loader's."""
        state = model.state_dict()
        tensors = {n: (bn, tuple(state[n].shape)) for n, bn in self.names.items()
                   if n in state and _is_slice_of(state[n], self.base[bn])}
        if not tensors:
            return None
        path = Path(str(info.get("path", init_from)))
        load_from = init_from if is_name(init_from) and not path.exists() else str(path.resolve())
        return BaseRef(init_from, load_from, tensors)


def trainable_state(state_dict: dict, record: Optional[dict]) -> dict:
    """What a checkpoint stores of a model's state_dict: everything but the base's tensors `record` refers to."""
    if not record:
        return state_dict
    return {k: v for k, v in state_dict.items() if k not in record["tensors"]}


def check_files(record: dict, path) -> None:
    """Refuse (one NanoGPT2Error) a base whose files are missing or changed since the run that wrote `path`."""
    load_from, init_from = record["load_from"], record.get("init_from", record["load_from"])
    by_name = {p.name: p for p in model_files(load_from)} if is_name(load_from) else None
    for f in record["files"]:
        file = by_name.get(Path(f["path"]).name) if by_name is not None else Path(f["path"])
        if file is None or not file.is_file():
            raise NanoGPT2Error(f"{path} holds only the trained tensors of a run on the base model init_from="
                                f"{init_from}, and the base's file {f['path']} is missing; put it back (the same "
                                f"bytes: sha256 {f['sha256'][:16]}...) to load this checkpoint")
        if file.stat().st_size != f["bytes"] or file_sha256(file) != f["sha256"]:
            raise NanoGPT2Error(f"{path} holds only the trained tensors of a run on the base model init_from="
                                f"{init_from}, and the base's file {file} has changed since (sha256 "
                                f"{f['sha256'][:16]}... then): the trained tensors belong to the old weights; "
                                f"restore that file, or fine-tune the new base in a new run")


def complete(state: dict, path, load_base: Callable[[str], nn.Module]) -> dict:
    """A checkpoint's whole state_dict: its `model` entry plus, when it refers to a base, that base's tensors
    (its files checked first; `load_base(load_from)` loads the base model)."""
    weights = strip_prefixes(state["model"])
    record = state.get("base")
    if not record:
        return weights
    check_files(record, path)
    base = load_base(record["load_from"]).state_dict()
    missing = [bk for bk, _ in record["tensors"].values() if bk not in base]
    if missing:
        raise NanoGPT2Error(f"{path}: its base model {record['load_from']} has no tensor {missing[0]}; the base is not "
                            f"the model the run was trained on")
    for name, (bk, shape) in record["tensors"].items():
        weights.setdefault(name, crop(base[bk], shape))
    return weights
