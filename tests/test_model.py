"""
The model and its HF conversion, checked against transformers itself.

Tiny random GPT-2s are built and written to disk by `transformers` (safetensors, .bin, sharded); we load
them with `GPT.from_pretrained` (no transformers inside) and compare logits and loss in fp32.

Run: python -m pytest -q tests/test_model.py
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, oracle
from http_fixture import serve, unused_url
from nanogpt2.convert import load_pretrained, save_pretrained
from nanogpt2.hf_checkpoint import config_from_hf, load_hf_state_dict_into, read_hf_state_dict
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.model import ACTIVATIONS, GPT, GPTConfig

transformers = oracle("transformers")

# ----------------------------------------------------------------------------------------------------
# helpers

HF_CONFIGS = {
    "plain": dict(vocab_size=101, n_positions=40, n_embd=32, n_layer=2, n_head=4),
    "n_inner_gelu_inv_layer": dict(vocab_size=97, n_positions=24, n_embd=24, n_layer=3, n_head=3, n_inner=40,
                                   activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                                   layer_norm_epsilon=1e-6),
    "unscaled_untied": dict(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                            scale_attn_weights=False, tie_word_embeddings=False, activation_function="relu"),
}


# Weights grown from GPT-2's init scale. At N(0, 0.02) a tiny model's attention is almost uniform, the MLP
# works in the activation's near-linear range and the logits stay below 0.4, so ignoring
# scale_attn_by_inverse_layer_idx, or using gelu for gelu_new, moved the logits by less than the 1e-5
# tolerance: the parity test could not have failed. With these factors attention is peaked, the
# activations see inputs of order 1 and logits reach about 3; test_parity_detects_each_math_field checks
# that every field that changes the math now moves the logits by far more than the tolerance.
SHARPEN = {"attn.c_attn.weight": 8.0, "mlp.c_fc.weight": 8.0, "mlp.c_proj.weight": 4.0, "wte.weight": 6.0,
           "lm_head.weight": 6.0}


def make_hf(tmp_path, name, fmt="safetensors", seed=0, **extra):
    """A random transformers GPT2LMHeadModel saved to tmp_path in `fmt`; returns (hf_model, folder).
    `extra`: more GPT2Config fields (or overrides of HF_CONFIGS[name])."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **{**HF_CONFIGS[name], **extra})
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("bias") or ".ln_" in n:  # non-trivial LayerNorm and bias values: a swapped tensor cannot pass
                p.add_(torch.randn_like(p) * 0.1)
            for suffix, factor in SHARPEN.items():
                if n.endswith(suffix):  # (a tied head is listed once, as wte)
                    p.mul_(factor)
    folder = tmp_path / f"{name}-{fmt}"
    if fmt == "safetensors":
        hf.save_pretrained(folder)
    elif fmt == "sharded":
        hf.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").exists()
    elif fmt == "bin":  # the legacy format: a pickled state dict written by torch.save
        folder.mkdir()
        hf.config.save_pretrained(folder)
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    elif fmt == "bin_legacy":  # as in the original openai-community/gpt2 upload: GPT2Model names without
        folder.mkdir()  # "transformer.", no lm_head when tied, and the causal-mask buffers old versions saved
        hf.config.save_pretrained(folder)
        n_pos = hf.config.n_positions
        state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()
                 if not (k == "lm_head.weight" and hf.config.tie_word_embeddings)}
        for i in range(hf.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, folder / "pytorch_model.bin")
    elif fmt == "bin_sharded":  # pytorch_model-0000k-of-00002.bin listed in pytorch_model.bin.index.json
        folder.mkdir()
        hf.config.save_pretrained(folder)
        state = hf.state_dict()
        names = sorted(state)
        weight_map = {}
        for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
            shard = f"pytorch_model-{k:05d}-of-00002.bin"
            torch.save({n: state[n] for n in part}, folder / shard)
            weight_map.update({n: shard for n in part})
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": weight_map}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        raise ValueError(fmt)
    return hf, folder


