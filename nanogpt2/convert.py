"""
GPT-2 checkpoints in and out of our GPT: Hugging Face folders both ways, OpenAI's original TensorFlow release in,
and the converter CLI. No `transformers`, no `tensorflow`.

An HF GPT-2 folder holds `config.json` and the weights as `model.safetensors` (or `pytorch_model.bin`, or
shards listed in `model.safetensors.index.json` / `pytorch_model.bin.index.json`). Its tensor names are
ours with an optional `transformer.` prefix; the only other difference is that HF's `Conv1D` layers store
their weight as (in, out), where `nn.Linear` stores (out, in), so those four matrices are transposed.

OpenAI's release (`hparams.json` + a TensorFlow checkpoint `model.ckpt.*`, read by nanogpt2/tf_checkpoint.py)
names the same tensors `model/h3/attn/c_attn/w` etc.; its `w` are TF conv1d kernels [1, in, out], i.e. HF's
Conv1D with a leading 1, so they are renamed to HF's names and loaded like an HF folder.

    from nanogpt2.model import GPT
    model = GPT.from_pretrained("gpt2")               # downloads config.json + model.safetensors once
    model = GPT.from_pretrained("/path/to/hf/folder") # any HF GPT-2 folder, e.g. a fine-tuned one
    model = GPT.from_pretrained("124M")               # OpenAI's release (also 355M, 774M, 1558M), or its folder
    save_pretrained(model, "out/hf")                  # a folder transformers.GPT2LMHeadModel can load

    python -m nanogpt2.convert SRC DST [--to hf|nanogpt2]   # any model source -> an HF folder or a .pt

Every field of HF's `GPT2Config` that changes the forward pass is either honoured or refused with a message
naming it; a checkpoint is never loaded silently wrong. Every tensor's name and shape is checked.
The formats and the export rules: docs/conversion.md. Tests: tests/test_model.py, test_tf_checkpoint.py,
test_convert.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nanogpt2.download import cache_dir, download, file_sha256, hf_url, openai_url
from nanogpt2.errors import NanoGPT2Error, write_error
from nanogpt2.safetensors_io import load_file, save_file

if TYPE_CHECKING:  # model.py imports this module lazily (GPT.from_pretrained): no import back at module level
    from nanogpt2.model import GPT, GPTConfig

# ----------------------------------------------------------------------------------------------------
# Names the Hub knows

HF_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

# HF Conv1D weights, stored (in, out); nn.Linear wants (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers that old HF checkpoints carry (the causal mask); ours builds its own.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# ----------------------------------------------------------------------------------------------------
# config.json <-> GPTConfig


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> GPTConfig:
    """GPTConfig from an HF GPT-2 config dict; refuses fields whose effect we do not implement."""
    from nanogpt2.model import ACTIVATIONS, GPTConfig  # (lazily: model.py imports this module from from_pretrained)

    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise NanoGPT2Error(f"{source}: model_type is {model_type!r}; only GPT-2 checkpoints (model_type 'gpt2') are supported")
    refused = {
        "add_cross_attention": False,  # encoder-decoder cross-attention layers
    }
    for key, supported in refused.items():
        if hf.get(key, supported) != supported:
            raise NanoGPT2Error(f"{source}: {key}={hf[key]!r} is not supported by nanogpt2 (only {supported!r}); this checkpoint cannot be loaded")
    if hf.get("pruned_heads"):  # transformers 4 could prune attention heads: fewer heads in some layers
        raise NanoGPT2Error(f"{source}: pruned_heads={hf['pruned_heads']!r} is not supported by nanogpt2 (every layer "
                            f"must keep all n_head heads); this checkpoint cannot be loaded")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise NanoGPT2Error(f"{source}: activation_function={activation!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    # reorder_and_upcast_attn only changes rounding under mixed precision (it upcasts the attention
    # matmul and softmax to fp32); the math is identical, so it is accepted.
    kwargs = dict(
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        vocab_size=hf.get("vocab_size", 50257),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        n_inner=hf.get("n_inner"),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        activation=activation,
        scale_attn_weights=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        dropout=0.0,  # HF's *_pdrop are training settings; pass dropout=... to fine-tune with dropout
        bias=True,
    )
    _check_types(kwargs, source)
    unknown = set(overrides) - {"dropout", "attn_impl"}
    if unknown:
        raise NanoGPT2Error(f"from_pretrained can override only dropout and attn_impl, not {sorted(unknown)}")
    kwargs.update(overrides)
    try:
        return GPTConfig(**kwargs)
    except ValueError as e:  # e.g. n_embd not divisible by n_head
        raise NanoGPT2Error(f"{source}: {e}; this checkpoint cannot be loaded") from None


# HF field name of each GPTConfig field, for messages.
_HF_NAMES = dict(block_size="n_positions", vocab_size="vocab_size", n_layer="n_layer", n_head="n_head",
                 n_embd="n_embd", n_inner="n_inner", layer_norm_epsilon="layer_norm_epsilon",
                 scale_attn_weights="scale_attn_weights",
                 scale_attn_by_inverse_layer_idx="scale_attn_by_inverse_layer_idx",
                 tie_word_embeddings="tie_word_embeddings")


def _check_types(kwargs: dict, source: str):
    """Sizes must be positive ints, epsilon a positive number, switches booleans (a hand-edited config.json
    with "12" or 1.5 fails here, naming the field, rather than deep inside torch)."""
    from nanogpt2.model import GPTConfig
    for key, hf_key in _HF_NAMES.items():
        v = kwargs[key]
        if key == "n_inner" and v is None:
            continue
        if key == "layer_norm_epsilon":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            want = "a positive number"
        elif isinstance(GPTConfig.__dataclass_fields__[key].default, bool):  # a switch
            ok, want = isinstance(v, bool), "true or false"
        else:
            ok, want = isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"
        if not ok:
            raise NanoGPT2Error(f"{source}: {hf_key}={v!r} must be {want}; fix config.json or re-export the checkpoint")


def config_to_hf(config: GPTConfig) -> dict:
    """An HF GPT-2 config.json dict for `config` (dropouts set to config.dropout)."""
    if not config.bias:
        raise NanoGPT2Error("a model with bias=False has no HF GPT-2 equivalent (HF GPT-2 always has biases)")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "activation_function": config.activation,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "scale_attn_weights": config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        # GPT-2's <|endoftext|>; a smaller (e.g. character) vocabulary has no such token
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "initializer_range": 0.02,
    }


# ----------------------------------------------------------------------------------------------------
# Reading weight files


def _load_weight_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated/corrupt pickle raises many different exception types
        raise NanoGPT2Error(f"cannot read {path}: {e.__class__.__name__}: {e}. The file is corrupt or not a PyTorch checkpoint; download it again") from None


def read_hf_state_dict(folder: Path) -> dict:
    """All tensors of an HF checkpoint folder (single file or shards), names as stored."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).exists():
            return _load_weight_file(folder / single)
        if (folder / index).exists():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise NanoGPT2Error(f"{folder / index}: not a valid shard index ({e})") from None
            state = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).exists():
                    raise NanoGPT2Error(f"{folder / index} lists shard {shard}, which is missing from {folder}")
                state.update(_load_weight_file(folder / shard))
            return state
    raise NanoGPT2Error(f"no weights in {folder}: expected model.safetensors, pytorch_model.bin, or a sharded *.index.json")


