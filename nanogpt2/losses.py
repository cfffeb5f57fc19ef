"""
Token losses for fine-tuning tasks: the masked mean cross-entropy, and a key-token weighted loss.

- `token_losses(logits, targets)`: per-token cross-entropy, 0 where the target is IGNORE_INDEX (-100).
- `masked_mean_loss(logits, targets) -> (loss, n)`: the mean over the scored targets; a batch with none
  (every target -100: a prompt-only batch) has loss 0 and a zero gradient, never NaN.
- `key_token_weighted_loss(logits, targets, key_ids, alpha) -> (loss, n)`: per-token cross-entropy averaged per
  sample, each sample weighted by 1 + alpha * (how many of its scored targets are key tokens), normalised over
  the batch:

      loss = sum_b w_b * mean_t CE[b, t]  /  sum_b w_b,     w_b = 1 + alpha * #{t : y[b, t] in key_ids}

  (samples with no scored target count nothing). With alpha = 0 every sample counts equally: the mean of the
  per-sample means, which is the plain token-mean cross-entropy when every sample scores as many targets (lm
  windows); with unequal lengths (instruct responses) it gives short answers the weight of long ones.
- `course_key_token_loss(logits, targets, input_keys, alpha) -> (loss, n)`: the Hugging Face course's recipe
  ("Training a causal language model from scratch", its `keytoken_weighted_loss`), chosen with
  `key_token_formula=hf_course`: the same per-sample means, each weighted by alpha * (1 + how many key tokens
  the sample's input ids hold), averaged over the samples without normalising by the weights:

      loss = mean_b  alpha * (1 + k_b) * mean_t CE[b, t],     k_b = #{key tokens among sample b's input ids}

  Its value grows with alpha and the key counts (it is not a cross-entropy: a batch with k_b = 5 everywhere and
  alpha = 1 reads 6 x its cross-entropy, and its gradient is 6 x as large, i.e. a larger learning rate), where
  ours stays a weighted mean of cross-entropies. The course counts the key tokens among the input ids, the
  whole sample: for an lm window of block_size + 1 tokens that is x and the last target (`window_key_counts`).
- `KeyTokenLoss(key_tokens, alpha, formula)`: the trainer's `loss_fn` for (x, y) batches (`finetune.py --task lm
  --key_tokens ... --key_token_alpha A [--key_token_formula hf_course]`); the instruct task calls the two losses
  itself.

`key_tokens` (a setting) holds comma-separated token ids or strings (`42, yes, no`), or a JSON list for exact
strings with their leading spaces (`[" yes", " no", 50256]`); each string must be one token of the run's
tokenizer (`parse_key_tokens`).

    python -m pytest -q tests/test_instruct.py -k loss
"""

import json

import torch
import torch.nn.functional as F

from nanogpt2.errors import NanoGPT2Error
from nanogpt2.model import IGNORE_INDEX

# ----------------------------------------------------------------------------------------------------
# Losses


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position in float32: logits (B, T, V), targets (B, T) -> (B, T), 0 at IGNORE_INDEX."""
    B, T, V = logits.shape
    ce = F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T), ignore_index=IGNORE_INDEX,
                         reduction="none")  # (B * T,)
    return ce.view(B, T)  # (B, T)


def masked_mean_loss(logits: torch.Tensor, targets: torch.Tensor):
    """(mean cross-entropy over the scored targets, their count). No scored target: loss 0 (zero gradient)."""
    scored = targets != IGNORE_INDEX  # (B, T)
    n = scored.sum()
    return token_losses(logits, targets).sum() / n.clamp(min=1), n


def key_token_weighted_loss(logits: torch.Tensor, targets: torch.Tensor, key_ids: torch.Tensor, alpha: float):
    """The key-token weighted loss of the module docstring: (loss, number of scored targets).
    logits (B, T, V), targets (B, T) with IGNORE_INDEX where nothing is scored, key_ids (K,) int64."""
    scored = targets != IGNORE_INDEX  # (B, T)
    per_sample_n = scored.sum(dim=1)  # (B,)
    per_sample_mean = token_losses(logits, targets).sum(dim=1) / per_sample_n.clamp(min=1)  # (B,)
    keys = (torch.isin(targets, key_ids.to(targets.device)) & scored).sum(dim=1)  # (B,) key targets per sample
    weight = (1.0 + alpha * keys.float()) * (per_sample_n > 0)  # (B,) an empty sample counts nothing
    return (weight * per_sample_mean).sum() / weight.sum().clamp(min=1e-12), per_sample_n.sum()


def course_key_token_loss(logits: torch.Tensor, targets: torch.Tensor, input_keys: torch.Tensor, alpha: float):
    """The HF course's key-token loss of the module docstring: (loss, number of scored targets). logits (B, T, V),
    targets (B, T) with IGNORE_INDEX where nothing is scored, input_keys (B,): key tokens among each sample's
    input ids. Samples with no scored target (a prompt-only instruct row) are left out of the mean."""
    scored = targets != IGNORE_INDEX  # (B, T)
    per_sample_n = scored.sum(dim=1)  # (B,)
    per_sample_mean = token_losses(logits, targets).sum(dim=1) / per_sample_n.clamp(min=1)  # (B,)
    weight = alpha * (1.0 + input_keys.to(per_sample_mean.device).float())  # (B,)
    present = (per_sample_n > 0).float()  # (B,)
    return (weight * per_sample_mean * present).sum() / present.sum().clamp(min=1), per_sample_n.sum()


def key_counts(tokens: torch.Tensor, key_ids: torch.Tensor, valid: torch.Tensor = None) -> torch.Tensor:
    """(B,) how many of each row's tokens (B, L) are key tokens (only where `valid` (B, L), when given)."""
    hits = torch.isin(tokens, key_ids.to(tokens.device))  # (B, L)
    return (hits & valid if valid is not None else hits).sum(dim=1)  # (B,)


