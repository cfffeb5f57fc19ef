"""
Generation, checked against transformers: greedy and seeded sampling token for token (with and without
left padding), the logits warpers on random and tied logits, KV cache vs no cache, cropping past the
context, stop conditions, streaming, bad input, and that the decode benchmark runs.

Tiny random GPT-2s are made by transformers, saved with save_pretrained, and loaded into ours with
GPT.from_pretrained (same weights in both).
"""

import io
import string

import pytest
import torch

from conftest import oracle
from nanogpt2.benchmarks.decode import benchmark_decode
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.generate import (StopStrings, TextStreamer, apply_repetition_penalty, apply_temperature, apply_top_k,
                               apply_top_p, filter_logits, generate)
from nanogpt2.model import GPT, GPTConfig

transformers = oracle("transformers")

VOCAB = 96
BLOCK = 64

# ----------------------------------------------------------------------------------------------------
# helpers


def make_pair(folder, vocab=VOCAB, block=BLOCK, seed=0, n_embd=32, n_layer=2, n_head=4, attn="eager"):
    """(ours, transformers') with the same random weights. The weights are drawn 15x wider than GPT-2's
    init (and the positions wider still) so next-token distributions are far from uniform, greedy paths
    wander through the vocabulary and depend on the prompt."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                                  initializer_range=0.3)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        hf.transformer.wpe.weight.normal_(0, 1.0)
        for n, p in hf.named_parameters():
            if n.endswith("bias") or ".ln_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attn).eval()
    ours = GPT.from_pretrained(str(folder)).eval()
    return ours, hf


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("tiny"))


def left_padded(B=3, T=9, pads=(0, 4, 2), seed=1, vocab=VOCAB, pad_id=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    for r, p in enumerate(pads):
        mask[r, :p] = 0
    return idx.masked_fill(mask == 0, pad_id), mask


def hf_generate(hf, idx, mask=None, **kw):
    kw.setdefault("pad_token_id", 0)
    kw.setdefault("eos_token_id", None)
    with torch.no_grad():
        return hf.generate(idx, attention_mask=torch.ones_like(idx) if mask is None else mask, **kw)


class Chars:
    """A character tokenizer over the model's vocabulary, for stop strings and streaming."""

    chars = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,;:!?\n-'\"()[]{}<>/\\|@#$%^&*+=_~`")[:VOCAB]
    n_vocab = len(chars)
    eot_token = None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode()


# ----------------------------------------------------------------------------------------------------
# Parity with transformers' generate


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_equals_transformers(tmp_path, attn):
    ours, hf = make_pair(tmp_path, attn=attn, seed=3)
    idx = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    out = generate(ours, idx, 40, greedy=True)
    ref = hf_generate(hf, idx, max_new_tokens=40, do_sample=False)
    assert out.shape == (2, 46)
    assert torch.equal(out, ref)
    assert len(set(out[:, 6:].flatten().tolist())) >= 8  # a real path through the vocabulary, not one token


@pytest.mark.parametrize("ours_attn", ["sdpa", "reference"])
def test_greedy_left_padding_equals_transformers(pair, ours_attn):
    ours, hf = pair
    idx, mask = left_padded()
    ours.set_attn_impl(ours_attn)
    try:
        out = generate(ours, idx, 40, greedy=True, attention_mask=mask)
    finally:
        ours.set_attn_impl("sdpa")
    ref = hf_generate(hf, idx, mask, max_new_tokens=40, do_sample=False)
    assert torch.equal(out, ref)
    # each padded row continues as it would alone, unpadded
    for r, p in enumerate((0, 4, 2)):
        alone = generate(ours, idx[r:r + 1, p:], 40, greedy=True)
        assert torch.equal(out[r, p:], alone[0])


