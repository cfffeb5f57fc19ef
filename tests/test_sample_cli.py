"""
sample.py end to end on tiny random models: an HF folder (GPT-2 vocabulary) and a train.py-style
checkpoint (character vocabulary). Runs `main` in-process for speed and the script once as a process for
the error path (one line on stderr, exit status 2).
"""

import importlib.util
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from nanogpt2.generate import generate
from nanogpt2.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def _load_sample_module():
    spec = importlib.util.spec_from_file_location("sample_script", ROOT / "sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sample = _load_sample_module()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=1, n_head=2, initializer_range=0.2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def run(capsys, *args):
    sample.main(["--device", "cpu", "--max_new_tokens", "12", *map(str, args)])
    return capsys.readouterr().out


def test_samples_are_seeded_and_streaming_prints_the_same(hf_folder, capsys):
    a = run(capsys, "--init_from", hf_folder, "--start", "Hello, world", "--num_samples", 2, "--seed", 3)
    assert a.count("---------------") == 2 and a.startswith("Hello, world")
    assert run(capsys, "--init_from", hf_folder, "--start", "Hello, world", "--num_samples", 2, "--seed", 3) == a
    assert run(capsys, "--init_from", hf_folder, "--start", "Hello, world", "--num_samples", 2, "--seed", 4) != a
    streamed = run(capsys, "--init_from", hf_folder, "--start", "Hello, world", "--num_samples", 2, "--seed", 3, "--stream")
    assert streamed == a


def test_greedy_matches_the_api(hf_folder, capsys):
    from nanogpt2.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    out = run(capsys, "--init_from", hf_folder, "--start", "The cat", "--num_samples", 1, "--greedy")
    model = GPT.from_pretrained(str(hf_folder))
    ids = generate(model, torch.tensor([tok.encode("The cat")]), 12, greedy=True, eos_token_id=tok.eot_token)
    assert out == tok.decode(ids[0].tolist()) + "\n---------------\n"


def test_prompt_from_file_empty_prompt_and_compare(hf_folder, capsys, tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("Once upon a time")
    out = run(capsys, "--init_from", hf_folder, "--start", f"FILE:{p}", "--num_samples", 1, "--greedy")
    assert out.startswith("Once upon a time")
    out = run(capsys, "--init_from", hf_folder, "--num_samples", 1, "--greedy")
    assert out.startswith("<|endoftext|>")
    out = run(capsys, "--init_from", hf_folder, "--start", "Once", "--compare", "--columns", 3)
    for label, _ in sample.COMPARE:
        assert f"== {label} ==" in out


def test_train_checkpoint_with_char_vocab(tmp_path, capsys):
    from nanogpt2.checkpoint import save_checkpoint

    chars = sorted(set("\nabcdefghijklmnopqrstuvwxyz ,.!?"))
    cfg = GPTConfig(block_size=32, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = GPT(cfg)
    save_checkpoint(tmp_path / "run" / "checkpoint_best.pt",
                    {"model": model.state_dict(), "model_config": cfg.to_dict(), "run_config": {},
                     "tokenizer": {"name": "char", "chars": "".join(chars)}, "step": 7})
    out = run(capsys, "--init_from", tmp_path / "run", "--start", "hello", "--num_samples", 2, "--max_new_tokens", 40,
              "--top_p", 0.9)
    texts = out.split("---------------\n")[:2]
    assert all(t.startswith("hello") and len(t) == len("hello") + 40 + 1 for t in texts)  # 40 chars + newline
    assert set("".join(texts)) <= set(chars)
    out = run(capsys, "--init_from", tmp_path / "run", "--num_samples", 1, "--max_new_tokens", 5)  # starts from "\n"
    assert out.startswith("\n")


def test_bad_options_exit_2_with_one_line(hf_folder):
    for args, word in [(["--top_p", "1.5"], "top_p"), (["--temperature", "-1"], "temperature"),
                       (["--init_from", "no-such-model"], "init_from")]:
        res = subprocess.run([sys.executable, "sample.py", "--device", "cpu", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2 and res.stderr.startswith("error:") and word in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