def padded_batch(vocab, T, pad_side):
    """Two rows, the second with 5 padding positions on `pad_side`; returns idx, mask, position_ids."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    if pad_side == "right":
        mask[1, -5:] = 0
    elif pad_side == "left":
        mask[1, :5] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return idx, mask, position_ids


# ----------------------------------------------------------------------------------------------------
# parity with transformers


@pytest.mark.parametrize("name", list(HF_CONFIGS))
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded", "bin_legacy", "bin_sharded"])
def test_logits_and_loss_match_transformers(tmp_path, name, fmt):
    hf, folder = make_hf(tmp_path, name, fmt)
    model = GPT.from_pretrained(folder).eval()
    V, T = hf.config.vocab_size, 16
    for impl in ("sdpa", "reference"):
        model.set_attn_impl(impl)
        for pad_side in (None, "right", "left"):
            idx, mask, pos = padded_batch(V, T, pad_side)
            # next-token targets aligned with the logits (ours), no loss from or onto padding positions
            targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
            targets = targets.masked_fill((mask == 0) | (mask.roll(-1, dims=1) == 0), -100)
            labels = torch.cat([torch.full((2, 1), -100), targets[:, :-1]], dim=1)  # HF shifts internally
            kw = {} if pad_side is None else dict(attention_mask=mask, position_ids=pos)
            with torch.no_grad():
                ref = hf(idx, labels=labels, **kw)
                logits, loss = model(idx, targets, **kw)
            real = mask.bool()  # logits at padding positions are meaningless in both
            diff = (logits - ref.logits)[real].abs().max().item()
            assert diff <= 1e-5, (impl, pad_side, diff)
            assert abs(loss.item() - ref.loss.item()) <= 1e-6, (impl, pad_side, loss.item(), ref.loss.item())
            assert ref.logits.abs().max().item() > 1.0  # logits large enough for 1e-5 to mean something


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_accepted_activation_matches_transformers(tmp_path, activation):
    """Every activation_function we accept is the one transformers runs under that name."""
    assert activation in transformers.activations.ACT2FN
    hf, folder = make_hf(tmp_path, "plain", activation_function=activation)
    model = GPT.from_pretrained(folder).eval()
    idx = torch.randint(0, hf.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-5


def test_compiled_gelu_form_is_the_same_function():
    """Under torch.compile gelu_tanh is written x * sigmoid(2z) (faster fused code) instead of PyTorch's
    tanh kernel: values and gradients equal transformers' gelu_new and the eager kernel. Dynamo with the eager
    backend traces the compiled branch without generating code, so this runs in a second."""
    import torch._dynamo

    from nanogpt2.model import gelu_tanh

    x = (torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 4).requires_grad_()
    torch._dynamo.reset()
    traced = torch.compile(gelu_tanh, backend="eager", fullgraph=True)
    y_compiled = traced(x)
    (g_compiled,) = torch.autograd.grad(y_compiled.sum(), x)
    y_eager = gelu_tanh(x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    reference = transformers.activations.ACT2FN["gelu_new"](x.detach())
    assert (y_compiled - y_eager).abs().max().item() <= 2e-6 and (y_compiled - reference).abs().max().item() <= 2e-6
    assert (g_compiled - g_eager).abs().max().item() <= 1e-5
    assert (y_compiled - y_eager).abs().max().item() > 0  # it did take the other branch (rounding differs)
    torch._dynamo.reset()


def test_reorder_and_upcast_attn_is_the_same_math(tmp_path):
    """reorder_and_upcast_attn (accepted, not implemented) only changes mixed-precision rounding: in fp32 HF's
    eager path with it on gives our logits, with the inverse-layer scaling that it folds in too."""
    hf, folder = make_hf(tmp_path, "n_inner_gelu_inv_layer", reorder_and_upcast_attn=True, attn_implementation="eager")
    assert hf.config.reorder_and_upcast_attn and hf.config._attn_implementation == "eager"
    model = GPT.from_pretrained(folder).eval()
    idx, mask, pos = padded_batch(hf.config.vocab_size, 16, "left")
    for impl in ("sdpa", "reference"):
        model.set_attn_impl(impl)
        with torch.no_grad():
            diff = (model(idx, attention_mask=mask, position_ids=pos)[0]
                    - hf(idx, attention_mask=mask, position_ids=pos).logits)[mask.bool()].abs().max().item()
        assert diff <= 1e-5, (impl, diff)


@pytest.mark.parametrize("field,wrong", [
    ("scale_attn_weights", lambda c: not c.scale_attn_weights),
    ("scale_attn_by_inverse_layer_idx", lambda c: not c.scale_attn_by_inverse_layer_idx),
    ("layer_norm_epsilon", lambda c: 1e-5 if c.layer_norm_epsilon != 1e-5 else 1e-6),
    ("activation", lambda c: "gelu_new" if c.activation == "gelu" else "gelu"),
])
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_parity_detects_each_math_field(tmp_path, name, field, wrong):
    """The parity test can fail: a model that ignored any of these config.json fields would be off by far more
    than the 1e-5 tolerance on these weights (at GPT-2's raw init scale some were not)."""
    hf, folder = make_hf(tmp_path, name)
    config = config_from_hf(json.loads((folder / "config.json").read_text()))
    model = GPT(dataclasses.replace(config, **{field: wrong(config)})).eval()
    load_hf_state_dict_into(model, read_hf_state_dict(folder))
    idx = torch.randint(0, hf.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() > 1e-4


def test_sdpa_and_reference_agree_in_training_mode_without_dropout():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=50))
    idx = torch.randint(0, 50, (3, 64))
    a, _ = model(idx)
    model.set_attn_impl("reference")
    b, _ = model(idx)
    assert (a - b).abs().max().item() <= 1e-5


