"""
Parameter-efficient fine-tuning, hand-rolled: LoRA, Houlsby adapters, prefix tuning and prompt tuning, with HF
peft's LoRA, prefix and prompt folders read and written both ways. The model file knows nothing of it: these are
plain modules and functions over a `GPT` (and, for a prefix or a prompt, a subclass whose body puts the virtual
tokens' keys/values in front of the caller's cache: `VirtualPrefix`).

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

Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): every layer's
attention sees P learned virtual keys/values before the real tokens; the base stays frozen. `apply_prefix` turns a
GPT into a `PrefixGPT` in place: its `body` hands the base body a cache view holding the prefix's keys/values before
the caller's cache (a KVCache, a StaticKVCache, or none), puts P ones before an attention_mask and P onto explicit
position ids. The real tokens are numbered P, P+1, ... (HF peft's convention: with the prefix as past_key_values
transformers' GPT-2 numbers them from the cache length, and peft adds P to explicit position_ids), so a sequence
holds block_size - P real tokens (`context_length`, which generate and evaluate read). Optionally reparameterised
during training (embedding -> Linear -> tanh -> Linear, peft's prefix_projection) and collapsed to the plain table
by `collapse_prefix`. The table (P, n_layer * 2 * n_embd) is peft's `prompt_embeddings`: peft views it as
(P, 2 * n_layer, n_head, head_size), permutes to (2 * n_layer, B, n_head, P, head_size) and splits it in pairs
(layer i: key 2i, value 2i + 1).

Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): P learned input
embeddings before the real tokens' (peft's PromptEmbedding; initialised N(0, 1) or from a text's token embeddings,
peft's RANDOM / TEXT), the model frozen. `apply_prompt` turns a GPT into a `PromptGPT` (a classifier into a
`PromptGPTForSequenceClassification`) in place. The virtual tokens sit at positions 0..P-1 and come first, so their
keys/values at every layer depend on the prompt and the frozen weights alone: `PromptTuned.virtual_kv` computes them
with the base body and the prefix machinery above takes them from there (real tokens at P, P+1, ..., as in peft's
concatenation of inputs_embeds; the caller's cache holds real tokens only).

References: Hu et al. 2021; Houlsby et al. 2019; Li & Liang 2021; Lester et al. 2021; HF peft `tuners/lora` (key
names, config fields), `tuners/prefix_tuning`, `tuners/prompt_tuning` and `PeftModel.get_prompt` (the layouts);
torchtune / litgpt `LoRALinear`.

    from nanogpt2.peft import apply_lora, apply_prefix, apply_prompt, collapse_prefix, trainable_report
    apply_lora(model, rank=8, alpha=16, targets=["c_attn"])   # base frozen, only A and B train
    print(trainable_report(model))
    apply_prefix(other, prefix_length=20, projection_hidden=512)   # another GPT: only the prefix (and its MLP) trains
    collapse_prefix(other)                                         # after training: the plain table, no MLP
    apply_prompt(third, prompt_length=20, init_ids=tok.encode_ordinary("Summarize:"))  # only the 20 embeddings train
"""

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanogpt2.errors import NanoGPT2Error
from nanogpt2.export_dir import ADAPTER_WEIGHTS, PEFT_ADAPTER, ExportDir
from nanogpt2.model import GPT, KVCache, StaticKVCache

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
# Prefix tuning


class PrefixEncoder(nn.Module):
    """The learned prefix: every layer's key and value for each of P virtual tokens, as one table (P, n_layer * 2 *
    n_embd) laid out as HF peft's `prompt_embeddings`: per token, layer 0's key, layer 0's value, layer 1's key, ...,
    each n_embd wide with the heads side by side. Plain: the table is `embedding.weight`. Reparameterised (`hidden`):
    embedding (P, n_embd) -> Linear(n_embd, hidden) -> tanh -> Linear(hidden, n_layer * 2 * n_embd), peft's
    PrefixEncoder with prefix_projection=True (same names: embedding, transform.0, transform.2). Initialised as peft
    does: N(0, 1) embeddings, PyTorch's default Linear init."""

    def __init__(self, prefix_length: int, n_layer: int, n_embd: int, hidden=None, device=None, dtype=None):
        super().__init__()
        width = n_layer * 2 * n_embd
        if hidden is None:
            self.embedding = nn.Embedding(prefix_length, width, device=device, dtype=dtype)  # (P, 2LC)
        else:
            self.embedding = nn.Embedding(prefix_length, n_embd, device=device, dtype=dtype)  # (P, C)
            self.transform = nn.Sequential(nn.Linear(n_embd, hidden, device=device, dtype=dtype), nn.Tanh(),
                                           nn.Linear(hidden, width, device=device, dtype=dtype))

    def forward(self) -> torch.Tensor:
        """The (P, n_layer * 2 * n_embd) table of keys and values."""
        if hasattr(self, "transform"):
            return self.transform(self.embedding.weight)  # (P, 2LC)
        return self.embedding.weight  # (P, 2LC)


