"""
OpenAI's original GPT-2 release in our GPT: `hparams.json` + a TensorFlow checkpoint `model.ckpt.*` (read by
nanogpt2/tf_checkpoint.py, no `tensorflow`) + `encoder.json` / `vocab.bpe`, by size name (124M, 355M, 774M,
1558M; 117M, 345M the 2019 names) downloaded once into the cache, or from a local folder.

Its tensors are named `model/h3/attn/c_attn/w` etc.; its `w` are TF conv1d kernels [1, in, out], i.e. HF's
Conv1D with a leading 1, so they are renamed to HF's names and loaded like an HF folder (nanogpt2/hf_checkpoint.py).
Tests: tests/test_tf_checkpoint.py.

    from nanogpt2.openai_checkpoint import load_openai_folder, download_openai_model
    model = load_openai_folder(download_openai_model("124M"))
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from nanogpt2.download import cache_dir, download, openai_url
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.hf_checkpoint import load_hf_state_dict_into

if TYPE_CHECKING:  # model.py imports convert.py lazily (GPT.from_pretrained), which imports this: no model import
    from nanogpt2.model import GPT, GPTConfig

# ----------------------------------------------------------------------------------------------------
# OpenAI's original TensorFlow release (the bundle format itself: nanogpt2/tf_checkpoint.py)

OPENAI_SIZES = ("124M", "355M", "774M", "1558M")
OPENAI_ALIASES = {"117M": "124M", "345M": "355M"}  # the names of the 2019 releases, before the recount
# what OpenAI's download_model.py fetches, less model.ckpt.meta (the TF graph, which nothing here needs)
OPENAI_FILES = ("checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001",
                "encoder.json", "vocab.bpe")
_HPARAMS = dict(n_vocab="vocab_size", n_ctx="block_size", n_embd="n_embd", n_head="n_head", n_layer="n_layer")
_OPTIMIZER_SLOTS = ("/Adam", "/Adam_1")  # fine-tuning scripts (e.g. gpt-2-simple) save Adam's moments beside


def openai_size(name: str):
    """The canonical OpenAI size name ("124M", ...) for a size name or old alias ("117M"), else None."""
    name = str(name)
    return name if name in OPENAI_SIZES else OPENAI_ALIASES.get(name)


def is_openai_folder(path) -> bool:
    """A folder of OpenAI's release layout: hparams.json (beside a TensorFlow checkpoint), no HF config.json."""
    path = Path(path)
    return path.is_dir() and (path / "hparams.json").is_file() and not (path / "config.json").exists()


def config_from_hparams(hp: dict, source: str = "hparams.json", **overrides) -> GPTConfig:
    """GPTConfig from OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer; GELU with the tanh
    approximation, LayerNorm epsilon 1e-5, tied head: OpenAI's model.py)."""
    from nanogpt2.model import GPTConfig

    if not isinstance(hp, dict):
        raise NanoGPT2Error(f"{source}: expected a JSON object with {', '.join(_HPARAMS)}")
    kwargs = {}
    for key, ours in _HPARAMS.items():
        v = hp.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise NanoGPT2Error(f"{source}: {key}={v!r} must be a positive integer; fix hparams.json (OpenAI's holds "
                                f"{', '.join(_HPARAMS)})")
        kwargs[ours] = v
    unknown = set(overrides) - {"dropout", "attn_impl"}
    if unknown:
        raise NanoGPT2Error(f"from_pretrained can override only dropout and attn_impl, not {sorted(unknown)}")
    try:
        return GPTConfig(**kwargs, **overrides)
    except ValueError as e:
        raise NanoGPT2Error(f"{source}: {e}; this checkpoint cannot be loaded") from None


def _hf_name(tf_name: str) -> str | None:
    """HF's GPT-2 name of an OpenAI tensor name (model/h3/attn/c_attn/w -> h.3.attn.c_attn.weight), else None."""
    m = re.fullmatch(r"model/(wte|wpe)", tf_name)
    if m:
        return f"{m.group(1)}.weight"
    m = re.fullmatch(r"model/(?:h(\d+)/)?([a-z_0-9/]+)/([gbw])", tf_name)
    if not m:
        return None
    block = f"h.{m.group(1)}." if m.group(1) is not None else ""
    return f"{block}{m.group(2).replace('/', '.')}.{'bias' if m.group(3) == 'b' else 'weight'}"


