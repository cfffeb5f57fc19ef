"""
Issue 30's "Also" list, each through the real CLI (subprocesses: stdout/stderr are not terminals):
sample.py --greedy prints one sample unless --num_samples is given; progress times in h/m/s, and no \\r progress
lines in a log; the Houlsby-adapter convert refusal names what works; configs/finetune_selective.py on a model
shallower than its freeze list says so in one line; `results/` is ignored by git; a prefix run's
--merge_and_export peft folder names its base model (peft loads it offline).

    python -m pytest -q tests/test_also.py
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, one_error_line, oracle
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.convert import save_pretrained
from nanogpt2.loader import model_spec
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.outputs import fmt_duration
from nanogpt2.peft import apply_adapters
from nanogpt2.tokenizer import get_tokenizer

TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data cache holding Tiny Shakespeare (characters), prepared: a cold one prints progress lines on stderr."""
    from nanogpt2.data import prepare_dataset

    root = tmp_path_factory.mktemp("cache")
    prepare_dataset("shakespeare_char", cache_root=root / "data", quiet=True)
    return root


@pytest.fixture
def script(tmp_path, cache):
    """script(name, *args): ROOT/name (a module with -m when not a .py) run in tmp_path, offline, with the warm
    cache."""
    def run(name, *args, timeout=300):
        env = {**os.environ, "NANOGPT2_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [str(ROOT / name)] if name.endswith(".py") else ["-m", name]
        return subprocess.run([sys.executable, *cmd, *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A tiny HF GPT-2 folder (GPT-2's vocabulary, its tokenizer files)."""
    folder = tmp_path_factory.mktemp("hf") / "base"
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=64, vocab_size=50257)), folder,
                    tokenizer=get_tokenizer("gpt2"), log=None)
    return folder


def samples(stdout: str) -> list:
    return [s for s in stdout.split("---------------\n") if s.strip()]


def test_greedy_prints_one_sample_unless_num_samples_is_given(script, tmp_path, hf_base):
    common = ["--init_from", hf_base, "--device", "cpu", "--start", "Hello", "--max_new_tokens", 5]
    greedy = script("sample.py", *common, "--greedy")
    assert greedy.returncode == 0, greedy.stderr
    assert len(samples(greedy.stdout)) == 1  # was 3 identical ones
    zero = script("sample.py", *common, "--temperature", 0)
    assert samples(zero.stdout) == samples(greedy.stdout)
    asked = script("sample.py", *common, "--greedy", "--num_samples", 2)
    assert samples(asked.stdout) == samples(greedy.stdout) * 2
    sampled = script("sample.py", *common)
    assert len(samples(sampled.stdout)) == 3  # sampling keeps its default of 3


def test_durations_are_shown_in_the_units_that_fit():
    assert [fmt_duration(s) for s in (0, 42.9, 60, 307, 3599, 3600, 3900, 86399, 90000 + 3600)] == [
        "0s", "42s", "1m00s", "5m07s", "59m59s", "1h00m", "1h05m", "23h59m", "1d02h"]


def test_training_progress_in_a_log_has_no_carriage_returns_and_h_m_s_times(script, tmp_path):
    res = script("train.py", TINY, "--max_iters=3", "--eval_interval=0", "--checkpoint_interval=0",
                 f"--out_dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    steps = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3
    assert all(" | elapsed " in s and " | ETA " in s and "ETA:" not in s and "0.00h" not in s for s in steps)
    assert re.search(r"\| elapsed \d+s \| ETA 0s \| budget left 11h5\dm$", steps[-1]), steps[-1]  # 12 h budget
    scored = script("nanogpt2.evaluate", "--init_from", tmp_path / "run", "--dataset", "shakespeare_char",
                    "--split", "val", "--stride", 16, "--max_tokens", 400, "--device", "cpu")
    assert scored.returncode == 0, scored.stderr
    assert "\r" not in res.stdout + res.stderr + scored.stdout + scored.stderr  # not a terminal: no redrawn lines
    assert re.search(r"^\d+/\d+ windows, running ppl \d", scored.stderr, re.M)  # the last one, as a line


def test_the_adapter_convert_refusal_names_what_works(script, tmp_path, hf_base):
    from nanogpt2.loader import load_model

    model, _ = load_model(str(hf_base))
    apply_adapters(model, adapter_size=4)
    ckpt_io.save_checkpoint(tmp_path / "adapters.pt", {
        "model": model.state_dict(), "model_spec": model_spec(model), "model_config": {}, "step": 0,
        "tokenizer": ckpt_io.tokenizer_info(get_tokenizer("gpt2")), "run_config": {}})
    res = subprocess.run([sys.executable, "-m", "nanogpt2.convert", str(tmp_path / "adapters.pt"), str(tmp_path / "hf")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(res)
    assert "Houlsby adapters" in line and "--merge_and_export" not in line.split("merge_and_export cannot")[0]
    assert "sample.py --init_from" in line and "python -m nanogpt2.evaluate" in line
    assert "adapter_weights.pt" in line and "merge_and_export cannot merge adapters either" in line
    assert not (tmp_path / "hf").exists()
    # what it names works: the .pt samples
    ok = script("sample.py", "--init_from", tmp_path / "adapters.pt", "--device", "cpu", "--greedy",
                "--max_new_tokens", 3)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("n_layer, message", [
    (2, "freeze_layers='0,1,2,3' names block 3, but this model has 2 blocks (0-1): it is shallower than the freeze "
        "list; give blocks it has, e.g. --freeze_layers 0 (the lower half)"),
    (4, "freeze_layers='0,1,2,3' freezes every block of this 4-block model, so only the embeddings and the head "
        "would train; freeze fewer, e.g. --freeze_layers 0,1 (the lower half)"),
])
def test_the_selective_recipe_on_a_shallower_model_says_so(script, tmp_path, n_layer, message):
    res = script("finetune.py", ROOT / "configs" / "finetune_selective.py", TINY, "--init_from=scratch",
                 f"--n_layer={n_layer}", "--max_iters=2", f"--out_dir={tmp_path / 'o'}")
    assert one_error_line(res) == f"error: {message}"
    assert not (tmp_path / "o").exists()


def test_results_trees_are_ignored_by_git(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "check-ignore", "-q", "results/gpt2/20260101-000000/train/weights/model.safetensors"],
                         cwd=ROOT)
    assert res.returncode == 0  # ignored
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""


def test_prefix_merge_and_export_names_its_base_model(script, tmp_path, hf_base):
    peft = oracle("peft")
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    res = script("finetune.py", TINY, "--method=prefix", "--prefix_length=2", f"--init_from={hf_base}",
                 f"--dataset={tmp_path / 'text.txt'}", "--val_fraction=0.1", "--tokenizer=gpt2", "--max_iters=2",
                 "--eval_interval=0", "--test_eval=false", "--sample_interval=0", "--checkpoint_interval=0",
                 "--out_dir=o", "--merge_and_export=exp", f"--results_dir={tmp_path / 'results'}")
    assert res.returncode == 0, res.stderr
    for folder in ("o/adapter", "exp"):
        config = json.loads((tmp_path / folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(hf_base.resolve()), folder  # exp's was ""
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "exp")).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[464, 2068]])).logits).all()