DROPOUT_PLACES = {
    "embeddings": lambda m: [m.transformer.drop],
    "attention": lambda m: [b.attn.attn_dropout for b in m.transformer.h],  # sdpa reads its p
    "residual": lambda m: [d for b in m.transformer.h for d in (b.attn.resid_dropout, b.mlp.dropout)],
}


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("place", list(DROPOUT_PLACES))
def test_dropout_at_each_place_in_training_mode_only(impl, place):
    """config.dropout reaches the embeddings, the attention probabilities and both residual branches (each
    checked alone: the other places are set to 0), in training mode only."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.3, attn_impl=impl)
    model = GPT(config)
    mods = [mod for mod in model.modules() if isinstance(mod, torch.nn.Dropout)]
    assert len(mods) == 1 + 3 * config.n_layer and all(mod.p == 0.3 for mod in mods)
    keep = {id(mod) for mod in DROPOUT_PLACES[place](model)}
    for mod in mods:
        if id(mod) not in keep:
            mod.p = 0.0
    plain = GPT(dataclasses.replace(config, dropout=0.0))
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.train()
        a, b = model(idx)[0], model(idx)[0]
        assert (a - b).abs().max().item() > 1e-3  # random masks: two training passes differ
        model.eval()
        assert torch.equal(model(idx)[0], model(idx)[0])
        assert (model(idx)[0] - plain.eval()(idx)[0]).abs().max().item() <= 1e-6  # eval: no dropout at all


def test_openai_tiny_fixture_logits():
    folder = FIXTURES / "openai-gpt2-tiny-hf"
    model = GPT.from_pretrained(folder).eval()
    ids = torch.from_numpy(np.load(folder / "input_ids.npy")).long()
    ref = np.load(folder / "logits.npy")
    for impl in ("sdpa", "reference"):
        model.set_attn_impl(impl)
        with torch.no_grad():
            logits, _ = model(ids)
        assert np.abs(logits.numpy() - ref).max() <= 1e-5


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=70)).eval()
    folder = save_pretrained(model, tmp_path / "export")
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, 70, (2, 20))
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-5
    again = GPT.from_pretrained(folder)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


# ----------------------------------------------------------------------------------------------------
# causality and the KV cache


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_causality(impl):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50, attn_impl=impl)).eval()
    idx = torch.randint(0, 50, (1, 32))
    with torch.no_grad():
        base, _ = model(idx)
        for t in (0, 7, 31):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 1) % 50
            logits, _ = model(changed)
            assert torch.allclose(logits[:, :t], base[:, :t], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, t], base[:, t])  # and position t itself does change



class _PrefixCache:
    """Stands in for a learned prefix: P extra keys and values in front of every layer's own (no mask given)."""

    def __init__(self, k, v):
        self.k, self.v = k, v  # (B, nh, P, hs)

    def update(self, layer, k, v):
        return torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, nh, P + T, hs)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_extra_keys_keep_attention_causal(impl):
    """Keys outnumbering queries with no mask (a prefix): every real token sees all P prefix keys and the real
    tokens up to itself, never a later one; equal to attention with the explicit bottom-right mask."""
    from nanogpt2.model import CausalSelfAttention

    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, attn_impl=impl)
    attn = CausalSelfAttention(cfg, 0).eval()
    B, T, P, nh, hs = 2, 5, 3, 2, 8
    prefix = _PrefixCache(torch.randn(B, nh, P, hs), torch.randn(B, nh, P, hs))
    x = torch.randn(B, T, 16)
    with torch.no_grad():
        y = attn(x, kv_cache=prefix)  # (B, T, C)
        q, k, v = attn.c_attn(x).split(16, dim=2)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        k, v = torch.cat([prefix.k, k], 2), torch.cat([prefix.v, v], 2)  # (B, nh, P + T, hs)
        allowed = torch.arange(P + T)[None, :] <= torch.arange(P, P + T)[:, None]  # (T, P + T)
        att = (q @ k.transpose(-2, -1) / hs**0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
        expected = attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, 16))
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
        later = x.clone()
        later[:, -1] += 1.0  # the last real token changes: no earlier token may see it
        assert torch.equal(attn(later, kv_cache=prefix)[:, :-1], y[:, :-1])


