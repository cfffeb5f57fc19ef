"""
nanoGPT's files in nanogpt2 (nanogpt2/nanogpt_format.py): a ckpt.pt / run folder as an init_from (model_args, the
`_orig_mod.` prefix, bias=False, a padded vocabulary, iter_num / best_val_loss), meta.pkl read by the restricted
unpickler, sample.py's greedy text equal to nanoGPT's own.

References: tests/fixtures/nanogpt-char-run (a run folder nanoGPT's own train.py wrote, with the greedy text and
logits of nanoGPT's model.generate(..., top_k=1)); nanoGPT's model.py from ../shared/oracles (tests that need it
skip without ../shared).

Run: python -m pytest -q tests/test_nanogpt_format.py
"""

import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT, one_error_line, shared_oracle
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_model, load_model_and_tokenizer
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.nanogpt_format import read_meta, read_meta_tokenizer

RUN = FIXTURES / "nanogpt-char-run"
REF = json.loads((RUN / "reference.json").read_text())


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))


def script(name, *args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def nanogpt_file(folder, model_args, weights, dataset="shakespeare_char", prefix="", iter_num=7):
    """A ckpt.pt with the entries nanoGPT's train.py saves (weights under `prefix`, e.g. "_orig_mod.")."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model": {prefix + k: v for k, v in weights.items()}, "optimizer": {"state": {}, "param_groups": []},
             "model_args": model_args, "iter_num": iter_num, "best_val_loss": torch.tensor(1.25),
             "config": {"dataset": dataset, "out_dir": str(folder)}}
    torch.save(state, folder / "ckpt.pt")
    return folder / "ckpt.pt"


def nanogpt_oracle_model(seed=0, **args):
    """nanoGPT's own GPT (../shared/oracles/nanogpt/model.py), random weights large enough to matter."""
    nanogpt = shared_oracle("nanogpt/model.py")
    torch.manual_seed(seed)
    model = nanogpt.GPT(nanogpt.GPTConfig(**args)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


# ----------------------------------------------------------------------------------------------------
# meta.pkl: the restricted unpickler


def test_meta_pkl_of_nanogpt_is_the_shakespeare_char_vocabulary():
    tok = read_meta_tokenizer(RUN / "meta.pkl")
    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert tok.chars == sorted(set(text))  # what nanoGPT's data/shakespeare_char/prepare.py builds
    assert tok.decode(tok.encode("First Citizen:")) == "First Citizen:"


@pytest.mark.parametrize("payload, what", [
    ({"stoi": {"a": 0}, "itos": {0: "a"}, "vocab_size": 1.0}, "float"),
    ({"stoi": (1, 2)}, "tuple"),
    ({"itos": {0: b"a"}}, "bytes"),
    ({"flag": True}, "bool"),
    ([1, 2], "list"),
])
def test_meta_pkl_admits_only_dict_list_str_int(tmp_path, payload, what):
    p = tmp_path / "meta.pkl"
    p.write_bytes(pickle.dumps(payload))
    with pytest.raises(NanoGPT2Error, match=rf"is refused: it holds a {what}"):
        read_meta(p)


def test_meta_pkl_naming_a_function_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return builtins.exec, (f"open({str(marker)!r}, 'w').write('x')",)

    p = tmp_path / "meta.pkl"
    p.write_bytes(pickle.dumps({"vocab_size": 1, "stoi": Evil()}))
    with pytest.raises(NanoGPT2Error, match=r"is refused: it names the Python object builtins.exec; a nanoGPT "
                                            r"meta.pkl holds only dicts"):
        read_meta(p)
    assert not marker.exists()
    p.write_bytes(pickle.dumps({"vocab_size": 1})[:-3])  # truncated
    with pytest.raises(NanoGPT2Error, match="is not a readable pickle"):
        read_meta(p)


def test_meta_pkl_inconsistent_maps_are_refused(tmp_path):
    p = tmp_path / "meta.pkl"
    p.write_bytes(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}))
    with pytest.raises(NanoGPT2Error, match="stoi is not the inverse of itos"):
        read_meta_tokenizer(p)
    p.write_bytes(pickle.dumps({"vocab_size": 2, "itos": {0: "a", 1: "bc"}, "stoi": {"a": 0, "bc": 1}}))
    with pytest.raises(NanoGPT2Error, match="to one character"):
        read_meta_tokenizer(p)


# ----------------------------------------------------------------------------------------------------
# ckpt.pt in: the fixture nanoGPT wrote


