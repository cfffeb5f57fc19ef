"""
llm.c's files in nanogpt2 (nanogpt2/llmc.py): model files (fp32 version 3, bf16 version 5) as an init_from and as
`convert --to llmc`, token shards as a dataset; headers and sizes validated, one-line errors.

References: tests/fixtures/llmc-tiny (model files written by llm.c's own train_gpt2.py write_model, shards by its
dev/data/data_common.py write_datafile, with llm.c's PyTorch logits); llm.c's train_gpt2.py / data_common.py from
../shared/oracles (tests that need them skip without ../shared).

Run: python -m pytest -q tests/test_llmc.py
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, one_error_line, shared_oracle
from nanogpt2 import llmc
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_model
from nanogpt2.model import GPT, GPTConfig

LLMC = FIXTURES / "llmc-tiny"
REF = json.loads((LLMC / "reference.json").read_text())
IDS = torch.tensor(REF["input_ids"])  # (2, 32)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))


def run(*args, module=None, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", module, *map(str, args)] if module else \
        [sys.executable, str(ROOT / args[0]), *map(str, args[1:])]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def logits(model, idx=IDS):
    with torch.no_grad():
        return model.eval()(idx)[0]


def shard(path, ids, magic=llmc.SHARD_MAGIC, version=1, count=None):
    """A token shard in the layout llm.c's data_common.write_datafile documents: 256 int32, then uint16 ids."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = magic, version, len(ids) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(ids, dtype=np.uint16).tobytes())
    return path


# ----------------------------------------------------------------------------------------------------
# Model files in


@pytest.mark.parametrize("name, ref", [("gpt2_tiny.bin", "logits_fp32"), ("gpt2_tiny_bf16.bin", "logits_bf16_weights")])
def test_llmc_model_files_give_llmcs_logits(name, ref):
    model, info = load_model(str(LLMC / name))
    assert info["tokenizer"] == {"name": "gpt2"} and info["description"].endswith(
        f"(llm.c model file, {'bfloat16' if 'bf16' in name else 'float32'})")
    assert model.config.vocab_size == 50257 and model.config.bias and model.config.activation == "gelu_new"
    out = logits(model)  # (2, 32, 50257)
    sums = torch.tensor(REF[ref], dtype=torch.float64)  # (2, 32): each row's sum over the 50,257 logits
    assert (out.double().sum(-1) - sums).abs().max().item() <= 1e-5
    assert (out[0, 0, :20] - torch.tensor(REF[ref + "_first_row_pos0_first20"])).abs().max().item() <= 1e-5


def test_the_bf16_file_holds_the_fp32_weights_rounded():
    a, _ = load_model(str(LLMC / "gpt2_tiny.bin"))
    b, _ = load_model(str(LLMC / "gpt2_tiny_bf16.bin"))
    for k, v in a.state_dict().items():
        assert torch.equal(v.bfloat16().float(), b.state_dict()[k]), k


def test_damaged_and_foreign_files_are_one_line(tmp_path):
    good = (LLMC / "gpt2_tiny.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good[:-4])
    with pytest.raises(NanoGPT2Error, match=r"cut.bin is damaged: 3,248,892 bytes, but its header \(2 layers, width "
                                            r"16, vocab 50304, block 32, torch.float32\) needs 3,248,896"):
        load_model(str(cut))
    header = np.frombuffer(good[:1024], dtype=np.int32).copy()
    for i, v, msg in ((1, 4, "llm.c model file version 4 is not supported"), (5, 3, "the header is damaged"),
                      (0, 20240328, "is llm.c's tokenizer file, not a model file")):
        h = header.copy()
        h[i] = v
        (tmp_path / "x.bin").write_bytes(h.tobytes() + good[1024:])
        with pytest.raises(NanoGPT2Error, match=msg):
            load_model(str(tmp_path / "x.bin"))
    with pytest.raises(NanoGPT2Error, match="is an llm.c token shard, not a model file"):
        load_model(str(LLMC / "tinyshakespeare_val.bin"))
    line = one_error_line(run("sample.py", "--init_from", cut, "--device", "cpu"))
    assert "cut.bin is damaged" in line


def test_sample_from_an_llmc_file():
    res = run("sample.py", "--init_from", LLMC / "gpt2_tiny.bin", "--start", "Hello", "--greedy", "--max_new_tokens", 5,
              "--num_samples", 1, "--device", "cpu")
    assert res.returncode == 0 and "llm.c model file, float32" in res.stderr, res.stderr
    from nanogpt2.generate import generate
    from nanogpt2.tokenizer import get_tokenizer
    tok = get_tokenizer("gpt2")
    model, _ = load_model(str(LLMC / "gpt2_tiny.bin"))
    want = generate(model.eval(), torch.tensor([tok.encode("Hello")]), 5, greedy=True, tokenizer=tok)
    assert res.stdout.split("\n---------------")[0] == tok.decode(want[0].tolist())


# ----------------------------------------------------------------------------------------------------
# Model files out


@pytest.mark.parametrize("src, dtype", [("gpt2_tiny.bin", None), ("gpt2_tiny_bf16.bin", "bfloat16"),
                                        ("gpt2_tiny.bin", "bfloat16")])
def test_convert_to_llmc_writes_llmcs_bytes(tmp_path, src, dtype):
    dst = tmp_path / "out.bin"
    res = run(LLMC / src, dst, "--to", "llmc", *(["--dtype", dtype] if dtype else []),
              module="nanogpt2.convert")
    assert res.returncode == 0, res.stderr
    want = "gpt2_tiny_bf16.bin" if dtype == "bfloat16" else "gpt2_tiny.bin"
    assert dst.read_bytes() == (LLMC / want).read_bytes()  # what llm.c's write_model wrote, byte for byte
    line = one_error_line(run(LLMC / src, dst, module="nanogpt2.convert"))
    assert f"{dst} exists; nanogpt2 does not overwrite it" in line


def test_llmcs_own_write_model_writes_our_bytes(tmp_path):
    """A model of another shape (3 layers, 4 heads, 32 wide, block 20), trained-looking weights: llm.c's own
    write_model on the same weights writes exactly what we write, fp32 and bf16."""
    train_gpt2 = shared_oracle("llmc/train_gpt2.py")
    torch.manual_seed(1)
    ours = GPT(GPTConfig(n_layer=3, n_head=4, n_embd=32, block_size=20, vocab_size=50257))
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
    theirs = train_gpt2.GPT(train_gpt2.GPTConfig(block_size=20, vocab_size=50257, n_layer=3, n_head=4, n_embd=32))
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing)  # its causal-mask buffers
    idx = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():  # (with targets: the logits of every position)
        assert (theirs.eval()(idx, targets=idx)[0] - logits(ours, idx)).abs().max().item() <= 1e-5
    for dtype in ("float32", "bfloat16"):
        train_gpt2.write_model(theirs, str(tmp_path / f"theirs_{dtype}.bin"), dtype)
        llmc.write_model_file(ours, tmp_path / f"ours_{dtype}.bin", dtype)
        assert (tmp_path / f"ours_{dtype}.bin").read_bytes() == (tmp_path / f"theirs_{dtype}.bin").read_bytes(), dtype


