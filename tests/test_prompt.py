"""
nanogpt2.peft, prompt tuning: against HF peft itself (a PromptTuningConfig model built here from the tiny HF fixture,
computing its own logits, losses and gradients): the real tokens' logits with and without padding, the gradient of
the prompt, folders both ways, the RANDOM and TEXT inits, trainable counts, the zero-length prompt, KV-cache generation
(dynamic, static, none; left padding) against a loop of peft's full forwards, the kept keys/values of inference,
the classifier, a prompt run through the trainer and its checkpoint, perplexity, bad inputs.

    python -m pytest -q tests/test_prompt.py
"""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, oracle
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.evaluate import evaluate_perplexity
from nanogpt2.generate import generate
from nanogpt2.loader import build_model, load_model, model_spec
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import (PromptGPT, PromptTuned, apply_lora, apply_prefix, apply_prompt, load_peft_adapter,
                           prompt_init_ids, save_peft_adapter, trainable_report)
from nanogpt2.samplers import stride_windows
from test_trainer import cfg_for, tiny_trainer

transformers = oracle("transformers")
peft = oracle("peft")
transformers.logging.set_verbosity_error()

HF_TINY = FIXTURES / "openai-gpt2-tiny-hf"  # 2 layers, 2 heads, n_embd 16, block 32, vocab 96
P = 3


def base(folder=HF_TINY):
    return GPT.from_pretrained(str(folder)).eval()


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """The fixture with weights N(0, 0.5): its greedy continuations vary (the fixture's own settle on one token)."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    folder = tmp_path_factory.mktemp("sharp")
    hf.save_pretrained(str(folder))
    return folder


def peft_prompt(P=P, seed=0, folder=HF_TINY, **config):
    """peft's own prompt-tuned model of the fixture, its embeddings random (seeded), in eval mode."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder))
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return theirs.eval()


def ours_like(theirs, P=P, folder=HF_TINY):
    """Our prompt-tuned fixture holding peft's embeddings."""
    model = apply_prompt(base(folder), P)
    with torch.no_grad():
        model.prompt_encoder.embedding.weight.copy_(theirs.get_prompt_embedding_to_save("default"))
    return model


def token_ids(B=2, T=10, seed=1):
    return torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Logits and gradients against peft


@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_real_token_logits_equal_peft(padding):
    """peft returns P + T logits (the virtual positions first); ours are the real tokens' T. peft numbers the
    positions 0..P+T-1 whatever the mask says, and so does our forward without position_ids."""
    theirs = peft_prompt()
    ours = ours_like(theirs)
    x = token_ids()
    mask = None
    if padding:
        mask = torch.ones_like(x)
        mask[1, 6:] = 0 if padding == "right" else 1
        mask[1, :3] = 0 if padding == "left" else 1
    with torch.no_grad():
        want = theirs(input_ids=x, attention_mask=mask).logits  # (B, P + T, V)
        got = ours(x, attention_mask=mask)[0]  # (B, T, V)
        assert want.shape[1] == P + got.shape[1]
        torch.testing.assert_close(got, want[:, P:], atol=1e-5, rtol=1e-5)
        assert (got - base()(x)[0]).abs().max() > 1e-2  # the prompt really changes the logits


