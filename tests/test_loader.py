"""
nanogpt2.loader: one loader for every init_from, and the model spec that checkpoints record and the loader
rebuilds (a registered kind beside the plain GPT); the trainer resumes into the model it was given.

    python -m pytest -q tests/test_loader.py
"""

import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import (MODEL_KINDS, build_model, load_checkpoint_model, load_model, load_model_and_tokenizer,
                             model_spec, register_model_kind)
from nanogpt2.model import GPT, GPTConfig
from test_trainer import cfg_for, tiny_trainer


class Tagged(nn.Module):
    """A model of another kind (as a PEFT wrapper or a task head will be): a GPT plus a parameter of its own."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.extra = nn.Parameter(torch.zeros(3))

    def forward(self, x, y=None):
        logits, loss = self.gpt(x, y)
        return logits, loss + self.extra.square().sum() if loss is not None else None

    def model_spec(self):
        return {"kind": "tagged", "config": self.gpt.config.to_dict()}


@pytest.fixture
def tagged_kind():
    register_model_kind("tagged", lambda spec: Tagged(GPT(GPTConfig(**spec["config"]))))
    yield
    MODEL_KINDS.pop("tagged")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32, **kw))


def test_spec_of_a_gpt_and_unknown_kinds():
    model = tiny_gpt()
    spec = model_spec(model)
    assert spec == {"kind": "gpt", "config": model.config.to_dict()}
    assert build_model(spec).config == model.config
    with pytest.raises(NanoGPT2Error, match="unknown model kind 'lora'"):
        build_model({"kind": "lora", "config": {}})
    with pytest.raises(NanoGPT2Error, match="give it a model_spec"):
        model_spec(nn.Linear(2, 2))


def test_checkpoints_record_the_spec_and_resume_into_the_given_model(tmp_path, tagged_kind):
    cfg = cfg_for(tmp_path, "--max_iters=3", "--checkpoint_interval=3", "--eval_interval=0", "--vocab_size=65")
    given = Tagged(tiny_gpt())
    first = tiny_trainer(cfg, model=given)
    assert first.raw_model is given
    first.train()
    saved = ckpt_io.load_checkpoint(tmp_path / "run" / "checkpoint_final.pt")
    assert saved["model_spec"] == given.model_spec()

    # the loader rebuilds the registered kind with its weights
    model, info = load_checkpoint_model(tmp_path / "run" / "checkpoint_final.pt")
    assert type(model) is Tagged and info["spec"]["kind"] == "tagged"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), given.state_dict().values()))

    # resuming restores into the model given to the Trainer (not a plain GPT rebuilt beside it)
    again = Tagged(tiny_gpt())
    resumed = tiny_trainer(cfg.replace(max_iters=5, resume_from="auto"), model=again)
    assert resumed.raw_model is again and resumed.step == 3
    assert torch.equal(again.extra, given.extra) and torch.equal(again.gpt.lm_head.weight, given.gpt.lm_head.weight)
    resumed.train()
    assert resumed.step == 5

    # and without a model given, the checkpoint's kind is rebuilt
    rebuilt = tiny_trainer(cfg.replace(max_iters=6, resume_from="auto"))
    assert type(rebuilt.raw_model) is Tagged and rebuilt.step == 5

    # a model of another shape is refused, naming both
    with pytest.raises(NanoGPT2Error, match="holds another model than the one this run was given"):
        tiny_trainer(cfg.replace(max_iters=6, resume_from="auto"), model=Tagged(tiny_gpt(n_inner=64)))


def test_a_legacy_checkpoint_without_a_spec_reads_as_a_gpt(tmp_path):
    model = tiny_gpt()
    path = ckpt_io.save_checkpoint(tmp_path / "checkpoint_step_1.pt",
                                   {"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 1})
    loaded, info = load_checkpoint_model(path)
    assert type(loaded) is GPT and info["spec"] == {"kind": "gpt", "config": model.config.to_dict()}


def test_load_model_by_init_from(tmp_path):
    hf = FIXTURES / "openai-gpt2-tiny-hf"
    model, tok, desc = load_model_and_tokenizer(str(hf))
    assert isinstance(model, GPT) and not model.training and tok.name == "gpt2" and "Hugging Face" in desc
    model, info = load_model(str(hf), dropout=0.25)
    assert info["tokenizer"] == {"name": "gpt2"} and model.config.dropout == 0.25
    assert all(m.p == 0.25 for m in model.modules() if isinstance(m, nn.Dropout))
    with pytest.raises(NanoGPT2Error, match="did you mean gpt2"):
        load_model("gtp2")
    with pytest.raises(NanoGPT2Error, match="is not a GPT-2 name"):
        load_model(str(tmp_path / "nothing-here.pt"))


def test_init_from_a_smaller_vocabulary_than_the_tokenizer_is_one_error_line(tmp_path):
    """The OpenAI-layout fixture (vocab 96) under the GPT-2 tokenizer (50,257): one line naming both sizes, and
    no run folder (it used to die inside the embedding with an IndexError traceback)."""
    import subprocess
    import sys

    from conftest import ROOT, one_error_line

    from nanogpt2.data import prepare_dataset

    text = tmp_path / "words.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    prepare_dataset(str(text), val_fraction=0.1, quiet=True)  # tokenized into the cache first: no progress line
    res = subprocess.run([sys.executable, "train.py", f"--init_from={FIXTURES / 'openai-gpt2-tiny'}",
                          f"--dataset={text}", "--val_fraction=0.1", "--block_size=16", "--batch_size=2", "--max_iters=2", "--device=cpu",
                          "--compile=false", f"--out_dir={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    line = one_error_line(res)
    assert "a vocabulary of 96 tokens" in line and "gpt2 tokenizer (50,257)" in line
    assert not (tmp_path / "out").exists()