def test_a_model_without_biases_or_with_a_padded_vocabulary_round_trips(tmp_path):
    torch.manual_seed(2)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=50304, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    path = llmc.write_model_file(model, tmp_path / "m.bin", vocab_size=50257)
    header = np.fromfile(path, dtype=np.int32, count=8)
    assert header.tolist() == [20240326, 3, 16, 50257, 2, 2, 16, 50304]
    back, _ = load_model(str(path))
    idx = torch.randint(0, 50257, (2, 16))
    assert (logits(back, idx) - logits(model, idx)[..., :50257]).abs().max().item() <= 1e-5


def test_what_llmc_cannot_express_is_refused(tmp_path):
    for kw, msg in ((dict(activation="gelu"), r"activation='gelu' \(llm.c: 'gelu_new'\)"),
                    (dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
                    (dict(n_inner=24), r"n_inner=24 \(llm.c: 4 \* n_embd = 64\)")):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50257, **kw))
        with pytest.raises(NanoGPT2Error, match="llm.c's GPT-2 cannot express this model: " + msg):
            llmc.write_model_file(model, tmp_path / "m.bin")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------
# Token shards


def test_llmcs_shards_are_a_dataset():
    from nanogpt2.data import prepare_dataset

    ds = prepare_dataset(str(LLMC))
    assert ds.tokenizer().name == "gpt2"
    for split, name in (("train", "tinyshakespeare_train.bin"), ("val", "tinyshakespeare_val.bin")):
        toks = ds.tokens(split)
        assert len(toks) == REF["shards"][name]
        assert np.array_equal(toks[:], np.fromfile(LLMC / name, dtype=np.uint16, offset=1024))
        assert isinstance(toks.maps[0], np.memmap)
    from nanogpt2.tokenizer import get_tokenizer
    text = get_tokenizer("gpt2").decode(ds.tokens("val")[:5].tolist())  # llm.c's tinyshakespeare.py: val first
    assert text == "<|endoftext|>First Citizen:\n"


def test_shards_in_name_order_and_windows_across_them(tmp_path):
    from nanogpt2.data import prepare_dataset
    from nanogpt2.samplers import RandomWindowSampler, eval_windows

    ids = np.arange(1000, 1000 + 300, dtype=np.uint16)
    for i, (a, b) in enumerate([(0, 100), (100, 130), (130, 250)]):
        shard(tmp_path / f"fineweb_train_{i + 1:06d}.bin", ids[a:b])
    shard(tmp_path / "fineweb_val_000000.bin", ids[250:])
    (tmp_path / "README.md").write_text("shards")
    ds = prepare_dataset(str(tmp_path))
    train = ds.tokens("train")
    assert len(train) == 250 and np.array_equal(train[:], ids[:250]) and np.array_equal(train[95:140], ids[95:140])
    assert int(train[-1]) == 1249 and len(ds.tokens("val")) == 50
    sampler = RandomWindowSampler(train, block_size=16, batch_size=8, seed=3)
    x, y = sampler.next_batch()
    for row_x, row_y, s in zip(x, y, sampler.starts(0)):
        assert row_x.tolist() == ids[s:s + 16].tolist() and row_y.tolist() == ids[s + 1:s + 17].tolist()
    assert sum(len(bx) for bx, _ in eval_windows(ds.tokens("val"), 8, 2)) == 6