@pytest.mark.parametrize("init_from", [RUN, RUN / "ckpt.pt"])
def test_nanogpt_run_loads_with_its_logits(init_from):
    model, tok, desc = load_model_and_tokenizer(str(init_from))
    assert desc.endswith("(nanoGPT checkpoint, iter 150, best val loss 2.9044, vocabulary of "
                         f"{RUN / 'meta.pkl'})")
    assert model.config.bias is False and model.config.activation == "gelu" and model.config.block_size == 48
    ids = torch.tensor([tok.encode(REF["prompt"])])
    with torch.no_grad():
        logits = model(ids)[0][0]  # (T, 65)
    assert (logits - torch.tensor(REF["logits"])).abs().max().item() <= 1e-5
    _, info = load_model(str(init_from))
    assert info["step"] == 150 and abs(info["best_val_loss"] - 2.9044) < 1e-4 and info["tokenizer"]["name"] == "char"
    assert info["config"]["dataset"] == "shakespeare_char"


def test_sample_greedy_equals_nanogpts_generate():
    res = script("sample.py", "--init_from", RUN, "--start", REF["prompt"], "--greedy", "--max_new_tokens", 30,
                 "--num_samples", 1, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n---------------")[0] == REF["greedy_30_top_k_1"]


def test_meta_pkl_is_found_in_the_data_folder_or_given(tmp_path, monkeypatch):
    run = tmp_path / "nanoGPT" / "out-shakespeare-char"
    run.mkdir(parents=True)
    shutil.copy(RUN / "ckpt.pt", run)
    with pytest.raises(NanoGPT2Error, match=r"a nanoGPT model of a 65-token vocabulary, but no meta.pkl says what "
                                            r"its ids are \(looked in .*meta.pkl, data/shakespeare_char/meta.pkl, "
                                            r".*\): put nanoGPT's data/<dataset>/meta.pkl beside the checkpoint, or "
                                            r"pass meta_pkl=PATH"):
        load_model(str(run))
    _, info = load_model(str(run), meta_pkl=RUN / "meta.pkl")
    assert len(info["tokenizer"]["chars"]) == 65
    data = tmp_path / "nanoGPT" / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    shutil.copy(RUN / "meta.pkl", data)
    assert load_model(str(run))[1]["tokenizer"] == info["tokenizer"]  # beside the run folder
    monkeypatch.chdir(tmp_path / "nanoGPT")
    assert load_model("out-shakespeare-char")[1]["tokenizer"] == info["tokenizer"]  # nanoGPT's sample.py's place
    with pytest.raises(NanoGPT2Error, match="meta_pkl nope.pkl does not exist"):
        load_model("out-shakespeare-char", meta_pkl="nope.pkl")


def test_sample_cli_errors_are_one_line(tmp_path):
    shutil.copy(RUN / "ckpt.pt", tmp_path)
    line = one_error_line(script("sample.py", "--init_from", tmp_path, "--device", "cpu", cwd=tmp_path))
    assert "no meta.pkl says what its ids are" in line
    res = script("sample.py", "--init_from", tmp_path, "--meta_pkl", RUN / "meta.pkl", "--device", "cpu",
                 "--max_new_tokens", 5, "--num_samples", 1, cwd=tmp_path)
    assert res.returncode == 0 and "nanoGPT checkpoint, iter 150" in res.stderr, res.stderr
    damaged = tmp_path / "cut"
    damaged.mkdir()
    (damaged / "ckpt.pt").write_bytes((RUN / "ckpt.pt").read_bytes()[:50_000])
    line = one_error_line(script("sample.py", "--init_from", damaged, "--device", "cpu", cwd=tmp_path))
    assert f"{damaged / 'ckpt.pt'} cannot be read as a nanoGPT checkpoint" in line


# ----------------------------------------------------------------------------------------------------
# ckpt.pt in: other shapes (compiled, biases, the padded GPT-2 vocabulary)


def test_compiled_padded_gpt2_model_with_biases(tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=24, vocab_size=50304, bias=True, dropout=0.1,
                       activation="gelu")
    ref = GPT(config).eval()
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=24, bias=True, vocab_size=50304, dropout=0.1)
    path = nanogpt_file(tmp_path / "out", args, ref.state_dict(), dataset="openwebtext", prefix="_orig_mod.")
    model, tok, _ = load_model_and_tokenizer(str(path))
    assert tok.name == "gpt2" and model.config.vocab_size == 50304 and model.config.dropout == 0.1
    idx = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], ref(idx)[0])
    with torch.no_grad():  # the padding rows are the most likely tokens: never produced with the tokenizer
        model.lm_head.weight[50257:] = model.lm_head.weight[:50257].abs().sum(0) * 10
    from nanogpt2.generate import generate
    out = generate(model, idx[:1, :4], 10, greedy=True, tokenizer=tok)
    assert int(out.max()) < 50257


