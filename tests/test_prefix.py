"""
nanogpt2.peft, prefix tuning: against HF peft itself (a PrefixTuningConfig model built here from the tiny HF fixture,
computing its own logits), folders both ways, the zero-length prefix, KV-cache generation (dynamic and static caches,
left padding) against a loop of full forwards through peft, the reparameterised prefix and its collapse, trainable
counts, a prefix run through the trainer and its checkpoint, perplexity, bad inputs.

    python -m pytest -q tests/test_prefix.py
"""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, oracle
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.evaluate import evaluate_perplexity
from nanogpt2.generate import generate
from nanogpt2.loader import load_model, model_spec
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import PrefixGPT, apply_prefix, collapse_prefix, load_peft_adapter, save_peft_adapter, trainable_report
from nanogpt2.samplers import stride_windows
from test_trainer import cfg_for, tiny_trainer

transformers = oracle("transformers")
peft = oracle("peft")

HF_TINY = FIXTURES / "openai-gpt2-tiny-hf"  # 2 layers, 2 heads, n_embd 16, block 32, vocab 96
P = 3


def base(folder=HF_TINY):
    return GPT.from_pretrained(str(folder)).eval()


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """The fixture with weights N(0, 0.5): its greedy continuations vary (the fixture's own N(0, 0.02) ones settle on
    one token at once, so they would hide a wrong position or mask)."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    folder = tmp_path_factory.mktemp("sharp")
    hf.save_pretrained(str(folder))
    return folder


def peft_prefix(P=P, seed=0, folder=HF_TINY, **config):
    """peft's own prefix model of the fixture, its table (and MLP) random, in eval mode."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
    theirs = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return theirs.eval()


def ours_like(theirs, P=P, folder=HF_TINY):
    """Our prefixed fixture holding peft's table."""
    model = apply_prefix(base(folder), P)
    with torch.no_grad():
        model.prefix_encoder.embedding.weight.copy_(theirs.get_prompt_embedding_to_save("default"))
    return model


def token_ids(B=2, T=10, seed=1):
    return torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Logits against peft


@pytest.mark.parametrize("padded", [False, True])
def test_logits_equal_peft(padded):
    theirs = peft_prefix()
    ours = ours_like(theirs)
    x = token_ids()
    mask = None
    if padded:  # right padding: row 1 has 6 real tokens
        mask = torch.ones_like(x)
        mask[1, 6:] = 0
    with torch.no_grad():
        want = theirs(input_ids=x, attention_mask=mask).logits
        got = ours(x, attention_mask=mask)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - base()(x)[0]).abs().max() > 1e-2  # the prefix really changes the logits


def test_real_tokens_are_numbered_from_P_as_in_peft():
    """The convention, shown on peft's own model: its logits are the base model's given the prefix as past keys and
    positions P..P+T-1 (0..T-1 differ), and an explicit position_ids p means p + P in both."""
    from transformers import DynamicCache

    theirs = peft_prefix()
    hf, x = theirs.get_base_model(), token_ids(B=1)
    table = theirs.get_prompt_embedding_to_save("default")  # (P, 2LC)
    kv = table.view(P, 2, 2, 2, 8).permute(1, 2, 3, 0, 4)[:, :, None]  # (L, 2, 1, nh, P, hs)

    # transformers 5.x renames past_key_values to cache (the old name goes in 5.40)
    cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def with_positions(start):
        cache = DynamicCache([(kv[layer, 0], kv[layer, 1]) for layer in range(2)])
        return hf(input_ids=x, position_ids=torch.arange(start, start + 10)[None], **{cache_kw: cache}).logits

    with torch.no_grad():
        want = theirs(input_ids=x).logits
        torch.testing.assert_close(with_positions(P), want, atol=1e-6, rtol=0)
        assert (with_positions(0) - want).abs().max() > 1e-2
        shifted = torch.arange(2, 12)[None]
        ours = ours_like(theirs)
        torch.testing.assert_close(ours(x, position_ids=shifted)[0], theirs(input_ids=x, position_ids=shifted).logits,
                                   atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# peft folders both ways


def test_our_prefix_loads_in_peft_and_back(tmp_path):
    ours = ours_like(peft_prefix(seed=3))
    save_peft_adapter(ours, tmp_path / "prefix")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "prefix")).eval()
    x = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(input_ids=x).logits, atol=1e-5, rtol=1e-5)
        again = base()
        assert load_peft_adapter(again, tmp_path / "prefix") == ["prefix_encoder"]
        assert torch.equal(again(x)[0], ours(x)[0])


@pytest.mark.parametrize("projection", [False, True])
def test_peft_saved_prefix_loads_in_ours(tmp_path, projection):
    """peft's save_pretrained folder; with prefix_projection it holds the table its MLP computed (not the MLP), so
    it loads as a plain prefix, as peft itself reloads it."""
    config = dict(prefix_projection=True, encoder_hidden_size=8) if projection else {}
    theirs = peft_prefix(P=4, seed=5, **config)
    theirs.save_pretrained(str(tmp_path / "peft"))
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["prefix_projection"] is projection
    ours = base()
    load_peft_adapter(ours, tmp_path / "peft")
    assert ours.prefix_config == {"prefix_length": 4, "projection_hidden": None}
    x = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(input_ids=x).logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Zero length, reparameterisation, counts


