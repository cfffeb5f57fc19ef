"""
Training checkpoints: written atomically, checksummed, read back with clear errors, found by name. (Models
are rebuilt from them by nanogpt2/loader.py.)

A checkpoint is one `torch.save` file holding a dict:

    model          raw state_dict (never the DDP or torch.compile wrapper's)
    model_spec     what nanogpt2.loader rebuilds before the weights ({"kind": "gpt", "config": ..., "lora": ...})
    model_config   GPTConfig.to_dict() (for readers from before model_spec)
    run_config     the effective RunConfig as a dict
    tokenizer      {"name": "gpt2"} or {"name": "char", "chars": "..."} (the ids mean nothing without it)
    optimizer      AdamW state_dict (fp32 moments)
    scaler         GradScaler state_dict (empty unless float16)
    scheduler      the resolved schedule (a pure function of `step`, stored for the record)
    step, epoch, best_val_loss, tokens_seen
    sampler        the data sampler's state_dict
    rng            {"python", "numpy", "torch", "cuda"} of rank 0, and "per_rank" (a list) under DDP
    world_size     the number of processes that wrote it
    checksum       "sha256:<hex>" of every other entry (tensor bytes, dtypes, shapes, keys and plain values)

It is written to a temporary file in the same folder, flushed to disk and renamed over the target
(`os.replace`, atomic on POSIX and Windows), so a crash never leaves a half-written checkpoint under a
real name; a failed write (a full disk) is a NanoGPT2Error and leaves the previous file as it was, and
`remove_stray_temp_files` clears the temporary file of a killed save. Everything in it is a tensor or a
plain Python value, so it loads with `torch.load(weights_only=True)`: loading a checkpoint never runs code.
Every load recomputes the checksum (one flipped byte anywhere in the tensor data is caught) and refuses
non-finite weights; files written before checksums existed (no "checksum" entry) load unverified.

File names in a run folder: checkpoint_best.pt, checkpoint_step_N.pt, checkpoint_epoch_N.pt,
checkpoint_time_limit.pt, checkpoint_interrupted.pt, checkpoint_final.pt (`prune_checkpoints`: keep_last's policy).
A PEFT run's checkpoints hold its trained tensors and, under `base`, a reference to the frozen base model instead
of its weights (nanogpt2/base_ref.py; the loader fills them in). The latest checkpoint of a folder
is the one with the highest stored step (not the newest file: a copied folder has new times);
`load_latest` skips damaged ones and says which.

    from nanogpt2.checkpoint import load_checkpoint, find_checkpoint
    state = load_checkpoint(find_checkpoint("out-shakespeare"))   # a verified dict (see above)
    (Models from checkpoints, and from any other init_from: nanogpt2/loader.py.)
"""

import contextlib
import hashlib
import os
import pickle
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from nanogpt2.errors import NanoGPT2Error, write_error

PREFIX = "checkpoint_"
SUFFIX = ".pt"
CHECKSUM = "checksum"  # the entry holding "sha256:<hex>" of all the others

# ----------------------------------------------------------------------------------------------------
# Save and load


def _plain(obj):
    """numpy values -> tensors / Python scalars, recursively, so the file loads with weights_only=True."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_plain(v) for v in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _feed(h, obj) -> None:
    """Hash `obj` (what a checkpoint may hold: dicts, lists, tuples, tensors, plain values) into `h`, tagged
    with types and lengths, so that any change of a byte, a dtype, a shape, a key or a value changes the digest."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, whatever the dtype
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (str, bytes, bytearray)):
        b = obj.encode("utf-8", "surrogatepass") if isinstance(obj, str) else bytes(obj)
        h.update(f"{'S' if isinstance(obj, str) else 'B'}{len(b)}:".encode())
        h.update(b)
    else:  # None, bool, int, float, torch.dtype, ...: repr is exact (floats round-trip)
        r = f"{type(obj).__name__}={obj!r}".encode()
        h.update(f"O{len(r)}:".encode())
        h.update(r)


