"""
The model and its HF conversion, checked against transformers itself.

Tiny random GPT-2s are built and written to disk by `transformers` (safetensors, .bin, sharded); we load
them with `GPT.from_pretrained` (no transformers inside) and compare logits and loss in fp32.
"""

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from http_fixture import serve, unused_url
from nanogpt2.convert import load_pretrained, save_pretrained
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

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


def make_hf(tmp_path, name, fmt="safetensors", seed=0):
    """A random transformers GPT2LMHeadModel saved to tmp_path in `fmt`; returns (hf_model, folder)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **HF_CONFIGS[name])
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped tensor cannot pass
        for n, p in hf.named_parameters():
            if n.endswith("bias") or ".ln_" in n:
                p.add_(torch.randn_like(p) * 0.1)
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
@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
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


def test_sdpa_and_reference_agree_in_training_mode_without_dropout():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=50))
    idx = torch.randint(0, 50, (3, 64))
    a, _ = model(idx)
    model.set_attn_impl("reference")
    b, _ = model(idx)
    assert (a - b).abs().max().item() <= 1e-5


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
                               ("model_type", "gpt_neo", "model_type")]:
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
    with pytest.raises(NanoGPT2Error, match=r"GPT.from_pretrained\('/path/to/distilgpt2'\)"):
        GPT.from_pretrained("distilgpt2", quiet=True)


def test_from_pretrained_404_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve({}) as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        with pytest.raises(NanoGPT2Error, match="model 'gpt2-medium'"):
            GPT.from_pretrained("gpt2-medium", quiet=True)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