def test_body_returns_final_hidden_states_under_the_head():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        hidden = model.body(idx)
        logits, _ = model(idx)
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(10))
        for block in model.transformer.h:
            x = block(x)
        by_hand = model.transformer.ln_f(x)  # (B, T, C)
    assert hidden.shape == (2, 10, 32)
    torch.testing.assert_close(hidden, by_hand, rtol=0, atol=1e-6)
    assert torch.equal(model.lm_head(hidden), logits)

@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_kv_cache_decode_equals_full_forward(impl):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=40, vocab_size=50, attn_impl=impl)).eval()
    idx = torch.randint(0, 50, (2, 30))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache()
        pieces = [model(idx[:, :12], kv_cache=cache)[0]]  # prefill
        pieces.append(model(idx[:, 12:17], kv_cache=cache)[0])  # a chunk on top of a cache
        for t in range(17, 30):  # then one token at a time
            pieces.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
    assert cache.length == 30
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5


def test_logits_to_keep_gives_the_last_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        last3, _ = model(idx, logits_to_keep=3)
    assert last3.shape == (2, 3, 50)
    torch.testing.assert_close(last3, full[:, -3:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="logits_to_keep and targets"):
        model(idx, targets=idx, logits_to_keep=1)


def test_generate_takes_positional_options():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (1, 4))
    a = model.generate(idx, 6, 0.8, 5, 0.9, False, None, None, torch.Generator().manual_seed(3))
    b = model.generate(idx, 6, temperature=0.8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, 10) and torch.equal(a, b)


def test_static_cache_forward_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=40, vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(static=True)
        pieces = [model(idx[:, :8], kv_cache=cache, cache_position=torch.arange(8))[0]]
        for t in range(8, 20):
            pieces.append(model(idx[:, t:t + 1], kv_cache=cache, cache_position=torch.tensor([t]))[0])
    assert cache.k[0].shape == (2, 2, 40, 16)  # fixed: max_len slots whatever has been written
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="cache_position"):
        model(idx[:, :1], kv_cache=cache)


def test_kv_cache_with_left_padding_matches_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=40, vocab_size=50)).eval()
    idx, mask, pos = padded_batch(50, 20, "left")
    with torch.no_grad():
        full, _ = model(idx, attention_mask=mask, position_ids=pos)
        cache = model.new_kv_cache()
        a, _ = model(idx[:, :15], attention_mask=mask[:, :15], position_ids=pos[:, :15], kv_cache=cache)
        rest = [model(idx[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1], kv_cache=cache)[0]
                for t in range(15, 20)]
    got = torch.cat([a] + rest, dim=1)
    assert (got - full)[mask.bool()].abs().max().item() <= 1e-5


def test_too_long_input_is_a_clear_error():
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    with pytest.raises(ValueError, match="block_size is 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------
# presets, counts, init


@pytest.mark.parametrize("name,count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200), ("distilgpt2", 81_912_576),
])
def test_preset_parameter_counts(name, count):
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset(name))
    counts = model.param_counts()
    assert counts["total"] == count
    assert counts["trainable"] == count
    assert counts["embeddings"] == 50257 * model.config.n_embd + 1024 * model.config.n_embd


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=1000))
    std_proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / (2 * 8) ** 0.5) < 0.001
    assert model.lm_head.weight is model.transformer.wte.weight


# ----------------------------------------------------------------------------------------------------
# refusing what we cannot load correctly


def test_refuses_unsupported_config_fields(tmp_path):
    _, folder = make_hf(tmp_path, "plain")
    cfg = json.loads((folder / "config.json").read_text())
    for key, value, needle in [("add_cross_attention", True, "add_cross_attention"),
                               ("activation_function", "mish", "activation_function"),
                               ("activation_function", "gelu_accurate", "activation_function"),
                               ("model_type", "gpt_neo", "model_type"),
                               ("pruned_heads", {"0": [1]}, "pruned_heads"),
                               ("n_head", 5, "n_head"),  # 32 wide: not divisible
                               ("n_layer", "2", "n_layer"),
                               ("layer_norm_epsilon", -1.0, "layer_norm_epsilon"),
                               ("scale_attn_weights", "yes", "scale_attn_weights")]:
        bad = dict(cfg, **{key: value})
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(NanoGPT2Error, match=needle):
            GPT.from_pretrained(folder)