class _PrefixedCache(KVCache):
    """What a prefixed model's body is given as its cache (a view, no storage of its own): the prefix's keys/values,
    then those of the caller's KVCache (or, without one, only this forward's). `length` counts the prefix, so the body numbers the real
    tokens from P on and lets them see every prefix slot; the caller's cache holds real tokens only."""

    def __init__(self, keys: list, values: list, inner=None):
        self.prefix_k, self.prefix_v, self.inner = keys, values, inner  # per layer (B, nh, P, hs)
        self.n_prefix = keys[0].size(2)

    @property
    def length(self) -> int:
        return self.n_prefix + (self.inner.length if self.inner is not None else 0)

    @length.setter
    def length(self, value: int):  # the body advances the cache after its forward
        if self.inner is not None:
            self.inner.length = value - self.n_prefix

    def _join(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        pk = self.prefix_k[layer].to(k.dtype)  # (B, nh, P, hs) in the keys' dtype (autocast's under autocast)
        pv = self.prefix_v[layer].to(v.dtype)  # (B, nh, P, hs)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (B, nh, P + S, hs) each

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.inner is not None:
            k, v = self.inner.update(layer, k, v)  # (B, nh, S, hs): the caller's cache so far
        return self._join(layer, k, v)


class _PrefixedStaticCache(StaticKVCache):
    """The same for a StaticKVCache: the prefix occupies P slots before the caller's max_len ones, so the body's
    slot-causal mask lets every query see it; the caller's cache is written at its own slots."""

    def __init__(self, keys: list, values: list, inner: StaticKVCache, cache_position: torch.Tensor):
        self.joined = _PrefixedCache(keys, values)
        self.inner, self.inner_position = inner, cache_position  # (T,) the caller's slots
        self.max_len = self.joined.n_prefix + inner.max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor):
        k, v = self.inner.update(layer, k, v, self.inner_position)  # (B, nh, max_len, hs)
        return self.joined._join(layer, k, v)  # (B, nh, P + max_len, hs)


class VirtualPrefix:
    """A mixin for a model with a GPT body (`.config`, `.transformer`, `body`) whose attention sees `virtual_length`
    (P) virtual positions before the real tokens: their keys and values come from `virtual_kv(batch_size)` (prefix
    tuning: a learned table; prompt tuning: what the frozen body makes of learned input embeddings). Callers use the
    model as before: `body` adds the P keys/values before the caller's cache, puts P ones before an attention_mask
    and P onto explicit position ids, so the real tokens are numbered P, P+1, ... as HF peft numbers them; a
    sequence holds at most block_size - P real tokens (`context_length`)."""

    @property
    def virtual_length(self) -> int:
        raise NotImplementedError

    def virtual_kv(self, batch_size: int):
        """Each layer's keys and values of the P virtual positions: two lists of (B, nh, P, hs)."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        return self.config.block_size - self.virtual_length

    def base_body(self, *args, **kwargs):
        """The wrapped model's own body (GPT.body), blind to the virtual positions."""
        return super().body(*args, **kwargs)

    def body(self, idx, attention_mask=None, position_ids=None, kv_cache=None, cache_position=None):
        """GPT.body with the virtual positions in front (see the class docstring); the arguments mean what they mean
        there."""
        P = self.virtual_length
        if P == 0:  # the cheap path: no virtual tokens, the base model exactly
            return self.base_body(idx, attention_mask, position_ids, kv_cache, cache_position)
        B, T = idx.size()
        keys, values = self.virtual_kv(B)
        if isinstance(kv_cache, StaticKVCache):
            if cache_position is None:
                raise ValueError("a StaticKVCache needs cache_position, the (T,) slots of the inputs")
            view = _PrefixedStaticCache(keys, values, kv_cache, cache_position)
            cache_position = cache_position + P  # (T,) slots behind the prefix's
        else:
            past = kv_cache.length if kv_cache is not None else 0
            if past + T > self.context_length:
                raise NanoGPT2Error(f"cannot take {past + T} tokens: with a prefix of {P} virtual tokens this model "
                                    f"reads at most block_size - {P} = {self.context_length} (the real tokens take "
                                    f"positions {P} and up); use windows of at most {self.context_length} tokens")
            view = _PrefixedCache(keys, values, kv_cache)
        if attention_mask is not None:
            ones = attention_mask.new_ones(attention_mask.size(0), P)  # (B, P) the prefix is never padding
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + S)
        if position_ids is not None:
            position_ids = position_ids + P  # (B|1, T)
        return self.base_body(idx, attention_mask, position_ids, view, cache_position)


