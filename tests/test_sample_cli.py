"""
sample.py end to end on tiny random models: an HF folder (GPT-2 vocabulary) and a train.py-style
checkpoint (character vocabulary). Runs `main` in-process for speed and the script once as a process for
the error path (one line on stderr, exit status 2).
"""

import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, one_error_line, oracle
from http_fixture import serve
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.generate import generate
from nanogpt2.model import GPT, GPTConfig

transformers = oracle("transformers")


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


def api_text(folder, prompt, seed, n=12, **kw):
    """What sample.py should print for one sample: prompt + continuation by the Python API, same seed."""
    from nanogpt2.tokenizer import get_tokenizer

    tok = get_tokenizer("gpt2")
    model = GPT.from_pretrained(str(folder))
    ids = generate(model, torch.tensor([tok.encode(prompt)]), n, eos_token_id=tok.eot_token, tokenizer=tok,
                   generator=torch.Generator().manual_seed(seed), **kw)
    return tok.decode(ids[0].tolist())


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


DEFAULTS = dict(temperature=0.8, top_k=200)  # sample.py's


@pytest.mark.parametrize("args, kw, without", [
    (["--temperature", 1.3, "--top_k", 0], dict(temperature=1.3), DEFAULTS),
    (["--temperature", 1.0, "--top_k", 3], dict(temperature=1.0, top_k=3), DEFAULTS),
    (["--top_p", 0.3, "--top_k", 0, "--temperature", 1.0], dict(top_p=0.3), DEFAULTS),
    (["--greedy", "--repetition_penalty", 3.0], dict(greedy=True, repetition_penalty=3.0), dict(greedy=True)),
])
def test_sampling_options_reach_generate(hf_folder, capsys, args, kw, without):
    """Each option gives exactly the API's sample with the same settings and seed, and not the sample
    without the option (so an option that is dropped on the way shows)."""
    out = run(capsys, "--init_from", hf_folder, "--start", "Hello", "--num_samples", 1, "--seed", 21, *args)
    assert out == api_text(hf_folder, "Hello", 21, **kw) + "\n---------------\n"
    assert out != api_text(hf_folder, "Hello", 21, **without) + "\n---------------\n"


def test_dtype_and_compile_options(hf_folder, capsys, monkeypatch):
    """--dtype bfloat16 runs the model under bf16 autocast (its logits come out bf16, and the text is the
    API's under the same autocast), float32 without; --compile hands the model to torch.compile (recorded
    here: compiling takes minutes on a small CPU, and a compiled model's agreement is the model's concern)."""
    logits_dtypes = []
    load = sample.load_model_and_tokenizer

    def load_and_watch(*a, **kw):
        model, tok, desc = load(*a, **kw)
        model.lm_head.register_forward_hook(lambda module, args, out: logits_dtypes.append(out.dtype))
        return model, tok, desc

    monkeypatch.setattr(sample, "load_model_and_tokenizer", load_and_watch)
    args = ["--init_from", hf_folder, "--start", "Hello", "--num_samples", 1, "--max_new_tokens", 24, "--greedy"]
    bf16 = run(capsys, *args, "--dtype", "bfloat16")
    assert set(logits_dtypes) == {torch.bfloat16} and len(logits_dtypes) == 24
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf16 == api_text(hf_folder, "Hello", 0, n=24, greedy=True) + "\n---------------\n"
    logits_dtypes.clear()
    fp32 = run(capsys, *args, "--dtype", "float32")
    assert set(logits_dtypes) == {torch.float32}
    assert fp32 == api_text(hf_folder, "Hello", 0, n=24, greedy=True) + "\n---------------\n"

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append((model, kw)) or model)
    assert run(capsys, *args, "--dtype", "float32", "--compile") == fp32
    assert len(compiled) == 1 and isinstance(compiled[0][0], GPT) and compiled[0][1] == {"mode": None}
    assert run(capsys, *args, "--dtype", "float32", "--compile", "--compile_mode", "reduce-overhead") == fp32
    assert compiled[1][1] == {"mode": "reduce-overhead"}
    with pytest.raises(NanoGPT2Error, match="needs --compile"):
        sample.main([str(a) for a in args] + ["--compile_mode", "reduce-overhead"])


def test_init_from_gpt2_name_downloads_once(hf_folder, capsys, monkeypatch, tmp_path):
    """--init_from gpt2 fetches config.json and model.safetensors of openai-community/gpt2 (here from a
    loopback server standing in for the Hub, serving the tiny model) into the cache, then reuses them."""
    files = {f"/openai-community/gpt2/resolve/main/{name}": (hf_folder / name).read_bytes()
             for name in ("config.json", "model.safetensors")}
    with serve(files) as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
        out = run(capsys, "--init_from", "gpt2", "--start", "The cat", "--num_samples", 1, "--greedy")
        assert out == api_text(hf_folder, "The cat", 0, greedy=True) + "\n---------------\n"
        assert run(capsys, "--init_from", "gpt2", "--start", "The cat", "--num_samples", 1, "--greedy") == out
        assert sorted(srv.hits.values()) == [1, 1]  # each file fetched once, then read from the cache