def test_zero_length_prefix_is_the_base_model():
    model, ref, x = apply_prefix(base(), 0), base(), token_ids()
    assert model.context_length == ref.context_length == 32
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref(x)[0])
        assert torch.equal(model(x, attention_mask=mask)[0], ref(x, attention_mask=mask)[0])
    assert torch.equal(generate(model, x, 8, greedy=True), generate(ref, x, 8, greedy=True))


def test_reparameterised_prefix_collapses_to_the_same_logits(tmp_path):
    model = apply_prefix(base(), P, projection_hidden=8)
    assert model_spec(model)["prefix"] == {"prefix_length": P, "projection_hidden": 8}
    x = token_ids()
    with torch.no_grad():
        before = model(x)[0]
        table = model.prefix_encoder()  # (P, 2LC)
        assert table.shape == (P, 2 * 2 * 16)
        collapse_prefix(model)
        assert not hasattr(model.prefix_encoder, "transform")
        assert torch.equal(model.prefix_encoder.embedding.weight, table)
        torch.testing.assert_close(model(x)[0], before, atol=1e-6, rtol=0)
    spec = model_spec(model)
    assert spec["prefix"] == {"prefix_length": P, "projection_hidden": None}
    path = ckpt_io.save_checkpoint(tmp_path / "checkpoint_final.pt", {"model": model.state_dict(), "model_spec": spec,
                                                                     "model_config": spec["config"], "step": 0})
    rebuilt, _ = load_model(str(path))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model(x)[0])


@pytest.mark.parametrize("hidden", [None, 8])
def test_trainable_counts_equal_peft(hidden):
    config = dict(prefix_projection=True, encoder_hidden_size=hidden) if hidden else {}
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, **config))
    trainable, total = theirs.get_nb_trainable_parameters()
    model = apply_prefix(base(), 5, projection_hidden=hidden)
    assert trainable_report(model) == (f"trainable params: {trainable:,} || all params: {total:,} || "
                                       f"trainable%: {100 * trainable / total:.4f}")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.prefix_encoder.named_parameters(prefix="prefix_encoder")}


# ----------------------------------------------------------------------------------------------------
# Generation


def left_padded():
    """Two prompts, the second one 3 tokens shorter and left-padded: ids (2, 7), mask (2, 7)."""
    x = token_ids(T=7, seed=7)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    x[1, :3] = 0
    return x, mask


