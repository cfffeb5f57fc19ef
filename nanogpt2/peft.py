"""
Parameter-efficient fine-tuning, hand-rolled: LoRA, with HF peft's adapter files read and written both ways, and
Houlsby adapters. The model file knows nothing of it: these are plain modules and functions over a `GPT`.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen linear layer W gets a
trainable low-rank update, y = W x + b + s * B (A dropout(x)), with A (r, in) Kaiming-uniform(a=sqrt(5)), B
(out, r) zeros — so step 0 equals the base model — and s = alpha / r (or alpha / sqrt(r) with rsLoRA, Kalajdzievski
2023). `LoRALinear` keeps the wrapped layer's `weight` / `bias` names, so base checkpoints still map;
`merge()` folds s * B A into the weight (a cheap path: the base matmul alone), `unmerge()` takes it out again.

Targets are GPT-2 module names: `c_attn`, `c_proj` (attention and MLP), `attn.c_proj`, `mlp.c_proj`, `c_fc`,
and the q / k / v parts of the fused `c_attn` as `c_attn.q`, `c_attn.k`, `c_attn.v` (their B covers those
output rows only).

peft interop: `load_peft_adapter(model, folder)` applies an HF peft LoRA folder (`adapter_config.json` +
`adapter_model.safetensors` / `.bin`) to our model; `save_peft_adapter(model, folder)` writes one that
`peft.PeftModel.from_pretrained(GPT2LMHeadModel...)` loads. GPT-2's HF layers are `Conv1D` (weight stored
(in, out)); peft keeps lora_A (r, in) and lora_B (out, r) either way, so the tensors map one to one.

Houlsby adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"): two per block, after the
attention output projection (and its dropout) and after the MLP, each before the residual add: h + up(GELU(down(h))),
down d -> m, up m -> d with the up matrix zero (step 0 equals the base model), 2md + d + m parameters each; the
block's LayerNorms train too unless `train_layernorms=False` (the paper trains them).

References: Hu et al. 2021; Houlsby et al. 2019; HF peft `tuners/lora` (key names, config fields); torchtune /
litgpt `LoRALinear`.

    from nanogpt2.peft import apply_lora, merge_lora, trainable_report
    apply_lora(model, rank=8, alpha=16, targets=["c_attn"])   # base frozen, only A and B train
    print(trainable_report(model))
"""

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanogpt2.errors import NanoGPT2Error

LORA_TARGETS = ("c_attn", "c_proj", "attn.c_proj", "mlp.c_proj", "c_fc", "c_attn.q", "c_attn.k", "c_attn.v")
PEFT_PREFIX = "base_model.model."  # peft's key prefix around the wrapped transformers model

# ----------------------------------------------------------------------------------------------------
# LoRA layer


class LoRALinear(nn.Module):
    """An nn.Linear plus a low-rank update (see the module docstring). `weight` and `bias` are the wrapped
    layer's own parameters; `lora_A`, `lora_B` the adapter's. `out_rows`: the output rows the update touches
    (None: all; e.g. the v part of a fused q/k/v projection)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 out_rows=None):
        super().__init__()
        if not (isinstance(rank, int) and rank >= 1):
            raise NanoGPT2Error(f"lora rank must be an integer >= 1, not {rank!r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.use_rslora = rank, float(alpha), use_rslora
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        rows = torch.arange(self.out_features) if out_rows is None else torch.as_tensor(out_rows, dtype=torch.long)
        self.register_buffer("out_rows", rows, persistent=False)  # (k,) output rows of the update
        self.partial = out_rows is not None
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(len(rows), rank, device=base.weight.device))  # (k, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False

    def delta_weight(self) -> torch.Tensor:
        """s * B A as a full (out, in) matrix (zero outside out_rows)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling  # (k, in)
        if not self.partial:
            return delta
        return torch.zeros_like(self.weight).index_copy(0, self.out_rows, delta.to(self.weight.dtype))  # (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged or self.disabled:  # the cheap path: the base layer alone
            return y
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling  # (..., k)
        if not self.partial:
            return y + update
        return y.index_add(-1, self.out_rows, update.to(y.dtype))

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}, "
                f"rslora={self.use_rslora}, rows={len(self.out_rows)}, merged={self.merged}")


# ----------------------------------------------------------------------------------------------------
# Applying LoRA to a model


def _targets(targets) -> list:
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if not targets or unknown:
        raise NanoGPT2Error(f"lora targets {unknown or targets} are not GPT-2 module names; use some of "
                            f"{', '.join(LORA_TARGETS)}")
    return targets


