"""
Text generation: KV-cache decoding, sampling filters, stop conditions.

`generate(model, idx, max_new_tokens, ...)` continues a batch of prompts. It prefills the prompt once,
then feeds one token per step through the model's preallocated `KVCache`; a prefill computes logits for
the last position only (`logits_to_keep`). Left-padded batches carry an
attention mask; positions come from it (cumsum(mask) - 1, as Hugging Face's `generate` does) and it grows
by one column per step. Decoding is greedy or sampled (temperature, top-k, top-p, combinations) with an
optional repetition penalty, from a seeded `torch.Generator` for reproducible samples. Rows stop at
`eos_token_id` or at a stop string and are padded afterwards. Past `block_size` the context is cropped
(see `generate` for the policy).

The logits filters reproduce `transformers`' `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper` and `RepetitionPenaltyLogitsProcessor` exactly (same ties, same keep-at-least-one
rule), applied in the same order; greedy output equals `transformers`' `generate(do_sample=False)`
token for token (tests/test_generate.py).

References: nanoGPT's `GPT.generate` (Karpathy); Holtzman et al. 2019, "The Curious Case of Neural Text
Degeneration" (nucleus sampling); Keskar et al. 2019, CTRL (repetition penalty); HF's `generation/utils.py`.

Run it:
    from nanogpt2.generate import generate
    out = generate(model, idx, 40, temperature=0.8, top_k=200, generator=torch.Generator().manual_seed(1))
    out = model.generate(idx, 40, greedy=True)          # same function
    python sample.py --init_from gpt2 --start "Hello" --stream

The module imports only torch. Its benchmark (against transformers' `generate`) is
nanogpt2/benchmarks/decode.py, run by `python bench.py generate`.
"""

import inspect
import math
import sys
import warnings
import weakref
from typing import Callable, Optional, Sequence

import torch

from nanogpt2.errors import NanoGPT2Error

# ----------------------------------------------------------------------------------------------------
# Argument checks


def check_sampling_args(temperature=1.0, top_k=None, top_p=None, repetition_penalty=None, max_new_tokens=0):
    """Raise NanoGPT2Error on a sampling setting that has no meaning (the message says what is allowed)."""
    if temperature is None or not math.isfinite(float(temperature)) or float(temperature) < 0:
        raise NanoGPT2Error(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (int(top_k) != top_k or top_k < 0):
        raise NanoGPT2Error(f"top_k must be a positive integer (or 0/None for no top-k), got {top_k!r}")
    if top_p is not None and not (0.0 < float(top_p) <= 1.0):
        raise NanoGPT2Error(f"top_p must be in (0, 1] (1 keeps every token), got {top_p!r}")
    if repetition_penalty is not None and not (float(repetition_penalty) > 0 and math.isfinite(float(repetition_penalty))):
        raise NanoGPT2Error(f"repetition_penalty must be a number > 0 (1 means none, > 1 discourages repeats), got {repetition_penalty!r}")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise NanoGPT2Error(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


# ----------------------------------------------------------------------------------------------------
# Logits filters (each equals the transformers processor named in its docstring)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty, as `RepetitionPenaltyLogitsProcessor`: for every token already in the sequence,
    divide a positive logit by `penalty`, multiply a negative one. logits (B, V) float; seen (B, V) bool."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`TemperatureLogitsWarper`: logits / temperature (temperature > 0)."""
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int, filter_value: float = -float("inf")) -> torch.Tensor:
    """`TopKLogitsWarper`: keep every logit >= the k-th largest (ties at the k-th value are all kept)."""
    top_k = min(int(top_k), logits.size(-1))
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, filter_value)