def test_damaged_shards_and_folders_are_refused(tmp_path):
    from nanogpt2.data import prepare_dataset

    shard(tmp_path / "a_train.bin", range(10), count=11)
    shard(tmp_path / "a_val.bin", range(10))
    with pytest.raises(NanoGPT2Error, match=r"a_train.bin is damaged: its header says 11 tokens \(1,046 bytes\) "
                                            r"but the file has 1,044 bytes"):
        prepare_dataset(str(tmp_path))
    shard(tmp_path / "a_train.bin", [1, 2, 60000])
    with pytest.raises(NanoGPT2Error, match=r"a_train.bin holds token id 60000 \(token 2 of the file\)"):
        prepare_dataset(str(tmp_path))
    shard(tmp_path / "a_train.bin", [1, 2, 3])
    (tmp_path / "a_val.bin").unlink()
    with pytest.raises(NanoGPT2Error, match=r"holds llm.c token shards but none with '_val' in its name"):
        prepare_dataset(str(tmp_path))
    (tmp_path / "a_train.bin").unlink()
    shard(tmp_path / "llama_train.bin", range(4), magic=20240801, version=7)
    with pytest.raises(NanoGPT2Error, match="is an llm.c Llama-3 token shard"):
        prepare_dataset(str(tmp_path))


def test_llmcs_own_write_datafile_is_read(tmp_path):
    data_common = shared_oracle("llmc/data_common.py")
    from nanogpt2.data import prepare_dataset

    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 50257, n).tolist() for n in (40, 70, 33)]
    for i, p in enumerate(parts[:2]):
        data_common.write_datafile(str(tmp_path / f"edu_fineweb_train_{i:06d}.bin"), p)
    data_common.write_datafile(str(tmp_path / "edu_fineweb_val_000000.bin"), parts[2])
    ds = prepare_dataset(str(tmp_path))
    assert ds.tokens("train")[:].tolist() == parts[0] + parts[1] and ds.tokens("val")[:].tolist() == parts[2]


def test_train_py_on_llmc_shards_from_an_llmc_model(tmp_path):
    res = run("train.py", "configs/tiny.py", "--init_from", LLMC / "gpt2_tiny.bin", "--dataset", LLMC,
              "--out_dir", tmp_path / "out", "--max_iters", 2, "--test_eval", "false")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "(gpt2 tokenizer, vocab 50257): 16,164 train / 2,001 val tokens" in out
    assert f"model: {LLMC / 'gpt2_tiny.bin'} (llm.c model file, float32)" in out
    back = run(tmp_path / "out", tmp_path / "trained.bin", module="nanogpt2.convert")
    assert back.returncode == 0, back.stderr  # and out again, for llm.c's trainer
    model, _ = load_model(str(tmp_path / "out"))
    again, _ = load_model(str(tmp_path / "trained.bin"))
    assert (logits(model) - logits(again)).abs().max().item() <= 1e-5


def test_evaluate_and_bench_take_nanogpt_and_llmc_files(tmp_path):
    """Every init_from: `python -m nanogpt2.evaluate` scores a nanoGPT run (its char vocabulary) and an llm.c file;
    bench.py times the llm.c file's shape."""
    run_dir = FIXTURES / "nanogpt-char-run"
    res = run("--init_from", run_dir, "--dataset", "shakespeare", "--split", "all", "--max_tokens", 300,
              "--stride", 24, "--device", "cpu", "--json", module="nanogpt2.evaluate")
    assert res.returncode == 0, res.stderr
    score = json.loads(res.stdout.strip().splitlines()[-1])
    assert "nanoGPT checkpoint, iter 150" in score["model"] and score["loss"] < 3.3  # the run reached 2.90 (validation)
    res = run("--init_from", LLMC / "gpt2_tiny.bin", "--dataset", "shakespeare", "--split", "all", "--max_tokens", 100,
              "--device", "cpu", "--json", module="nanogpt2.evaluate")
    assert res.returncode == 0, res.stderr
    assert abs(json.loads(res.stdout.strip().splitlines()[-1])["loss"] - np.log(50257)) < 0.5  # random weights
    out = tmp_path / "bench.json"
    res = run("bench.py", "train", "--init_from", LLMC / "gpt2_tiny.bin", "--block_size", 16, "--batch_size", 2,
              "--device", "cpu", "--threads", 1, "--steps", 1, "--warmup", 0, "--repeats", 1, "--json", out,
              "--out_dir", tmp_path / "b")
    assert res.returncode == 0, res.stderr[-2000:]
    model = json.loads(out.read_text())["config"]["model"]
    assert model["vocab_size"] == 50257 and model["n_embd"] == 16 and model["n_layer"] == 2