def test_eos_stops_rows_like_transformers(pair):
    ours, hf = pair
    idx, mask = left_padded()
    free = generate(ours, idx, 40, greedy=True, attention_mask=mask)
    eos = int(free[1, 9 + 5])  # a token that row 1 emits after 5 steps
    out = generate(ours, idx, 40, greedy=True, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    ref = hf_generate(hf, idx, mask, max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref)
    row = out[1, 9:].tolist()
    first = row.index(eos)
    assert first <= 5 and all(t == 0 for t in row[first + 1:])  # padded after its eos
    # default padding is eos itself
    out2 = generate(ours, idx, 40, greedy=True, attention_mask=mask, eos_token_id=eos)
    assert all(t == eos for t in out2[1, 9 + first:].tolist())


@pytest.mark.parametrize("kw", [dict(temperature=1.0, top_k=0, top_p=1.0),
                                dict(temperature=0.7, top_k=20, top_p=1.0),
                                dict(temperature=1.3, top_k=0, top_p=0.8),
                                dict(temperature=0.9, top_k=12, top_p=0.9, repetition_penalty=1.3)])
def test_sampling_equals_transformers_same_seed(pair, kw):
    """Same filters, same order, same torch.multinomial draws: seeded sampling agrees token for token."""
    ours, hf = pair
    idx, mask = left_padded()
    if "repetition_penalty" in kw:  # transformers also penalizes the pad ids in the prompt; we skip padding
        idx, mask = idx[:, 4:], None
    out = generate(ours, idx, 25, attention_mask=mask, generator=torch.Generator().manual_seed(5),
                   **{k: (v if v != 0 else None) for k, v in kw.items()})
    torch.manual_seed(5)  # transformers samples from the global generator
    ref = hf_generate(hf, idx, mask, max_new_tokens=25, do_sample=True, **kw)
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------------------------------
# Logits warpers


def _logits_cases():
    g = torch.Generator().manual_seed(0)
    plain = torch.randn(4, 50, generator=g) * 3
    ties = (torch.randn(4, 50, generator=g) * 2).round()  # many equal values, incl. at the k-th/top-p cut
    ties[0] = 1.0  # a row of all-equal logits
    ties[1, :5] = 10.0  # a tied top
    return {"plain": plain, "ties": ties}


@pytest.mark.parametrize("case", ["plain", "ties"])
def test_filters_equal_transformers_warpers(case):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = _logits_cases()[case]
    ids = torch.zeros(4, 1, dtype=torch.long)
    for t in (0.05, 0.5, 1.0, 2.5):
        assert torch.equal(apply_temperature(logits, t), TemperatureLogitsWarper(t)(ids, logits.clone()))
    for k in (1, 2, 5, 17, 50, 1000):
        assert torch.equal(apply_top_k(logits, k), TopKLogitsWarper(k)(ids, logits.clone())), k
    for p in (1e-9, 1e-3, 0.1, 0.5, 0.9, 0.95, 0.999999, 1.0):
        assert torch.equal(apply_top_p(logits, p), TopPLogitsWarper(p)(ids, logits.clone())), p
    # combinations, in transformers' order: temperature, top-k, top-p
    for t, k, p in [(0.7, 10, 0.9), (1.5, 3, 0.5), (0.3, 40, 1e-6), (1.0, 50, 0.999)]:
        ref = TopPLogitsWarper(p)(ids, TopKLogitsWarper(k)(ids, TemperatureLogitsWarper(t)(ids, logits.clone())))
        assert torch.equal(filter_logits(logits, t, k, p), ref)
    # the extremes do what they say
    assert (apply_top_p(logits, 1e-9) > -float("inf")).sum(-1).eq(1).all()  # one token kept per row
    assert torch.equal(apply_top_k(logits, 1000), logits)


def test_repetition_penalty_equals_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 40, generator=g) * 2
    ids = torch.randint(0, 40, (3, 12), generator=g)
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, ids, True)
    for pen in (0.7, 1.0, 1.3, 2.0):
        assert torch.equal(apply_repetition_penalty(logits, seen, pen), RepetitionPenaltyLogitsProcessor(pen)(ids, logits.clone()))