def _parent(model: nn.Module, name: str):
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def apply_lora(model: nn.Module, rank: int, alpha: float, targets=("c_attn",), dropout: float = 0.0,
               use_rslora: bool = False) -> list:
    """Wrap every targeted nn.Linear of `model` in a LoRALinear and freeze everything else (as peft's
    get_peft_model does). Returns the wrapped module names. A target that matches no module is an error."""
    targets = _targets(targets)
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise NanoGPT2Error("the model already has LoRA layers; merge_lora or start from the base model")
    parts = {t.split(".")[-1]: t for t in targets if t.startswith("c_attn.")}
    plain = [t for t in targets if not t.startswith("c_attn.")]
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        rows = None
        if not any(name == t or name.endswith("." + t) for t in plain):
            if not (parts and name.endswith("attn.c_attn")):
                continue
            C = module.in_features  # the fused q, k, v projection: (3C, C); part i owns rows i*C .. (i+1)*C
            rows = torch.cat([torch.arange(i * C, (i + 1) * C) for i, part in enumerate("qkv") if part in parts])
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, LoRALinear(module, rank, alpha, dropout, use_rslora, out_rows=rows))
        wrapped.append(name)
    if not wrapped:
        raise NanoGPT2Error(f"lora targets {targets} match no linear layer of this model")
    model.lora_config = {"rank": rank, "alpha": float(alpha), "targets": targets, "dropout": float(dropout),
                         "use_rslora": bool(use_rslora)}
    return wrapped