def test_explicit_positions_are_shifted_by_P():
    """Explicit position_ids p mean P + p (as for a prefix, so that generate's left-padded positions work); peft
    ignores position_ids for prompt tuning (with a warning), so only 0..T-1, the default, can be compared."""
    theirs = peft_prompt()
    ours, x = ours_like(theirs), token_ids()
    with torch.no_grad():
        default = ours(x)[0]
        assert torch.equal(ours(x, position_ids=torch.arange(10)[None])[0], default)
        assert (ours(x, position_ids=torch.arange(2, 12)[None])[0] - default).abs().max() > 1e-3
        with pytest.warns(UserWarning, match="Position ids are not supported"):
            ignored = theirs(input_ids=x, position_ids=torch.arange(2, 12)[None]).logits[:, P:]
        torch.testing.assert_close(ignored, default, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_loss_and_prompt_gradient_equal_peft(padded, sharp):
    """The training signal: peft's loss (labels = input ids, the prompt's labels -100) and the gradient it gives its
    embeddings equal ours, right padding excluded from the loss and the attention. peft shifts the labels over the
    whole P + T sequence, so the last virtual position predicts labels[0]; ours are targets beside the inputs
    (nanoGPT's), each real token's logits scored on the next: label 0 is -100 here, for the same T - 1 terms."""
    theirs = peft_prompt(seed=4, folder=sharp)
    ours = ours_like(theirs, folder=sharp)
    x = token_ids(seed=5)
    mask = torch.ones_like(x)
    labels = x.clone()
    labels[:, 0] = -100
    if padded:
        mask[0, 7:], labels[0, 7:] = 0, -100
    out = theirs(input_ids=x, attention_mask=mask, labels=labels)
    out.loss.backward()
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)  # (B, T) the next token
    _, loss = ours(x, targets, attention_mask=mask)
    loss.backward()
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)
    want = theirs.prompt_encoder["default"].embedding.weight.grad
    torch.testing.assert_close(ours.prompt_encoder.embedding.weight.grad, want, atol=1e-5, rtol=1e-4)
    assert want.abs().max() > 1e-3
    assert all(p.grad is None for n, p in ours.named_parameters() if not n.startswith("prompt_encoder."))


def test_dropout_in_training_draws_for_each_row():
    """With dropout live in training the virtual tokens run at the batch's size (each row its own dropout, as in
    peft's concatenation); in eval mode the rows are identical."""
    torch.manual_seed(0)
    model = apply_prompt(GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=16, dropout=0.5)), 4)
    keys, _ = model.train().virtual_kv(3)
    assert keys[0].shape == (3, 2, 4, 8) and not torch.equal(keys[0][0], keys[0][1])
    with torch.no_grad():
        keys, _ = model.eval().virtual_kv(3)
    assert torch.equal(keys[0][0], keys[0][2])


# ----------------------------------------------------------------------------------------------------
# peft folders, inits, counts


def test_our_prompt_loads_in_peft_and_back(tmp_path):
    ours = ours_like(peft_prompt(seed=3))
    save_peft_adapter(ours, tmp_path / "prompt", "tests/fixtures/openai-gpt2-tiny-hf")
    config = json.loads((tmp_path / "prompt" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"], config["prompt_tuning_init"]) == ("PROMPT_TUNING", P, "RANDOM")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "prompt")).eval()
    x = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(input_ids=x).logits[:, P:], atol=1e-5, rtol=1e-5)
        again = base()
        assert load_peft_adapter(again, tmp_path / "prompt") == ["prompt_encoder"]
        assert isinstance(again, PromptGPT) and torch.equal(again(x)[0], ours(x)[0])


def test_peft_saved_prompt_loads_in_ours(tmp_path):
    theirs = peft_prompt(P=5, seed=5)
    theirs.save_pretrained(str(tmp_path / "peft"))
    ours = base()
    load_peft_adapter(ours, tmp_path / "peft")
    assert ours.prompt_config == {"prompt_length": 5} and ours.context_length == 32 - 5
    x = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(input_ids=x).logits[:, 5:], atol=1e-5, rtol=1e-5)