# ----------------------------------------------------------------------------------------------------
# KV cache vs recomputation; seeds


def test_cache_equals_no_cache(pair):
    ours, _ = pair
    idx, mask = left_padded()
    for kw in (dict(greedy=True), dict(temperature=0.9, top_k=30, top_p=0.95, repetition_penalty=1.2)):
        a = generate(ours, idx, 40, attention_mask=mask, generator=torch.Generator().manual_seed(11), **kw)
        b = generate(ours, idx, 40, attention_mask=mask, generator=torch.Generator().manual_seed(11), use_cache=False, **kw)
        assert torch.equal(a, b), kw


def _record_forwards(model):
    """Hooks that record, for every forward of `model`, (input length, cache length before it or None) and
    the sequence length the LM head sees. Returns (calls, head_lengths, remove)."""
    calls, head = [], []

    def on_forward(module, args, kwargs):
        cache = kwargs.get("kv_cache")
        calls.append((args[0].shape[1], None if cache is None else cache.length))

    handles = [model.register_forward_pre_hook(on_forward, with_kwargs=True),
               model.lm_head.register_forward_pre_hook(lambda module, args: head.append(args[0].shape[1]))]
    return calls, head, lambda: [h.remove() for h in handles]


def test_kv_cache_prefills_once_then_feeds_one_token_per_step(pair):
    ours, _ = pair
    idx, mask = left_padded()  # (3, 9)
    calls, head, remove = _record_forwards(ours)
    try:
        generate(ours, idx, 12, greedy=True, attention_mask=mask)
        # the prompt once, then one token per step onto the growing cache; no forward after the last token
        assert calls == [(9, 0)] + [(1, 9 + i) for i in range(11)]
        assert head == [1] * 12  # the head computes logits for the last position only, prefill included
        calls.clear(), head.clear()
        generate(ours, idx, 12, greedy=True, attention_mask=mask, use_cache=False)
        assert calls == [(9 + i, None) for i in range(12)] and head == [1] * 12  # the whole window every step
        # past the context: one-token steps until the cache is full, then the last block_size // 2 again
        calls.clear()
        n = BLOCK + 10
        generate(ours, idx[:1], n, greedy=True)
        expected, length = [(9, 0)], 9
        for _ in range(n - 1):
            if length + 1 > BLOCK:
                expected.append((BLOCK // 2, 0))
                length = BLOCK // 2
            else:
                expected.append((1, length))
                length += 1
        assert calls == expected and (BLOCK // 2, 0) in calls
    finally:
        remove()


def test_model_generate_takes_the_issue_signature(pair):
    """model.generate(idx, max_new_tokens, temperature, top_k, top_p, greedy, eos_token_id, attention_mask,
    generator) is generate(); rows that stop early are padded with eos_token_id."""
    ours, _ = pair
    idx, mask = left_padded()
    kw = dict(temperature=0.9, top_k=40, top_p=0.95, greedy=False, attention_mask=mask)
    free = generate(ours, idx, 30, generator=torch.Generator().manual_seed(3), **kw)
    eos = int(free[2, 9 + 4])  # a token that row 2 samples at step 4
    out = ours.generate(idx, 30, eos_token_id=eos, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out, generate(ours, idx, 30, eos_token_id=eos, generator=torch.Generator().manual_seed(3), **kw))
    assert out.dtype == torch.long and out.shape[0] == 3 and 9 + 5 <= out.shape[1] <= 9 + 30
    for r in range(3):
        row = out[r, 9:].tolist()
        if eos in row:  # stopped: the sample so far, its eos, then eos padding
            first = row.index(eos)
            assert row[:first + 1] == free[r, 9:9 + first + 1].tolist() and set(row[first:]) == {eos}
        else:
            assert row == free[r, 9:9 + len(row)].tolist()
    assert eos in out[2, 9:9 + 5].tolist()


def test_seeds(pair):
    ours, _ = pair
    idx = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(0))
    run = lambda s: generate(ours, idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1)[:, 4:], run(2)[:, 4:])
    # the model.generate entry point is the same function
    assert torch.equal(ours.generate(idx, 10, greedy=True), generate(ours, idx, 10, greedy=True))


def test_generate_restores_training_mode_and_ignores_dropout(tmp_path):
    ours, _ = make_pair(tmp_path, seed=4)
    drop = GPT.from_pretrained(str(tmp_path), dropout=0.5)
    drop.train()
    idx = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(drop, idx, 20, greedy=True), generate(ours, idx, 20, greedy=True))
    assert drop.training