# ----------------------------------------------------------------------------------------------------
# HF names <-> ours


def load_hf_state_dict_into(model: GPT, hf_state: dict, source: str = "checkpoint"):
    """Copy an HF GPT-2 state dict into `model`, checking that every tensor is there with its shape."""
    ours = model.state_dict()
    expected = set(ours)
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")  # the same tensor as transformer.wte.weight
    loaded = set()
    unexpected = []
    tied_head = None
    for hf_name, tensor in hf_state.items():
        name = hf_name if hf_name.startswith(("transformer.", "lm_head.")) else "transformer." + hf_name
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            tied_head = tensor  # tied: the same matrix as wte, used only if wte itself was not saved
            continue
        if name not in expected:
            unexpected.append(hf_name)
            continue
        if name.endswith(TRANSPOSED):
            tensor = tensor.t()
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise NanoGPT2Error(f"{source}: tensor {hf_name} has shape {tuple(tensor.shape)}, expected {tuple(ours[name].shape)} for this config")
        with torch.no_grad():
            ours[name].copy_(tensor)
        loaded.add(name)
    if "transformer.wte.weight" not in loaded and tied_head is not None:
        load_hf_state_dict_into(model, {"transformer.wte.weight": tied_head, **{k: v for k, v in hf_state.items() if k != "lm_head.weight"}}, source)
        return
    missing = sorted(expected - loaded)
    if missing or unexpected:
        raise NanoGPT2Error(
            f"{source} does not match a GPT-2 with this config.json: "
            + (f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}; " if missing else "")
            + (f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "")
        )