def checksum(state: dict) -> str:
    """"sha256:<hex>" of every entry of a checkpoint dict but the checksum itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` plus its checksum to `path` atomically: temp file in the same folder, fsync, os.replace.
    A failed write (full disk, file-size limit, permissions) is a NanoGPT2Error naming the path and the free
    space; the previous file at `path` is untouched and the temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain(state)
    payload[CHECKSUM] = checksum(payload)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        err = write_error(e, f"the checkpoint {path}", path.parent, any_os_error=True,
                          fix="free some space or set out_dir to a larger disk; the previous checkpoints are untouched")
        if err is not None:
            raise err from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable (POSIX); harmless to skip where folders cannot be opened
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def _torch_load(path, map_location="cpu", mmap=False):
    """torch.load(weights_only=True), its failures as one NanoGPT2Error. torch's own text is not shown for a
    file it refuses to unpickle: it advises loading with weights_only=False, which runs the file's code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 8" for random bytes
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        msg = str(e)
        if isinstance(e, pickle.UnpicklingError) or re.search(r"weights.only", msg, re.I):
            why = ("it holds Python objects other than tensors and plain values, which nanogpt2 never unpickles "
                   "(that could run code from the file)" if "GLOBAL" in msg else
                   "its contents are not a PyTorch checkpoint (random or corrupt data)")
        else:
            first = re.split(r"(?<=[a-z])\. ", msg.strip().splitlines()[0] if msg.strip() else type(e).__name__)[0]
            why = f"truncated or corrupt: {first[:200]}"
    raise NanoGPT2Error(f"{path} is not a valid checkpoint, it is unreadable ({why}); delete it or use another "
                        f"checkpoint of the run (a checkpoint_*.pt written by train.py)")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by save_checkpoint and verify it: a missing, truncated, foreign or damaged
    file (checksum mismatch) or non-finite weights are a NanoGPT2Error. A file without a checksum (written by
    an earlier nanogpt2) loads unverified."""
    path = Path(path)
    if not path.is_file():
        raise NanoGPT2Error(f"checkpoint {path} does not exist; pass a checkpoint file or a run folder (out_dir)")
    state = _torch_load(path, map_location)
    if (not isinstance(state, dict) or not isinstance(state.get("model"), dict)
            or not isinstance(state.get("model_config"), dict)):
        raise NanoGPT2Error(f"{path} is not a nanogpt2 training checkpoint (no 'model'/'model_config' entries); "
                            f"pass a checkpoint_*.pt written by train.py")
    if CHECKSUM not in state and any(isinstance(v, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", v)
                                     for v in state.values()):
        state[CHECKSUM] = None  # a checksum under a changed name: a damaged file, not one from before checksums
    if CHECKSUM in state and state[CHECKSUM] != checksum(state):
        raise NanoGPT2Error(f"{path} is damaged: its contents do not match the checksum stored in it (a changed "
                            f"byte: a disk or copy error, or an edit); do not use it: resume from another checkpoint "
                            f"of the run (--resume_from auto skips damaged ones) or restore a good copy")
    bad = [k for k, v in state["model"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
        raise NanoGPT2Error(f"{path} holds non-finite weights (NaN or inf in {bad[0]}{more}): the run had diverged "
                            f"when it was saved; use an earlier checkpoint and lower learning_rate or set grad_clip")
    return state


# ----------------------------------------------------------------------------------------------------
# Finding checkpoints in a run folder


def list_checkpoints(out_dir) -> list:
    """The checkpoints of a run folder, oldest first (by modification time, then name)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    files = [p for p in out_dir.glob(f"{PREFIX}*{SUFFIX}") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _stored_step(path):
    """(step stored in the checkpoint or -1, None), or (None, the NanoGPT2Error) when it cannot be read. Cheap:
    the tensors are memory-mapped, not read (files of torch's pre-1.6 format cannot be mapped: read in full)."""
    try:
        state = _torch_load(path, "cpu", mmap=True)
    except NanoGPT2Error:
        try:
            state = _torch_load(path, "cpu")
        except NanoGPT2Error as e:
            return None, e
    step = state.get("step") if isinstance(state, dict) else None
    return (int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else -1), None


def by_step(out_dir) -> tuple:
    """([checkpoints of a run folder, the highest stored step first (ties: checkpoint_best.pt, saved earlier in
    its step, after the others, then the newest file first)],
    [(unreadable checkpoint, its NanoGPT2Error)])."""
    readable, unreadable = [], []
    for p in list_checkpoints(out_dir):
        step, err = _stored_step(p)
        if err is None:
            readable.append((step, p.name != f"{PREFIX}best{SUFFIX}", p.stat().st_mtime_ns, p.name, p))
        else:
            unreadable.append((p, err))
    readable.sort(reverse=True)
    return [p for *_, p in readable], unreadable


def find_checkpoint(out_dir_or_file, which="auto") -> Path:
    """A checkpoint file. Given a file: that file. Given a run folder: `which` = "best"
    (checkpoint_best.pt), or "latest"/"auto" (the one with the highest stored step: the furthest state of the
    run, what a resume wants; `load_latest` also skips damaged ones)."""
    p = Path(out_dir_or_file)
    if which not in ("auto", "best", "latest"):
        raise NanoGPT2Error(f"which must be auto, best or latest, not {which!r}")
    if p.is_file():
        return p
    if not p.is_dir():
        raise NanoGPT2Error(f"{p} is neither a checkpoint file nor a run folder")
    if which == "best":
        best = p / f"{PREFIX}best{SUFFIX}"
        if not best.is_file():
            raise NanoGPT2Error(f"{p} has no {best.name} (no evaluation has run yet); use which='latest'")
        return best
    files = list_checkpoints(p)
    if not files:
        raise NanoGPT2Error(f"no checkpoint ({PREFIX}*{SUFFIX}) in {p}; train first, e.g. python train.py --out_dir={p}")
    ordered, unreadable = by_step(p)
    return ordered[0] if ordered else unreadable[-1][0]


def load_latest(out_dir, map_location="cpu", check=None) -> tuple:
    """(path, state, skipped) of the valid checkpoint with the highest stored step in a run folder, where
    `skipped` lists the [(path, reason)] passed over: unreadable, damaged (checksum), non-finite weights, or
    refused by `check(path, state)` (which raises a NanoGPT2Error). None valid: a NanoGPT2Error naming each."""
    out_dir = Path(out_dir)
    ordered, unreadable = by_step(out_dir)
    skipped = [(p, str(e)) for p, e in unreadable]
    for path in ordered:
        try:
            state = load_checkpoint(path, map_location)
            if check is not None:
                check(path, state)
        except NanoGPT2Error as e:
            skipped.append((path, str(e)))
            continue
        return path, state, skipped
    if not skipped:
        raise NanoGPT2Error(f"no checkpoint ({PREFIX}*{SUFFIX}) in {out_dir}; train first, e.g. python train.py "
                            f"--out_dir={out_dir}")
    raise NanoGPT2Error(f"no usable checkpoint in {out_dir}: " + " | ".join(why for _, why in skipped))


def remove_stray_temp_files(out_dir) -> list:
    """Delete the temporary files (.checkpoint_*.pt.tmp-PID) that a killed save left in a run folder; return
    them. Call at the start of a run, before it saves."""
    stray = [p for p in Path(out_dir).glob(f".{PREFIX}*{SUFFIX}.tmp-*") if p.is_file()]
    for p in stray:
        p.unlink(missing_ok=True)
    return stray


REPEATED = re.compile(rf"{PREFIX}(step_\d+|epoch_\d+|interrupted|time_limit){re.escape(SUFFIX)}$")  # keep_last's


def prune_checkpoints(out_dir, keep_last: int, own=None) -> list:
    """keep_last's policy (its help text, nanogpt2/config.py): of the checkpoints a run writes again and again
    (step_N, epoch_N, interrupted, time_limit: `REPEATED`), keep the newest `keep_last` by stored step and delete
    the others; never checkpoint_best.pt or checkpoint_final.pt, nor the newest resumable checkpoint of the folder,
    nor an unreadable file, nor one whose name is not in `own` (the run's own checkpoints; None: every checkpoint
    of the folder is the run's). keep_last 0 keeps all. Returns the deleted paths."""
    if keep_last <= 0:
        return []
    ordered, _ = by_step(out_dir)  # the highest stored step first
    repeated = [p for p in ordered if REPEATED.match(p.name)]
    doomed = [p for p in repeated[keep_last:] if p != ordered[0] and (own is None or p.name in own)]
    for f in doomed:
        f.unlink(missing_ok=True)
    return doomed


# ----------------------------------------------------------------------------------------------------
# RNG states and tokenizers


def rng_state() -> dict:
    """All random states of this process: Python, numpy's global, torch CPU and every CUDA device."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different machine: restore what lines up
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def tokenizer_info(tok) -> dict:
    """What a checkpoint records about its tokenizer: the name, and the vocabulary of a char tokenizer."""
    if getattr(tok, "name", None) == "char":
        return {"name": "char", "chars": "".join(tok.chars)}
    return {"name": getattr(tok, "name", "gpt2")}


def tokenizer_from_info(info, path=None):
    """The tokenizer a checkpoint was trained with (inverse of tokenizer_info; a bare name also works).
    `{"name": "gpt2", "bpe_dir": DIR}` reads DIR's encoder.json + vocab.bpe (OpenAI's release folders).
    With the checkpoint's `path`, a malformed entry is a NanoGPT2Error naming the file."""
    from nanogpt2.tokenizer import get_tokenizer

    with rebuilding(path, "the tokenizer") if path is not None else contextlib.nullcontext():
        if isinstance(info, str):
            info = {"name": info}
        if info.get("name") == "char":
            return get_tokenizer("char", chars=info["chars"])
        if info.get("bpe_dir"):
            return get_tokenizer(info.get("name", "gpt2"), bpe_dir=info["bpe_dir"])
        return get_tokenizer(info.get("name", "gpt2"))


# ----------------------------------------------------------------------------------------------------
# Rebuilding from a checkpoint: one line for any failure


def strip_prefixes(state_dict: dict) -> dict:
    """Undo the "_orig_mod." (torch.compile) and "module." (DDP) prefixes, should a checkpoint carry them."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def rebuild_error(path, what: str, e: Exception) -> NanoGPT2Error:
    """One line for any exception raised while rebuilding `what` (a model, an optimizer, ...) from a
    checkpoint that loaded and verified, e.g. a hand-edited config or a file of another version."""
    if isinstance(e, NanoGPT2Error):
        return e if str(path) in str(e) else NanoGPT2Error(f"{path}: {e}")
    reason = " ".join(str(e).split())[:300]  # e.g. load_state_dict's "Error(s) in loading ...:\n\tUnexpected key(s) ..."
    return NanoGPT2Error(f"{path}: cannot rebuild {what} from this checkpoint ({type(e).__name__}: {reason}); it was "
                         f"edited or written by another program; use another checkpoint of the run or start a new run")


@contextlib.contextmanager
def rebuilding(path, what: str):
    """Turn every exception in the block into rebuild_error(path, what, e)."""
    try:
        yield
    except Exception as e:
        raise rebuild_error(path, what, e) from None
