"""
The baseline and the results tree of `finetune.py --task lm` and `--task instruct` (nanogpt2/lm_results.py,
nanogpt2/results.py): the layout of classify's, the baseline scored on the untouched model and the test stage on
the fine-tuned one (each checked against an independent evaluation of those weights: the strided test perplexity
of nanogpt2.evaluate, the weights transformers loads from train/weights), summary.md, a resumed run keeping its
folder and baseline, baseline_eval=false, and instruct's held-out response loss.

    python -m pytest -q tests/test_lm_results.py
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, oracle
from nanogpt2.config import load_config
from nanogpt2.data import prepare_dataset
from nanogpt2.evaluate import evaluate_perplexity
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.loader import load_model

TINY = str(ROOT / "configs" / "tiny.py")
SHAKESPEARE = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
STAGE_FILES = ["metrics/metrics.json", "analysis/report.md"]


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with its own train / val / test files (GPT-2 tokens: about 12k / 2.5k / 2.5k)."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text(SHAKESPEARE[:50_000])
    (folder / "val.txt").write_text(SHAKESPEARE[50_000:60_000])
    (folder / "test.txt").write_text(SHAKESPEARE[60_000:70_000])
    return folder


def lm_cfg(tmp_path, corpus, *overrides):
    """A new 1-layer GPT (GPT-2 vocabulary) fine-tuned with LoRA on the corpus, 6 steps."""
    return load_config([TINY, f"--dataset={corpus}", "--tokenizer=gpt2", "--init_from=scratch", "--n_layer=1",
                        "--n_embd=16", "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=1",
                        "--max_iters=6", "--max_epochs=0", "--eval_interval=3", "--eval_iters=0", "--test_stride=16",
                        "--checkpoint_interval=0", "--learning_rate=1e-2", "--method=lora", "--lora_targets=c_attn,c_fc",
                        f"--out_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'results'}", *overrides],
                       cls=FinetuneConfig)


def test_lm_run_writes_the_results_tree_with_an_honest_baseline_and_test(tmp_path, corpus):
    seen = {}

    def start(trainer, event):
        if event == "train_start":
            seen["model"] = {n: p.detach().clone() for n, p in trainer.raw_model.state_dict().items()}

    summary = run(lm_cfg(tmp_path, corpus), hooks=[start])
    assert summary["stopped"] == "done"
    root, = (tmp_path / "results" / "scratch").iterdir()
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    want = {f"{stage}/{f}" for stage in ("baseline", "test") for f in STAGE_FILES}
    want |= {"train/metrics/metrics.json", "summary.md", "train/weights/config.json", "train/weights/model.safetensors"}
    assert want <= files, sorted(want - files)
    baseline = json.loads((root / "baseline" / "metrics" / "metrics.json").read_text())["splits"]
    test = json.loads((root / "test" / "metrics" / "metrics.json").read_text())["splits"]
    assert set(baseline) == set(test) == {"validation", "test"}

    # the baseline: the model before its first step, scored independently (strided test perplexity, all windows)
    before, _ = load_model(str(tmp_path / "out"))
    before.load_state_dict(seen["model"])
    ids = prepare_dataset(str(corpus), tokenizer="gpt2", quiet=True).tokens("test")
    ref = evaluate_perplexity(before, ids, block_size=32, stride=16, batch_size=4)
    assert baseline["test"]["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert (baseline["test"]["tokens"], baseline["test"]["stride"], baseline["test"]["block_size"]) == (ref["tokens"], 16, 32)
    # the test stage: the run's own final test and last validation, i.e. the fine-tuned weights'
    after, _ = load_model(str(tmp_path / "out"))
    assert test["test"]["loss"] == pytest.approx(evaluate_perplexity(after, ids, block_size=32, stride=16)["loss"], rel=1e-6)
    assert test["test"]["loss"] == summary["test"]["test_loss"] and test["validation"]["loss"] == summary["last"]["val_loss"]
    assert test["test"]["loss"] < baseline["test"]["loss"]  # 6 LoRA steps at 1e-2 on a new model: it learns
    assert all(t["bits_per_byte"] > 0 for t in (baseline["test"], test["test"]))

    # train/weights: an HF GPT-2 folder (LoRA merged) that transformers loads with the run's logits
    transformers = oracle("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(root / "train" / "weights")).eval()
    x = torch.as_tensor(np.asarray(ids[:32], dtype=np.int64))[None]
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, after.eval()(x)[0], atol=1e-5)

    history = json.loads((root / "train" / "metrics" / "metrics.json").read_text())
    assert [r["step"] for r in history["val"]] == [3, 6] and len(history["train"]) == 6
    assert history["val"][-1]["ppl"] == pytest.approx(math.exp(test["validation"]["loss"]))
    md = (root / "summary.md").read_text()
    b, t = baseline["test"], test["test"]
    assert f"| test | {t['tokens']:,} | {b['loss']:.4f} | {b['ppl']:.3f} | {t['loss']:.4f} | {t['ppl']:.3f} | " in md
    assert f"{(t['ppl'] / b['ppl'] - 1) * 100:+.1f} %" in md and "method=lora, 6 steps" in md
    assert "| validation |" in (root / "baseline" / "analysis" / "report.md").read_text()


def test_a_resumed_lm_run_keeps_its_results_folder_and_baseline(tmp_path, corpus):
    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(lm_cfg(tmp_path, corpus), hooks=[stop_at_3])["stopped"] == "signal"
    root, = (tmp_path / "results" / "scratch").iterdir()
    assert (root / "baseline").is_dir() and not (root / "summary.md").exists()
    baseline = (root / "baseline" / "metrics" / "metrics.json").read_bytes()
    run(lm_cfg(tmp_path, corpus, "--resume_from=auto"))
    assert [p.name for p in (tmp_path / "results" / "scratch").iterdir()] == [root.name]  # one folder: the run's own
    assert (root / "baseline" / "metrics" / "metrics.json").read_bytes() == baseline  # not scored again
    md = (root / "summary.md").read_text()
    base = json.loads(baseline)["splits"]["validation"]
    assert f"| validation | - | {base['loss']:.4f} | {base['ppl']:.3f} |" in md


def test_without_a_baseline_or_a_test_split(tmp_path):
    run(load_config([TINY, "--init_from=scratch", "--max_iters=2", "--eval_interval=0", "--checkpoint_interval=0",
                     "--method=full", "--baseline_eval=false", f"--out_dir={tmp_path / 'out'}",
                     f"--results_dir={tmp_path / 'results'}"], cls=FinetuneConfig))
    root, = (tmp_path / "results" / "scratch").iterdir()
    assert not (root / "baseline").exists()
    test = json.loads((root / "test" / "metrics" / "metrics.json").read_text())["splits"]
    assert set(test) == {"validation"}  # shakespeare_char has no test split of its own
    assert "No baseline" in (root / "summary.md").read_text()
    weights, info = load_model(str(root / "train" / "weights"))  # the char vocabulary: a checkpoint, not an HF folder
    assert info["tokenizer"]["name"] == "char" and (root / "train" / "weights" / "checkpoint_final.pt").exists()


def test_instruct_scores_the_held_out_responses_before_and_after(tmp_path, monkeypatch):
    from test_instruct import SLICE, instruct_cfg

    logs = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: logs.append(" ".join(map(str, a))))
    cfg = instruct_cfg(tmp_path / "run", SLICE, monkeypatch, "--method=full", "--max_iters=4", "--eval_interval=2",
                       "--learning_rate=1e-2")
    summary = run(cfg)
    monkeypatch.undo()
    root, = Path(f"{tmp_path / 'run'}-results", "scratch").iterdir()
    baseline = json.loads((root / "baseline" / "metrics" / "metrics.json").read_text())["splits"]["held-out"]
    test = json.loads((root / "test" / "metrics" / "metrics.json").read_text())["splits"]["held-out"]
    assert test["loss"] == summary["last"]["val_loss"] and test["tokens"] == baseline["tokens"] > 0
    assert test["loss"] < baseline["loss"]
    assert any(f"baseline (before training): held-out loss {baseline['loss']:.4f}" in line for line in logs)
    md = (root / "summary.md").read_text()
    assert "| held-out |" in md and "40 training / 10 held-out records" in md
    assert (root / "train" / "weights" / "checkpoint_final.pt").exists()  # the test's compact vocabulary