def test_missing_unexpected_and_misshaped_tensors(tmp_path):
    from nanogpt2.safetensors_io import load_file, save_file

    _, folder = make_hf(tmp_path, "plain")
    state = load_file(folder / "model.safetensors")
    broken = dict(state)
    del broken["transformer.h.1.mlp.c_fc.weight"]
    save_file(broken, folder / "model.safetensors")
    with pytest.raises(NanoGPT2Error, match=r"missing tensors \['transformer.h.1.mlp.c_fc.weight'\]"):
        GPT.from_pretrained(folder)
    save_file(dict(state, **{"transformer.h.0.extra.weight": torch.zeros(2)}), folder / "model.safetensors")
    with pytest.raises(NanoGPT2Error, match="unexpected tensors"):
        GPT.from_pretrained(folder)
    save_file(dict(state, **{"transformer.ln_f.weight": torch.zeros(31)}), folder / "model.safetensors")
    with pytest.raises(NanoGPT2Error, match=r"transformer.ln_f.weight has shape \(31,\)"):
        GPT.from_pretrained(folder)


def test_missing_shard_is_a_clear_error(tmp_path):
    for fmt, index in [("sharded", "model.safetensors.index.json"), ("bin_sharded", "pytorch_model.bin.index.json")]:
        _, folder = make_hf(tmp_path, "plain", fmt)
        shard = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))[-1]
        (folder / shard).unlink()
        with pytest.raises(NanoGPT2Error, match=f"lists shard {shard}, which is missing"):
            GPT.from_pretrained(folder)
        (folder / index).write_text("{not json")
        with pytest.raises(NanoGPT2Error, match="not a valid shard index"):
            GPT.from_pretrained(folder)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(NanoGPT2Error, match="neither a folder nor a known model name"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanoGPT2Error, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(NanoGPT2Error, match="no weights"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(NanoGPT2Error, match="corrupt"):
        load_pretrained(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------------
# by name, through a loopback "Hub"


def test_from_pretrained_by_name_downloads_once(tmp_path, monkeypatch):
    folder = FIXTURES / "openai-gpt2-tiny-hf"
    files = {f"/openai-community/gpt2/resolve/main/{f}": (folder / f).read_bytes()
             for f in ("config.json", "model.safetensors")}
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve(files, sha_header="x-linked-etag") as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        model = GPT.from_pretrained("gpt2").eval()
        hits = sum(srv.hits.values())
        assert hits >= 2
        GPT.from_pretrained("gpt2")  # cached: no new request
        assert sum(srv.hits.values()) == hits
    ids = torch.from_numpy(np.load(folder / "input_ids.npy")).long()
    with torch.no_grad():
        assert np.abs(model(ids)[0].numpy() - np.load(folder / "logits.npy")).max() <= 1e-5
    assert (tmp_path / "cache" / "models" / "gpt2" / "model.safetensors").exists()


def test_from_pretrained_offline_names_the_local_folder_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", unused_url("").rstrip("/"))
    with pytest.raises(NanoGPT2Error, match=r"into a folder DIR and pass --init_from DIR") as e:
        GPT.from_pretrained("distilgpt2", quiet=True)
    assert "distilbert/distilgpt2" in str(e.value) and "from_pretrained(" not in str(e.value)


def test_offline_sample_py_names_the_command_line_fix(tmp_path):
    """The scripts' offline error is one line that says what to pass on their command line (--init_from DIR)."""
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "NANOGPT2_HF_ENDPOINT": unused_url("").rstrip("/")}
    res = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--init_from", "gpt2", "--device", "cpu"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not download model 'gpt2'"), res.stderr
    assert "pass --init_from DIR" in lines[0] and "from_pretrained" not in lines[0]
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_from_pretrained_404_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve({}) as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        with pytest.raises(NanoGPT2Error, match="model 'gpt2-medium'"):
            GPT.from_pretrained("gpt2-medium", quiet=True)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_body_takes_inputs_embeds_as_transformers_does(tmp_path):
    """body(None, inputs_embeds=E): E in place of the token embeddings, positions added as to tokens'; equal to
    transformers' inputs_embeds, and body(idx) is body(None, inputs_embeds=wte(idx))."""
    hf, folder = make_hf(tmp_path, "plain")
    ours = load_pretrained(str(folder)).eval()
    g = torch.Generator().manual_seed(3)
    embeds = torch.randn(2, 7, ours.config.n_embd, generator=g)  # (B, T, C) vectors no token has
    idx = torch.randint(0, ours.config.vocab_size, (2, 7), generator=g)
    with torch.no_grad():
        want = hf(inputs_embeds=embeds).logits
        got = ours.lm_head(ours.body(None, inputs_embeds=embeds))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(ours.body(None, inputs_embeds=ours.transformer.wte(idx)), ours.body(idx))
