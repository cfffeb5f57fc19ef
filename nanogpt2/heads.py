"""
A classification head on the GPT-2 body: `GPTForSequenceClassification`, HF's `GPT2ForSequenceClassification`
written out, with its checkpoints read and written without `transformers`.

The model: GPT's body (the blocks and the final LayerNorm, `GPT.body`) -> the hidden state of the **rightmost
non-pad token** of each row -> dropout (0.1, ours: HF has none; inactive in eval mode, so the logits equal HF's)
-> `score = Linear(n_embd, num_labels, bias=False)`. The rightmost non-pad token is HF's current rule: the last
position whose id is not `pad_token_id` (right or left padding alike; a row of padding only takes position 0).
With GPT-2's usual pad = eos (`<|endoftext|>`, 50256) a real trailing eos counts as padding too, as in HF: the
row is read at the token before it. Without a pad id the attention mask says which tokens are real, and without
either every row is read at its last position.

Loss (`classification_loss`), as HF's: `num_labels == 1` is regression (MSE on the one logit), else cross-entropy
over int labels, ignoring -100, with optional `label_smoothing` (HF's model has none; its Trainer smooths the
same way). The head starts from a truncated normal (std 0.02, cut at 2 std).

Its parameter names are the GPT's (`transformer.h.0.attn.c_attn.weight`, ...) plus `score.weight`, and it has
`.config`, `.transformer` and GPT's `body`, so nanogpt2.peft (LoRA, adapters, prompt tuning) and finetune.py's
methods apply to it unchanged.
Checkpoints record `model_spec()` (kind "gpt_classifier": the GPT config, num_labels, pad id, label names, and the
PEFT method of the body), which nanogpt2.loader rebuilds.

Files: `from_pretrained` reads an HF GPT2ForSequenceClassification folder (config.json: id2label / label2id,
pad_token_id; `score.weight` beside the GPT-2 tensors) or a GPT-2 LM folder / name (the body, with a fresh head);
`save_pretrained` writes the former. `load_peft_classifier` / `save_peft_classifier`: an HF peft LoRA folder of
task SEQ_CLS, whose head is saved whole under `modules_to_save`.

    from nanogpt2.heads import GPTForSequenceClassification
    model = GPTForSequenceClassification.from_pretrained("gpt2", num_labels=4, pad_token_id=50256)
    logits, loss = model(idx, attention_mask, labels)          # (B, 4), scalar
    model.save_pretrained("out/clf")                           # transformers.GPT2ForSequenceClassification loads it
"""

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt2.convert import save_pretrained
from nanogpt2.hf_checkpoint import (HF_REPOS, config_from_hf, download_hf_model, gpt_hf_export, load_hf_state_dict_into,
                                    read_hf_state_dict)
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import register_model_kind
from nanogpt2.model import GPT, IGNORE_INDEX, GPTConfig
from nanogpt2.peft import (PEFT_PREFIX, apply_method_spec, apply_peft_adapter, method_spec, peft_adapter_parts,
                           read_peft_folder, write_peft_folder)

KIND = "gpt_classifier"
HF_ARCHITECTURE = "GPT2ForSequenceClassification"
HEAD = "score"  # the head's module name (HF's), also peft's modules_to_save entry

# ----------------------------------------------------------------------------------------------------
# Loss


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> torch.Tensor:
    """HF's loss of a GPT2ForSequenceClassification: logits (B, K), labels (B,). K == 1: MSE (regression, float
    labels); else cross-entropy over int labels, -100 ignored, with optional label smoothing. In fp32."""
    if logits.size(-1) == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing,
                           reduction=reduction)


# ----------------------------------------------------------------------------------------------------
# The model