class PrefixGPT(VirtualPrefix, GPT):
    """A GPT whose attention sees `prefix_length` learned virtual keys/values before the real tokens (apply_prefix
    turns a GPT into one; VirtualPrefix says how they enter the forward)."""

    prefix_config: dict
    prefix_encoder: PrefixEncoder

    @property
    def virtual_length(self) -> int:
        return self.prefix_config["prefix_length"]

    def virtual_kv(self, batch_size: int):
        return self.prefix_kv(batch_size)

    def prefix_kv(self, batch_size: int):
        """Each layer's prefix keys and values, two lists of (B, nh, P, hs) (expanded views, no copies)."""
        cfg, P = self.config, self.prefix_config["prefix_length"]
        table = self.prefix_encoder()  # (P, 2LC)
        kv = table.view(P, cfg.n_layer, 2, cfg.n_head, cfg.n_embd // cfg.n_head).permute(1, 2, 3, 0, 4)  # (L, 2, nh, P, hs)
        kv = kv[:, :, None].expand(-1, -1, batch_size, -1, -1, -1)  # (L, 2, B, nh, P, hs)
        return list(kv[:, 0]), list(kv[:, 1])


def apply_prefix(model: GPT, prefix_length: int, projection_hidden=None) -> PrefixGPT:
    """Prefix tuning (Li & Liang 2021): freeze `model` (a GPT) and give every layer's attention `prefix_length`
    learned virtual keys/values (a PrefixEncoder, reparameterised through an MLP of `projection_hidden` units when
    given; collapse_prefix folds it away). The model becomes a PrefixGPT in place (returned too); its spec records
    `"prefix": {prefix_length, projection_hidden}`. prefix_length 0 is the base model."""
    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"prefix tuning applies to a GPT, not a {type(model).__name__}")
    if isinstance(model, PrefixGPT):
        raise NanoGPT2Error("the model already has a prefix; start from the base model")
    if isinstance(prefix_length, bool) or not isinstance(prefix_length, int) or prefix_length < 0:
        raise NanoGPT2Error(f"prefix_length must be an integer >= 0 (virtual tokens per layer), not {prefix_length!r}")
    if prefix_length >= model.config.block_size:
        raise NanoGPT2Error(f"prefix_length {prefix_length} leaves no room for real tokens in a context of "
                            f"{model.config.block_size}; use fewer than {model.config.block_size}")
    if projection_hidden is not None and (isinstance(projection_hidden, bool) or not isinstance(projection_hidden, int)
                                          or projection_hidden < 1):
        raise NanoGPT2Error(f"projection_hidden must be an integer >= 1 (the MLP's width) or None, not {projection_hidden!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.transformer.wte.weight
    cfg = model.config
    model.__class__ = PrefixGPT  # surgery in place: the same module and weights, its body now puts the prefix first
    model.prefix_encoder = PrefixEncoder(prefix_length, cfg.n_layer, cfg.n_embd, projection_hidden,
                                         device=weight.device, dtype=weight.dtype)
    model.prefix_config = {"prefix_length": prefix_length, "projection_hidden": projection_hidden}
    return model


@torch.no_grad()
def collapse_prefix(model: PrefixGPT) -> None:
    """Replace a reparameterised prefix by the table its MLP computes (plain tensors: same logits, no MLP per forward;
    what is saved and what peft holds). A plain prefix stays as it is."""
    if not isinstance(model, PrefixGPT):
        raise NanoGPT2Error("the model has no prefix to collapse (apply_prefix first)")
    if model.prefix_config["projection_hidden"] is None:
        return
    cfg, table = model.config, model.prefix_encoder()  # (P, 2LC)
    encoder = PrefixEncoder(table.size(0), cfg.n_layer, cfg.n_embd, device=table.device, dtype=table.dtype)
    encoder.embedding.weight.copy_(table)
    model.prefix_encoder = encoder
    model.prefix_config = {**model.prefix_config, "projection_hidden": None}


# ----------------------------------------------------------------------------------------------------
# Prompt tuning


class PromptEmbedding(nn.Module):
    """The P learned input embeddings of prompt tuning, `embedding.weight` (P, n_embd): HF peft's PromptEmbedding
    (same name; peft saves the weight as `prompt_embeddings`)."""

    def __init__(self, prompt_length: int, n_embd: int, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(prompt_length, n_embd, device=device, dtype=dtype)  # (P, C), N(0, 1) as peft's

    def forward(self) -> torch.Tensor:
        return self.embedding.weight  # (P, C)


class _KeptKV(KVCache):
    """A cache with no storage that keeps each layer's keys and values as the body computes them: the virtual
    tokens' own (B, nh, P, hs), read back by PromptTuned.virtual_kv."""

    def __init__(self, n_layer: int):
        super().__init__(n_layer, 0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer], self.v[layer] = k, v  # (B, nh, P, hs) each
        return k, v


class PromptTuned(VirtualPrefix):
    """Prompt tuning (a mixin; apply_prompt makes a GPT a PromptGPT, another model with a GPT body, e.g. the
    classifier of nanogpt2.heads, a Prompt<its class>): P learned input embeddings before the real tokens' at
    positions 0..P-1, the real tokens at P, P+1, ... — peft's concatenation of inputs_embeds, computed without
    holding the virtual tokens in the caller's cache: the virtual tokens come first, so causally they see only each
    other, and every layer's keys/values for them are a function of the embeddings and the frozen weights alone.
    `virtual_kv` runs the base body over the P embeddings (batch 1, or the batch when dropout is live in training,
    so each row draws its own) and hands those keys/values to VirtualPrefix.body, as a prefix's. The hidden states
    returned are the real tokens' only. In eager inference (eval mode, no grad) the keys/values are kept and reused
    while no weight changes (each tensor's storage and version) and autocast stays as it was: a decoding step then
    costs what a prefixed model's does, not a P-token forward more."""

    prompt_config: dict
    prompt_encoder: PromptEmbedding

    @property
    def virtual_length(self) -> int:
        return self.prompt_config["prompt_length"]

    def virtual_kv(self, batch_size: int):
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            keys, values = self._prompt_kv(batch_size if self.training and self.config.dropout > 0 else 1)
        else:  # eager inference: reuse the kept keys/values while what they depend on stays as it was
            key, kept = self._prompt_kv_key(), self.__dict__.get("_kept_prompt_kv")
            if kept is None or kept[0] != key:
                kept = self.__dict__["_kept_prompt_kv"] = (key, self._prompt_kv(1))
            keys, values = kept[1]
        return ([k.expand(batch_size, -1, -1, -1) for k in keys],  # (B, nh, P, hs) per layer
                [v.expand(batch_size, -1, -1, -1) for v in values])

    def _prompt_kv(self, n: int):
        """The virtual tokens' keys and values, two lists of (n, nh, P, hs): the base body over the embeddings."""
        prompt = self.prompt_encoder()  # (P, C)
        kept = _KeptKV(self.config.n_layer)
        self.base_body(None, kv_cache=kept, inputs_embeds=prompt[None].expand(n, -1, -1))  # (n, P, C) discarded
        return kept.k, kept.v

    def _prompt_kv_key(self) -> tuple:
        """What the kept keys/values depend on: every weight (storage, in-place version) and the autocast state."""
        device = self.prompt_encoder.embedding.weight.device.type
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return autocast, tuple((p.data_ptr(), p._version) for p in self.parameters())


class PromptGPT(PromptTuned, GPT):
    """A GPT with prompt tuning (see PromptTuned)."""


_PROMPT_CLASSES = {GPT: PromptGPT}  # model class -> its prompt-tuned class


def _prompt_class(cls: type) -> type:
    if cls not in _PROMPT_CLASSES:
        _PROMPT_CLASSES[cls] = type(f"Prompt{cls.__name__}", (PromptTuned, cls), {"__module__": cls.__module__})
    return _PROMPT_CLASSES[cls]


def prompt_init_ids(token_ids, prompt_length: int) -> list:
    """peft's prompt_tuning_init=TEXT: the text's token ids cut to P, or repeated until they fill P."""
    ids = list(token_ids)
    if not ids:
        raise NanoGPT2Error("prompt_init_text encodes to no tokens; give some text, or '' for a random init")
    return (ids * math.ceil(prompt_length / len(ids)))[:prompt_length]


def apply_prompt(model: nn.Module, prompt_length: int, init_ids=None) -> nn.Module:
    """Prompt tuning (Lester et al. 2021): freeze `model` (a GPT, or a model with a GPT body such as the classifier)
    and put `prompt_length` learned input embeddings before the real tokens' (a PromptEmbedding, `prompt_encoder`).
    init_ids: token ids whose embeddings (wte) start the prompt, cut or repeated to P (prompt_init_ids; peft's TEXT
    init); None: N(0, 1), peft's RANDOM. The model changes class in place (returned too); its spec records
    `"prompt": {prompt_length}`. prompt_length 0 is the base model."""
    if not (hasattr(model, "transformer") and hasattr(model, "config") and callable(getattr(model, "body", None))):
        raise NanoGPT2Error(f"prompt tuning applies to a GPT or a model with a GPT body, not a {type(model).__name__}")
    if isinstance(model, VirtualPrefix):
        raise NanoGPT2Error("the model already has virtual tokens (a prompt or a prefix); start from the base model")
    if getattr(model, "lora_config", None) is not None or getattr(model, "adapter_config", None) is not None:
        raise NanoGPT2Error("the model already has LoRA layers or adapters; apply one method per model")
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 0:
        raise NanoGPT2Error(f"prompt_length must be an integer >= 0 (virtual tokens), not {prompt_length!r}")
    if prompt_length >= model.config.block_size:
        raise NanoGPT2Error(f"prompt_length {prompt_length} leaves no room for real tokens in a context of "
                            f"{model.config.block_size}; use fewer than {model.config.block_size}")
    for p in model.parameters():
        p.requires_grad_(False)
    wte = model.transformer.wte.weight
    encoder = PromptEmbedding(prompt_length, model.config.n_embd, device=wte.device, dtype=wte.dtype)
    if init_ids is not None:
        ids = torch.as_tensor(prompt_init_ids(init_ids, prompt_length), dtype=torch.long, device=wte.device)
        if int(ids.max()) >= wte.size(0):
            raise NanoGPT2Error(f"prompt_init_text has token id {int(ids.max())}, beyond the model's vocabulary of "
                                f"{wte.size(0)}; use the model's tokenizer")
        with torch.no_grad():
            encoder.embedding.weight.copy_(wte[ids])  # (P, C)
    model.__class__ = _prompt_class(type(model))  # surgery in place: the same module and weights, its body now
    model.prompt_encoder = encoder                # runs the virtual tokens first
    model.prompt_config = {"prompt_length": prompt_length}
    return model


# ----------------------------------------------------------------------------------------------------
# HF peft adapter folders


_SUPPORTED_FALSY = ("use_dora", "layers_to_transform", "layers_pattern", "modules_to_save", "rank_pattern",
                    "alpha_pattern", "layer_replication", "lora_bias", "trainable_token_indices", "exclude_modules",
                    "target_parameters")


def _read_adapter_config(folder: Path, modules_to_save: tuple = ()) -> dict:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanoGPT2Error(f"{folder} is not a peft adapter folder: no adapter_config.json") from None
    except (OSError, ValueError) as e:
        raise NanoGPT2Error(f"cannot read {path}: {e}") from None
    if config.get("peft_type") not in ("LORA", "PREFIX_TUNING", "PROMPT_TUNING"):
        raise NanoGPT2Error(f"{path}: peft_type {config.get('peft_type')!r} is not supported here (LORA, "
                            f"PREFIX_TUNING and PROMPT_TUNING only)")
    if config["peft_type"] == "LORA":
        if config.get("bias", "none") != "none":
            raise NanoGPT2Error(f"{path}: bias={config['bias']!r} is not supported (only 'none')")
        for key in _SUPPORTED_FALSY:
            value = config.get(key)
            if key == "modules_to_save" and value and set(value) <= set(modules_to_save):
                continue  # modules the caller loads itself
            if value:
                raise NanoGPT2Error(f"{path}: {key}={value!r} is not supported")
    return config


def _read_adapter_weights(folder: Path) -> dict:
    from nanogpt2.safetensors_io import load_file

    if (folder / "adapter_model.safetensors").exists():
        return load_file(folder / "adapter_model.safetensors")
    if (folder / "adapter_model.bin").exists():
        return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise NanoGPT2Error(f"{folder} has no adapter_model.safetensors or adapter_model.bin")


def read_peft_folder(folder, modules_to_save: tuple = ()) -> tuple[dict, dict]:
    """(adapter_config, {name: tensor}) of an HF peft folder, the config checked for what load_peft_adapter
    supports. modules_to_save: module names the caller loads itself (e.g. a classifier's head), accepted in the
    config's `modules_to_save`; their tensors stay in the dict for the caller to take out."""
    folder = Path(folder)
    return _read_adapter_config(folder, tuple(modules_to_save)), _read_adapter_weights(folder)


def load_peft_adapter(model: nn.Module, folder) -> list:
    """Apply an HF peft adapter folder to `model` (a GPT with GPT-2 module names): LoRA (returns the wrapped module
    names; the layout of GPT-2's Conv1D is decided by the module, not by `fan_in_fan_out`), PREFIX_TUNING (returns
    ["prefix_encoder"]; see _load_peft_prefix) or PROMPT_TUNING (returns ["prompt_encoder"]; see _load_peft_prompt)."""
    config, tensors = read_peft_folder(folder)
    return apply_peft_adapter(model, config, tensors, Path(folder))


def apply_peft_adapter(model: nn.Module, config: dict, tensors: dict, folder: Path) -> list:
    """load_peft_adapter on what read_peft_folder read from `folder` (named in errors); every tensor must be
    the method's."""
    if config["peft_type"] == "PREFIX_TUNING":
        return _load_peft_prefix(model, folder, config, tensors)
    if config["peft_type"] == "PROMPT_TUNING":
        return _load_peft_prompt(model, folder, config, tensors)
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


def peft_adapter_parts(model: nn.Module, base_model_name_or_path: str = "") -> tuple[dict, dict]:
    """(adapter_config.json, {name: tensor}) of an HF peft folder of the model's LoRA layers, its prefix or its
    prompt."""
    if isinstance(model, PromptTuned):
        return _peft_prompt_parts(model, base_model_name_or_path)
    if isinstance(model, PrefixGPT):
        if lora_layers(model):
            raise NanoGPT2Error("the model has both LoRA layers and a prefix; a peft folder holds one method")
        return _peft_prefix_parts(model, base_model_name_or_path)
    layers = lora_layers(model)
    config = getattr(model, "lora_config", None)
    if not layers or config is None:
        raise NanoGPT2Error("the model has no LoRA layers to save")
    if any(layer.partial for layer in layers.values()):
        raise NanoGPT2Error("LoRA on q/k/v parts of c_attn has no peft equivalent (peft wraps the fused layer "
                            "whole); use targets such as c_attn, c_proj, c_fc")
    if any(layer.merged for layer in layers.values()):
        raise NanoGPT2Error("the LoRA layers are merged; unmerge_lora(model) before saving the adapter")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach()
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config["rank"], "lora_alpha": config["alpha"], "lora_dropout": config["dropout"],
        "target_modules": config["targets"], "use_rslora": config["use_rslora"], "fan_in_fan_out": True,
        "bias": "none", "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    return peft_config, tensors


def write_peft_folder(folder, peft_config: dict, tensors: dict, overwrite: bool = False, log=None,
                      reserved: dict = None, name: str = "the adapter folder") -> Path:
    """adapter_model.safetensors + adapter_config.json (last), under the export rule of nanogpt2/export_dir.py."""
    from nanogpt2.safetensors_io import save_file

    plan = ExportDir.open(folder, PEFT_ADAPTER, overwrite, reserved, name)
    save_file(tensors, plan.target("adapter_model.safetensors"))
    plan.write_json("adapter_config.json", peft_config)
    return plan.finish(log)


def save_peft_adapter(model: nn.Module, folder, base_model_name_or_path: str = "", overwrite: bool = False,
                      log=None, reserved: dict = None, name: str = "the adapter folder") -> Path:
    """Write the model's LoRA layers, its prefix or its prompt as an HF peft folder (adapter_config.json +
    adapter_model.safetensors), where nanogpt2/export_dir.py's rule allows (an earlier peft folder is replaced,
    said through `log`; `overwrite` replaces only those two files in a folder holding others)."""
    ExportDir.check(folder, PEFT_ADAPTER, overwrite, reserved, name)
    peft_config, tensors = peft_adapter_parts(model, base_model_name_or_path)
    return write_peft_folder(folder, peft_config, tensors, overwrite, log, reserved, name)


def _check_virtual_config(model: nn.Module, folder: Path, config: dict, what: str) -> int:
    """num_virtual_tokens of a peft prompt-learning config, its model fields checked against `model`."""
    cfg = model.config
    want = {"num_layers": cfg.n_layer, "token_dim": cfg.n_embd, "num_attention_heads": cfg.n_head,
            "num_transformer_submodules": 1}
    for key, value in want.items():
        if config.get(key, value) != value:
            raise NanoGPT2Error(f"{folder}: the {what} does not fit this model ({key}={config.get(key)!r}, this model "
                                f"needs {value}); was it made for another base model?")
    P = config.get("num_virtual_tokens")
    if isinstance(P, bool) or not isinstance(P, int) or P < 1:
        raise NanoGPT2Error(f"{folder}: num_virtual_tokens must be an integer >= 1, not {P!r}")
    return P


def _load_peft_prefix(model: nn.Module, folder: Path, config: dict, tensors: dict) -> list:
    """A peft PREFIX_TUNING folder: one tensor `prompt_embeddings` (P, n_layer * 2 * n_embd), the table of
    PrefixEncoder. With prefix_projection=True peft saves the table its MLP computed (not the MLP), so such a folder
    loads as a plain (collapsed) prefix, as peft itself loads it."""
    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"a peft prefix applies to a GPT, not a {type(model).__name__}")
    cfg = model.config
    P = _check_virtual_config(model, folder, config, "prefix")
    table = tensors.get("prompt_embeddings")
    shape = (P, cfg.n_layer * 2 * cfg.n_embd)
    if table is None or set(tensors) != {"prompt_embeddings"} or tuple(table.shape) != shape:
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise NanoGPT2Error(f"{folder}: expected one tensor prompt_embeddings of shape {shape} "
                            f"(num_virtual_tokens x n_layer * 2 * n_embd), found {found}; was it made for another "
                            f"base model?")
    apply_prefix(model, int(P))
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.copy_(table)
    return ["prefix_encoder"]


def _peft_prefix_parts(model: "PrefixGPT", base_model_name_or_path: str) -> tuple[dict, dict]:
    """The prefix as a peft PREFIX_TUNING folder's parts: the (collapsed) table as `prompt_embeddings`,
    prefix_projection false (the table is all there is to load; peft saves a projected prefix the same way)."""
    cfg, P = model.config, model.prefix_config["prefix_length"]
    with torch.no_grad():
        table = model.prefix_encoder().detach().contiguous()  # (P, 2LC)
    peft_config = {
        "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": P, "token_dim": cfg.n_embd, "num_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_transformer_submodules": 1, "encoder_hidden_size": cfg.n_embd,
        "prefix_projection": False, "init_weights": None, "inference_mode": True, "modules_to_save": None,
    }
    return peft_config, {"prompt_embeddings": table}


def _load_peft_prompt(model: nn.Module, folder: Path, config: dict, tensors: dict) -> list:
    """A peft PROMPT_TUNING folder: one tensor `prompt_embeddings` (P, n_embd), the learned input embeddings
    (whatever prompt_tuning_init says: the init only matters before training, and peft skips it when loading)."""
    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"a peft prompt-tuning folder applies to a GPT here, not a {type(model).__name__}")
    P = _check_virtual_config(model, folder, config, "prompt")
    table = tensors.get("prompt_embeddings")
    shape = (P, model.config.n_embd)
    if table is None or set(tensors) != {"prompt_embeddings"} or tuple(table.shape) != shape:
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise NanoGPT2Error(f"{folder}: expected one tensor prompt_embeddings of shape {shape} (num_virtual_tokens x "
                            f"n_embd), found {found}; was it made for another base model?")
    apply_prompt(model, P)
    with torch.no_grad():
        model.prompt_encoder.embedding.weight.copy_(table)
    return ["prompt_encoder"]


