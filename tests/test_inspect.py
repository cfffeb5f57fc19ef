"""
nanogpt2.inspect: attention probabilities against transformers' `output_attentions` (GPT-2, the classifier, a
prompt-tuned model against peft's), the model's hook left as it was, `python -m nanogpt2.inspect attention` writing a
PNG (or one error line without matplotlib, or for bad indices), the trainability table (every tensor, grouped, a
run's own freezing, at a finetune.py run's start-up), and docs/peft.md's table of methods on GPT-2 124M pinned and
checked against peft's own counts.

    python -m pytest -q tests/test_inspect.py
"""

import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT, one_error_line, oracle
from nanogpt2.config import load_config
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.inspect import (attention_maps, attention_modules, grouped_rows, method_counts, methods_markdown,
                              trainability_rows, trainability_table)
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import apply_adapters, apply_lora, apply_prompt

transformers = oracle("transformers")
transformers.logging.set_verbosity_error()

HF_TINY = FIXTURES / "openai-gpt2-tiny-hf"  # 2 layers, 2 heads, n_embd 16, block 32, vocab 96
TINY = str(ROOT / "configs" / "tiny.py")


def ids(T=9, seed=1):
    return torch.randint(0, 96, (1, T), generator=torch.Generator().manual_seed(seed))


def hf_attentions(model, x):
    with torch.no_grad():
        return model(input_ids=x, output_attentions=True).attentions  # per layer (B, nh, T, T)


# ----------------------------------------------------------------------------------------------------
# Attention probabilities


def test_attention_maps_equal_transformers_and_leave_the_model_as_it_was():
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY), attn_implementation="eager").eval()
    ours, x = GPT.from_pretrained(str(HF_TINY)).eval(), ids()
    maps = attention_maps(ours, x)
    for layer, want in enumerate(hf_attentions(hf, x)):
        assert maps[layer].shape == (1, 2, 9, 9)
        torch.testing.assert_close(maps[layer], want, atol=1e-6, rtol=1e-5)
    assert list(attention_maps(ours, x, [1])) == [1]
    assert all(not m.keep_attention and m.last_attention is None for m in attention_modules(ours))
    assert ours.config.attn_impl == "sdpa"  # the fused path is back for every other forward


def test_attention_maps_of_an_adapter_model_and_a_classifier(tmp_path):
    """Attention under Houlsby adapters (wrapped modules) and in a classifier, called as model(idx)."""
    from nanogpt2.heads import GPTForSequenceClassification

    with_adapters = GPT.from_pretrained(str(HF_TINY)).eval()
    apply_adapters(with_adapters, 4)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY), attn_implementation="eager").eval()
    x = ids()
    for layer, want in enumerate(hf_attentions(hf, x)):  # adapters start as the identity: GPT-2's own attention
        torch.testing.assert_close(attention_maps(with_adapters, x)[layer], want, atol=1e-6, rtol=1e-5)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, num_labels=3,
                                  pad_token_id=99)
    torch.manual_seed(0)
    transformers.GPT2ForSequenceClassification(cfg).save_pretrained(str(tmp_path))
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ours = GPTForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    for layer, want in enumerate(hf_attentions(theirs, x)):
        torch.testing.assert_close(attention_maps(ours, x)[layer], want, atol=1e-6, rtol=1e-5)