class GPTForSequenceClassification(nn.Module):
    """GPT-2 body + dropout + `score` on the rightmost non-pad token (see the module docstring).

    config: the body's GPTConfig. num_labels: K (1: regression). pad_token_id: the id that marks padding (None:
    the attention mask does). labels: the K class names (None: LABEL_0 ...). transformer: an existing GPT's
    `transformer` to build on (`from_gpt`); None builds a new, GPT-initialised one."""

    def __init__(self, config: GPTConfig, num_labels: int, pad_token_id: Optional[int] = None, labels=None,
                 classifier_dropout: float = 0.1, label_smoothing: float = 0.0, transformer: nn.Module = None):
        super().__init__()
        if not (isinstance(num_labels, int) and num_labels >= 1):
            raise NanoGPT2Error(f"num_labels must be an integer >= 1, not {num_labels!r}")
        labels = [f"LABEL_{i}" for i in range(num_labels)] if labels is None else [str(n) for n in labels]
        if len(labels) != num_labels:
            raise NanoGPT2Error(f"{len(labels)} label names given for num_labels={num_labels}")
        self.config = config
        self.transformer = transformer if transformer is not None else GPT(config).transformer
        self.dropout = nn.Dropout(classifier_dropout)
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)
        nn.init.trunc_normal_(self.score.weight, mean=0.0, std=0.02, a=-0.04, b=0.04)
        self.num_labels, self.pad_token_id, self.labels = num_labels, pad_token_id, labels
        self.label_smoothing = label_smoothing  # of the loss `forward` returns (a training setting, not in the spec)
        self.gradient_checkpointing = False  # read by GPT.body: recompute each block in the backward

    @classmethod
    def from_gpt(cls, gpt: GPT, num_labels: int, **kwargs) -> "GPTForSequenceClassification":
        """A classifier on `gpt`'s body (shared, not copied; its PEFT method comes along); the LM head is dropped."""
        model = cls(gpt.config, num_labels, transformer=gpt.transformer, **kwargs)
        for attr in ("lora_config", "adapter_config"):
            if getattr(gpt, attr, None) is not None:
                setattr(model, attr, getattr(gpt, attr))
        return model

    gradient_checkpointing_enable = GPT.gradient_checkpointing_enable  # the body's switch (see GPT's)

    # --- forward ---------------------------------------------------------------------------------------

    # GPT's own body and context surgery on our transformer: they read nothing but .config and .transformer (and a
    # PEFT method that changes the body, prompt tuning, overrides `body` as it does a GPT's).
    body = GPT.body
    crop_block_size = GPT.crop_block_size

    def last_token_index(self, idx: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) position of each row's rightmost non-pad token (see the module docstring)."""
        B, T = idx.shape
        if self.pad_token_id is not None:
            real = idx != self.pad_token_id  # (B, T)
        elif attention_mask is not None:
            real = attention_mask.bool()  # (B, T)
        else:
            return torch.full((B,), T - 1, dtype=torch.long, device=idx.device)  # (B,)
        positions = torch.arange(T, device=idx.device)  # (T,)
        return (positions * real).argmax(-1)  # (B,): the largest real position (0 for a row of padding only)

    def forward(self, idx: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None):
        """idx (B, T) token ids, attention_mask (B, T) 1 real / 0 padding, labels (B,) -> (logits (B, num_labels),
        loss or None)."""
        hidden = self.body(idx, attention_mask)  # (B, T, C)
        last = self.last_token_index(idx, attention_mask)  # (B,)
        pooled = hidden[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)
        logits = self.score(self.dropout(pooled))  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels, self.label_smoothing)
        return logits, loss

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token (for MFU): 6 per weight of the blocks (the embeddings are lookups, the head
        runs once per row) plus attention, as GPT.flops_per_token counts it."""
        T = seq_len or self.config.block_size
        embeddings = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight), id(self.score.weight)}
        n = sum(p.numel() for p in self.parameters() if id(p) not in embeddings)
        return 6 * n + 12 * self.config.n_layer * T * self.config.n_embd

    # --- checkpoints -------------------------------------------------------------------------------------

    def model_spec(self) -> dict:
        """What nanogpt2.loader.build_model rebuilds: the body's config and method, the head's shape and labels."""
        return {"kind": KIND, "config": self.config.to_dict(), "num_labels": self.num_labels,
                "pad_token_id": self.pad_token_id, "labels": list(self.labels),
                "classifier_dropout": self.dropout.p, **method_spec(self)}

    @classmethod
    def from_pretrained(cls, name_or_dir, num_labels: Optional[int] = None, pad_token_id: Optional[int] = None,
                        labels=None, **overrides) -> "GPTForSequenceClassification":
        """From an HF GPT2ForSequenceClassification folder (its head, label names and pad id; a `num_labels` other
        than its head's is refused), or from a GPT-2 LM folder / name (its body and a fresh head of `num_labels`).
        `pad_token_id` / `labels` given here win over config.json's; overrides: dropout, attn_impl of the body."""
        folder = Path(name_or_dir)
        if not folder.is_dir():
            if str(name_or_dir) not in HF_REPOS:
                raise NanoGPT2Error(f"{name_or_dir!r} is neither a folder nor a known model name "
                                    f"({', '.join(HF_REPOS)})")
            folder = download_hf_model(str(name_or_dir))
        hf = _read_json(folder)
        state = read_hf_state_dict(folder)
        head = state.pop(f"{HEAD}.weight", None)
        if head is not None:
            hf = {**hf, "tie_word_embeddings": True}  # a classifier has no LM head to tie or not
        gpt = GPT(config_from_hf(hf, source=str(folder / "config.json"), **overrides))
        load_hf_state_dict_into(gpt, state, source=str(folder))
        if head is None:
            if num_labels is None:
                raise NanoGPT2Error(f"{folder} holds a GPT-2 without a classification head: give num_labels for a "
                                    f"fresh one")
            return cls.from_gpt(gpt, num_labels, pad_token_id=_pad_id(pad_token_id, hf), labels=labels)
        names = _hf_labels(hf, folder)
        if len(names) != head.shape[0]:
            raise NanoGPT2Error(f"{folder}: config.json names {len(names)} labels (id2label) but score.weight has "
                                f"{head.shape[0]} rows; fix config.json or re-export the model")
        if num_labels is not None and num_labels != head.shape[0]:
            raise NanoGPT2Error(
                f"num_labels={num_labels}, but {folder} has a classification head for {head.shape[0]} labels "
                f"(score.weight {tuple(head.shape)}); leave num_labels out (0) to use its head, or start from the base "
                f"GPT-2 (its body only) to train a new head")
        model = cls.from_gpt(gpt, head.shape[0], pad_token_id=_pad_id(pad_token_id, hf), labels=labels or names)
        model.load_head(head, str(folder))
        return model

    def load_head(self, weight: torch.Tensor, source: str):
        """Copy a (num_labels, n_embd) `score.weight` from `source` into the head, shape checked."""
        if tuple(weight.shape) != tuple(self.score.weight.shape):
            raise NanoGPT2Error(f"{source}: score.weight has shape {tuple(weight.shape)}, this classifier needs "
                                f"{tuple(self.score.weight.shape)} ({self.num_labels} labels, width "
                                f"{self.config.n_embd})")
        with torch.no_grad():
            self.score.weight.copy_(weight)

    def hf_export(self) -> dict:
        """The parts of an HF GPT2ForSequenceClassification folder, for nanogpt2.convert.save_pretrained (which
        calls this on a copy with LoRA merged, after refusing adapters and prefixes): config.json with the labels
        and pad id, the tensors under HF names (`score.weight` as is), no generation_config."""
        parts = gpt_hf_export(self)
        config = {**parts["config"], "architectures": [HF_ARCHITECTURE], "num_labels": self.num_labels,
                  "id2label": {str(i): n for i, n in enumerate(self.labels)},
                  "label2id": {n: i for i, n in enumerate(self.labels)}, "pad_token_id": self.pad_token_id}
        return {"config": config, "tensors": parts["tensors"], "generation_config": None}

    def save_pretrained(self, out_dir, overwrite: bool = False, log=None) -> Path:
        """An HF GPT2ForSequenceClassification folder (config.json + model.safetensors) that transformers loads:
        nanogpt2.convert.save_pretrained with this model's `hf_export` (LoRA merged on a copy; adapters refused),
        where the export rule of nanogpt2/export_dir.py allows."""
        return save_pretrained(self, out_dir, log=log, overwrite=overwrite)


def _read_json(folder: Path, name: str = "config.json", what: str = "an HF GPT-2 checkpoint folder") -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanoGPT2Error(f"{folder} has no {name}: is it {what}?") from None
    except (OSError, ValueError) as e:
        raise NanoGPT2Error(f"cannot read {path} ({e})") from None


def _pad_id(given, hf: dict):
    return given if given is not None else hf.get("pad_token_id")


def _hf_labels(hf: dict, folder: Path) -> list:
    """The class names of an HF config, in id order (id2label; LABEL_i where it has none)."""
    id2label = hf.get("id2label") or {}
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, ValueError):
        raise NanoGPT2Error(f"{folder}/config.json: id2label must map ids to names, not {id2label!r}") from None
    n = len(by_id) if by_id else int(hf.get("num_labels", 2))
    return [by_id.get(i, f"LABEL_{i}") for i in range(n)]