def test_prompt_from_file_empty_prompt_and_compare(hf_folder, capsys, tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("Once upon a time")
    out = run(capsys, "--init_from", hf_folder, "--start", f"FILE:{p}", "--num_samples", 1, "--greedy")
    assert out.startswith("Once upon a time")
    out = run(capsys, "--init_from", hf_folder, "--num_samples", 1, "--greedy")
    assert out.startswith("<|endoftext|>")
    with pytest.raises(NanoGPT2Error, match="cannot read the prompt file"):
        run(capsys, "--init_from", hf_folder, "--start", f"FILE:{tmp_path / 'missing.txt'}")
    out = run(capsys, "--init_from", hf_folder, "--start", "Once", "--compare", "--columns", 3)
    for label, _ in sample.COMPARE:
        assert f"== {label} ==" in out


@pytest.mark.parametrize("spec", [None, "t=0.5,t=1.0,t=1.5,k=10,k=50,p=0.9", "greedy, t=0.8+k=50 ,p=0.5+temperature=2"])
def test_compare_shows_each_strategy_with_the_same_seed(hf_folder, capsys, monkeypatch, spec):
    """One column per strategy (one per row here: --columns 1 on a very wide terminal, so nothing wraps),
    each holding the continuation the API gives for that strategy and the seed: the bare --compare's, the
    recipe's grid, and strategies of several settings."""
    from nanogpt2.tokenizer import get_tokenizer

    monkeypatch.setenv("COLUMNS", "100000")
    strategies = sample.COMPARE if spec is None else sample.parse_compare(spec)
    given = ["--compare"] if spec is None else ["--compare", spec]
    out = run(capsys, "--init_from", hf_folder, "--start", "Once", *given, "--columns", 1, "--seed", 5)
    prompt_len = len(get_tokenizer("gpt2").encode("Once"))
    cells = [c.strip("\n").split("\n") for c in re.split(r"\n-{20,}\n", out)]
    cells[0] = cells[0][cells[0].index(f"== {strategies[0][0]} =="):]  # after the "prompt:" line
    assert [c[0] for c in cells] == [f"== {label} ==" for label, _ in strategies]
    texts = set()
    for cell, (label, kw) in zip(cells, strategies):
        full = api_text(hf_folder, "Once", 5, **kw)
        continuation = full[len("Once"):] if prompt_len else full
        expected = "\n".join(line.rstrip() for line in continuation.split("\n"))
        assert "\n".join(line.rstrip() for line in cell[1:]).strip("\n") == expected.strip("\n"), label
        texts.add(expected)
    assert len(texts) == len(strategies)  # as many different strategies, as many different texts


def test_compare_strategies_are_parsed_as_written():
    assert sample.parse_compare("t=0.5,k=10,p=0.9,greedy,t=0.8+k=50") == [
        ("temperature 0.5", {"temperature": 0.5}), ("top_k 10", {"top_k": 10}), ("top_p 0.9", {"top_p": 0.9}),
        ("greedy", {"greedy": True}), ("temperature 0.8, top_k 50", {"temperature": 0.8, "top_k": 50})]
    assert sample.parse_compare("temperature=1.5,top_k=3,top_p=1") == [
        ("temperature 1.5", {"temperature": 1.5}), ("top_k 3", {"top_k": 3}), ("top_p 1", {"top_p": 1.0})]


@pytest.mark.parametrize("spec, message", [
    ("t=0.5,,k=10", "has an empty strategy"),
    ("beam=4", "unknown strategy 'beam=4'; use greedy, t=T, k=K, p=P"),
    ("k=ten", "'k=ten' needs an integer"),
    ("t=hot", "'t=hot' needs a number"),
    ("p=1.5", "top_p must be in (0, 1]"),
    ("t=-1", "temperature must be a finite number >= 0"),
])
def test_bad_compare_strategies(spec, message):
    with pytest.raises(NanoGPT2Error) as e:
        sample.parse_compare(spec)
    assert message in str(e.value)


def test_a_bad_compare_is_one_line_before_the_model_loads(hf_folder):
    res = subprocess.run([sys.executable, "sample.py", "--device", "cpu", "--init_from", str(hf_folder),
                          "--compare", "t=0.5,beam=4"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(res)
    assert "unknown strategy 'beam=4'" in line and "loaded" not in res.stderr, line


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


def test_non_utf8_prompt_file_is_one_line_naming_the_file(hf_folder, tmp_path):
    """A FILE: prompt that is not UTF-8 (here Latin-1) was a UnicodeDecodeError traceback."""
    p = tmp_path / "prompt.txt"
    p.write_bytes("Le caf\u00e9\nest ferm\u00e9".encode("latin-1"))
    res = subprocess.run([sys.executable, "sample.py", "--device", "cpu", "--init_from", str(hf_folder),
                          "--start", f"FILE:{p}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(res)
    assert f"prompt file {p} is not UTF-8 text" in line and "line 1" in line and "0xe9" in line, line
    assert p.read_bytes() == "Le caf\u00e9\nest ferm\u00e9".encode("latin-1")


@pytest.mark.parametrize("device, message", [
    ("gpu", "device 'gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    ("meta", "device 'meta' is not supported"),
    ("cuda:99", "device cuda:99"),  # no CUDA here, or no 100th GPU
])
def test_device_is_checked_before_the_model_loads(hf_folder, device, message):
    """--device is validated as bench.py does (it was a torch RuntimeError traceback at model.to)."""
    res = subprocess.run([sys.executable, "sample.py", "--device", device, "--init_from", str(hf_folder)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(res)
    assert message in line and "loaded" not in res.stderr, line
