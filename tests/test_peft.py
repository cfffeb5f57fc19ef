"""
nanogpt2.peft, LoRA: against HF peft itself (its saved adapter fixture, adapters we save loaded by peft, trainable
counts computed by peft), merge/unmerge, the zero-B identity, q/k/v parts, bad inputs, and a LoRA run through the
trainer whose frozen tensors stay bit-identical and whose checkpoint rebuilds with LoRA.

    python -m pytest -q tests/test_peft.py
"""

import numpy as np
import pytest
import torch

from conftest import FIXTURES, oracle
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_checkpoint_model, model_spec
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import (LoRALinear, apply_lora, load_peft_adapter, lora_layers, merge_lora, save_peft_adapter,
                           trainable_report, unmerge_lora)
from test_trainer import cfg_for, tiny_trainer

transformers = oracle("transformers")
peft = oracle("peft")

HF_TINY = FIXTURES / "openai-gpt2-tiny-hf"
ADAPTER = FIXTURES / "peft-lora-tiny"


def base():
    return GPT.from_pretrained(str(HF_TINY)).eval()


def ids():
    return torch.from_numpy(np.load(ADAPTER / "input_ids.npy")).long()  # (1, 32)


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32))


def run_cfg(tmp_path, monkeypatch, iters):
    """A tiny char-level run of `iters` steps (no checkpoints before the final one, no evaluation)."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    return cfg_for(tmp_path, f"--max_iters={iters}", "--checkpoint_interval=0", "--eval_interval=0", "--vocab_size=65",
                   "--learning_rate=1e-2")


def randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def test_peft_written_adapter_gives_peft_logits():
    model = base()
    wrapped = load_peft_adapter(model, ADAPTER)
    assert len(wrapped) == 8  # 2 layers x c_attn, attn.c_proj, c_fc, mlp.c_proj
    want = torch.from_numpy(np.load(ADAPTER / "logits.npy"))  # (1, 32, 96), peft's own
    with torch.no_grad():
        got = model(ids())[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (got - base()(ids())[0]).abs().max() > 1e-3  # the adapter really changes the logits


def test_zero_b_is_the_base_model_exactly_and_merge_equals_unmerged():
    model, ref = base(), base()
    torch.manual_seed(0)  # A's init: the round trip's 1e-6 below must not depend on the tests run before this one
    apply_lora(model, rank=4, alpha=8, targets=["c_attn", "c_proj", "c_fc"])
    with torch.no_grad():
        assert torch.equal(model(ids())[0], ref(ids())[0])  # B = 0 at init: step 0 is the base model
        randomize_b(model)
        unmerged = model(ids())[0]
        weights = {n: layer.weight.clone() for n, layer in lora_layers(model).items()}
        merge_lora(model)
        assert all(layer.merged for layer in lora_layers(model).values())
        torch.testing.assert_close(model(ids())[0], unmerged, atol=1e-5, rtol=1e-5)
        unmerge_lora(model)
        for n, layer in lora_layers(model).items():
            torch.testing.assert_close(layer.weight, weights[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(model(ids())[0], unmerged, atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_our_adapter_loads_in_peft_and_gives_our_logits(tmp_path, use_rslora):
    model = base()
    apply_lora(model, rank=4, alpha=16, targets=["c_attn", "mlp.c_proj"], use_rslora=use_rslora)
    randomize_b(model, seed=1)
    save_peft_adapter(model, tmp_path / "adapter")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids())[0], theirs(input_ids=ids()).logits, atol=1e-5, rtol=1e-5)
    again = base()  # and back into ours
    load_peft_adapter(again, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(again(ids())[0], model(ids())[0], atol=0, rtol=0)


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_proj", "c_fc"]])
def test_trainable_counts_equal_peft(targets):
    model = base()
    apply_lora(model, rank=8, alpha=16, targets=targets)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, fan_in_fan_out=True))
    trainable, total = theirs.get_nb_trainable_parameters()
    assert trainable_report(model) == (f"trainable params: {trainable:,} || all params: {total:,} || "
                                       f"trainable%: {100 * trainable / total:.4f}")


def test_qkv_parts_touch_only_their_rows():
    model = base()
    apply_lora(model, rank=2, alpha=4, targets=["c_attn.v"])
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoRALinear) and layer.lora_B.shape == (16, 2)  # the v rows of (3C, C), C = 16
    randomize_b(model)
    delta = layer.delta_weight()  # (3C, C)
    assert delta[:32].abs().max() == 0 and delta[32:].abs().max() > 0
    with torch.no_grad():
        x = torch.randn(2, 5, 16)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight + delta, layer.bias))
    with pytest.raises(NanoGPT2Error, match="no peft equivalent"):
        save_peft_adapter(model, "/nonexistent")


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(NanoGPT2Error, match="rank must be an integer >= 1"):
        apply_lora(base(), rank=0, alpha=8)
    with pytest.raises(NanoGPT2Error, match="are not GPT-2 module names"):
        apply_lora(base(), rank=4, alpha=8, targets=["q_proj"])
    other = GPT(GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=32))  # another width
    with pytest.raises(NanoGPT2Error, match="was the adapter made for another base model"):
        load_peft_adapter(other, ADAPTER)
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true, "r": 4}')
    with pytest.raises(NanoGPT2Error, match="use_dora=True is not supported"):
        load_peft_adapter(base(), tmp_path / "dora")


def test_lora_run_freezes_the_base_and_its_checkpoint_rebuilds(tmp_path, monkeypatch):
    cfg = run_cfg(tmp_path, monkeypatch, 4)
    model = tiny_gpt()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, rank=4, alpha=8, targets=["c_attn", "c_fc"])
    tr = tiny_trainer(cfg, model=model)
    tr.train()
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad
        else:
            assert torch.equal(p, frozen[n]), f"{n} changed"  # every frozen tensor is bit-identical to the base
    assert any(layer.lora_B.abs().max() > 0 for layer in lora_layers(model).values())  # the adapters trained
    rebuilt, info = load_checkpoint_model(tmp_path / "run" / "checkpoint_final.pt")
    assert info["spec"] == model_spec(model) and info["spec"]["lora"]["targets"] == ["c_attn", "c_fc"]
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model.eval()(x)[0])


# ----------------------------------------------------------------------------------------------------
# Houlsby adapters


def test_adapters_start_as_identity_and_count_2md_plus_d_plus_m():
    from nanogpt2.peft import apply_adapters

    model, ref = base(), base()
    n = apply_adapters(model, adapter_size=4)
    d, m, layers = 16, 4, 2
    assert n == layers * 2 * (2 * m * d + d + m)
    with torch.no_grad():
        assert torch.equal(model(ids())[0], ref(ids())[0])  # up = 0: the base model exactly
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in t or ".ln_" in t or "ln_f" in t for t in trainable)
    assert any("ln_1" in t for t in trainable) and "transformer.wte.weight" not in trainable
    frozen_ln = base()
    apply_adapters(frozen_ln, adapter_size=4, train_layernorms=False)
    assert sum(p.numel() for p in frozen_ln.parameters() if p.requires_grad) == n
    with pytest.raises(NanoGPT2Error, match="adapter_size must be an integer >= 1"):
        apply_adapters(base(), adapter_size=0)


def test_adapter_run_changes_only_adapters_and_layernorms_and_rebuilds(tmp_path, monkeypatch):
    from nanogpt2.peft import apply_adapters

    cfg = run_cfg(tmp_path, monkeypatch, 3)
    model = tiny_gpt()
    before = {n.replace(".sublayer", ""): p.detach().clone() for n, p in model.named_parameters()}
    apply_adapters(model, adapter_size=8, train_layernorms=False)
    tiny_trainer(cfg, model=model).train()
    for n, p in model.named_parameters():
        if ".adapter." not in n:
            assert torch.equal(p, before[n.replace(".sublayer", "")]), f"{n} changed"
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if n.endswith("adapter.up.weight"))
    rebuilt, info = load_checkpoint_model(tmp_path / "run" / "checkpoint_final.pt")
    assert info["spec"]["adapters"] == {"adapter_size": 8, "train_layernorms": False}
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)[0], model.eval()(x)[0])


def test_lora_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Stop a LoRA run after step 3 (as SIGTERM does), resume it into a fresh LoRA model: the same losses as the
    uninterrupted run, bit for bit."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))

    def lora_model():
        model = tiny_gpt()
        apply_lora(model, rank=4, alpha=8, targets=["c_attn", "c_fc"])
        return model

    def losses(out):
        import json
        return [float.hex(json.loads(line)["loss"]) for line in (out / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(line)]

    args = ("--max_iters=6", "--checkpoint_interval=0", "--eval_interval=0", "--vocab_size=65", "--learning_rate=1e-2")
    whole = cfg_for(tmp_path / "whole", *args)
    tiny_trainer(whole, fixed=False, model=lora_model()).train()

    cut = cfg_for(tmp_path / "cut", *args)

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert tiny_trainer(cut, fixed=False, model=lora_model(), hooks=[stop_at_3]).train()["stopped"] == "signal"
    resumed = tiny_trainer(cut.replace(resume_from="auto"), fixed=False, model=lora_model())
    assert resumed.step == 3
    resumed.train()
    assert losses(tmp_path / "cut" / "run") == losses(tmp_path / "whole" / "run")