def word_tokenizer(folder):
    """A transformers tokenizer of the fixture's vocabulary (ids 0..95 for the words w0..w95), saved to `folder`:
    what peft's TEXT init loads by name."""
    tokenizers = oracle("tokenizers")
    vocab = {f"w{i}": i for i in range(96)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("text, P", [("w5 w17 w3", 7), ("w5 w17 w3 w40 w41 w42 w43 w44", 4)])
def test_text_init_equals_peft_s(tmp_path, text, P):
    """peft's prompt_tuning_init=TEXT: the text's embeddings, repeated to fill P (7 from 3 tokens) or cut (4 of 8)."""
    folder = word_tokenizer(tmp_path / "tok")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(folder)))
    ids = transformers.AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]
    ours = apply_prompt(base(), P, init_ids=ids)
    assert torch.equal(ours.prompt_encoder.embedding.weight, theirs.prompt_encoder["default"].embedding.weight)
    assert prompt_init_ids([5, 17, 3], 7) == [5, 17, 3, 5, 17, 3, 5]


@pytest.mark.parametrize("classifier", [False, True])
def test_trainable_counts_equal_peft(classifier, tmp_path):
    """peft counts the classifier's head (modules_to_save) as trainable: finetune.py trains it too. peft's total
    holds the head twice (the frozen original beside its trainable copy)."""
    if classifier:
        from nanogpt2.heads import GPTForSequenceClassification

        hf = hf_classifier(tmp_path)
        theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=6))
        ours = apply_prompt(GPTForSequenceClassification.from_pretrained(str(tmp_path)), 6)
        ours.score.weight.requires_grad_(True)
    else:
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
        theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6))
        ours = apply_prompt(base(), 6)
    trainable, total = theirs.get_nb_trainable_parameters()
    total -= ours.score.weight.numel() if classifier else 0
    assert trainable_report(ours) == (f"trainable params: {trainable:,} || all params: {total:,} || "
                                      f"trainable%: {100 * trainable / total:.4f}")


def test_zero_length_prompt_is_the_base_model():
    model, ref, x = apply_prompt(base(), 0), base(), token_ids()
    assert model.context_length == 32
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref(x)[0])
    assert torch.equal(generate(model, x, 8, greedy=True), generate(ref, x, 8, greedy=True))


# ----------------------------------------------------------------------------------------------------
# Generation


def peft_greedy_loop(theirs, x, n):
    """Greedy decoding that re-runs peft's full forward each step (no cache, no mask: unpadded rows)."""
    for _ in range(n):
        with torch.no_grad():
            tok = theirs(input_ids=x).logits[:, -1].argmax(-1)  # (B,)
        x = torch.cat([x, tok[:, None]], 1)
    return x


@pytest.mark.parametrize("cache", ["dynamic", "static", "none"])
def test_cached_generation_equals_a_loop_of_peft_s_full_forwards(cache, sharp):
    """peft's own generate fails with transformers 5.25 / peft 0.21.2 (an IndexError in the position table), so the
    reference is its forward, which is right."""
    theirs = peft_prompt(seed=11, folder=sharp)
    ours = ours_like(theirs, folder=sharp)
    x = token_ids(T=7, seed=7)
    want = peft_greedy_loop(theirs, x, 12)
    assert all(len(set(row[7:].tolist())) > 3 for row in want)  # continuations that tell a wrong prompt apart
    got = generate(ours, x, 12, greedy=True, use_cache=cache != "none", static_cache=cache == "static")
    assert torch.equal(got, want)


@pytest.mark.parametrize("static", [False, True])
def test_left_padded_rows_give_their_unpadded_results(static, sharp):
    ours = ours_like(peft_prompt(seed=14, folder=sharp), folder=sharp)
    x = token_ids(T=7, seed=7)
    mask = torch.ones_like(x)
    mask[1, :3], x[1, :3] = 0, 0
    batch = generate(ours, x, 10, greedy=True, attention_mask=mask, static_cache=static)
    assert all(len(set(row[7:].tolist())) > 3 for row in batch)
    for row, pad in ((0, 0), (1, 3)):
        alone = generate(ours, x[row:row + 1, pad:], 10, greedy=True, static_cache=static)  # (1, 7 - pad + 10)
        assert torch.equal(batch[row, pad:], alone[0])