# ----------------------------------------------------------------------------------------------------
# Context cropping


def _reference_crop(model, idx, n, keep, use_cache):
    """Greedy, one full forward per step over the window the policy prescribes."""
    block = model.config.block_size
    seq = idx[0].tolist()
    start = max(0, len(seq) - block)
    for _ in range(n):
        if use_cache:  # the cached window grows until full, then restarts from the last `keep` tokens
            if len(seq) - start > block:
                start = len(seq) - keep
        else:  # nanoGPT: always the last block_size tokens
            start = max(0, len(seq) - block)
        logits, _ = model(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
    return seq


@pytest.mark.parametrize("use_cache", [True, False])
def test_cropping_past_block_size(pair, use_cache):
    ours, _ = pair
    idx = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(3))
    n = BLOCK + 40  # 114 tokens in all: past the context (twice for keep=32, every 5 tokens for keep=59)
    out = generate(ours, idx, n, greedy=True, use_cache=use_cache)
    assert out[0].tolist() == _reference_crop(ours, idx, n, BLOCK // 2, use_cache)
    if use_cache:
        out = generate(ours, idx, n, greedy=True, use_cache=use_cache, crop_keep=BLOCK - 5)
        assert out[0].tolist() == _reference_crop(ours, idx, n, BLOCK - 5, use_cache)


def test_cropping_with_left_padding_keeps_rows_independent(pair):
    ours, _ = pair
    idx, mask = left_padded(T=20, pads=(0, 7, 3))
    out = generate(ours, idx, BLOCK + 20, greedy=True, attention_mask=mask)
    for r, p in enumerate((0, 7, 3)):
        alone = generate(ours, idx[r:r + 1, p:], BLOCK + 20, greedy=True)
        # identical until the first crop (the padded window fills earlier), then each follows its own window
        n_same = BLOCK - 20
        assert torch.equal(out[r, p:20 + n_same], alone[0, :20 - p + n_same])


def test_long_prompt_is_cropped_with_a_warning(pair):
    ours, _ = pair
    idx = torch.randint(0, VOCAB, (1, BLOCK + 25), generator=torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match="only its last 64 tokens"):
        out = generate(ours, idx, 12, greedy=True)
    assert out.shape == (1, BLOCK + 25 + 12) and torch.equal(out[:, :BLOCK + 25], idx)
    assert torch.equal(out[:, -12:], generate(ours, idx[:, -BLOCK:], 12, greedy=True)[:, -12:])


# ----------------------------------------------------------------------------------------------------
# Stop strings, streaming, padded vocabularies


def test_stop_strings(pair):
    ours, _ = pair
    tok = Chars()
    idx = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(9))
    free = generate(ours, idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(1))
    texts = [tok.decode(free[r, 5:].tolist()) for r in range(2)]
    stop = texts[0][10:12]  # a 2-character string that row 0 produces
    out = generate(ours, idx, 40, temperature=1.0, generator=torch.Generator().manual_seed(1),
                   stop_strings=[stop, "never-produced"], tokenizer=tok, pad_token_id=5)
    # each row is its free-running sample up to (and including) the token that completes the stop string,
    # then padding; the batch ends when the last row stops (one character per token with this tokenizer)
    ends = [text.index(stop) + len(stop) if stop in text else 40 for text in texts]
    assert ends[0] != ends[1]  # one row runs on after the other has stopped
    expected = free[:, :5 + max(ends)].clone()
    for r, end in enumerate(ends):
        expected[r, 5 + end:] = 5
    assert torch.equal(out, expected)
    with pytest.raises(NanoGPT2Error, match="tokenizer"):
        generate(ours, idx, 5, stop_strings=["x"])