def test_foreign_model_args_are_refused(tmp_path):
    path = nanogpt_file(tmp_path, {"n_layer": 1, "n_head": 1, "n_embd": 8, "n_kv_head": 1}, {})
    with pytest.raises(NanoGPT2Error, match=r"model_args \['n_kv_head'\] are not nanoGPT's"):
        load_model(str(path))


def test_nanogpts_own_model_gives_our_logits(tmp_path):
    ref = nanogpt_oracle_model(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304, bias=True)
    path = nanogpt_file(tmp_path, dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=50304,
                                       dropout=0.0), ref.state_dict(), prefix="_orig_mod.")
    model, _ = load_model(str(path))
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert (model(idx)[0] - ref(idx, targets=idx)[0]).abs().max().item() <= 1e-5


def test_greedy_past_the_context_equals_nanogpts_with_no_cache(tmp_path):
    """nanoGPT's generate crops the context to the last block_size tokens each step; sample.py --no_cache does
    the same (the KV cache re-prefills half a context instead: equal within block_size)."""
    ref = nanogpt_oracle_model(seed=3, n_layer=2, n_head=2, n_embd=32, block_size=12, vocab_size=65, bias=False)
    nanogpt_file(tmp_path, dict(n_layer=2, n_head=2, n_embd=32, block_size=12, bias=False, vocab_size=65,
                                dropout=0.0), ref.state_dict())
    shutil.copy(RUN / "meta.pkl", tmp_path)
    tok = read_meta_tokenizer(RUN / "meta.pkl")
    prompt = "To be, or"
    want = ref.generate(torch.tensor([tok.encode(prompt)]), 20, top_k=1)[0].tolist()
    for extra, n in (("--no_cache", 20), ("--greedy", 3)):  # 9 + 3 tokens fit the context of 12
        res = script("sample.py", "--init_from", tmp_path, "--start", prompt, "--greedy", extra,
                     "--max_new_tokens", n, "--num_samples", 1, "--device", "cpu")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n---------------")[0] == tok.decode(want[:len(prompt) + n]), extra


def test_train_py_starts_a_new_run_from_a_nanogpt_run(tmp_path):
    res = script("train.py", "configs/tiny.py", "--init_from", RUN, "--out_dir", tmp_path / "out", "--max_iters", 2,
                 "--block_size", 48, "--test_eval", "false")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert f"model: {RUN / 'ckpt.pt'} (nanoGPT checkpoint, iter 150" in out
    first = float(out.split("step 1/2 | loss ")[1].split()[0])
    assert first < 3.2  # nanoGPT's run reached 2.90 (validation); a random model of 65 ids starts at ln 65 = 4.17


def test_convert_a_nanogpt_run_to_a_nanogpt2_checkpoint(tmp_path):
    from nanogpt2.convert import convert

    res = convert(str(RUN), tmp_path / "m.pt")
    assert res["format"] == "nanogpt2"
    a, tok_a, _ = load_model_and_tokenizer(str(RUN))
    b, tok_b, desc = load_model_and_tokenizer(str(tmp_path / "m.pt"))
    assert tok_a.chars == tok_b.chars and desc.endswith("(step 150)")
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    with pytest.raises(NanoGPT2Error, match="bias=False has no HF GPT-2 equivalent"):
        convert(str(RUN), tmp_path / "hf")


# ----------------------------------------------------------------------------------------------------
# Prepared data folders: train.bin / val.bin (+ meta.pkl)


def shakespeare_char_folder(folder):
    """A data folder as nanoGPT's data/shakespeare_char/prepare.py leaves it: meta.pkl, train.bin and val.bin
    (the first 90% / last 10% of the characters as uint16 ids, `np.array(ids, dtype=np.uint16).tofile`), beside
    its input.txt, prepare.py and readme.md."""
    import numpy as np

    folder.mkdir(parents=True)
    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = read_meta_tokenizer(RUN / "meta.pkl")
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = int(len(text) * 0.9)
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    shutil.copy(RUN / "meta.pkl", folder)
    (folder / "input.txt").write_text(text, encoding="utf-8")
    (folder / "prepare.py").write_text("import numpy as np\n")
    (folder / "readme.md").write_text("# tiny shakespeare, character-level\n")
    return ids[:n], ids[n:]