def apply_top_p(logits: torch.Tensor, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`TopPLogitsWarper` (nucleus): keep the most probable tokens whose probabilities sum to top_p.

    Sorted ascending, a token is dropped when the cumulative probability up to and including it is
    <= 1 - top_p; the `min_tokens_to_keep` most probable tokens always stay (so top_p -> 0 is greedy-like).
    """
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)  # (B, V) ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    drop_sorted = cum <= (1 - top_p)
    drop_sorted[..., -min_tokens_to_keep:] = False
    drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, filter_value)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the order of transformers' sampling warpers. (B, V) -> (B, V)."""
    logits = apply_temperature(logits, temperature)
    if top_k:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    return logits


def next_token(logits: torch.Tensor, temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None) -> torch.Tensor:
    """One token per row from last-position logits (B, V): argmax when greedy (or temperature 0),
    else a draw from softmax(filter_logits(...)) with `generator`. Returns (B,) int64."""
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------------------------------
# Stop strings and streaming


class StopStrings:
    """Stops a row once its generated text contains one of `stop_strings`.

    Each row's generated bytes are kept (tokenizer.decode_bytes of each new token, so a character split
    across tokens is matched once complete). A match is looked for only where it could end inside the
    newest token, so a stop string that a token overhangs ("\\n" inside ".\\n\\n") is found too.
    """

    def __init__(self, stop_strings: Sequence[str], tokenizer, batch_size: int):
        if tokenizer is None:
            raise NanoGPT2Error("stop_strings need the tokenizer to decode with: pass tokenizer=...")
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        self.stops = [s.encode("utf-8") for s in stop_strings]
        if not self.stops or any(len(s) == 0 for s in self.stops):
            raise NanoGPT2Error("stop_strings must be non-empty strings")
        self.tokenizer = tokenizer
        self.buffers = [bytearray() for _ in range(batch_size)]

    def _piece(self, token: int) -> bytes:
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.tokenizer.decode_bytes([token])
        return self.tokenizer.decode([token]).encode("utf-8")

    def update(self, tokens: list, active: list) -> list:
        """Append this step's tokens for the active rows; return the rows that now contain a stop string."""
        hits = []
        for row, (tok, on) in enumerate(zip(tokens, active)):
            if not on:
                continue
            buf = self.buffers[row]
            start = len(buf)
            buf += self._piece(tok)
            if any(buf.find(s, max(0, start - len(s) + 1)) != -1 for s in self.stops):
                hits.append(row)
        return hits


class TextStreamer:
    """A `stream` callback that prints one row's new text as it is generated.

    Bytes are held back until they form complete UTF-8 characters; printing stops at the row's first
    `eot_token` (later tokens of a finished row are padding). Call `end()` to flush.
    """

    def __init__(self, tokenizer, row: int = 0, file=None, eot_token: Optional[int] = None):
        self.tokenizer = tokenizer
        self.row = row
        self.file = file if file is not None else sys.stdout
        self.eot = eot_token if eot_token is not None else getattr(tokenizer, "eot_token", None)
        self.pending = b""
        self.done = False
        self.text = []  # everything printed, for callers that want it afterwards

    def __call__(self, tokens: torch.Tensor):
        if self.done:
            return
        tok = int(tokens[self.row])
        data = self.pending + (self.tokenizer.decode_bytes([tok]) if hasattr(self.tokenizer, "decode_bytes")
                               else self.tokenizer.decode([tok]).encode("utf-8"))
        if tok == self.eot:
            self.done = True
        # keep an incomplete UTF-8 tail (at most 3 bytes) for the next token
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            b = data[-back]
            if b & 0xC0 != 0x80:  # a lead byte (or ASCII): is its character complete?
                need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
                if need > back:
                    cut = len(data) - back
                break
        text, self.pending = data[:cut].decode("utf-8", errors="replace"), data[cut:]
        if self.done and self.pending:
            text, self.pending = text + self.pending.decode("utf-8", errors="replace"), b""
        self._write(text)

    def _write(self, text: str):
        if text:
            self.text.append(text)
            self.file.write(text)
            self.file.flush()

    def end(self):
        if self.pending:
            self._write(self.pending.decode("utf-8", errors="replace"))
            self.pending = b""
        self.file.write("\n")
        self.file.flush()


# ----------------------------------------------------------------------------------------------------
# Generation


def _left_padding_mask(attention_mask: Optional[torch.Tensor], B: int, T: int, device) -> Optional[torch.Tensor]:
    """Check a (B, T) 0/1 mask is left padding; return it as int64, or None when it has no zeros."""
    if attention_mask is None:
        return None
    mask = torch.as_tensor(attention_mask, device=device)
    if mask.shape != (B, T):
        raise NanoGPT2Error(f"attention_mask has shape {tuple(mask.shape)}, expected {(B, T)} (one 0/1 per prompt token)")
    mask = mask.long()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise NanoGPT2Error("attention_mask must hold only 0 (padding) and 1 (token)")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise NanoGPT2Error("attention_mask has padding after a token: generation needs LEFT padding "
                            "(pad at the start of each row, so every row ends with its last real token)")
    if bool((mask.sum(-1) == 0).any()):
        raise NanoGPT2Error("attention_mask has a row with no tokens: every prompt needs at least one token")
    return None if bool(mask.all()) else mask


def _accepts(model, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (looks through torch.compile's wrapper)."""
    fwd = getattr(getattr(model, "_orig_mod", model), "forward", None)
    try:
        return name in inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return False


# A compiled model on a GPU keeps the StaticKVCaches of its recent requests here, by (batch size, slots, dtype,
# device), the least recently used dropped past KEEP_STATIC_CACHES and all of them with the model: the next
# request of a kept shape writes into the same storage, so CUDA graphs recorded on its addresses (torch.compile
# mode="reduce-overhead") replay instead of recording again. Each cache holds 2 x n_layer x (B, nh, slots, hs)
# (GPT-2 124M, batch 8, 1,024 slots, bf16: 302 MB); release_static_caches(model) frees them. CPUs have no
# graphs to replay, so nothing is kept there (REUSE_STATIC_CACHES_ON lists the device types that keep).
_STATIC_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {shape key: cache}
KEEP_STATIC_CACHES = 4
REUSE_STATIC_CACHES_ON = ("cuda",)


def release_static_caches(model) -> None:
    """Free the static KV caches a compiled model kept for its next requests (see _STATIC_CACHES)."""
    _STATIC_CACHES.pop(model, None)


def _static_cache_for(model, batch_size: int, n_slots: int, device):
    """A preallocated StaticKVCache (B, nh, n_slots, hs) in the dtype the model's keys will have (autocast's
    under autocast); for a compiled model on a GPU, reused (zeroed) from an earlier request of that shape."""
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    if not (hasattr(model, "_orig_mod") and device.type in REUSE_STATIC_CACHES_ON):  # nothing to gain: no reuse
        return model.new_kv_cache(max_len=n_slots, static=True, batch_size=batch_size, dtype=dtype)
    kept = _STATIC_CACHES.setdefault(model, {})
    key = (batch_size, n_slots, dtype, str(device))
    cache = kept.pop(key, None)  # popped and put back below: the dict's order is least recently used first
    if cache is not None:  # the key is the cache's whole shape: a kept one fits
        for k, v in zip(cache.k, cache.v):
            k.zero_()  # as good as new: nothing of the previous request can be attended to
            v.zero_()
    else:
        while len(kept) >= KEEP_STATIC_CACHES:
            kept.pop(next(iter(kept)))  # free the least recently used before allocating
        cache = model.new_kv_cache(max_len=n_slots, static=True, batch_size=batch_size, dtype=dtype)
    kept[key] = cache
    return cache


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a 0/1 mask (B, S): cumsum - 1, padding clamped to 0 (HF's rule). (B, S) int64."""
    return (mask.cumsum(-1) - 1).clamp_min_(0)


@torch.inference_mode()
def generate(
    model,
    idx,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    greedy: bool = False,
    eos_token_id: Optional[int] = None,
    attention_mask=None,
    generator: Optional[torch.Generator] = None,
    repetition_penalty: Optional[float] = None,
    use_cache: bool = True,
    stop_strings: Optional[Sequence[str]] = None,
    tokenizer=None,
    stream: Optional[Callable[[torch.Tensor], None]] = None,
    pad_token_id: Optional[int] = None,
    crop_keep: Optional[int] = None,
    static_cache: Optional[bool] = None,
) -> torch.Tensor:
    """Continue the prompts `idx` (B, T) by up to `max_new_tokens` tokens; return (B, T + n) int64.

    - Decoding: `greedy=True` (or temperature 0) takes the argmax; otherwise sample from
      softmax(logits / temperature) restricted by `top_k` and/or `top_p`, drawing from `generator`
      (a seeded torch.Generator on the model's device makes samples reproducible). `repetition_penalty`
      (> 1) applies to every token already in the row (prompt included, padding excluded).
    - Batches: rows of different lengths are LEFT-padded and `attention_mask` (B, T) has 0 on padding.
    - Stopping: a row stops after it emits `eos_token_id`, or once its generated text contains one of
      `stop_strings` (decoded with `tokenizer`); a stopped row is filled with `pad_token_id` (default:
      `eos_token_id`, else the tokenizer's end-of-text token, else 0). Generation ends when every row has
      stopped, so n <= max_new_tokens.
    - An empty prompt (T == 0) starts from `eos_token_id` (GPT-2's <|endoftext|>), which is then part of
      the returned prompt. A prompt longer than `block_size` is kept in the output, but the model sees
      only its last `block_size` tokens (a warning says so).
    - Context past block_size (the model's `context_length`: fewer with a learned prefix, nanogpt2/peft.py):
      without a cache each step sees the last block_size tokens (nanoGPT). With
      the cache, when it is full the last `crop_keep` tokens (default block_size // 2) are prefilled again
      into a fresh cache, and one-token steps resume; with absolute learned positions the old keys cannot
      be shifted, so this trades a re-prefill every block_size - crop_keep tokens for a context that
      shrinks to crop_keep right after a crop.
    - With a `tokenizer` whose vocabulary is smaller than the model's (a padded vocab_size), ids past
      the tokenizer's are never produced.
    - `stream(tokens)` is called after every step with the (B,) tokens just appended (see TextStreamer).
    - `use_cache=False` recomputes the whole window each step (for checks; much slower).
    - `static_cache=True` decodes into a fixed-shape StaticKVCache (every step attends over all block_size
      slots, masked), so a torch.compile'd model compiles its one-token step once instead of once per
      length; the default is True for a compiled model (it has `_orig_mod`), else False. Same tokens.
      It is allocated before the first forward, in the keys' dtype (autocast's under autocast), at a static
      address; a compiled model on a GPU keeps it for its next requests of the same batch size and slot
      count, so CUDA graphs (`torch.compile(model, mode="reduce-overhead")`) recorded on it replay
      (`release_static_caches(model)` frees them).
    """
    check_sampling_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens)
    block = model.context_length  # block_size, less any positions the model keeps for itself (a prefix)
    eot_from_tok = getattr(tokenizer, "eot_token", None) if tokenizer is not None else None
    idx, mask = _prompts(model, idx, attention_mask, eos_token_id if eos_token_id is not None else eot_from_tok)
    T = idx.size(1)
    if T > block:
        warnings.warn(f"the prompt has {T} tokens but the model's context is {block}: only its last {block} tokens are used", stacklevel=2)
    if max_new_tokens == 0:
        return idx.clone()
    keep = block // 2 if crop_keep is None else int(crop_keep)
    if not 1 <= keep <= block:
        raise NanoGPT2Error(f"crop_keep must be between 1 and block_size ({block}), got {crop_keep!r}")
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else (eot_from_tok if eot_from_tok is not None else 0)
    if static_cache is None:
        static_cache = hasattr(model, "_orig_mod")
    run = _Decoding(model, idx, mask, max_new_tokens, use_cache, static_cache and use_cache, keep)
    stopper = StopStrings(stop_strings, tokenizer, idx.size(0)) if stop_strings else None
    n_vocab = min(model.config.vocab_size, getattr(tokenizer, "n_vocab", None) or model.config.vocab_size)
    seen = _seen_tokens(idx, mask, model.config.vocab_size) if repetition_penalty not in (None, 1.0) else None
    can_stop = eos_token_id is not None or stopper is not None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    pad = torch.tensor(pad_token_id, dtype=torch.long, device=idx.device)

    was_training = model.training
    model.eval()
    try:
        logits = run.prefill()
        for step in range(max_new_tokens):
            # The decode step: scores in fp32 (as transformers' generate takes them), the padded vocabulary's
            # ids (e.g. 50304) never sampled, the repetition penalty, the next token; stopped rows get `pad`.
            logits = logits.float()  # (B, V)
            if n_vocab < logits.size(-1):
                logits[:, n_vocab:] = -float("inf")
            if seen is not None:
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            tok = next_token(logits, temperature, top_k, top_p, greedy, generator)  # (B,)
            if can_stop:
                tok = torch.where(finished, pad, tok)
            run.append(tok)
            if seen is not None:
                seen.scatter_(1, tok[:, None], True)
            if stream is not None:
                stream(tok)
            if can_stop and _all_stopped(finished, tok, eos_token_id, stopper):
                break
            if step == max_new_tokens - 1:
                break  # the last token needs no forward pass
            logits = run.next_logits()
    finally:
        model.train(was_training)
    return run.tokens()


def _prompts(model, idx, attention_mask, start_token: Optional[int]) -> tuple:
    """The prompts as (B, T) int64 on the model's device, checked against its vocabulary, and their left-padding
    mask (None without padding). An empty prompt (T == 0) becomes `start_token` (GPT-2's <|endoftext|>)."""
    vocab = model.config.vocab_size
    device = next(model.parameters()).device
    idx = torch.as_tensor(idx, device=device)
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2:
        raise NanoGPT2Error(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    idx = idx.long()
    B, T = idx.shape
    if B == 0:
        raise NanoGPT2Error("idx has no rows: pass at least one prompt")
    if T == 0:  # empty prompt: start from <|endoftext|>, as GPT-2 was trained to begin documents
        if start_token is None:
            raise NanoGPT2Error("the prompt is empty and there is no end-of-text token to start from: pass a prompt or eos_token_id")
        idx = torch.full((B, 1), int(start_token), dtype=torch.long, device=device)
        attention_mask, T = None, 1
    if bool(((idx < 0) | (idx >= vocab)).any()):
        raise NanoGPT2Error(f"idx holds token ids outside [0, {vocab}): was it tokenized for another vocabulary?")
    return idx, _left_padding_mask(attention_mask, B, T, device)  # mask: None when there is no padding (fast path)


def _seen_tokens(idx: torch.Tensor, mask: Optional[torch.Tensor], vocab: int) -> torch.Tensor:
    """(B, vocab) bool: the ids each prompt holds (padding excluded), for the repetition penalty."""
    seen = torch.zeros(idx.size(0), vocab + 1, dtype=torch.bool, device=idx.device)  # last column: padding
    seen.scatter_(1, idx if mask is None else idx.masked_fill(mask == 0, vocab), True)
    return seen[:, :vocab]


def _all_stopped(finished: torch.Tensor, tok: torch.Tensor, eos_token_id, stopper) -> bool:
    """Stopping: mark the rows that just emitted eos or completed a stop string; True once every row has."""
    newly = ~finished
    if eos_token_id is not None:
        finished |= tok == eos_token_id
    if stopper is not None:
        rows = stopper.update(tok.tolist(), newly.tolist())
        if rows:
            finished[rows] = True
    return bool(finished.all())


class _Decoding:
    """The forward passes of one `generate` call: the tokens so far in a preallocated (B, T + N) buffer (and,
    with padding, its growing mask), the KV cache, and which pass comes next — the prefill, one-token steps on
    the cache, a re-prefill of the last `keep` tokens when the cache is full, or (no cache) the whole window."""

    def __init__(self, model, idx, mask, max_new_tokens: int, use_cache: bool, static_cache: bool, keep: int):
        self.model, self.use_cache, self.static_cache, self.keep = model, use_cache, static_cache, keep
        self.block = model.context_length
        B, T = idx.shape
        self.device = idx.device
        self.total = T + max_new_tokens
        self.out = torch.empty(B, self.total, dtype=torch.long, device=self.device)  # (B, T + N)
        self.out[:, :T] = idx
        self.full_mask = None
        if mask is not None:
            self.full_mask = torch.ones(B, self.total, dtype=torch.long, device=self.device)  # (B, T + N)
            self.full_mask[:, :T] = mask
        # Only the last position's logits are needed: ask for just those when the model can skip the rest
        # (a prefill of P tokens otherwise pays P x vocab x n_embd multiply-adds in the head).
        self.last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        self.cache = None
        self.slot_mask = None  # a StaticKVCache attends over all its slots: (B, max_len), 0 where empty
        self.cur = T  # tokens in `out` so far
        self.start = max(0, T - self.block)  # first token the model sees
        self.filled = 0  # cache slots in use
        self.pos = None  # (B, 1) position of the last token, with padding

    def prefill(self) -> torch.Tensor:
        """Logits (B, V) of the prompts' last position, filling a new cache when there is one."""
        if not self.use_cache:
            return self._window_forward(self.start, self.cur)
        B = self.out.size(0)
        # A static cache's slots: the next power of two >= T + N (at least 64, at most block_size), so requests
        # share a handful of shapes (one compile each) and attention spans at most twice the tokens.
        if self.static_cache:
            n_slots = min(self.block, 1 << max(6, (self.total - 1).bit_length()))
            self.cache = _static_cache_for(self.model, B, n_slots, self.device)
            self.step_input = torch.empty(B, 1, dtype=torch.long, device=self.device)  # (B, 1)
            if self.full_mask is not None:
                self.slot_mask = torch.zeros(B, self.cache.max_len, dtype=torch.long, device=self.device)
        else:
            self.cache = self.model.new_kv_cache(max_len=min(self.block, self.total))
        logits = self._window_forward(self.start, self.cur, self.cache)
        self.filled = self.cur - self.start
        if self.full_mask is not None:
            self.pos = _positions(self.full_mask[:, self.start:self.cur])[:, -1:]  # (B, 1)
        return logits

    def append(self, tok: torch.Tensor) -> None:
        self.out[:, self.cur] = tok
        self.cur += 1

    def next_logits(self) -> torch.Tensor:
        """Logits (B, V) after the token just appended: the next window, a re-prefill, or a one-token step."""
        if not self.use_cache:
            self.start = max(0, self.cur - self.block)
            return self._window_forward(self.start, self.cur)
        if self.filled + 1 > self.cache.max_len:  # full: prefill the last `keep` tokens again
            self.start = self.cur - self.keep
            if not self.static_cache:
                self.cache.length = 0  # reuse the preallocated storage (max_len == block_size here)
            logits = self._window_forward(self.start, self.cur, self.cache)
            self.filled = self.keep
            if self.full_mask is not None:
                self.pos = _positions(self.full_mask[:, self.start:self.cur])[:, -1:]
            return logits
        if self.full_mask is not None:
            self.pos = self.pos + 1
        logits = self._step_forward()
        self.filled += 1
        return logits

    def tokens(self) -> torch.Tensor:
        """(B, T + n): the prompts and what was generated."""
        return self.out[:, :self.cur].clone() if self.cur < self.total else self.out

    def _window_forward(self, start: int, end: int, kv_cache=None) -> torch.Tensor:
        """Logits (B, V) for the last position of out[:, start:end], from scratch or into a fresh cache."""
        x = self.out[:, start:end]  # (B, W)
        kw = dict(self.last)
        if self.full_mask is not None:
            m = self.full_mask[:, start:end]  # (B, W)
            kw.update(attention_mask=m, position_ids=_positions(m))
        if self.static_cache and kv_cache is not None:
            x = x.new_empty(x.shape).copy_(x)  # standard strides: a slice of `out` has out's, which vary by request
            kw["cache_position"] = torch.arange(end - start, device=self.device)  # (W,) refilled from slot 0
            if self.full_mask is not None:
                self.slot_mask.zero_()
                self.slot_mask[:, :end - start] = m
                kw["attention_mask"] = self.slot_mask
        return self.model(x, kv_cache=kv_cache, **kw)[0][:, -1]

    def _step_forward(self) -> torch.Tensor:
        """Logits (B, V) of one new token, out[:, cur - 1], on top of the cache (`filled` slots so far)."""
        cur = self.cur
        x = self.out[:, cur - 1:cur]  # (B, 1)
        kw = {} if self.full_mask is None else dict(attention_mask=self.full_mask[:, self.start:cur], position_ids=self.pos)
        if self.static_cache:
            x = self.step_input.copy_(x)  # the same (B, 1) buffer every step
            kw["cache_position"] = torch.full((1,), self.filled, dtype=torch.long, device=self.device)  # same graph
            if self.full_mask is not None:
                self.slot_mask[:, self.filled] = self.full_mask[:, cur - 1]
                kw["attention_mask"] = self.slot_mask
        return self.model(x, kv_cache=self.cache, **kw)[0][:, -1]