def test_stop_strings_across_and_inside_tokens():
    from nanogpt2.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    ids = tok.encode("Hello.\n\nWorld 世界")  # ".\n\n" is one token; 世/界 span several byte tokens
    def first_hit(stop):
        s = StopStrings([stop], tok, 1)
        for i, t in enumerate(ids):
            if s.update([t], [True]):
                return i
        return None
    assert first_hit("\n") == next(i for i, t in enumerate(ids) if "\n" in tok.decode([t]))
    assert first_hit("世界") == len(ids) - 1
    assert first_hit("World") is not None and first_hit("xyz") is None


def test_streaming_prints_the_same_text():
    from nanogpt2.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    text = "Streaming: naïve café, 世界 and 🙂!"
    ids = tok.encode(text) + [tok.eot_token, tok.eot_token]
    buf = io.StringIO()
    st = TextStreamer(tok, file=buf)
    for t in ids:
        st(torch.tensor([t]))
        assert "\ufffd" not in buf.getvalue()  # never a half-printed character
    st.end()
    assert buf.getvalue() == text + "<|endoftext|>\n"  # printing stops after the first end-of-text


def test_stream_callback_and_padded_vocab(pair):
    ours, _ = pair
    tok = Chars()
    tok_small = type("Small", (Chars,), {"n_vocab": 40})()
    idx = torch.randint(0, 40, (2, 3), generator=torch.Generator().manual_seed(0))
    seen = []
    out = generate(ours, idx, 25, temperature=1.5, generator=torch.Generator().manual_seed(0), tokenizer=tok_small,
                   stream=lambda t: seen.append(t.clone()))
    assert len(seen) == 25 and torch.equal(torch.stack(seen, 1), out[:, 3:])
    assert int(out[:, 3:].max()) < 40  # ids past the tokenizer's vocabulary are never drawn
    free = generate(ours, idx, 25, temperature=1.5, generator=torch.Generator().manual_seed(0), tokenizer=tok)
    assert int(free[:, 3:].max()) >= 40  # (without the limit they are)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_empty_prompt_starts_from_eos(pair):
    ours, _ = pair
    out = generate(ours, torch.zeros(2, 0, dtype=torch.long), 8, greedy=True, eos_token_id=7, pad_token_id=0)
    assert out[:, 0].tolist() == [7, 7]
    assert torch.equal(out, generate(ours, torch.tensor([[7], [7]]), 8, greedy=True, eos_token_id=7, pad_token_id=0))
    with pytest.raises(NanoGPT2Error, match="empty"):
        generate(ours, torch.zeros(1, 0, dtype=torch.long), 8)


@pytest.mark.parametrize("kw, match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-3), "top_k"), (dict(repetition_penalty=0.0), "repetition_penalty"),
])
def test_bad_sampling_settings(pair, kw, match):
    ours, _ = pair
    with pytest.raises(NanoGPT2Error, match=match):
        generate(ours, torch.tensor([[1, 2]]), 3, **kw)