def to_hf_state_dict(model: GPT) -> dict:
    """Our state dict under HF's GPT2LMHeadModel names, Conv1D weights transposed, tied head omitted. LoRA
    layers must be merged (their weight then holds the update); their own A and B are left out."""
    from nanogpt2.peft import lora_layers

    lora = lora_layers(model)
    if any(not layer.merged for layer in lora.values()):
        raise NanoGPT2Error("the model's LoRA layers are not merged: merge_lora first (save_pretrained merges a copy)")
    skip = {f"{name}.{p}" for name in lora for p in ("lora_A", "lora_B")}
    hf = {}
    for name, tensor in model.state_dict().items():
        if (name == "lm_head.weight" and model.config.tie_word_embeddings) or name in skip:
            continue
        tensor = tensor.detach().cpu()
        hf[name] = (tensor.t() if name.endswith(TRANSPOSED) else tensor).contiguous()
    return hf


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


# ----------------------------------------------------------------------------------------------------
# Entry points


def load_hf_folder(folder, **overrides) -> GPT:
    """A GPT from a local HF GPT-2 folder (config.json + weights)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise NanoGPT2Error(f"{folder} has no config.json: is it an HF GPT-2 checkpoint folder?")
    try:
        hf_config = json.loads(config_path.read_text())
    except ValueError as e:
        raise NanoGPT2Error(f"{config_path} is not valid JSON ({e})") from None
    config = config_from_hf(hf_config, source=str(config_path), **overrides)
    hf_state = read_hf_state_dict(folder)
    from nanogpt2.model import GPT

    model = GPT(config)
    load_hf_state_dict_into(model, hf_state, source=str(folder))
    return model


def download_hf_model(name: str, quiet: bool = False) -> Path:
    """Download config.json and model.safetensors of a GPT-2 name into the cache; return the folder."""
    folder = cache_dir() / "models" / name
    for filename in ("config.json", "model.safetensors"):
        download(
            hf_url(HF_REPOS[name], filename), folder / filename,
            desc=f"model '{name}' ({filename})",
            local_hint=f"Copy config.json and model.safetensors of {HF_REPOS[name]} into a folder DIR and pass --init_from DIR.",
            quiet=quiet,
        )
    return folder


def load_pretrained(name_or_dir, quiet: bool = False, **overrides) -> GPT:
    """GPT-2 by name (an HF name or an OpenAI size, downloaded once into the cache) or from a local folder
    (HF layout, or OpenAI's TensorFlow release)."""
    path = Path(name_or_dir)
    if path.is_dir():
        if is_openai_folder(path):
            return load_openai_folder(path, quiet=quiet, **overrides)
        return load_hf_folder(path, **overrides)
    if str(name_or_dir) in HF_REPOS:
        return load_hf_folder(download_hf_model(str(name_or_dir), quiet=quiet), **overrides)
    if openai_size(name_or_dir):
        return load_openai_folder(download_openai_model(str(name_or_dir), quiet=quiet), quiet=quiet, **overrides)
    raise NanoGPT2Error(f"{name_or_dir!r} is neither a folder nor a known model name ({', '.join(HF_REPOS)}, or "
                        f"OpenAI's sizes {', '.join(OPENAI_SIZES)})")


# ----------------------------------------------------------------------------------------------------
# Export: an HF folder


def _note(msg: str):
    print(f"note: {msg}", file=sys.stderr, flush=True)


def generation_config(hf_config: dict) -> dict:
    """generation_config.json for an LM (what transformers writes from the model config)."""
    gen = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id"):
        if hf_config.get(key) is not None:
            gen[key] = hf_config[key]
    return gen


def gpt_hf_export(model) -> dict:
    """The parts of an HF GPT2LMHeadModel folder for a GPT (LoRA merged): config, tensors, generation_config.
    A hook (see save_pretrained) can start from these: `model.config` and `transformer.*` names are all it needs."""
    config = config_to_hf(model.config)
    return {"config": config, "tensors": to_hf_state_dict(model), "generation_config": generation_config(config)}


def _refuse_unexportable(model) -> None:
    """HF GPT-2 has no adapter layers, no learned prefix or prompt: such a model cannot become a plain HF folder."""
    for m in model.modules():
        for attr, what in (("adapter_config", "Houlsby adapters"), ("prefix_config", "prefix tuning"),
                           ("prompt_config", "prompt tuning")):
            if getattr(m, attr, None) is not None:
                raise NanoGPT2Error(
                    f"this model has {what} ({attr}={getattr(m, attr)!r}), which a plain HF GPT-2 folder cannot "
                    f"express. Keep it as a nanogpt2 checkpoint (python -m nanogpt2.convert SRC DST.pt), or export "
                    f"what peft supports with nanogpt2.peft.save_peft_adapter / finetune.py --merge_and_export")


def _merged_copy(model):
    """`model` itself, or with LoRA a deep copy with every LoRA update merged (the live model stays unmerged)."""
    from nanogpt2.peft import lora_layers, merge_lora

    if not lora_layers(model):
        return model
    merged = copy.deepcopy(model)
    merge_lora(merged)
    return merged


def save_pretrained(model, out_dir, tokenizer=None, log=_note) -> Path:
    """Write `model` as an HF folder transformers loads: config.json, model.safetensors, generation_config.json.

    - LoRA is merged first, on a copy (the HF folder is plain GPT-2; `model` stays unmerged).
    - Houlsby adapters (`adapter_config`), prefix and prompt tuning (`prefix_config`, `prompt_config`) are refused,
      with a message pointing to the peft export (nanogpt2.peft.save_peft_adapter, finetune.py --merge_and_export)
      and the .pt format.
    - A vocabulary padded past the `tokenizer` (e.g. 50304 rows for 50257 ids) is kept as it is and said so
      through `log`: the rows past the tokenizer are never produced by it, and config.json's vocab_size counts them.

    Export hook, for models beside the plain GPT (e.g. GPTForSequenceClassification in nanogpt2/heads.py): a
    method `model.hf_export() -> {"config": dict, "tensors": dict, "generation_config": dict or None}` returns
    config.json (with its "architectures", e.g. ["GPT2ForSequenceClassification"]), the tensors under HF names,
    and generation_config.json (None: not written, as for models that do not generate). save_pretrained calls it
    on the merged copy after the refusals and writes the files; `gpt_hf_export(model)` gives the plain GPT-2
    parts to start from (it reads `model.config` and `model.state_dict()`: `transformer.*` names, other names
    such as `score.weight` pass through).
    """
    _refuse_unexportable(model)
    export = _merged_copy(model)
    hook = getattr(export, "hf_export", None)
    parts = hook() if callable(hook) else gpt_hf_export(export)
    vocab = parts["config"].get("vocab_size")
    n_vocab = getattr(tokenizer, "n_vocab", None)
    if n_vocab is not None and vocab is not None and vocab > n_vocab and log is not None:
        log(f"the model's vocabulary has {vocab} rows but the tokenizer {n_vocab} ids: all {vocab} are exported "
            f"(config.json vocab_size={vocab}); the {vocab - n_vocab} rows past the tokenizer are padding it never "
            f"produces")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(parts["config"], indent=2) + "\n")
    save_file(parts["tensors"], out_dir / "model.safetensors", metadata={"format": "pt"})
    gen = out_dir / "generation_config.json"
    if parts.get("generation_config") is not None:
        gen.write_text(json.dumps(parts["generation_config"], indent=2) + "\n")
    elif gen.exists():
        gen.unlink()  # from an earlier export of another kind of model
    return out_dir