def _peft_prompt_parts(model: "PromptTuned", base_model_name_or_path: str) -> tuple[dict, dict]:
    """The prompt as a peft PROMPT_TUNING folder (CAUSAL_LM): `prompt_embeddings` (P, n_embd). prompt_tuning_init is
    written RANDOM whatever started the prompt: peft skips the init when it loads a folder for inference, and with
    TEXT it would fetch a tokenizer to initialise weights it then overwrites."""
    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"a peft prompt-tuning folder holds a language model's prompt; this {type(model).__name__} "
                            f"is shared as adapter_weights.pt (nanogpt2.peft.save_adapter_weights)")
    cfg = model.config
    peft_config = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": model.virtual_length, "token_dim": cfg.n_embd, "num_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "inference_mode": True,
        "modules_to_save": None,
    }
    return peft_config, {"prompt_embeddings": model.prompt_encoder().detach().contiguous()}


# ----------------------------------------------------------------------------------------------------
# The method as model-spec keys (what checkpoints record; nanogpt2.loader rebuilds it)


def apply_method_spec(model: nn.Module, spec: dict) -> nn.Module:
    """The PEFT method a model spec (nanogpt2.loader) records ("adapters", "lora", "prefix", "prompt"), applied to a
    freshly built model with GPT-2 blocks."""
    adapters = spec.get("adapters")
    if adapters is not None:
        apply_adapters(model, int(adapters["adapter_size"]), bool(adapters.get("train_layernorms", True)))
    lora = spec.get("lora")
    if lora is not None:
        apply_lora(model, int(lora["rank"]), float(lora["alpha"]), lora["targets"], float(lora.get("dropout", 0.0)),
                   bool(lora.get("use_rslora", False)))
    prefix = spec.get("prefix")
    if prefix is not None:
        apply_prefix(model, int(prefix["prefix_length"]), prefix.get("projection_hidden"))
    prompt = spec.get("prompt")
    if prompt is not None:
        apply_prompt(model, int(prompt["prompt_length"]))
    return model