def test_bad_prompts_and_masks(pair):
    ours, _ = pair
    with pytest.raises(NanoGPT2Error, match="LEFT padding"):
        generate(ours, torch.tensor([[1, 2, 3]]), 3, attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(NanoGPT2Error, match="shape"):
        generate(ours, torch.tensor([[1, 2, 3]]), 3, attention_mask=torch.tensor([[1, 1]]))
    with pytest.raises(NanoGPT2Error, match="no tokens"):
        generate(ours, torch.tensor([[1, 2]]), 3, attention_mask=torch.tensor([[0, 0]]))
    with pytest.raises(NanoGPT2Error, match="outside"):
        generate(ours, torch.tensor([[1, VOCAB]]), 3)
    with pytest.raises(NanoGPT2Error, match="max_new_tokens"):
        generate(ours, torch.tensor([[1, 2]]), -1)
    assert torch.equal(generate(ours, torch.tensor([[1, 2]]), 0), torch.tensor([[1, 2]]))
    assert generate(ours, torch.tensor([4, 5]), 3, greedy=True).shape == (1, 5)  # 1-D prompt -> one row
    # temperature 0 means greedy
    assert torch.equal(generate(ours, torch.tensor([[4, 5]]), 9, temperature=0.0),
                       generate(ours, torch.tensor([[4, 5]]), 9, greedy=True))


# ----------------------------------------------------------------------------------------------------
# Benchmark (runs and agrees; no timing assertions)


def test_benchmark_decode_runs(pair):
    ours, _ = pair
    res = benchmark_decode(ours, batch_sizes=(1, 2), prompt_len=4, new_tokens=6, repeats=1)
    assert [r["batch"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["same_tokens"] and r["same_tokens_no_cache"]
        assert r["cache_tok_s"] > 0 and r["hf_tok_s"] > 0 and r["no_cache_tok_s"] > 0


def test_asks_only_for_last_logits_when_the_model_can(pair):
    """A model whose forward takes `logits_to_keep` gets logits_to_keep=1 on every prefill; same output."""
    ours, _ = pair
    calls = []

    class LastOnly(GPT):
        def forward(self, idx, targets=None, attention_mask=None, position_ids=None, kv_cache=None, logits_to_keep=0):
            calls.append((idx.shape[1], logits_to_keep))
            logits, loss = super().forward(idx, targets, attention_mask, position_ids, kv_cache)
            return (logits[:, -logits_to_keep:] if logits_to_keep else logits), loss

    m = LastOnly(ours.config)
    m.load_state_dict(ours.state_dict())
    m.eval()
    idx, mask = left_padded()
    for kw in (dict(), dict(use_cache=False)):
        calls.clear()
        assert torch.equal(generate(m, idx, 12, greedy=True, attention_mask=mask, **kw),
                           generate(ours, idx, 12, greedy=True, attention_mask=mask, **kw))
        assert calls[0] == (9, 1)  # the prompt: one row of logits asked for


# ----------------------------------------------------------------------------------------------------
# The fixed-shape cache for compiled decoding


@pytest.mark.parametrize("padded", [False, True])
def test_static_cache_gives_the_same_tokens(pair, padded):
    """StaticKVCache decoding (all slots attended, masked) equals the growing cache: greedy, sampled with a
    seed, and past block_size (crops and re-prefills)."""
    ours, _ = pair
    idx, mask = left_padded() if padded else (torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5)), None)
    for kw in (dict(greedy=True), dict(temperature=0.9, top_k=30, top_p=0.95), dict(greedy=True, crop_keep=20)):
        n = BLOCK + 25 if "crop_keep" in kw else 30
        a = generate(ours, idx, n, attention_mask=mask, generator=torch.Generator().manual_seed(11), **kw)
        b = generate(ours, idx, n, attention_mask=mask, generator=torch.Generator().manual_seed(11), static_cache=True, **kw)
        assert torch.equal(a, b), kw


def test_compiled_decoding_compiles_the_step_once():
    """With the static cache a compiled model builds one graph for the prefill and one for the one-token
    step, however many tokens follow; the growing cache would need a graph per length (or dynamic shapes).
    A counting backend (no code generation) makes this a check of graphs, not of speed."""
    import torch._dynamo

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50)).eval()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend, dynamic=False)
    idx = torch.randint(0, 50, (1, 6))
    eager = generate(model, idx, 12, greedy=True)
    assert torch.equal(generate(compiled, idx, 12, greedy=True), eager)  # static cache: the default when compiled
    first = len(graphs)
    assert first <= 2  # the prefill and the step
    assert torch.equal(generate(compiled, idx, 30, greedy=True), generate(model, idx, 30, greedy=True))
    assert len(graphs) == first  # 18 more positions, no new graph
    torch._dynamo.reset()