def test_a_prompt_tuned_model_s_maps_cover_the_virtual_positions_as_peft_s():
    peft = oracle("peft")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY), attn_implementation="eager")
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    ours = apply_prompt(GPT.from_pretrained(str(HF_TINY)).eval(), 3)
    with torch.no_grad():
        ours.prompt_encoder.embedding.weight.copy_(theirs.get_prompt_embedding_to_save("default"))
    x = ids(T=6)
    maps = attention_maps(ours, x)
    for layer, want in enumerate(hf_attentions(theirs, x)):  # peft's (1, nh, 3 + 6, 3 + 6); ours the real rows
        assert maps[layer].shape == (1, 2, 6, 9)
        torch.testing.assert_close(maps[layer], want[:, :, 3:], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.inspect attention


def inspect_cli(tmp_path, *args, env_path=None):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [env_path, str(ROOT)]))}
    return subprocess.run([sys.executable, "-m", "nanogpt2.inspect", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    """A prompt-tuned checkpoint of a random GPT (block 40, GPT-2's tokenizer)."""
    from nanogpt2 import checkpoint as ckpt_io
    from nanogpt2.loader import model_spec

    torch.manual_seed(0)
    model = apply_prompt(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=40)), 4)
    spec = model_spec(model)
    folder = tmp_path_factory.mktemp("prompt")
    ckpt_io.save_checkpoint(folder / "checkpoint_final.pt", {"model": model.state_dict(), "model_spec": spec,
                                                              "model_config": spec["config"], "step": 0,
                                                              "tokenizer": {"name": "gpt2"}})
    return folder


def test_attention_cli_draws_a_png_of_the_chosen_maps(tmp_path, prompt_run):
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib (pip install matplotlib)")
    res = inspect_cli(tmp_path, "attention", f"--init_from={prompt_run}", "--text=The cat sat on the mat.",
                      "--layers=-1", "--heads=all", "--out=maps/a.png")
    assert res.returncode == 0, res.stderr
    assert "2 maps: layers 1, heads all; 7 tokens + 4 virtual" in res.stdout
    png = (tmp_path / "maps" / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1.5 * height  # one row of two maps


@pytest.mark.parametrize("args, message", [
    (["--layers=2"], "--layers 2 is out of range: the model has 2 layers"),
    (["--heads=0,x"], "--heads must be 'all' or comma-separated indices"),
    (["--text=" + " word" * 40], "--text is 40 tokens; draw at most 36"),
])
def test_attention_cli_bad_input_is_one_error_line(tmp_path, prompt_run, args, message):
    res = inspect_cli(tmp_path, "attention", f"--init_from={prompt_run}", "--text=hello world", "--out=a.png", *args)
    assert message in one_error_line(res)
    assert not (tmp_path / "a.png").exists()


def test_attention_cli_without_matplotlib_is_one_error_line(tmp_path, prompt_run):
    fake = tmp_path / "no-matplotlib"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    res = inspect_cli(tmp_path, "attention", f"--init_from={prompt_run}", "--text=hello", "--out=a.png",
                      env_path=str(fake))
    assert "needs matplotlib, which is not installed: pip install matplotlib" in one_error_line(res)


# ----------------------------------------------------------------------------------------------------
# The trainability table


def test_table_lists_every_tensor_once_then_peft_s_line():
    peft = oracle("peft")
    model = GPT.from_pretrained(str(HF_TINY))
    apply_lora(model, 2, 4.0, ["c_attn"])
    rows = trainability_rows(model)
    assert [r[0] for r in rows] == [n for n, _ in model.named_parameters()]  # the tied head once, as wte
    assert {r[0] for r in rows if r[1]} == {f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in (0, 1) for ab in "AB"}
    table = trainability_table(model).splitlines()
    assert len(table) == 1 + len(rows) + 1
    assert table[1].split() == ["transformer.wte.weight", "frozen", "(96,", "16)", "1,536"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(HF_TINY))
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))
    trainable, total = theirs.get_nb_trainable_parameters()
    assert table[-1] == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def test_grouped_rows_join_the_blocks_that_agree():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=6, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    for name, p in model.named_parameters():
        p.requires_grad_(not any(f".h.{i}." in name for i in (0, 1, 2, 4)))
    grouped = {(r[0], r[1]): r for r in grouped_rows(trainability_rows(model))}
    assert grouped[("transformer.h.[0-2,4].attn.c_attn.weight", False)][3:] == (4 * 48 * 16, 4)
    assert grouped[("transformer.h.[3,5].attn.c_attn.weight", True)][3:] == (2 * 48 * 16, 2)
    assert sum(r[3] for r in grouped.values()) == sum(p.numel() for p in model.parameters())