def lora_layers(model: nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its weight (inference at the base model's cost)."""
    for m in lora_layers(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_layers(model).values():
        m.unmerge()


def trainable_report(model: nn.Module) -> str:
    """peft's one line: `trainable params: N || all params: M || trainable%: P` (a shared tensor counted once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


# ----------------------------------------------------------------------------------------------------
# Houlsby adapters


class Adapter(nn.Module):
    """h + up(GELU(down(h))): a bottleneck with an internal skip; up is zero, so it starts as the identity."""

    def __init__(self, d: int, m: int):
        super().__init__()
        self.down = nn.Linear(d, m)
        self.up = nn.Linear(m, d)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(F.gelu(self.down(h)))  # (..., d)


class WithAdapter(nn.Module):
    """A sublayer (a block's attention or MLP) followed by an Adapter on its output, before the residual add."""

    def __init__(self, sublayer: nn.Module, d: int, m: int):
        super().__init__()
        self.sublayer = sublayer
        self.adapter = Adapter(d, m)

    def forward(self, *args, **kwargs):
        return self.adapter(self.sublayer(*args, **kwargs))


def apply_adapters(model: nn.Module, adapter_size: int, train_layernorms: bool = True) -> int:
    """Two Houlsby adapters in every block of a GPT (after attention and after the MLP); everything else frozen
    but the adapters (and the blocks' and final LayerNorms when `train_layernorms`). Returns the number of
    adapter parameters."""
    if not (isinstance(adapter_size, int) and adapter_size >= 1):
        raise NanoGPT2Error(f"adapter_size must be an integer >= 1, not {adapter_size!r}")
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise NanoGPT2Error("adapters go into a GPT's blocks (model.transformer.h); this model has none")
    if any(isinstance(m, WithAdapter) for m in model.modules()):
        raise NanoGPT2Error("the model already has adapters")
    d = model.config.n_embd
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks:
        block.attn = WithAdapter(block.attn, d, adapter_size)
        block.mlp = WithAdapter(block.mlp, d, adapter_size)
    n = 0
    for name, p in model.named_parameters():
        if ".adapter." in name:
            p.requires_grad_(True)
            n += p.numel()
        elif train_layernorms and (".ln_" in name or "ln_f" in name):
            p.requires_grad_(True)
    model.adapter_config = {"adapter_size": adapter_size, "train_layernorms": bool(train_layernorms)}
    return n


# ----------------------------------------------------------------------------------------------------
# HF peft adapter folders


_SUPPORTED_FALSY = ("use_dora", "layers_to_transform", "layers_pattern", "modules_to_save", "rank_pattern",
                    "alpha_pattern", "layer_replication", "lora_bias", "trainable_token_indices", "exclude_modules",
                    "target_parameters")


def _read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanoGPT2Error(f"{folder} is not a peft adapter folder: no adapter_config.json") from None
    except (OSError, ValueError) as e:
        raise NanoGPT2Error(f"cannot read {path}: {e}") from None
    if config.get("peft_type") != "LORA":
        raise NanoGPT2Error(f"{path}: peft_type {config.get('peft_type')!r} is not supported here (LORA only)")
    if config.get("bias", "none") != "none":
        raise NanoGPT2Error(f"{path}: bias={config['bias']!r} is not supported (only 'none')")
    for key in _SUPPORTED_FALSY:
        if config.get(key):
            raise NanoGPT2Error(f"{path}: {key}={config[key]!r} is not supported")
    return config


def _read_adapter_weights(folder: Path) -> dict:
    from nanogpt2.safetensors_io import load_file

    if (folder / "adapter_model.safetensors").exists():
        return load_file(folder / "adapter_model.safetensors")
    if (folder / "adapter_model.bin").exists():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise NanoGPT2Error(f"{folder} has no adapter_model.safetensors or adapter_model.bin")


def load_peft_adapter(model: nn.Module, folder) -> list:
    """Apply an HF peft LoRA adapter folder to `model` (a GPT with GPT-2 module names); returns the wrapped
    module names. The layout of GPT-2's Conv1D is decided by the module, not by `fan_in_fan_out`."""
    folder = Path(folder)
    config = _read_adapter_config(folder)
    tensors = _read_adapter_weights(folder)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    wrapped = apply_lora(model, int(config["r"]), float(config["lora_alpha"]), targets,
                         float(config.get("lora_dropout", 0.0)), bool(config.get("use_rslora", False)))
    layers = lora_layers(model)
    expected = {f"{PEFT_PREFIX}{name}.lora_{ab}.weight" for name in layers for ab in "AB"}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise NanoGPT2Error(f"{folder}: the adapter does not fit this model (missing {missing[:3]}, unexpected "
                            f"{extra[:3]}); was it made for another base model?")
    with torch.no_grad():
        for name, layer in layers.items():
            for ab, param in (("A", layer.lora_A), ("B", layer.lora_B)):
                t = tensors[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"]
                if t.shape != param.shape:
                    raise NanoGPT2Error(f"{folder}: {name}.lora_{ab} has shape {tuple(t.shape)}, this model needs "
                                        f"{tuple(param.shape)}; was the adapter made for another base model?")
                param.copy_(t)
    return wrapped


def save_peft_adapter(model: nn.Module, folder, base_model_name_or_path: str = "") -> Path:
    """Write the model's LoRA layers as an HF peft folder (adapter_config.json + adapter_model.safetensors)."""
    from nanogpt2.safetensors_io import save_file

    layers = lora_layers(model)
    config = getattr(model, "lora_config", None)
    if not layers or config is None:
        raise NanoGPT2Error("the model has no LoRA layers to save")
    if any(layer.partial for layer in layers.values()):
        raise NanoGPT2Error("LoRA on q/k/v parts of c_attn has no peft equivalent (peft wraps the fused layer "
                            "whole); use targets such as c_attn, c_proj, c_fc")
    if any(layer.merged for layer in layers.values()):
        raise NanoGPT2Error("the LoRA layers are merged; unmerge_lora(model) before saving the adapter")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach()
    save_file(tensors, folder / "adapter_model.safetensors")
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config["rank"], "lora_alpha": config["alpha"], "lora_dropout": config["dropout"],
        "target_modules": config["targets"], "use_rslora": config["use_rslora"], "fan_in_fan_out": True,
        "bias": "none", "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------------
# Adapter-only weights (nanogpt2's own format, for methods peft cannot express)

ADAPTER_WEIGHTS = "adapter_weights.pt"


def save_adapter_weights(model: nn.Module, folder) -> Path:
    """`folder/adapter_weights.pt`: the model spec and the trainable tensors alone (a few MB for GPT-2 small with
    adapters), for sharing; `load_adapter_weights` puts them back on the same base model."""
    from nanogpt2.loader import model_spec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    path = folder / ADAPTER_WEIGHTS
    tmp = path.with_suffix(".tmp")
    torch.save({"model_spec": model_spec(model), "tensors": tensors}, tmp)
    tmp.replace(path)
    return path


def load_adapter_weights(model: nn.Module, path) -> list:
    """Load `adapter_weights.pt` (or its folder) onto `model`, which must already have the same method applied
    (e.g. rebuilt by nanogpt2.loader.build_model from the file's model_spec). Returns the tensor names loaded."""
    path = Path(path)
    path = path / ADAPTER_WEIGHTS if path.is_dir() else path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        tensors = state["tensors"]
    except FileNotFoundError:
        raise NanoGPT2Error(f"{path} does not exist; give the adapter folder a fine-tuning run wrote (out_dir/adapter)") from None
    except Exception as e:
        raise NanoGPT2Error(f"{path} is not an adapter weights file ({type(e).__name__}: {e})") from None
    params = dict(model.named_parameters())
    for name, t in tensors.items():
        if name not in params or params[name].shape != t.shape:
            have = tuple(params[name].shape) if name in params else "no such tensor"
            raise NanoGPT2Error(f"{path}: {name} {tuple(t.shape)} does not fit this model ({have}); was it made for "
                                f"another base model or method?")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    return sorted(tensors)