def test_a_nanogpt_data_folder_is_used_as_it_is(tmp_path):
    import numpy as np
    from nanogpt2.data import prepare_dataset

    train, val = shakespeare_char_folder(tmp_path / "shakespeare_char")
    ds = prepare_dataset(str(tmp_path / "shakespeare_char"))
    assert ds.tokenizer().chars == read_meta_tokenizer(RUN / "meta.pkl").chars
    assert len(ds.tokens("train")) == len(train) == 1_003_854 and len(ds.tokens("val")) == len(val) == 111_540
    assert np.array_equal(ds.tokens("train")[:], train) and np.array_equal(ds.tokens("val")[-500:], val[-500:])
    mapped = ds.tokens("train").maps[0]
    assert isinstance(mapped, np.memmap) and str(mapped.filename) == str(tmp_path / "shakespeare_char" / "train.bin")
    assert not (tmp_path / "cache").exists()  # nothing tokenized, nothing cached
    with pytest.raises(NanoGPT2Error, match=r"holds token ids already \(nanoGPT data folder, char tokenizer\): "
                                            r"tokenizer=gpt2 cannot apply"):
        prepare_dataset(str(tmp_path / "shakespeare_char"), tokenizer="gpt2")


def test_a_gpt2_data_folder_checks_its_ids(tmp_path, monkeypatch):
    import numpy as np
    from nanogpt2 import token_files
    from nanogpt2.data import prepare_dataset
    from nanogpt2.tokenizer import get_tokenizer

    folder = tmp_path / "openwebtext"
    folder.mkdir()
    ids = np.array(get_tokenizer("gpt2").encode("Hello world, this is a GPT-2 data folder. " * 50), dtype=np.uint16)
    ids.tofile(folder / "train.bin")
    ids[:100].tofile(folder / "val.bin")
    ds = prepare_dataset(str(folder))
    assert ds.tokenizer().name == "gpt2" and len(ds.tokens("train")) == len(ids)
    bad = ids.copy()
    bad[77] = 60000
    bad.tofile(folder / "train.bin")
    with pytest.raises(NanoGPT2Error, match=r"train.bin holds token id 60000 \(token 77 of the file\), outside the "
                                            r"vocabulary of 50257"):
        prepare_dataset(str(folder))
    monkeypatch.setattr(token_files, "_SCAN_AT_OPEN", 10)  # a large folder: checked as it is read
    train = prepare_dataset(str(folder)).tokens("train")
    assert np.array_equal(train[:77], ids[:77])
    with pytest.raises(NanoGPT2Error, match="holds token id 60000"):
        train[70:80]
    (folder / "val.bin").write_bytes(b"\0" * 11)
    with pytest.raises(NanoGPT2Error, match=r"val.bin is 11 bytes, an odd number, so not uint16 token ids"):
        prepare_dataset(str(folder))


def test_a_text_folder_takes_no_scripts_and_no_readme(tmp_path):
    from nanogpt2.data import prepare_dataset
    from nanogpt2.tokenizer import get_tokenizer

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("The first document.\n")
    (folder / "sub" / "b.md").write_text("The second document.\n")
    (folder / "prepare.py").write_text("print('not a document')\n")
    (folder / "README.md").write_text("What this folder is.\n")
    (folder / "data.bin").write_bytes(b"\x01\x02")
    ds = prepare_dataset(str(folder), val_fraction=0.0)
    tok = get_tokenizer("gpt2")
    want = tok.encode("The first document.\n") + [tok.eot_token] + tok.encode("The second document.\n")
    assert ds.tokens("train")[:].tolist() == want


def test_train_py_on_a_nanogpt_data_folder_from_the_nanogpt_run(tmp_path):
    shakespeare_char_folder(tmp_path / "data" / "shakespeare_char")
    res = script("train.py", "configs/tiny.py", "--init_from", RUN, "--dataset", tmp_path / "data" / "shakespeare_char",
                 "--out_dir", tmp_path / "out", "--max_iters", 2, "--block_size", 48, "--test_eval", "false")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "(char tokenizer, vocab 65): 1,003,854 train / 111,540 val tokens" in out
    assert float(out.split("step 1/2 | loss ")[1].split()[0]) < 3.2


# ----------------------------------------------------------------------------------------------------
# ckpt.pt out: convert --to nanogpt


