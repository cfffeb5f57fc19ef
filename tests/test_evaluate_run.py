"""
`python -m nanogpt2.evaluate --init_from RUN` on a train.py run folder: the run's own dataset, tokenizer and
validation split by default, and the same loss the run reported for the same weights — checked against the
val_loss / test_loss train.py wrote to metrics.jsonl (to 1e-5): a bundled char dataset, a dataset split by
`val_fraction`, a local folder with its own test split (the run's final test evaluation). Also: the refusals
as one `error:` line naming CLI options, and the offline hint of sample.py / evaluate when the default
`--init_from gpt2` cannot be downloaded. Every command runs in a subprocess, offline.

    python -m pytest -q tests/test_evaluate_run.py
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, one_error_line
from http_fixture import unused_url

SHAKESPEARE = ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt"
TINY_RUN = ["--max_iters", "12", "--eval_interval", "6", "--eval_iters", "3", "--checkpoint_interval", "0",
            "--sample_interval", "0", "--log_interval", "6"]


def offline_env(tmp_path) -> dict:
    """No network for the subprocess (every request goes to a proxy nobody listens on), its own data cache."""
    dead = unused_url("").rstrip("/")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOGPT2_CACHE": str(tmp_path / "cache"),
           "NANOGPT2_HF_ENDPOINT": dead, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
           "http_proxy": dead}
    for key in ("NO_PROXY", "no_proxy"):
        env.pop(key, None)
    return env


def run(tmp_path, *argv, timeout=600):
    return subprocess.run([sys.executable, *map(str, argv)], cwd=tmp_path, env=offline_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def train(tmp_path, out_dir, *overrides):
    res = run(tmp_path, ROOT / "train.py", ROOT / "configs" / "tiny.py", "--out_dir", out_dir, *TINY_RUN, *overrides)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / out_dir / "metrics.jsonl").read_text().splitlines()]
    return records


def evaluate(tmp_path, *args):
    res = run(tmp_path, "-m", "nanogpt2.evaluate", *args, "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def last(records, key):
    return [r[key] for r in records if key in r][-1]


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A folder holding one tiny train.py run, `out-shakespeare` (configs/tiny.py: shakespeare_char), and its
    metrics records."""
    where = tmp_path_factory.mktemp("char-run")
    return where, train(where, "out-shakespeare")


# ----------------------------------------------------------------------------------------------------
# The run's own data, the loss it reported


@pytest.mark.slow
def test_a_char_run_scores_its_own_validation_windows(char_run):
    """configs/tiny.py trains on shakespeare_char (the char tokenizer, val = the last 10 % of the characters): the
    bare command scores that split on the run's validation windows and prints train.py's last val_loss."""
    where, records = char_run
    res = evaluate(where, "--init_from", "out-shakespeare")
    assert (res["dataset"], res["split"], res["tokenizer"]) == ("shakespeare_char", "val", "char")
    assert res["loss"] == pytest.approx(last(records, "val_loss"), abs=1e-5)
    assert res["tokens"] == 3 * 4 * 32  # eval_iters=3 batches of batch_size=4 windows of block_size=32
    named = evaluate(where, "--init_from", "out-shakespeare/checkpoint_final.pt", "--dataset", "shakespeare_char",
                     "--split", "val")
    assert named["loss"] == pytest.approx(res["loss"], abs=1e-12)
    # --eval_iters 0: every window of the split, and --stride: strided perplexity of the whole split
    whole = evaluate(where, "--init_from", "out-shakespeare", "--eval_iters", "0")
    assert whole["tokens"] == (whole["tokens_total"] - 1) // 32 * 32 and whole["loss"] != res["loss"]
    strided = evaluate(where, "--init_from", "out-shakespeare", "--stride", "16", "--max_tokens", "2000")
    assert (strided["stride"], strided["tokens"]) == (16, 1999) and "bits_per_byte" not in strided


@pytest.mark.slow
def test_a_val_fraction_split_is_the_one_train_py_validated_on(tmp_path):
    """A dataset without a validation split of its own, cut by a non-default val_fraction, with the GPT-2
    tokenizer: evaluate takes the same cut (not the dataset's default) and reproduces the run's val_loss."""
    records = train(tmp_path, "run", "--dataset", "shakespeare", "--tokenizer", "gpt2", "--val_fraction", "0.03",
                    "--n_embd", "16")
    res = evaluate(tmp_path, "--init_from", "run", "--dataset", "shakespeare", "--split", "val")
    assert res["loss"] == pytest.approx(last(records, "val_loss"), abs=1e-5)
    assert res["tokens_total"] == round(338_025 * 0.03)
    # the README's form: no --split (the run's validation split is the default)
    assert evaluate(tmp_path, "--init_from", "run")["loss"] == pytest.approx(res["loss"], abs=1e-12)


@pytest.mark.slow
def test_a_test_split_of_its_own_scores_as_the_runs_final_test(tmp_path):
    """A local folder with train / val / test files: --split test is the run's final test evaluation (strided,
    test_stride), the same test_loss and bits per byte; the default is still the validation split."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "train.txt").write_text(text[:60_000], encoding="utf-8")
    (data / "val.txt").write_text(text[60_000:66_000], encoding="utf-8")
    (data / "test.txt").write_text(text[66_000:70_000], encoding="utf-8")
    records = train(tmp_path, "run", "--dataset", str(data), "--tokenizer", "char", "--test_stride", "16")
    test = evaluate(tmp_path, "--init_from", "run", "--split", "test")
    assert test["loss"] == pytest.approx(last(records, "test_loss"), abs=1e-5)
    assert test["bits_per_byte"] == pytest.approx(last(records, "test_bits_per_byte"), abs=1e-5)
    assert (test["split"], test["stride"], test["tokens"]) == ("test", 16, last(records, "test_tokens"))
    val = evaluate(tmp_path, "--init_from", "run")
    assert val["split"] == "val" and val["loss"] == pytest.approx(last(records, "val_loss"), abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Refusals, offline hints


def test_a_missing_split_and_a_bad_option_are_one_line_naming_the_options(char_run):
    where, _ = char_run
    line = one_error_line(run(where, "-m", "nanogpt2.evaluate", "--init_from", "out-shakespeare", "--split", "test"))
    assert "has no test split" in line and "--split val" in line and "prepare_dataset" not in line
    line = one_error_line(run(where, "-m", "nanogpt2.evaluate", "--init_from", "out-shakespeare", "--dataset",
                              "shakespeare", "--split", "test"))
    assert "--split val" in line and "prepare_dataset" not in line and "get_split_text" not in line
    line = one_error_line(run(where, "-m", "nanogpt2.evaluate", "--init_from", "out-shakespeare", "--eval_iters", "-1"))
    assert line.startswith("error: --eval_iters must be >= 0")


@pytest.mark.parametrize("command", [["sample.py"], ["-m", "nanogpt2.evaluate"]])
def test_offline_default_model_names_the_run_folders_here(tmp_path, char_run, command):
    """The default --init_from gpt2 cannot be downloaded: the one error line names the run folders in the current
    directory as the offline alternative (and how to make one when there is none)."""
    script = [ROOT / command[0]] if command[0].endswith(".py") else command
    (tmp_path / "notes").mkdir()  # a folder without a checkpoint is not offered
    line = one_error_line(run(tmp_path, *script))
    assert "could not download model 'gpt2'" in line and "python train.py" in line
    line = one_error_line(run(char_run[0], *script))
    assert line.endswith("Offline, a run folder here loads without a download: --init_from out-shakespeare.")
