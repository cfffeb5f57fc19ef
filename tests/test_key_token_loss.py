"""
The two key-token weighted losses (nanogpt2/losses.py, `key_token_formula`): ours (`normalised`) and the Hugging
Face course's (`hf_course`), the course's checked against its formula written out here from the course's
definition on the course's own input layout (input_ids and their logits, shifted inside), on the same batch
the numbers docs/instruct.md quotes; then the lm and instruct tasks' loss under each.

    python -m pytest -q tests/test_key_token_loss.py
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from nanogpt2.config import load_config
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.instruct import collate, make_loss_fn
from nanogpt2.losses import (KeyTokenLoss, course_key_token_loss, key_counts, key_token_weighted_loss,
                             window_key_counts)
from nanogpt2.model import GPT, GPTConfig, IGNORE_INDEX

TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def course_formula(inputs, logits, keytoken_ids, alpha=1.0):
    """The course's loss from its definition, on its layout: inputs (B, L) the samples' ids, logits (B, L, V) the
    model's output on them. Position t predicts t + 1 (the last logits and the first id are not scored); the
    token cross-entropies are averaged per sample; each sample is weighted by alpha * (1 + the number of key
    tokens among its inputs); the result is the plain mean of the weighted per-sample losses."""
    labels, scores = inputs[:, 1:], logits[:, :-1, :]
    per_token = F.cross_entropy(scores.reshape(-1, scores.size(-1)), labels.reshape(-1), reduction="none")
    per_sample = per_token.view(labels.shape).mean(dim=1)
    weights = alpha * (1.0 + sum((inputs == k).float() for k in keytoken_ids).sum(dim=1))
    return (per_sample * weights).mean()


def same_batch():
    """The batch the docs' numbers come from: the first training batch of configs/tiny.py's run (Tiny
    Shakespeare characters, 4 windows of 32, seed 1337) through its freshly initialised model (seed 1337), with
    the key tokens 'e' and 't'."""
    from nanogpt2.data import prepare_dataset
    from nanogpt2.samplers import RandomWindowSampler

    ds = prepare_dataset("shakespeare_char", quiet=True)
    x, y = RandomWindowSampler(ds.tokens("train"), 32, 4, seed=1337).next_batch()
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, x, y, torch.tensor(ds.tokenizer().encode("et"))


def test_the_course_formula_on_its_layout_equals_ours_on_windows_and_the_docs_numbers():
    model, x, y, keys = same_batch()
    window = torch.cat([x, y[:, -1:]], dim=1)  # (4, 33): the sample's ids, as the course's input_ids
    with torch.no_grad():
        logits = model(x)[0]  # (4, 32, 65)
        # the course's model sees all 33 ids; its shift drops the logits of the last one, and causality makes the
        # first 32 those of x: any values stand in for the dropped ones
        theirs = course_formula(window, torch.cat([logits, torch.randn(4, 1, 65)], dim=1), keys.tolist(), alpha=1.0)
        ours_course, n = course_key_token_loss(logits, y, window_key_counts(x, y, keys), 1.0)
        ours_normalised, _ = key_token_weighted_loss(logits, y, keys, 1.0)
        plain = F.cross_entropy(logits.reshape(-1, 65), y.reshape(-1))
    assert n == 4 * 32
    assert ours_course.item() == pytest.approx(theirs.item(), rel=1e-6)
    counts = window_key_counts(x, y, keys)
    assert counts.tolist() == [int(sum((r == k).sum() for k in keys)) for r in window]
    # the numbers docs/instruct.md quotes for this batch (and that the two formulas differ by the weights' size)
    assert round(plain.item(), 3) == 4.147
    assert round(ours_normalised.item(), 3) == 4.147
    assert round(ours_course.item(), 3) == 26.956
    assert counts.tolist() == [5, 7, 5, 5]


def test_course_loss_by_hand_with_masked_targets_and_alpha():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]], [[2.0, -1.0, 0.0], [0.3, 0.3, 0.3]],
                           [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (3, 2, 3)
    targets = torch.tensor([[1, 2], [0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]])  # sample 2 scores nothing
    ce = F.cross_entropy(logits.view(-1, 3), targets.view(-1).clamp(min=0), reduction="none").view(3, 2)
    mean0, mean1 = ce[0].mean().item(), ce[1, 0].item()
    loss, n = course_key_token_loss(logits, targets, torch.tensor([2, 0, 7]), alpha=0.5)
    assert n == 3 and loss.item() == pytest.approx((0.5 * 3 * mean0 + 0.5 * 1 * mean1) / 2, rel=1e-6)
    empty, n = course_key_token_loss(logits[2:], targets[2:], torch.tensor([1]), alpha=1.0)
    assert empty.item() == 0.0 and n == 0
    assert key_counts(torch.tensor([[3, 1, 3, 2]]), torch.tensor([3]), torch.tensor([[True, True, False, True]])).tolist() == [1]


def test_instruct_counts_the_course_keys_among_each_examples_real_ids_prompt_included():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=2, n_embd=8)).eval()
    pad, key = 19, torch.tensor([5])
    batch = collate([([1, 5, 5, 2, 3, pad], [-100, -100, -100, 2, 3, pad]), ([5, 4, pad], [-100, 4, pad])], pad)
    batch["lengths"] = batch["attention_mask"].sum(dim=1)
    with torch.no_grad():
        got, n = make_loss_fn(key, 1.0, "hf_course")(None, model, batch)
        logits = model(batch["input_ids"][:, :5])[0]  # (2, 5, 20): the longest row less one
        y = batch["labels"][:, 1:6]
        want, _ = course_key_token_loss(logits, y, torch.tensor([2, 1]), 1.0)  # the pad (id 19) is never a key
        normalised, _ = make_loss_fn(key, 1.0, "normalised")(None, model, batch)
    assert n == 5 and got.item() == pytest.approx(want.item(), rel=1e-6)
    assert normalised.item() == pytest.approx(key_token_weighted_loss(logits, y, key, 1.0)[0].item(), rel=1e-6)


def test_the_lm_task_trains_on_the_formula_it_is_given(tmp_path):
    seen = {}

    def first_batch(trainer, event):
        if event == "train_start":  # the batch step 1 draws, and the weights before it
            seen["batch"] = copy.deepcopy(trainer.sampler).next_batch()
            seen["model"] = copy.deepcopy(trainer.raw_model)
            seen["tok"] = trainer.tokenizer

    logged = {}
    for formula in ("normalised", "hf_course"):
        cfg = load_config([TINY, f"--out_dir={tmp_path / formula}", "--init_from=scratch", "--max_iters=1",
                           "--checkpoint_interval=0", "--test_eval=false", "--method=full", "--key_tokens=e,t",
                           "--key_token_alpha=1", f"--key_token_formula={formula}", "--gradient_accumulation_steps=1",
                           f"--results_dir={tmp_path / 'results'}", "--baseline_eval=false"], cls=FinetuneConfig)
        run(cfg, hooks=[first_batch])
        logged[formula] = json.loads((tmp_path / formula / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    x, y = seen["batch"]
    keys = torch.tensor(seen["tok"].encode("et"))
    with torch.no_grad():
        window = torch.cat([x, y[:, -1:]], dim=1)
        logits = seen["model"](x)[0]  # (B, T, V); the course's logits of the window's last id are never scored
        theirs = course_formula(window, torch.cat([logits, torch.randn_like(logits[:, :1])], dim=1), keys.tolist()).item()
        ours = key_token_weighted_loss(seen["model"](x)[0], y, keys, 1.0)[0].item()
    assert logged["hf_course"] == pytest.approx(theirs, rel=1e-5)
    assert logged["normalised"] == pytest.approx(ours, rel=1e-5) and theirs > 2 * ours


def test_key_token_formula_settings():
    with pytest.raises(NanoGPT2Error, match="key_token_formula=hf_course chooses the key-token weighted loss"):
        FinetuneConfig(key_token_formula="hf_course").validate()
    with pytest.raises(NanoGPT2Error, match="key_token_formula must be one of normalised, hf_course"):
        load_config(["--key_token_formula=course"], cls=FinetuneConfig)
    with pytest.raises(NanoGPT2Error, match="key_token_formula must be one of"):
        KeyTokenLoss("e", 1.0, "hf")
    cfg = FinetuneConfig(key_tokens="e", key_token_alpha=1.0, key_token_formula="hf_course").validate()
    assert cfg.key_token_formula == "hf_course"
