"""
A setting given in a config file or on the command line wins over a recipe default of the setting it competes
with (max_iters / max_epochs, warmup_iters / warmup_ratio; nanogpt2/config.py COMPETING), and two given ones
that conflict end in one notice line saying which governs. Checked through the real finetune.py.

    python -m pytest -q tests/test_given_settings.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt2.config import load_config
from nanogpt2.finetuning import FinetuneConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")
QUIET = ["--init_from=scratch", "--eval_interval=0", "--eval_iters=1", "--log_interval=1", "--sample_interval=0",
         "--test_eval=false", "--checkpoint_interval=0", "--save_best=false"]


def finetune(tmp_path, *args):
    tmp_path.mkdir(exist_ok=True)
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), *args, f"--out_dir={tmp_path / 'o'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    notices = [line for line in res.stdout.splitlines() if line.startswith("notice: ")]
    return lrs, notices


def test_given_warmup_iters_wins_over_the_recipe_warmup_ratio(tmp_path):
    # was: warmup over round(0.1 * 40) = 4 steps, finetune.py's warmup_ratio default winning
    lrs, notices = finetune(tmp_path, TINY, *QUIET, "--max_iters", "40", "--warmup_iters", "20", "--learning_rate=1e-3",
                            "--lr_schedule=constant")
    assert len(lrs) == 40 and notices == []
    # nanoGPT's warmup, lr * (step + 1) / (warmup_iters + 1) for steps 0..19: the peak from the 21st step, not the 5th
    assert lrs[:20] == pytest.approx([1e-3 * (i + 1) / 21 for i in range(20)])
    assert lrs[20:] == pytest.approx([1e-3] * 20)


def test_given_max_iters_wins_over_max_epochs_with_one_notice(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("".join(f"line {i} of a small corpus.\n" for i in range(80)))  # 2,190 chars
    recipe = tmp_path / "recipe.py"
    recipe.write_text("max_epochs = 3\nmax_iters = 0\n")
    common = [TINY, *QUIET, f"--dataset={text}", "--tokenizer=char", "--val_fraction=0.1", "--warmup_iters=0"]
    by_epochs, _ = finetune(tmp_path / "a", *common, str(recipe))
    assert 0 < len(by_epochs) < 60  # the recipe alone: 3 epochs of this corpus
    lrs, notices = finetune(tmp_path / "b", *common, str(recipe), "--max_iters", "60")
    assert len(lrs) == 60  # was: stopped at 3 epochs
    assert notices == [f"notice: max_iters=60 (the command line) governs the run length, not max_epochs=3 ({recipe}): "
                       "max_epochs set to 0"]


def test_same_layer_conflict_keeps_its_rule_and_says_so(tmp_path):
    both = tmp_path / "both.py"
    both.write_text("max_iters = 50\nmax_epochs = 2\nwarmup_iters = 10\nwarmup_ratio = 0.2\n")
    cfg = load_config([str(both)], cls=FinetuneConfig)
    assert (cfg.max_iters, cfg.max_epochs, cfg.warmup_iters, cfg.warmup_ratio) == (50, 2, 10, 0.2)
    assert cfg._notices == [f"notice: max_iters=50 and max_epochs=2 are both set in {both}: the fewer steps governs "
                            "the run length",
                            f"notice: warmup_iters=10 and warmup_ratio=0.2 are both set in {both}: warmup_ratio "
                            "governs the warmup"]
    later = load_config([str(both), "--warmup_iters=30"], cls=FinetuneConfig)
    assert (later.warmup_iters, later.warmup_ratio) == (30, 0.0)
    only_default = load_config([], cls=FinetuneConfig)  # nothing given: the recipe defaults as they are
    assert (only_default.max_epochs, only_default.warmup_ratio) == (3, 0.1) and only_default._notices == []