def test_compiled_model_reuses_its_static_cache(monkeypatch):
    """A compiled model's next request of the same batch size and slot count writes into the same storage
    (what CUDA graphs recorded on those addresses need), zeroed first: tokens equal eager decoding even
    after a longer request filled more slots. Other shapes get caches of their own, up to KEEP_STATIC_CACHES,
    least recently used dropped first. Reuse is for GPUs (graphs); here the CPU is let in to test it."""
    import torch._dynamo

    from nanogpt2 import generate as generate_module

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=256, vocab_size=50)).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=lambda gm, example_inputs: gm.forward, dynamic=False)
    rng = torch.Generator().manual_seed(3)
    long_prompt, short_prompt = torch.randint(0, 50, (1, 20), generator=rng), torch.randint(0, 50, (1, 5), generator=rng)

    generate(compiled, short_prompt, 4, greedy=True)
    assert compiled not in generate_module._STATIC_CACHES  # on a CPU nothing is kept by default

    monkeypatch.setattr(generate_module, "REUSE_STATIC_CACHES_ON", ("cuda", "cpu"))
    monkeypatch.setattr(generate_module, "KEEP_STATIC_CACHES", 2)
    assert torch.equal(generate(compiled, long_prompt, 40, greedy=True), generate(model, long_prompt, 40, greedy=True))
    (key, cache), = generate_module._STATIC_CACHES[compiled].items()
    assert key[:2] == (1, 64) and cache.k[0].shape == (1, 2, 64, 16)
    assert getattr(cache.k[0], "_dynamo_static_input_type", None) == "unguarded"  # a static address for CUDA graphs
    address = cache.k[0].data_ptr()
    assert torch.equal(generate(compiled, short_prompt, 10, greedy=True), generate(model, short_prompt, 10, greedy=True))
    assert generate_module._STATIC_CACHES[compiled][key] is cache and cache.k[0].data_ptr() == address

    assert torch.equal(generate(compiled, short_prompt, 100, greedy=True), generate(model, short_prompt, 100, greedy=True))
    assert list(generate_module._STATIC_CACHES[compiled]) == [key, (1, 128) + key[2:]]  # 105 tokens: 128 slots, kept beside
    generate(compiled, short_prompt, 10, greedy=True)  # 64 slots again: the same cache, now the most recently used
    assert generate_module._STATIC_CACHES[compiled][key] is cache
    pair_of_prompts = torch.cat([short_prompt, long_prompt[:, :5]])
    assert torch.equal(generate(compiled, pair_of_prompts, 10, greedy=True), generate(model, pair_of_prompts, 10, greedy=True))
    assert list(generate_module._STATIC_CACHES[compiled]) == [key, (2,) + key[1:]]  # the 128-slot one was dropped
    assert model not in generate_module._STATIC_CACHES  # an eager model keeps nothing
    generate_module.release_static_caches(compiled)
    assert compiled not in generate_module._STATIC_CACHES
    torch._dynamo.reset()


def test_static_cache_follows_autocast():
    """Under autocast the keys are in the autocast dtype, and so is the preallocated static cache."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, idx, 8, greedy=True, static_cache=True)
    assert out.shape == (2, 14)
    cache = model.new_kv_cache(max_len=64, static=True, batch_size=2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(idx, kv_cache=cache, cache_position=torch.arange(6))
    assert cache.k[1].dtype == torch.bfloat16 and cache.k[1][:, :, :6].abs().sum() > 0
    with torch.no_grad(), pytest.raises(ValueError, match="autocast"):
        model(idx[:, :1], kv_cache=cache, cache_position=torch.tensor([6]))  # fp32 keys into a bf16 cache
