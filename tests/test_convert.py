"""
Tests for the export to HF (nanogpt2.convert.save_pretrained: generation_config.json, LoRA merged on a copy,
refusals, a padded vocabulary, the hf_export hook) and the converter CLI (`python -m nanogpt2.convert SRC DST`) on
every kind of source: an HF folder, OpenAI's TensorFlow folder, a .pt and a run folder, a GPT-2 name and an OpenAI
size downloaded from a loopback server, and an offline failure.

References: transformers' GPT2LMHeadModel / GPT2ForSequenceClassification loading what we write; the fixtures
tests/fixtures/openai-gpt2-tiny (TensorFlow's Saver) and openai-gpt2-tiny-hf (transformers, with logits.npy).

Run: python -m pytest -q tests/test_convert.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FIXTURES, ROOT, one_error_line, oracle
from http_fixture import serve, unused_url
from nanogpt2.checkpoint import load_checkpoint
from nanogpt2.convert import _write_pt, gpt_hf_export, main, save_pretrained
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_model, load_model_and_tokenizer
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import apply_adapters, apply_lora, lora_layers
from nanogpt2.tokenizer import get_tokenizer
from test_tf_checkpoint import tiny_bpe

transformers = oracle("transformers")

TF_DIR = FIXTURES / "openai-gpt2-tiny"
HF_DIR = FIXTURES / "openai-gpt2-tiny-hf"
IDS = torch.from_numpy(np.load(HF_DIR / "input_ids.npy")).long()  # (1, 32)
REF = np.load(HF_DIR / "logits.npy")  # (1, 32, 96)


def random_gpt(seed=0, **overrides) -> GPT:
    """A tiny GPT with weights large enough that every math field shows in the logits."""
    torch.manual_seed(seed)
    config = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=70)
    model = GPT(GPTConfig(**{**config, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def ours(model, idx):
    with torch.no_grad():
        return model(idx)[0]


def hf_logits(folder, idx):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits


# ----------------------------------------------------------------------------------------------------
# Export to HF


def test_export_of_a_non_default_shape_round_trips(tmp_path):
    model = random_gpt(n_head=4, n_embd=32, n_inner=48, layer_norm_epsilon=1e-6, activation="gelu",
                       scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False)
    folder = save_pretrained(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    idx = torch.randint(0, 70, (2, 24), generator=torch.Generator().manual_seed(1))
    assert (ours(model, idx) - hf_logits(folder, idx)).abs().max().item() <= 1e-5
    config = json.loads((folder / "config.json").read_text())
    assert config["n_inner"] == 48 and config["tie_word_embeddings"] is False and config["layer_norm_epsilon"] == 1e-6
    assert transformers.GenerationConfig.from_pretrained(folder)._from_model_config
    again = GPT.from_pretrained(folder)  # ours -> HF -> ours: bit-identical
    assert again.config == model.config
    assert again.state_dict().keys() == model.state_dict().keys()
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name


def test_lora_is_merged_into_a_copy(tmp_path):
    model = random_gpt(vocab_size=50304)  # also a GPT-2-sized vocabulary: bos/eos in generation_config.json
    apply_lora(model, rank=4, alpha=8, targets=["c_attn.v", "mlp.c_proj", "c_fc"])
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 50304, (2, 20), generator=torch.Generator().manual_seed(2))
    logits = ours(model, idx)
    base = ours(random_gpt(vocab_size=50304), idx)
    assert (logits - base).abs().max() > 0.1  # the update matters
    folder = save_pretrained(model, tmp_path / "hf")
    assert (hf_logits(folder, idx) - logits).abs().max().item() <= 1e-5
    assert not any("lora" in k for k in oracle("safetensors.torch").load_file(str(folder / "model.safetensors")))
    assert json.loads((folder / "generation_config.json").read_text()) == {
        "_from_model_config": True, "bos_token_id": 50256, "eos_token_id": 50256}
    assert not any(layer.merged for layer in lora_layers(model).values())  # the live model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(ours(model, idx), logits)


def test_adapters_and_prefix_tuning_are_refused(tmp_path):
    model = random_gpt()
    apply_adapters(model, adapter_size=4)
    with pytest.raises(NanoGPT2Error, match=r"Houlsby adapters \(adapter_config=.*cannot express: keep it as a "
                                            r"nanogpt2 .pt checkpoint, which sample.py.*nanogpt2.convert SRC DST.pt.*"
                                            r"out_dir/adapter/adapter_weights.pt"):
        save_pretrained(model, tmp_path / "a")
    model = random_gpt()
    model.prefix_config = {"num_virtual_tokens": 4}  # what prefix tuning sets (nanogpt2.peft)
    with pytest.raises(NanoGPT2Error, match=r"prefix tuning \(prefix_config=.*finetune.py --merge_and_export DIR"):
        save_pretrained(model, tmp_path / "p")
    assert not (tmp_path / "a").exists() and not (tmp_path / "p").exists()


def test_a_padded_vocabulary_is_kept_and_said_so(tmp_path):
    model = random_gpt(vocab_size=50304, n_embd=8)
    notes = []
    folder = save_pretrained(model, tmp_path / "hf", tokenizer=get_tokenizer("gpt2"), log=notes.append)
    assert len(notes) == 1 and "50304 rows but the tokenizer 50257 ids" in notes[0] and "47 rows" in notes[0]
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 50304
    idx = torch.tensor([[50256, 15496, 995]])
    assert (hf_logits(folder, idx) - ours(model, idx)).abs().max().item() <= 1e-5
    save_pretrained(model, tmp_path / "quiet", tokenizer=None, log=notes.append)
    assert len(notes) == 1


class ToyClassifier(GPT):
    """Stands in for nanogpt2/heads.py's GPTForSequenceClassification: a GPT body, a score Linear and the
    documented hook, built on gpt_hf_export."""

    def __init__(self, config, num_labels):
        super().__init__(config)
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)

    def hf_export(self):
        parts = gpt_hf_export(self)
        parts["config"].update(architectures=["GPT2ForSequenceClassification"],
                               id2label={str(i): f"L{i}" for i in range(self.score.out_features)})
        parts["generation_config"] = None
        return parts


def test_the_hf_export_hook_writes_a_classifier(tmp_path):
    torch.manual_seed(0)
    model = ToyClassifier(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=70), 3).eval()
    save_pretrained(random_gpt(n_embd=16, vocab_size=70), tmp_path / "hf")  # an earlier LM export, replaced:
    assert (tmp_path / "hf" / "generation_config.json").exists()  # its generation_config.json is removed
    folder = save_pretrained(model, tmp_path / "hf")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(folder).eval()
    idx = torch.randint(0, 70, (1, 12))
    with torch.no_grad():
        want = model.score(model.body(idx))[:, -1]  # (1, 3): the last token's scores
        assert (hf(idx).logits - want).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# The CLI, in process


def run_main(capsys, *argv):
    """main(argv) -> its result, with the stdout report checked; the stderr notes in res["err"]."""
    res = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert f"parameters: {res['params']:,}" in captured.out and f"sha256: {res['sha256']}  " in captured.out
    return {**res, "err": captured.err}


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "SRC" in out and "--to {hf,nanogpt2,nanogpt,llmc}" in out and "124M" in out


def test_hf_folder_to_pt_to_run_folder_to_hf(tmp_path, capsys):
    res = run_main(capsys, HF_DIR, tmp_path / "tiny.pt")
    assert res["format"] == "nanogpt2" and res["params"] == 8640
    state = load_checkpoint(tmp_path / "tiny.pt")  # checksum verified
    assert state["model_spec"]["kind"] == "gpt" and state["tokenizer"] == {"name": "gpt2"}
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "tiny.pt", run / "checkpoint_step_5.pt")
    res = run_main(capsys, run, tmp_path / "hf", "--to", "hf")
    assert res["architecture"] == "GPT2LMHeadModel"
    assert np.abs(hf_logits(tmp_path / "hf", IDS).numpy() - REF).max() <= 1e-5
    # the same weights as the source folder, byte for byte
    src = oracle("safetensors.torch").load_file(str(HF_DIR / "model.safetensors"))
    got = oracle("safetensors.torch").load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert src.keys() == got.keys() and all(torch.equal(src[k], got[k]) for k in src)


def test_openai_folder_to_pt_and_lora_pt_to_hf(tmp_path, capsys):
    res = run_main(capsys, TF_DIR, tmp_path / "tf.pt")
    model, info = load_model(str(tmp_path / "tf.pt"))
    assert np.abs(ours(model.eval(), IDS).numpy() - REF).max() <= 1e-5
    assert res["sha256"] == hashlib.sha256((tmp_path / "tf.pt").read_bytes()).hexdigest()
    apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    with torch.no_grad():
        next(iter(lora_layers(model).values())).lora_B.normal_(0, 1.0)
    _write_pt(model, info, tmp_path / "lora.pt", "test")
    run_main(capsys, tmp_path / "lora.pt", tmp_path / "lora-hf")
    assert (hf_logits(tmp_path / "lora-hf", IDS) - ours(model.eval(), IDS)).abs().max().item() <= 1e-5


def test_destination_checks(tmp_path, capsys):
    with pytest.raises(NanoGPT2Error, match=r"--to hf writes a folder, but DST .*x.pt is a file name"):
        main([str(HF_DIR), str(tmp_path / "x.pt"), "--to", "hf"])
    with pytest.raises(NanoGPT2Error, match=r"--to nanogpt2 writes one checkpoint file: give DST a .pt name"):
        main([str(HF_DIR), str(tmp_path / "x"), "--to", "nanogpt2"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(NanoGPT2Error, match=r"holds pytorch_model.bin, which loaders would read beside"):
        main([str(HF_DIR), str(tmp_path / "old")])
    model = random_gpt()
    apply_adapters(model, adapter_size=2)
    _write_pt(model, {"tokenizer": {"name": "gpt2"}}, tmp_path / "adapters.pt", "test")
    with pytest.raises(NanoGPT2Error, match=r"Houlsby adapters"):
        main([str(tmp_path / "adapters.pt"), str(tmp_path / "a-hf")])
    assert not (tmp_path / "a-hf").exists()


# ----------------------------------------------------------------------------------------------------
# Names, downloaded from a loopback server


def test_gpt2_name_through_the_hf_endpoint(tmp_path, monkeypatch, capsys):
    files = {f"/openai-community/gpt2/resolve/main/{n}": (HF_DIR / n).read_bytes()
             for n in ("config.json", "model.safetensors")}
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve(files, sha_header="x-linked-etag") as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url)
        run_main(capsys, "gpt2", tmp_path / "hf")
        assert set(srv.hits.values()) == {1} and len(srv.hits) == 2
    assert np.abs(hf_logits(tmp_path / "hf", IDS).numpy() - REF).max() <= 1e-5


def test_size_name_through_the_openai_endpoint_keeps_its_tokenizer(tmp_path, monkeypatch, capsys):
    tiny_bpe(tmp_path)
    names = ["checkpoint", "hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001"]
    files = {f"/models/774M/{n}": (TF_DIR / n).read_bytes() for n in names}
    files.update({f"/models/774M/{n}": (tmp_path / n).read_bytes() for n in ("encoder.json", "vocab.bpe")})
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve(files) as srv:
        monkeypatch.setenv("NANOGPT2_OPENAI_ENDPOINT", srv.base_url)
        res = run_main(capsys, "774M", tmp_path / "m.pt")
    assert "note: the tokenizer is read from" in res["err"] and "keep it there" in res["err"]
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["tokenizer"]["bpe_dir"].endswith("openai-774M")  # not GPT-2's vocabulary: the folder is kept
    model, tok, _ = load_model_and_tokenizer(str(tmp_path / "m.pt"))
    assert tok.encode("he") == [256] and np.abs(ours(model, IDS).numpy() - REF).max() <= 1e-5


# ----------------------------------------------------------------------------------------------------
# The CLI as a subprocess (python -m nanogpt2.convert): the offline error, one line


def cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "nanogpt2.convert", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_cli_subprocess_offline_names_the_url(tmp_path):
    base = unused_url("").rstrip("/")
    res = cli("124M", tmp_path / "hf", env={"NANOGPT2_OPENAI_ENDPOINT": base, "NANOGPT2_CACHE": str(tmp_path / "c")})
    line = one_error_line(res)
    assert f"{base}/models/124M/checkpoint is unreachable" in line and "pass DIR instead of '124M'" in line
    assert not (tmp_path / "hf").exists()
