"""
HF exports carry GPT-2's tokenizer files (nanogpt2/hf_tokenizer.py via convert.save_pretrained):
transformers' AutoTokenizer built from them encodes as tiktoken, `pipeline("text-generation")` generates
from the folder, the files equal OpenAI's encoder.json / vocab.bpe, a character model says in one line that
it has none, and the parameter count convert prints is the count of what was written.

    python -m pytest -q tests/test_hf_tokenizer.py
"""

import json

import pytest
import torch

from conftest import FIXTURES, SHARED_DATA, oracle
from nanogpt2.convert import _write_pt, main, save_pretrained
from nanogpt2.hf_tokenizer import TOKENIZER_FILES, gpt2_files_text
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import apply_lora, lora_layers
from nanogpt2.tokenizer import get_tokenizer

transformers = oracle("transformers")
TIKTOKEN = get_tokenizer("gpt2", backend="tiktoken")
CASES = [c["text"] for c in json.loads((FIXTURES / "tokenizer_torture.json").read_text())["cases"]]


def gpt2_vocab_model(seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=64, vocab_size=50257)).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "export"
    save_pretrained(gpt2_vocab_model(), out, tokenizer=TIKTOKEN, log=None)
    return out


def test_auto_tokenizer_encodes_like_tiktoken(hf_folder):
    # was: no tokenizer files, AutoTokenizer built an empty tokenizer ('Hello world' -> [])
    assert all((hf_folder / name).is_file() for name in TOKENIZER_FILES)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    assert tok("Hello world")["input_ids"] == TIKTOKEN.encode_ordinary("Hello world") == [15496, 995]
    for text in CASES + [(SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:20000]
                         if (SHARED_DATA / "tinyshakespeare" / "input.txt").is_file() else ""]:
        # HF reads "<|endoftext|>" in a text as the special token, as tiktoken does when it is allowed
        assert tok(text, add_special_tokens=False)["input_ids"] == TIKTOKEN.encode(text, allowed_special="all"), \
            repr(text[:60])
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 50256
    ids = TIKTOKEN.encode_ordinary(CASES[-1])
    assert tok.decode(ids) == TIKTOKEN.decode(ids)


def test_pipeline_generates_from_the_folder(hf_folder):
    pipe = transformers.pipeline("text-generation", model=str(hf_folder), device="cpu")
    out = pipe("Hello world", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("Hello world") and len(TIKTOKEN.encode_ordinary(out)) > 2
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder))
    ids = model.generate(torch.tensor([[15496, 995]]), max_new_tokens=6, do_sample=False)[0].tolist()
    assert out == TIKTOKEN.decode(ids)  # the pipeline's text is the model's greedy ids, decoded as tiktoken does


@pytest.mark.skipif(not (SHARED_DATA / "gpt2_bpe" / "vocab.bpe").is_file(), reason="../shared/data/gpt2_bpe absent")
def test_files_equal_openai_encoder_json_and_vocab_bpe():
    files = gpt2_files_text()
    assert json.loads(files["vocab.json"]) == json.loads((SHARED_DATA / "gpt2_bpe" / "encoder.json").read_text())
    theirs = (SHARED_DATA / "gpt2_bpe" / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert files["merges.txt"].splitlines() == [line for line in theirs if line]


def test_character_model_has_no_hf_tokenizer_and_says_so(tmp_path):
    lines = []
    save_pretrained(gpt2_vocab_model(), tmp_path / "out", tokenizer=get_tokenizer("gpt2"))  # an earlier GPT-2 export
    assert all((tmp_path / "out" / name).exists() for name in TOKENIZER_FILES)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=3))
    save_pretrained(model, tmp_path / "out", tokenizer=get_tokenizer("char", text="abc"), log=lines.append)
    assert not any((tmp_path / "out" / name).exists() for name in TOKENIZER_FILES)  # the stale ones went too
    assert len(lines) == 2 and lines[0].startswith("no HF tokenizer exists for this model's tokenizer (char)")
    assert "removed merges.txt, special_tokens_map.json, tokenizer_config.json, vocab.json" in lines[1]


def test_printed_parameter_count_is_what_was_written(tmp_path, capsys):
    # was: the LoRA model's count (its A and B matrices included) for the merged export
    model = gpt2_vocab_model()
    apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    with torch.no_grad():
        next(iter(lora_layers(model).values())).lora_B.normal_(0, 1.0)
    _write_pt(model, {"tokenizer": {"name": "gpt2"}}, tmp_path / "lora.pt", "test")
    res = main([str(tmp_path / "lora.pt"), str(tmp_path / "hf")])
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    assert res["params"] == hf.num_parameters() and f"parameters: {hf.num_parameters():,}" in capsys.readouterr().out
    assert res["params"] < sum(p.numel() for p in model.parameters())
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))("Hi")["input_ids"] == [17250]