def method_spec(model: nn.Module) -> dict:
    """The PEFT method applied to a model's blocks as spec keys: `"lora": {rank, alpha, targets, dropout,
    use_rslora}`, `"adapters": {adapter_size, train_layernorms}`, `"prefix": {prefix_length, projection_hidden}`,
    `"prompt": {prompt_length}` ({} for none)."""
    spec = {}
    if getattr(model, "lora_config", None) is not None:
        if any(layer.merged for layer in lora_layers(model).values()):
            raise NanoGPT2Error("the model's LoRA layers are merged: unmerge_lora(model) before saving it")
        spec["lora"] = dict(model.lora_config)
    if getattr(model, "adapter_config", None) is not None:
        spec["adapters"] = dict(model.adapter_config)
    if getattr(model, "prefix_config", None) is not None:
        spec["prefix"] = dict(model.prefix_config)  # projection_hidden None once collapsed: the weights say so too
    if getattr(model, "prompt_config", None) is not None:
        spec["prompt"] = dict(model.prompt_config)
    return spec


# ----------------------------------------------------------------------------------------------------
# Adapter-only weights (nanogpt2's own format, for methods peft cannot express)

ADAPTER_WEIGHTS_FILE = ADAPTER_WEIGHTS.marker  # "adapter_weights.pt"


def save_adapter_weights(model: nn.Module, folder, spec: dict, overwrite: bool = False, log=None) -> Path:
    """`folder/adapter_weights.pt`: the model spec (nanogpt2.loader.model_spec(model)) and the trainable tensors
    alone (a few MB for GPT-2 small with adapters), for sharing; `load_adapter_weights` puts them back on the same
    base model. Written atomically where nanogpt2/export_dir.py's rule allows."""
    tensors = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    plan = ExportDir.open(folder, ADAPTER_WEIGHTS, overwrite, name="the adapter folder")
    plan.write(ADAPTER_WEIGHTS_FILE, lambda f: torch.save({"model_spec": spec, "tensors": tensors}, f))
    plan.finish(log)
    return plan.folder / ADAPTER_WEIGHTS_FILE


def load_adapter_weights(model: nn.Module, path) -> list:
    """Load `adapter_weights.pt` (or its folder) onto `model`, which must already have the same method applied
    (e.g. rebuilt by nanogpt2.loader.build_model from the file's model_spec). Returns the tensor names loaded."""
    path = Path(path)
    path = path / ADAPTER_WEIGHTS_FILE if path.is_dir() else path
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