def test_params_cli_shows_what_a_selective_run_froze_and_a_run_prints_its_table(tmp_path, capsys):
    cfg = load_config([TINY, f"--out_dir={tmp_path / 'sel'}", "--init_from=scratch", "--max_iters=1",
                       "--eval_interval=0", "--checkpoint_interval=0", "--test_eval=false", "--method=selective",
                       "--freeze_layers=0", "--freeze_embeddings=true"], cls=FinetuneConfig)
    run(cfg)
    startup = capsys.readouterr().out
    assert "transformer.h.[0].attn.c_attn.weight  frozen" in startup.replace("   ", "  ")
    res = inspect_cli(tmp_path, "params", f"--init_from={tmp_path / 'sel'}")
    assert res.returncode == 0, res.stderr
    state = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[2:-1]}
    assert state["transformer.h.0.mlp.c_fc.weight"] == state["transformer.wte.weight"] == "frozen"
    assert state["transformer.h.1.mlp.c_fc.weight"] == state["transformer.ln_f.weight"] == "trainable"
    trainable = sum(p.numel() for n, p in GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65))
                    .named_parameters() if ".h.1." in n or "ln_f" in n)
    assert res.stdout.splitlines()[-1].startswith(f"trainable params: {trainable:,} ||")


# ----------------------------------------------------------------------------------------------------
# docs/peft.md's table of methods on GPT-2 124M


@pytest.fixture(scope="module")
def counts():
    return {(m, s): (t, n) for m, s, t, n in method_counts()}


def test_the_methods_table_in_docs_is_the_computed_one(counts):
    doc = (ROOT / "docs" / "peft.md").read_text(encoding="utf-8")
    assert methods_markdown() in doc, "regenerate docs/peft.md's table: python -m nanogpt2.inspect methods"
    assert counts[("full", "every weight")] == (124_439_808, 124_439_808)  # GPT-2 small, the tied head once
    assert counts[("prompt", "50 virtual tokens")][0] == 50 * 768
    per_adapter = lambda m: 2 * m * 768 + 768 + m  # noqa: E731  (Houlsby: down, up and their biases)
    layernorms = (2 * 12 + 1) * 2 * 768
    for m in (32, 64, 256):
        assert counts[("adapters", f"bottleneck {m} (+ LayerNorms)")][0] == 2 * 12 * per_adapter(m) + layernorms
    block = 124_439_808 - (50257 + 1024) * 768 - 2 * 768  # the 12 blocks, 7,087,872 each
    for b in (3, 5, 9):
        assert counts[("selective", f"blocks 0-{b} frozen")][0] == 124_439_808 - (b + 1) * block // 12


@pytest.mark.parametrize("key, make", [
    (("LoRA", "r=4, alpha=8, c_attn"), lambda p: p.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                               fan_in_fan_out=True)),
    (("LoRA", "r=16, alpha=32, c_attn, c_proj, c_fc"),
     lambda p: p.LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    *[(("prefix", f"{P} virtual tokens"), lambda p, P=P: p.PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=P)) for P in (20, 50)],
    *[(("prefix", f"{P} virtual tokens, projection 512"), lambda p, P=P: p.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=True, encoder_hidden_size=512)) for P in (20, 50)],
    *[(("prompt", f"{P} virtual tokens"), lambda p, P=P: p.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=P)) for P in (20, 50)],
])
def test_the_methods_table_equals_peft_s_counts(counts, key, make):
    """peft's own trainable and total counts of the same method on transformers' GPT-2 124M (meta device)."""
    peft = oracle("peft")
    with torch.device("meta"):
        theirs = peft.get_peft_model(transformers.GPT2LMHeadModel(transformers.GPT2Config()), make(peft))
    assert counts[key] == theirs.get_nb_trainable_parameters()