def peft_greedy_loop(theirs, x, mask, n):
    """Greedy decoding that re-runs peft's full forward every step, positions from the mask (cumsum - 1, as
    generate numbers them; peft adds P)."""
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad():
            tok = theirs(input_ids=x, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)  # (B,)
        x, mask = torch.cat([x, tok[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return x


@pytest.mark.parametrize("cache", ["dynamic", "static", "none"])
def test_cached_generation_equals_a_loop_of_full_forwards(cache, sharp):
    theirs = peft_prefix(seed=11, folder=sharp)
    ours = ours_like(theirs, folder=sharp)
    x, mask = left_padded()
    want = peft_greedy_loop(theirs, x, mask, 12)
    assert all(len(set(row[7:].tolist())) > 3 for row in want)  # continuations that tell a wrong prefix apart
    got = generate(ours, x, 12, greedy=True, attention_mask=mask, use_cache=cache != "none",
                   static_cache=cache == "static")
    assert torch.equal(got, want)


@pytest.mark.parametrize("static", [False, True])
def test_left_padded_rows_give_their_unpadded_results(static, sharp):
    ours = ours_like(peft_prefix(seed=13, folder=sharp), folder=sharp)
    x, mask = left_padded()
    batch = generate(ours, x, 10, greedy=True, attention_mask=mask, static_cache=static)
    assert all(len(set(row[7:].tolist())) > 3 for row in batch)
    for row, pad in ((0, 0), (1, 3)):
        alone = generate(ours, x[row:row + 1, pad:], 10, greedy=True, static_cache=static)  # (1, 7 - pad + 10)
        assert torch.equal(batch[row, pad:], alone[0])


@pytest.mark.parametrize("static", [False, True])
def test_generation_past_the_context_crops_within_it(static):
    """With a prefix of P the context is block_size - P real tokens; the cache crops there instead of failing."""
    ours = ours_like(peft_prefix())
    assert ours.context_length == 32 - P
    out = generate(ours, token_ids(B=1, T=20), 25, greedy=True, static_cache=static)
    assert out.shape == (1, 45)


def test_compiled_prefixed_decoding_compiles_the_step_once_and_reuses_its_cache(monkeypatch, sharp):
    """Compiled (a counting backend: graphs, no code generation), a prefixed model decodes into its static cache with
    one graph for the prefill and one for the step, as the plain model does; a kept cache, zeroed for the next
    request, holds only real tokens, so the prefix survives the reuse."""
    import torch._dynamo

    from nanogpt2 import generate as generate_module

    ours = ours_like(peft_prefix(seed=19, folder=sharp), folder=sharp)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(generate_module, "REUSE_STATIC_CACHES_ON", ("cuda", "cpu"))
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend=counting_backend, dynamic=False)
    x = token_ids(B=1, T=6, seed=23)
    assert torch.equal(generate(compiled, x, 8, greedy=True), generate(ours, x, 8, greedy=True))
    first = len(graphs)
    assert first <= 2
    assert torch.equal(generate(compiled, x, 20, greedy=True), generate(ours, x, 20, greedy=True))
    assert len(graphs) == first and len(generate_module._STATIC_CACHES[compiled]) == 1
    generate_module.release_static_caches(compiled)
    torch._dynamo.reset()


def test_prefix_follows_autocast():
    """Under autocast the prefix's keys/values take the keys' dtype (bf16), in the forward and in both caches."""
    ours, x = ours_like(peft_prefix()), token_ids()
    with torch.no_grad():
        want = ours(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours(x)[0]
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for static in (False, True):
            assert generate(ours, x, 5, greedy=True, static_cache=static).shape == (2, 15)


# ----------------------------------------------------------------------------------------------------
# Training, evaluation


def test_prefix_run_freezes_the_base_and_its_checkpoint_rebuilds(tmp_path, monkeypatch):
    """The tiny config's windows are 32 tokens: a model of block 36 with a prefix of 4 takes them."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    cfg = cfg_for(tmp_path, "--max_iters=3", "--checkpoint_interval=0", "--eval_interval=0", "--vocab_size=65",
                  "--learning_rate=1e-2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=36, vocab_size=65, n_layer=2, n_head=2, n_embd=32))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_prefix(model, 4, projection_hidden=16)
    table = model.prefix_encoder().detach().clone()
    tiny_trainer(cfg, model=model).train()
    for n, p in model.named_parameters():
        if n.startswith("prefix_encoder."):
            assert p.requires_grad
        else:
            assert torch.equal(p, frozen[n]), f"{n} changed"  # every frozen tensor bit-identical to the base
    assert (model.prefix_encoder() - table).abs().max() > 0  # the prefix trained
    rebuilt, info = load_model(str(tmp_path / "run" / "checkpoint_final.pt"))
    assert isinstance(rebuilt, PrefixGPT) and info["spec"]["prefix"] == {"prefix_length": 4, "projection_hidden": 16}
    x = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model.eval()(x)[0])


def test_perplexity_of_a_prefixed_model_is_peft_s():
    theirs = peft_prefix(seed=17)
    ours = ours_like(theirs)
    ids = torch.randint(0, 96, (70,), generator=torch.Generator().manual_seed(2))
    res = evaluate_perplexity(ours, ids, stride=16)
    assert res["block_size"] == 32 - P  # the default window is the context left beside the prefix
    nll, n = 0.0, 0
    for begin, end, first in stride_windows(70, 32 - P, 16):
        with torch.no_grad():
            logits = theirs(input_ids=ids[None, begin:end]).logits[0]  # (W, V)
        nll += F.cross_entropy(logits[first - begin - 1:-1], ids[first:end], reduction="sum").item()
        n += end - first
    assert res["tokens"] == n
    assert res["loss"] == pytest.approx(nll / n, abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_are_clear_errors(tmp_path):
    for bad in (-1, 1.5, True):
        with pytest.raises(NanoGPT2Error, match="prefix_length must be an integer >= 0"):
            apply_prefix(base(), bad)
    with pytest.raises(NanoGPT2Error, match="leaves no room for real tokens"):
        apply_prefix(base(), 32)
    with pytest.raises(NanoGPT2Error, match="projection_hidden must be an integer >= 1"):
        apply_prefix(base(), 2, projection_hidden=0)
    with pytest.raises(NanoGPT2Error, match="already has a prefix"):
        apply_prefix(apply_prefix(base(), 2), 2)
    with pytest.raises(NanoGPT2Error, match=r"reads at most block_size - 3 = 29.*windows of at most 29"):
        apply_prefix(base(), P)(torch.zeros(1, 30, dtype=torch.long))
    peft_prefix().save_pretrained(str(tmp_path / "peft"))
    other = GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32))  # another width
    with pytest.raises(NanoGPT2Error, match=r"token_dim=16, this model needs 32\); was it made for another base"):
        load_peft_adapter(other, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 5}))
    with pytest.raises(NanoGPT2Error, match=r"expected one tensor prompt_embeddings of shape \(5, 64\)"):
        load_peft_adapter(base(), tmp_path / "peft")
    with pytest.raises(NanoGPT2Error, match="no prefix to collapse"):
        collapse_prefix(base())
