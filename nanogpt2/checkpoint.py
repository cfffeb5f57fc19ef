"""
Training checkpoints: written atomically, read back with clear errors, found by name, loaded as models.

A checkpoint is one `torch.save` file holding a dict:

    model          raw state_dict (never the DDP or torch.compile wrapper's)
    model_config   GPTConfig.to_dict()
    run_config     the effective RunConfig as a dict
    tokenizer      {"name": "gpt2"} or {"name": "char", "chars": "..."} (the ids mean nothing without it)
    optimizer      AdamW state_dict (fp32 moments)
    scaler         GradScaler state_dict (empty unless float16)
    scheduler      the resolved schedule (a pure function of `step`, stored for the record)
    step, epoch, best_val_loss, tokens_seen
    sampler        the data sampler's state_dict
    rng            {"python", "numpy", "torch", "cuda"} of rank 0, and "per_rank" (a list) under DDP

It is written to a temporary file in the same folder, flushed to disk and renamed over the target
(`os.replace`, atomic on POSIX and Windows), so a crash never leaves a half-written checkpoint under a
real name. Everything in it is a tensor or a plain Python value, so it loads with
`torch.load(weights_only=True)`: loading a checkpoint never runs code.

File names in a run folder: checkpoint_best.pt, checkpoint_step_N.pt, checkpoint_epoch_N.pt,
checkpoint_time_limit.pt, checkpoint_interrupted.pt, checkpoint_final.pt.

    from nanogpt2.checkpoint import load_model
    model, info = load_model("out-shakespeare")     # newest checkpoint of a run folder, or a file
    tok = tokenizer_from_info(info["tokenizer"])
"""

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from nanogpt2.errors import NanoGPT2Error

PREFIX = "checkpoint_"
SUFFIX = ".pt"

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


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(_plain(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by save_checkpoint; a missing, truncated or foreign file is a NanoGPT2Error."""
    path = Path(path)
    if not path.is_file():
        raise NanoGPT2Error(f"checkpoint {path} does not exist; pass a checkpoint file or a run folder (out_dir)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NanoGPT2Error(
            f"checkpoint {path} is unreadable (truncated or corrupt: {reason[:200]}); "
            f"delete it and resume from another checkpoint of the run"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise NanoGPT2Error(f"{path} is not a nanogpt2 training checkpoint (no 'model'/'model_config' entries)")
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


def find_checkpoint(out_dir_or_file, which="auto") -> Path:
    """A checkpoint file. Given a file: that file. Given a run folder: `which` = "best"
    (checkpoint_best.pt), or "latest"/"auto" (the most recently written checkpoint: the furthest state of
    the run, what a resume wants)."""
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
    return files[-1]


def prune_checkpoints(out_dir, kind: str, keep_last: int) -> list:
    """Delete all but the newest `keep_last` checkpoint_{kind}_N.pt (by N); return the deleted paths."""
    if keep_last <= 0:
        return []
    pattern = re.compile(rf"{PREFIX}{kind}_(\d+){re.escape(SUFFIX)}$")
    numbered = []
    for f in Path(out_dir).glob(f"{PREFIX}{kind}_*{SUFFIX}"):
        m = pattern.match(f.name)
        if m:
            numbered.append((int(m.group(1)), f))
    numbered.sort()
    doomed = [f for _, f in numbered[:-keep_last]]
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


def tokenizer_from_info(info):
    """The tokenizer a checkpoint was trained with (inverse of tokenizer_info; a bare name also works)."""
    from nanogpt2.tokenizer import get_tokenizer

    if isinstance(info, str):
        info = {"name": info}
    if info.get("name") == "char":
        return get_tokenizer("char", chars=info["chars"])
    return get_tokenizer(info.get("name", "gpt2"))


# ----------------------------------------------------------------------------------------------------
# Models from checkpoints


def _strip_prefixes(state_dict: dict) -> dict:
    """Undo the "_orig_mod." (torch.compile) and "module." (DDP) prefixes, should a checkpoint carry them."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_model(path_or_dir, device="cpu", which="auto"):
    """(GPT in eval mode on `device`, info) from a checkpoint file or a run folder (see find_checkpoint).

    info: path, tokenizer, config (the run config dict), model_config, step, epoch, best_val_loss.
    """
    from nanogpt2.model import GPT, GPTConfig

    path = find_checkpoint(path_or_dir, which)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(_strip_prefixes(ckpt["model"]))
    except (TypeError, ValueError, RuntimeError) as e:
        raise NanoGPT2Error(f"{path}: the weights do not fit the stored model config ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    info = {
        "path": str(path),
        "tokenizer": ckpt.get("tokenizer", {"name": "gpt2"}),
        "config": ckpt.get("run_config", {}),
        "model_config": ckpt["model_config"],
        "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"),
        "best_val_loss": ckpt.get("best_val_loss"),
    }
    return model, info
