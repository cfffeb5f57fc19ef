"""
Hugging Face GPT-2 folders in and out of our GPT, without `transformers`: config.json <-> GPTConfig, the tensor
names and layouts, reading a folder's weights (safetensors or .bin, sharded or not), and downloading a GPT-2
name from the Hub into the cache.

An HF GPT-2 folder holds `config.json` and the weights as `model.safetensors` (or `pytorch_model.bin`, or
shards listed in `model.safetensors.index.json` / `pytorch_model.bin.index.json`). Its tensor names are
ours with an optional `transformer.` prefix; the only other difference is that HF's `Conv1D` layers store
their weight as (in, out), where `nn.Linear` stores (out, in), so those four matrices are transposed.
Every field of HF's `GPT2Config` that changes the forward pass is either honoured or refused with a message
naming it; every tensor's name and shape is checked. Writing a whole folder: nanogpt2/convert.py
(save_pretrained). Tests: tests/test_model.py, tests/test_convert.py.

    from nanogpt2.hf_checkpoint import load_hf_folder, download_hf_model
    model = load_hf_folder(download_hf_model("gpt2"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nanogpt2.download import cache_dir, download, hf_url
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.export_dir import is_hf_config, run_folder_files
from nanogpt2.safetensors_io import load_file

if TYPE_CHECKING:  # model.py imports convert.py lazily (GPT.from_pretrained), which imports this: no model import
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
# What an HF GPT2LMHeadModel folder holds for a GPT


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


# ----------------------------------------------------------------------------------------------------
# A folder, a download


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
    run = run_folder_files(folder)
    if run and not is_hf_config(config_path):
        raise NanoGPT2Error(f"{config_path} holds a train.py run's settings, not an HF config: {folder} is a run folder "
                            f"({', '.join(sorted(run)[:3])}, ...) whose config.json the run rewrote after an HF export "
                            f"was written into it; load it as the run (--init_from {folder}: its checkpoint), or export "
                            f"it to a folder of its own: python -m nanogpt2.convert {folder} {folder}-hf")
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