@pytest.mark.parametrize("static", [False, True])
def test_generation_past_the_context_crops_within_it(static):
    ours = ours_like(peft_prompt())
    assert ours.context_length == 32 - P
    assert generate(ours, token_ids(B=1, T=20), 25, greedy=True, static_cache=static).shape == (1, 45)


def test_inference_keeps_the_prompt_s_keys_until_a_weight_changes():
    """Eval mode without grad reuses the virtual tokens' keys/values; changing the prompt, a frozen weight (in
    place or by load_state_dict) or autocast computes them again: the logits always equal a fresh model's."""
    ours, x = ours_like(peft_prompt(seed=2)), token_ids()
    with torch.no_grad():
        first = ours(x)[0]
        kept = ours.virtual_kv(2)[0][0]
        assert ours.virtual_kv(2)[0][0].data_ptr() == kept.data_ptr()  # reused, not recomputed
        ours.prompt_encoder.embedding.weight.mul_(0.5)
        ours.transformer.h[0].attn.c_attn.weight.add_(0.1)
        fresh = ours_like(peft_prompt(seed=2))
        fresh.load_state_dict(ours.state_dict())
        assert (ours(x)[0] - first).abs().max() > 1e-3
        assert torch.equal(ours(x)[0], fresh(x)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert ours.virtual_kv(2)[0][0].dtype == torch.bfloat16
        assert ours.virtual_kv(2)[0][0].dtype == torch.float32
    assert ours.virtual_kv(2)[0][0].requires_grad  # with grad: computed, never the kept tensors


def test_compiled_prompt_decoding_compiles_the_step_once(monkeypatch, sharp):
    """Compiled (a counting backend), a prompt-tuned model decodes into its static cache with one graph for the
    prefill and one for the step, the virtual tokens' keys/values computed inside them."""
    import torch._dynamo

    from nanogpt2 import generate as generate_module

    ours = ours_like(peft_prompt(seed=19, folder=sharp), folder=sharp)
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
    assert len(graphs) == first
    generate_module.release_static_caches(compiled)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------------
# The classifier


def hf_classifier(folder, seed=0):
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, num_labels=3,
                                  pad_token_id=99, bos_token_id=99, eos_token_id=99)
    torch.manual_seed(seed)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    model.save_pretrained(str(folder))
    return model