def window_key_counts(x: torch.Tensor, y: torch.Tensor, key_ids: torch.Tensor) -> torch.Tensor:
    """(B,) key tokens among the sample's input ids for lm windows: x (B, T) and the last target y[:, -1], the
    window of T + 1 tokens the course's input_ids would hold."""
    return key_counts(torch.cat([x, y[:, -1:]], dim=1), key_ids)  # (B,)


KEY_TOKEN_FORMULAS = ("normalised", "hf_course")  # key_token_formula: ours, the HF course's

# ----------------------------------------------------------------------------------------------------
# Key tokens


def key_token_entries(spec: str) -> list:
    """The entries of a `key_tokens` setting: ints (ids) and strings, before any tokenizer is known."""
    spec = spec.strip()
    if not spec:
        return []
    if spec.startswith("["):
        try:
            entries = json.loads(spec)
        except json.JSONDecodeError as e:
            raise NanoGPT2Error(f"key_tokens={spec!r} starts with '[' but is not a JSON list ({e.msg}); write e.g. "
                                f"[\" yes\", \" no\", 50256]") from None
        bad = [e for e in entries if isinstance(e, bool) or not isinstance(e, (int, str)) or e == ""]
        if bad:
            raise NanoGPT2Error(f"key_tokens: the JSON list may hold token ids and non-empty strings only, not {bad[0]!r}")
        return entries
    entries = [e.strip() for e in spec.split(",")]
    if "" in entries:
        raise NanoGPT2Error(f"key_tokens={spec!r} has an empty entry; write comma-separated ids or strings, e.g. 42,yes,no")
    return [int(e) if e.isdigit() else e for e in entries]


def parse_key_tokens(spec: str, tokenizer) -> list:
    """`key_tokens` as sorted token ids of `tokenizer`: ids are checked against its vocabulary, each string must
    encode to exactly one token (else the error lists its pieces)."""
    ids = set()
    for entry in key_token_entries(spec):
        if isinstance(entry, int):
            if not 0 <= entry < tokenizer.n_vocab:
                raise NanoGPT2Error(f"key_tokens: id {entry} is outside the tokenizer's vocabulary "
                                    f"(0-{tokenizer.n_vocab - 1})")
            ids.add(entry)
            continue
        pieces = tokenizer.encode_ordinary(entry)
        if len(pieces) != 1:
            shown = ", ".join(f"{tokenizer.decode([p])!r}" for p in pieces)
            raise NanoGPT2Error(f"key_tokens: {entry!r} is {len(pieces)} tokens ({shown}), not one; give single tokens "
                                f"(their ids, or the string with its leading space in a JSON list: [\" yes\"])")
        ids.add(pieces[0])
    if not ids:
        raise NanoGPT2Error("key_token_alpha > 0 needs key_tokens: the tokens that raise a sample's weight")
    return sorted(ids)


class KeyTokenLoss:
    """The trainer's loss_fn for language-modelling batches (x, y): `key_token_weighted_loss` (formula
    "normalised") or `course_key_token_loss` ("hf_course"). The key tokens are resolved with the run's tokenizer
    on the first call (the lm task only knows it once the data is ready)."""

    def __init__(self, key_tokens: str, alpha: float, formula: str = "normalised"):
        key_token_entries(key_tokens)  # a syntax error shows before the run starts
        if formula not in KEY_TOKEN_FORMULAS:
            raise NanoGPT2Error(f"key_token_formula must be one of {', '.join(KEY_TOKEN_FORMULAS)}, not {formula!r}")
        self.key_tokens, self.alpha, self.formula = key_tokens, alpha, formula
        self.key_ids = None

    def __call__(self, trainer, model, batch):
        if self.key_ids is None:
            self.key_ids = torch.tensor(parse_key_tokens(self.key_tokens, trainer.tokenizer), dtype=torch.long)
            trainer.log(f"key-token weighted loss ({self.formula}): alpha {self.alpha}, key ids {self.key_ids.tolist()}")
        x, y = batch
        logits, _ = model(x)  # (B, T, V)
        if self.formula == "hf_course":
            return course_key_token_loss(logits, y, window_key_counts(x, y, self.key_ids), self.alpha)
        return key_token_weighted_loss(logits, y, self.key_ids, self.alpha)