def openai_to_hf_state_dict(tensors: dict, source: str) -> dict:
    """OpenAI's tensors under HF GPT-2 names; each `w` [1, in, out] (TF conv1d) becomes HF's Conv1D (in, out)."""
    out = {}
    for tf_name, t in tensors.items():
        name = _hf_name(tf_name)
        if name is None:
            raise NanoGPT2Error(f"{source}: tensor {tf_name!r} is not part of OpenAI's GPT-2 (model/wte, model/wpe, "
                                f"model/h<i>/..., model/ln_f/...); this is not a GPT-2 checkpoint")
        if tf_name.endswith("/w"):
            if t.dim() != 3 or t.shape[0] != 1:
                raise NanoGPT2Error(f"{source}: tensor {tf_name!r} has shape {list(t.shape)}, expected [1, in, out]")
            t = t[0]  # (in, out)
        out[name] = t
    return out


def load_openai_folder(folder, quiet: bool = True, **overrides) -> GPT:
    """A GPT from a folder of OpenAI's original release: hparams.json + a TensorFlow checkpoint."""
    from nanogpt2 import tf_checkpoint
    from nanogpt2.model import GPT

    folder = Path(folder)
    try:
        hp = json.loads((folder / "hparams.json").read_text())
    except (OSError, ValueError) as e:
        raise NanoGPT2Error(f"cannot read {folder / 'hparams.json'} ({e}); OpenAI's release has one beside the "
                            f"checkpoint") from None
    config = config_from_hparams(hp, source=str(folder / "hparams.json"), **overrides)
    prefix = tf_checkpoint.checkpoint_prefix(folder)
    _, entries = tf_checkpoint.read_index(prefix)
    names = [n for n in entries if n.startswith("model/") and not n.endswith(_OPTIMIZER_SLOTS)]
    tensors = tf_checkpoint.load_checkpoint(prefix, names=names, quiet=quiet)
    model = GPT(config)
    load_hf_state_dict_into(model, openai_to_hf_state_dict(tensors, str(prefix)), source=str(prefix))
    return model


def download_openai_model(size: str, quiet: bool = False) -> Path:
    """Download OpenAI's release of a size ("124M", or an alias) into the cache; return the folder."""
    size = openai_size(size)
    folder = cache_dir() / "models" / f"openai-{size}"
    for filename in OPENAI_FILES:
        download(openai_url(size, filename), folder / filename, desc=f"model '{size}' ({filename})", quiet=quiet,
                 local_hint=f"Or copy OpenAI's {size} files (hparams.json, checkpoint, model.ckpt.index, "
                            f"model.ckpt.data-00000-of-00001, encoder.json, vocab.bpe) into a folder DIR and pass DIR "
                            f"instead of '{size}' (e.g. --init_from DIR).")
    return folder


# sha256 of OpenAI's encoder.json and vocab.bpe (the same for every size; tiktoken pins the same hashes)
GPT2_BPE_SHA256 = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                   "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}


def openai_tokenizer_info(folder) -> dict:
    """The tokenizer entry of an OpenAI folder: {"name": "gpt2"} when its encoder.json + vocab.bpe are GPT-2's
    own (or absent), else {"name": "gpt2", "bpe_dir": folder} (its own vocabulary, read from there)."""
    from nanogpt2.checkpoint import tokenizer_from_info
    from nanogpt2.tokenizer import get_tokenizer

    folder = Path(folder).resolve()
    files = [folder / name for name in GPT2_BPE_SHA256]
    if not all(f.is_file() for f in files):
        return {"name": "gpt2"}
    if all(hashlib.sha256(f.read_bytes()).hexdigest() == GPT2_BPE_SHA256[f.name] for f in files):
        return {"name": "gpt2"}
    own = {"name": "gpt2", "bpe_dir": str(folder)}
    if tokenizer_from_info(own).checksum == get_tokenizer("gpt2").checksum:  # the same vocabulary, other bytes
        return {"name": "gpt2"}
    return own
