"""
peft adapter folders name their base model (nanogpt2/finetuning.py peft_base): a local HF folder init_from is
recorded as its absolute path, so peft's AutoPeftModelForCausalLM loads the folder offline and gives our
logits; a base peft cannot load (a run folder, scratch) leaves it empty with one line saying how to make one.

    python -m pytest -q tests/test_peft_base.py
"""

import json
import os
import subprocess
import sys

import torch

from conftest import ROOT, oracle
from nanogpt2.convert import save_pretrained
from nanogpt2.finetuning import peft_base
from nanogpt2.loader import load_model
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.tokenizer import get_tokenizer

peft = oracle("peft")
TINY = str(ROOT / "configs" / "tiny.py")


def finetune(tmp_path, *args):
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, "--method=lora", "--lora_rank=2",
                           "--max_iters=2", "--eval_interval=0", "--test_eval=false", "--sample_interval=0",
                           "--checkpoint_interval=0", "--tokenizer=gpt2", "--out_dir=o", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_lora_adapter_of_an_hf_folder_loads_in_peft(tmp_path):
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=64, vocab_size=50257)), tmp_path / "base",
                    tokenizer=get_tokenizer("gpt2"), log=None)
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    res = finetune(tmp_path, "--init_from=base", f"--dataset={tmp_path / 'text.txt'}", "--val_fraction=0.1")
    assert res.returncode == 0, res.stderr
    config = json.loads((tmp_path / "o" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())  # was: ""
    hf = peft.AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "o" / "adapter")).eval()
    ours, _ = load_model(str(tmp_path / "o" / "checkpoint_final.pt"))
    ids = torch.tensor([[464, 2068, 7586, 21831]])
    with torch.no_grad():
        assert (hf(ids).logits - ours.eval()(ids)[0]).abs().max().item() <= 1e-5


def test_a_base_peft_cannot_load_is_said_in_one_line():
    lines = []
    assert peft_base("gpt2", lines.append) == "openai-community/gpt2" and lines == []
    assert peft_base("out/run", lines.append) == ""
    assert len(lines) == 1 and lines[0].startswith("the peft adapter folder names no base model: peft needs an HF "
                                                   "base, and init_from=out/run is not one; make one with "
                                                   "`python -m nanogpt2.convert out/run DIR`")