# ----------------------------------------------------------------------------------------------------
# The command line: python -m nanogpt2.convert SRC DST [--to hf|nanogpt2]


_BIG = 100_000_000  # bytes: a model this big takes seconds to write, so say what is happening


def _write_pt(model, info: dict, dst: Path, src: str) -> Path:
    """A nanogpt2 checkpoint that nanogpt2.loader reads back (weights, model spec, tokenizer, checksum)."""
    from nanogpt2.checkpoint import save_checkpoint
    from nanogpt2.loader import model_spec

    spec = model_spec(model)
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model_spec": spec,
             "model_config": spec.get("config") or {}, "tokenizer": info.get("tokenizer"),
             "run_config": info.get("config") or {}, "step": info.get("step") or 0, "converted_from": src}
    return save_checkpoint(dst, state)


def _check_destination(dst: Path, to: str) -> None:
    if to == "nanogpt2":
        if dst.suffix != ".pt" or dst.is_dir():
            raise NanoGPT2Error(f"--to nanogpt2 writes one checkpoint file: give DST a .pt name (e.g. {dst.name}.pt), "
                                f"not {dst}")
        return
    if dst.suffix == ".pt" or dst.is_file():
        raise NanoGPT2Error(f"--to hf writes a folder, but DST {dst} is a file name; give a folder, or --to nanogpt2")
    stale = [f for f in ("pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
             if (dst / f).exists()]
    if stale:
        raise NanoGPT2Error(f"{dst} already holds {', '.join(stale)}, which loaders would read beside (or instead of) "
                            f"the new model.safetensors; write into an empty folder or remove them")


def convert(src: str, dst, to: str | None = None, log=_note) -> dict:
    """Load `src` (anything nanogpt2.loader.load_model takes) and write it to `dst`: an HF folder (to="hf", the
    default) or a nanogpt2 .pt (to="nanogpt2", or a dst ending in .pt). Returns {path, file, sha256, params,
    format, architecture}."""
    from nanogpt2.checkpoint import tokenizer_from_info
    from nanogpt2.loader import load_model

    dst = Path(dst)
    to = to or ("nanogpt2" if dst.suffix == ".pt" else "hf")
    if to not in ("hf", "nanogpt2"):
        raise NanoGPT2Error(f"--to must be hf or nanogpt2, not {to!r}")
    if src == "scratch":
        raise NanoGPT2Error("SRC 'scratch' has no weights to convert; give a model name, folder or checkpoint")
    _check_destination(dst, to)
    model, info = load_model(src, log=log)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # a tied head once
    if to == "hf":
        _refuse_unexportable(model)  # before the line below: a refusal is the only line
    if params * 4 >= _BIG:
        print(f"writing {dst} ({params * 4 / 1e6:,.0f} MB) ...", file=sys.stderr, flush=True)
    if to == "nanogpt2":
        if (info.get("tokenizer") or {}).get("bpe_dir"):
            log(f"the tokenizer is read from {info['tokenizer']['bpe_dir']} (its encoder.json + vocab.bpe are not "
                f"GPT-2's): the checkpoint refers to that folder, keep it there")
        written = _write_pt(model, info, dst, src)
        architecture = info["spec"].get("kind", "gpt")
    else:
        tok_info = info.get("tokenizer") or {}
        tokenizer = tokenizer_from_info(tok_info) if tok_info else None
        if tok_info and tok_info.get("name") != "gpt2":
            log(f"the {tok_info.get('name')} tokenizer is not written to the HF folder (only GPT-2's BPE has an HF "
                f"GPT-2 equivalent); keep the source checkpoint for its vocabulary")
        try:
            save_pretrained(model, dst, tokenizer=tokenizer, log=log)
        except OSError as e:  # a full disk, an unwritable folder (save_checkpoint says so itself)
            raise write_error(e, f"the HF folder {dst}", dst.parent if dst.parent.exists() else Path("."),
                              fix="free some space or choose another DST", any_os_error=True) from None
        written = dst / "model.safetensors"
        architecture = json.loads((dst / "config.json").read_text())["architectures"][0]
    return {"path": str(dst), "file": str(written), "sha256": file_sha256(written), "params": params,
            "format": to, "architecture": architecture,
            "description": info.get("description", src)}


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m nanogpt2.convert",
        description="Convert a GPT-2 checkpoint between formats: OpenAI's TensorFlow release, Hugging Face folders, "
                    "nanogpt2 checkpoints. See docs/conversion.md.",
        epilog="examples:\n  python -m nanogpt2.convert 124M out/gpt2-hf            # OpenAI's release -> HF folder\n"
               "  python -m nanogpt2.convert out-shakespeare out/hf       # a train.py run -> HF folder\n"
               "  python -m nanogpt2.convert path/to/hf-folder model.pt   # HF folder -> nanogpt2 checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC", help=f"a GPT-2 name ({', '.join(HF_REPOS)}), an OpenAI size "
                    f"({', '.join(OPENAI_SIZES)}; 117M, 345M), an HF folder, an OpenAI TensorFlow folder, a train.py "
                    f"run folder or a checkpoint .pt")
    ap.add_argument("dst", metavar="DST", help="an HF folder to write, or a .pt checkpoint file")
    ap.add_argument("--to", choices=["hf", "nanogpt2"], default=None,
                    help="output format (default: nanogpt2 when DST ends in .pt, else hf)")
    args = ap.parse_args(argv)
    res = convert(args.src, args.dst, args.to)
    what = f"HF {res['architecture']} folder" if res["format"] == "hf" else "nanogpt2 checkpoint"
    print(f"converted {res['description']} -> {res['path']} ({what})")
    print(f"parameters: {res['params']:,}")
    print(f"sha256: {res['sha256']}  {res['file']}")
    return res


if __name__ == "__main__":
    from nanogpt2.errors import run_cli

    run_cli(main)