def test_prompt_tuned_classifier_equals_peft_s_and_rebuilds_from_its_spec(tmp_path):
    """peft's SEQ_CLS prompt tuning hands GPT-2 inputs_embeds, so transformers reads every row at its last position:
    unpadded rows compare; ours reads the last real token of padded rows as for any classifier."""
    from nanogpt2.heads import GPTForSequenceClassification

    hf = hf_classifier(tmp_path)
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)).eval()
    ours = apply_prompt(GPTForSequenceClassification.from_pretrained(str(tmp_path)).eval(), 4)
    assert isinstance(ours, PromptTuned) and isinstance(ours, GPTForSequenceClassification)
    with torch.no_grad():
        ours.prompt_encoder.embedding.weight.copy_(theirs.prompt_encoder["default"].embedding.weight)
    x = torch.randint(0, 99, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(input_ids=x).logits, atol=1e-5, rtol=1e-5)
        spec = model_spec(ours)
        assert spec["prompt"] == {"prompt_length": 4}
        rebuilt = build_model(spec)
        rebuilt.load_state_dict(ours.state_dict())
        assert type(rebuilt) is type(ours) and torch.equal(rebuilt.eval()(x)[0], ours(x)[0])
        padded, mask = torch.cat([x[:, :8], torch.full((3, 4), 99)], 1), torch.ones_like(x)
        mask[:, 8:] = 0
        torch.testing.assert_close(ours(padded, mask)[0], ours(x[:, :8])[0], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Training, evaluation


def test_prompt_run_freezes_the_base_and_its_checkpoint_rebuilds(tmp_path, monkeypatch):
    """The tiny config's windows are 32 tokens: a model of block 36 with a prompt of 4 takes them."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    cfg = cfg_for(tmp_path, "--max_iters=3", "--checkpoint_interval=0", "--eval_interval=0", "--vocab_size=65",
                  "--learning_rate=1e-2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=36, vocab_size=65, n_layer=2, n_head=2, n_embd=32))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_prompt(model, 4, init_ids=[1, 2, 3])
    prompt = model.prompt_encoder().detach().clone()
    assert torch.equal(prompt, model.transformer.wte.weight[[1, 2, 3, 1]])
    tiny_trainer(cfg, model=model).train()
    for n, p in model.named_parameters():
        if not n.startswith("prompt_encoder."):
            assert torch.equal(p, frozen[n]), f"{n} changed"  # every frozen tensor bit-identical to the base
    assert (model.prompt_encoder() - prompt).abs().max() > 0  # the prompt trained
    rebuilt, info = load_model(str(tmp_path / "run" / "checkpoint_final.pt"))
    assert isinstance(rebuilt, PromptGPT) and info["spec"]["prompt"] == {"prompt_length": 4}
    x = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model.eval()(x)[0])


def test_perplexity_of_a_prompt_tuned_model_is_peft_s():
    theirs = peft_prompt(seed=17)
    ours = ours_like(theirs)
    ids = torch.randint(0, 96, (70,), generator=torch.Generator().manual_seed(2))
    res = evaluate_perplexity(ours, ids, stride=16)
    assert res["block_size"] == 32 - P  # the default window is the context left beside the prompt
    nll, n = 0.0, 0
    for begin, end, first in stride_windows(70, 32 - P, 16):
        with torch.no_grad():
            logits = theirs(input_ids=ids[None, begin:end]).logits[0, P:]  # (W, V)
        nll += F.cross_entropy(logits[first - begin - 1:-1], ids[first:end], reduction="sum").item()
        n += end - first
    assert res["tokens"] == n
    assert res["loss"] == pytest.approx(nll / n, abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_are_clear_errors(tmp_path):
    for bad in (-1, 1.5, True):
        with pytest.raises(NanoGPT2Error, match="prompt_length must be an integer >= 0"):
            apply_prompt(base(), bad)
    with pytest.raises(NanoGPT2Error, match="leaves no room for real tokens"):
        apply_prompt(base(), 32)
    with pytest.raises(NanoGPT2Error, match="already has virtual tokens"):
        apply_prompt(apply_prompt(base(), 2), 2)
    with pytest.raises(NanoGPT2Error, match="already has virtual tokens"):
        apply_prompt(apply_prefix(base(), 2), 2)
    lora = base()
    apply_lora(lora, 2, 4)
    with pytest.raises(NanoGPT2Error, match="one method per model"):
        apply_prompt(lora, 2)
    with pytest.raises(NanoGPT2Error, match="encodes to no tokens"):
        apply_prompt(base(), 2, init_ids=[])
    with pytest.raises(NanoGPT2Error, match="token id 500, beyond the model's vocabulary of 96"):
        apply_prompt(base(), 2, init_ids=[500])
    with pytest.raises(NanoGPT2Error, match="not a Linear"):
        apply_prompt(torch.nn.Linear(2, 2), 2)
    with pytest.raises(NanoGPT2Error, match=r"reads at most block_size - 3 = 29.*windows of at most 29"):
        apply_prompt(base(), P)(torch.zeros(1, 30, dtype=torch.long))
    peft_prompt().save_pretrained(str(tmp_path / "peft"))
    other = GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32))  # another width
    with pytest.raises(NanoGPT2Error, match=r"the prompt does not fit this model \(token_dim=16, this model needs 32\)"):
        load_peft_adapter(other, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 5}))
    with pytest.raises(NanoGPT2Error, match=r"expected one tensor prompt_embeddings of shape \(5, 16\)"):
        load_peft_adapter(base(), tmp_path / "peft")