def as_nanogpts_sample_py_loads(out_dir):
    """nanoGPT's sample.py --init_from=resume --out_dir=out_dir, up to the model: torch.load of ckpt.pt (torch's
    default, weights_only), GPTConfig(**model_args), the `_orig_mod.` prefix removed, a strict load_state_dict."""
    nanogpt = shared_oracle("nanogpt/model.py")
    ckpt = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    model = nanogpt.GPT(nanogpt.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    return model.eval(), ckpt


def convert_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nanogpt2.convert", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_convert_to_nanogpt_loads_in_nanogpts_own_model(tmp_path):
    res = convert_cli(RUN, tmp_path / "out", "--to", "nanogpt")
    assert res.returncode == 0, res.stderr
    assert "note: nanoGPT's sample.py reads a character vocabulary from data/shakespeare_char/meta.pkl" in res.stderr
    theirs, ckpt = as_nanogpts_sample_py_loads(tmp_path / "out")
    assert ckpt["config"]["dataset"] == "shakespeare_char" and ckpt["iter_num"] == 150
    assert ckpt["model_args"] == torch.load(RUN / "ckpt.pt", weights_only=True)["model_args"]
    assert read_meta_tokenizer(tmp_path / "out" / "meta.pkl").chars == read_meta_tokenizer(RUN / "meta.pkl").chars
    ids = torch.tensor([read_meta_tokenizer(RUN / "meta.pkl").encode(REF["prompt"])])
    with torch.no_grad():
        assert (theirs(ids, targets=ids)[0][0] - torch.tensor(REF["logits"])).abs().max().item() <= 1e-5
        want = theirs.generate(ids, 30, top_k=1)[0].tolist()
    assert read_meta_tokenizer(RUN / "meta.pkl").decode(want) == REF["greedy_30_top_k_1"]


def test_convert_to_nanogpt_never_overwrites(tmp_path):
    out = tmp_path / "out-shakespeare-char"
    shutil.copytree(RUN, out)
    before = (out / "ckpt.pt").read_bytes()
    line = one_error_line(convert_cli(RUN, out, "--to", "nanogpt"))
    assert "already holds ckpt.pt and meta.pkl (a nanoGPT run's own?); nanogpt2 does not overwrite them" in line
    assert (out / "ckpt.pt").read_bytes() == before
    line = one_error_line(convert_cli(RUN, tmp_path / "x.pt", "--to", "nanogpt"))
    assert "--to nanogpt writes a folder" in line


def test_a_gpt2_model_trained_here_to_nanogpt(tmp_path):
    """A model of this project's GPT-2 family (biases, vocabulary padded to 50304, tanh GELU) and one with the exact
    GELU: nanoGPT's GPT gives the same logits for the second; for the first the GELUs differ (said in a note)."""
    from nanogpt2.convert import convert

    torch.manual_seed(0)
    idx = torch.randint(0, 50257, (2, 16))
    for activation in ("gelu", "gelu_new"):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304,
                              activation=activation)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
        src = tmp_path / f"{activation}.pt"
        from nanogpt2.convert import _write_pt
        _write_pt(model, {"tokenizer": {"name": "gpt2"}, "config": {"dataset": "/data/openwebtext"}, "step": 5},
                  src, "test")
        notes = []
        convert(str(src), tmp_path / activation, to="nanogpt", log=notes.append)
        theirs, ckpt = as_nanogpts_sample_py_loads(tmp_path / activation)
        assert ckpt["config"]["dataset"] == "openwebtext" and not (tmp_path / activation / "meta.pkl").exists()
        with torch.no_grad():
            ours = model(idx)[0]
            diff = (theirs(idx, targets=idx)[0] - ours).abs().max().item()
        if activation == "gelu":
            assert diff <= 1e-5 and not notes
        else:
            assert 1e-5 < diff < 1e-2 and "nanoGPT's the exact one" in notes[0]  # 3e-4 here
        back, _ = load_model(str(tmp_path / activation))  # and back: nanoGPT's model (exact GELU)
        with torch.no_grad():
            assert (back(idx)[0] - theirs(idx, targets=idx)[0]).abs().max().item() <= 1e-5


def test_what_nanogpt_cannot_express_is_refused(tmp_path):
    from nanogpt2.nanogpt_format import write_checkpoint
    from nanogpt2.tokenizer import get_tokenizer

    for kw, msg in ((dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
                    (dict(activation="relu"), r"activation='relu' \(nanoGPT: GELU\)"),
                    (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon=1e-06")):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50257, **kw))
        with pytest.raises(NanoGPT2Error, match="nanoGPT's GPT cannot express this model: " + msg):
            write_checkpoint(model, get_tokenizer("gpt2"), tmp_path)
    assert not list(tmp_path.iterdir())