def load_hf_folder(folder) -> GPTForSequenceClassification:
    """nanogpt2.loader's hook for HF folders of architecture GPT2ForSequenceClassification."""
    return GPTForSequenceClassification.from_pretrained(folder)


def _build(spec: dict) -> GPTForSequenceClassification:
    model = GPTForSequenceClassification(GPTConfig(**spec["config"]), int(spec["num_labels"]), spec.get("pad_token_id"),
                                         spec.get("labels"), float(spec.get("classifier_dropout", 0.1)))
    return apply_method_spec(model, spec)


register_model_kind(KIND, _build)

# ----------------------------------------------------------------------------------------------------
# HF peft adapter folders with the head (task SEQ_CLS)


def load_peft_classifier(model: GPTForSequenceClassification, folder) -> list:
    """Apply an HF peft LoRA folder of a sequence classifier to `model`: the LoRA matrices, and the head peft saves
    whole (`modules_to_save`: base_model.model.score.weight). Returns the LoRA-wrapped module names."""
    folder = Path(folder)
    config, tensors = read_peft_folder(folder, modules_to_save=(HEAD, "classifier"))  # peft lists both names
    head = tensors.pop(f"{PEFT_PREFIX}{HEAD}.weight", None)
    if config.get("modules_to_save") and head is None:
        raise NanoGPT2Error(f"{folder}: adapter_config.json saves {HEAD!r}, but {PEFT_PREFIX}{HEAD}.weight is missing")
    wrapped = apply_peft_adapter(model, config, tensors, folder)
    if head is not None:
        model.load_head(head, str(folder))
    return wrapped



def save_peft_classifier(model: GPTForSequenceClassification, folder, base_model_name_or_path: str = "",
                         overwrite: bool = False, log=None) -> Path:
    """The model's LoRA layers and its head as an HF peft folder of task SEQ_CLS, which
    `peft.PeftModel.from_pretrained(GPT2ForSequenceClassification...)` loads; written once, where the export rule of
    nanogpt2/export_dir.py allows (an earlier peft folder, e.g. the run's LoRA-only one, is replaced)."""
    config, tensors = peft_adapter_parts(model, base_model_name_or_path)
    tensors[f"{PEFT_PREFIX}{HEAD}.weight"] = model.score.weight.detach().cpu()
    config.update(task_type="SEQ_CLS", modules_to_save=[HEAD])
    return write_peft_folder(folder, config, tensors, overwrite, log)
