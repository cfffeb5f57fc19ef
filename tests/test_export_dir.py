"""
The export-folder rule (nanogpt2/export_dir.py) through the real command lines, as subprocesses: `python -m
nanogpt2.convert SRC DST` (HF folders and .pt files) and `finetune.py --merge_and_export`, each refusal checked for
exit status 2, one `error:` line, and every file that was there byte-identical afterwards; replacing an earlier
export (said so), `--overwrite` (only the export's files replaced, the rest kept, said so), atomic writes and a
killed write's leftovers; a run folder that today's code wrote an HF export into (read as the run by sample.py,
evaluate and resume, as HF by GPT.from_pretrained, or refused in one line); the LoRA settings that warn.

References: the run's own checkpoint (the same samples and perplexity from the hybrid folder as from the run),
transformers loading what --overwrite wrote, the fixture tests/fixtures/openai-gpt2-tiny-hf.

    python -m pytest -q tests/test_export_dir.py
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, ROOT, one_error_line
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.export_dir import HF_MODEL, ExportDir
from nanogpt2.loader import load_model

HF_DIR = FIXTURES / "openai-gpt2-tiny-hf"
TINY = str(ROOT / "configs" / "tiny.py")
HF_FILES = ["config.json", "generation_config.json", "model.safetensors"]
# an export of a model read with GPT-2's tokenizer also holds GPT-2's HF tokenizer files (nanogpt2/hf_tokenizer.py)
GPT2_HF_FILES = sorted(HF_FILES + ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"])


# ----------------------------------------------------------------------------------------------------
# Helpers: a tiny run, the CLIs as processes, a folder's bytes


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A data cache with Tiny Shakespeare prepared (a cold one would print progress lines on stderr)."""
    from nanogpt2.data import prepare_dataset

    folder = tmp_path_factory.mktemp("cache")
    old = os.environ.get("NANOGPT2_CACHE")
    os.environ["NANOGPT2_CACHE"] = str(folder)
    try:
        prepare_dataset("shakespeare_char", quiet=True)
    finally:
        os.environ.pop("NANOGPT2_CACHE") if old is None else os.environ.update(NANOGPT2_CACHE=old)
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, cache):
    """A train.py run folder of the tiny model (2 steps: checkpoint_best.pt, checkpoint_final.pt, config.json,
    metrics.jsonl)."""
    out = tmp_path_factory.mktemp("base") / "run"
    res = script("train.py", TINY, f"--out_dir={out}", "--max_iters=2", "--eval_interval=0", "--test_eval=false",
                 cache=cache)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def run_dir(tmp_path, base_run):
    """A fresh copy of the base run for a test to aim exports at."""
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def script(name, *args, cache=None, cwd=None):
    """`python NAME ARGS` (a script of the project, or `-m module`) in a process; its CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cache is not None:
        env["NANOGPT2_CACHE"] = str(cache)
    cmd = [sys.executable, *(["-m", name[3:]] if name.startswith("-m ") else [str(ROOT / name)]), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or ROOT, timeout=300)


def convert(*args, cache=None):
    return script("-m nanogpt2.convert", *args, cache=cache)


def finetune(*args, cache):
    return script("finetune.py", TINY, "--max_iters=2", "--eval_interval=0", "--test_eval=false", "--method=lora",
                  *args, cache=cache)


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under `folder` ({} when it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(res, *phrases) -> str:
    """One `error:` line, exit 2, holding every phrase."""
    line = one_error_line(res)
    for phrase in phrases:
        assert phrase in line, line
    return line


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.convert SRC DST: folders


def test_convert_a_run_into_itself_or_another_run_is_refused_and_nothing_changes(run_dir, tmp_path, base_run):
    before = snapshot(run_dir)
    refused(convert(run_dir, run_dir), f"DST {run_dir} is a train.py run folder (checkpoint_best.pt, "
            "checkpoint_final.pt, config.json, metrics.jsonl) and SRC itself", f"give another DST", f"{run_dir}-hf")
    refused(convert(HF_DIR, run_dir, "--overwrite"), "is a train.py run folder", "even with --overwrite")
    assert snapshot(run_dir) == before
    # a run that has not saved a checkpoint yet (config.json + metrics.jsonl) is a run folder too
    young = tmp_path / "young"
    young.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(base_run / name, young / name)
    refused(convert(HF_DIR, young), "is a train.py run folder (config.json, metrics.jsonl)")
    assert sorted(p.name for p in young.iterdir()) == ["config.json", "metrics.jsonl"]


def test_foreign_files_are_refused_and_overwrite_replaces_only_the_exports_files(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text('{"my": "notes"}\n')
    (notes / "todo.txt").write_text("keep me\n")
    before = snapshot(notes)
    refused(convert(HF_DIR, notes), "holds files this export did not write (config.json, todo.txt)",
            "--overwrite to replace only config.json and keep the rest")
    assert snapshot(notes) == before
    res = convert(HF_DIR, notes, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert f"note: --overwrite: replaced config.json in {notes}; kept its 1 other file(s): todo.txt" in res.stderr
    assert sorted(p.name for p in notes.iterdir()) == sorted(GPT2_HF_FILES + ["todo.txt"])
    assert (notes / "todo.txt").read_bytes() == before["todo.txt"]
    ours, _ = load_model(str(HF_DIR))
    theirs, _ = load_model(str(notes))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_an_earlier_export_is_replaced_and_said_so_and_the_source_itself_is_refused(tmp_path, run_dir, cache):
    hf = tmp_path / "hf"
    res = convert(HF_DIR, hf)
    assert res.returncode == 0 and "replaced" not in res.stderr, res.stderr
    (hf / ".model.safetensors.999.deadbeef.tmp").write_bytes(b"left by a killed write")
    res = convert(run_dir, hf, cache=cache)
    assert res.returncode == 0, res.stderr
    assert f"note: replaced the earlier HF model folder in {hf} (" in res.stderr
    assert "removed merges.txt, special_tokens_map.json, tokenizer_config.json, vocab.json, which this export does " \
           "not write" in res.stderr  # the character model has no HF tokenizer: the GPT-2 one's files went
    assert sorted(p.name for p in hf.iterdir()) == HF_FILES  # the killed write's temp file is gone too
    run_model, _ = load_model(str(run_dir))
    hf_model, _ = load_model(str(hf))
    assert all(torch.equal(a, b) for a, b in zip(run_model.state_dict().values(), hf_model.state_dict().values()))
    before = snapshot(hf)
    refused(convert(hf, hf), f"DST {hf} is SRC ({hf})", "give another DST")
    refused(convert(hf, hf, "--overwrite"), "is SRC")
    assert snapshot(hf) == before


def test_another_kind_an_incomplete_export_and_other_weights_are_refused(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(FIXTURES / "peft-lora-tiny" / name, peft)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(HF_DIR / "model.safetensors", half)
    old = tmp_path / "old"
    old.mkdir()
    (old / "pytorch_model.bin").write_bytes(b"weights a loader would read")
    before = {p: snapshot(p) for p in (peft, half, old)}
    refused(convert(HF_DIR, peft), "holds a peft adapter folder (adapter_config.json, adapter_model.safetensors)",
            "not an HF model folder")
    refused(convert(HF_DIR, half), "holds an incomplete HF model folder (model.safetensors, no config.json")
    refused(convert(HF_DIR, old, "--overwrite"), "holds pytorch_model.bin, which loaders would read beside",
            "--overwrite does not")
    assert {p: snapshot(p) for p in (peft, half, old)} == before
    file_dst = tmp_path / "file"
    file_dst.write_text("x")
    refused(convert(HF_DIR, file_dst), "--to hf writes a folder")


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.convert SRC DST.pt


def test_pt_destinations(tmp_path, run_dir, cache):
    before = snapshot(run_dir)
    refused(convert(HF_DIR, run_dir / "checkpoint_best.pt"), "would be a checkpoint of the train.py run")
    refused(convert(HF_DIR, run_dir / "checkpoint_step_99.pt"), "would be a checkpoint of the train.py run")
    shutil.copy(run_dir / "checkpoint_final.pt", tmp_path / "train.pt")
    refused(convert(HF_DIR, tmp_path / "train.pt", "--overwrite"), "is a train.py checkpoint", "even with --overwrite")
    assert snapshot(run_dir) == before and (tmp_path / "train.pt").read_bytes() == before["checkpoint_final.pt"]
    (tmp_path / "mine.pt").write_bytes(b"not a checkpoint")
    refused(convert(HF_DIR, tmp_path / "mine.pt"), "exists and is not a converted nanogpt2 checkpoint",
            "--overwrite to replace it")
    assert (tmp_path / "mine.pt").read_bytes() == b"not a checkpoint"
    res = convert(HF_DIR, tmp_path / "mine.pt", "--overwrite")
    assert res.returncode == 0 and f"note: --overwrite: replaced {tmp_path / 'mine.pt'}" in res.stderr, res.stderr
    res = convert(run_dir, tmp_path / "mine.pt", cache=cache)
    assert res.returncode == 0 and "note: replaced the earlier converted checkpoint" in res.stderr, res.stderr
    assert load_model(str(tmp_path / "mine.pt"))[1]["step"] == 2  # the run's, not the HF folder's 0
    refused(convert(tmp_path / "mine.pt", tmp_path / "mine.pt"), "is SRC")


# ----------------------------------------------------------------------------------------------------
# finetune.py --merge_and_export


def test_merge_and_export_into_the_base_run_or_the_out_dir_is_refused_at_start(tmp_path, run_dir, cache):
    before = snapshot(run_dir)
    out = tmp_path / "ft"
    refused(finetune(f"--init_from={run_dir}", f"--out_dir={out}", f"--merge_and_export={run_dir}", cache=cache),
            f"merge_and_export {run_dir} is a train.py run folder", "and init_from itself", "give another merge_and_export")
    refused(finetune(f"--init_from={run_dir}", f"--out_dir={out}", f"--merge_and_export={out}", cache=cache),
            f"merge_and_export {out} is the run's out_dir")
    refused(finetune(f"--init_from={run_dir}", f"--out_dir={out / 'inner'}", f"--merge_and_export={out}", cache=cache),
            f"merge_and_export {out} holds the run's out_dir")
    assert snapshot(run_dir) == before and not out.exists()  # refused before anything was written


def test_merge_and_export_replaces_an_earlier_export_and_refuses_other_files(tmp_path, run_dir, cache):
    hf, mixed = tmp_path / "hf", tmp_path / "mixed"
    assert convert(HF_DIR, hf).returncode == 0
    mixed.mkdir()
    (mixed / "README.md").write_text("mine\n")
    res = finetune(f"--init_from={run_dir}", f"--out_dir={tmp_path / 'a'}", f"--merge_and_export={hf}", cache=cache)
    assert res.returncode == 0, res.stderr
    assert f"replaced the earlier HF model folder in {hf}" in res.stdout and f"exported to {hf} (HF folder)" in res.stdout
    ours, _ = load_model(str(tmp_path / "a"))
    from nanogpt2.peft import merge_lora

    merge_lora(ours)
    theirs, _ = load_model(str(hf))
    x = torch.randint(0, 65, (1, 16))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x)[0], theirs.eval()(x)[0], atol=1e-5)
    refused(finetune(f"--init_from={run_dir}", f"--out_dir={tmp_path / 'b'}", f"--merge_and_export={mixed}",
                     cache=cache), f"merge_and_export {mixed} holds files this export did not write (README.md)",
            "--overwrite")
    # a prefix exports a peft folder: an HF export is another kind
    refused(finetune(f"--init_from={run_dir}", f"--out_dir={tmp_path / 'c'}", f"--merge_and_export={hf}",
                     "--method=prefix", "--prefix_length=4", "--block_size=28", cache=cache),
            f"merge_and_export {hf} holds an HF model folder", "not a peft adapter folder")
    assert (mixed / "README.md").read_text() == "mine\n" and sorted(p.name for p in mixed.iterdir()) == ["README.md"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_lora_settings_that_cannot_work_warn_once_each(tmp_path, run_dir, cache):
    res = finetune(f"--init_from={run_dir}", f"--out_dir={tmp_path / 'w'}", "--lora_rank=33", "--lora_alpha=0",
                   cache=cache)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, res.stderr
    assert warnings[0].startswith("warning: lora_alpha=0 scales every LoRA update by 0")
    assert warnings[1].startswith("warning: lora_rank=33 is above min(in, out) of 2 targeted layer(s) (e.g. "
                                  "transformer.h.0.attn.c_attn: 32 -> 96, min 32)")


def test_lora_warnings_name_exactly_the_useless_settings():
    from nanogpt2.finetuning import lora_warnings
    from nanogpt2.model import GPT, GPTConfig
    from nanogpt2.peft import apply_lora

    def warned(rank, alpha, targets):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))
        apply_lora(model, rank, alpha, targets)
        return lora_warnings(model)

    assert warned(16, 32, ["c_attn", "c_fc"]) == []  # min(16, 48) = 16: full rank, but no rank is wasted
    assert len(warned(17, 32, ["c_fc"])) == 1 and "min 16" in warned(17, 32, ["c_fc"])[0]
    assert "(e.g. transformer.h.0.attn.c_attn: 16 -> 16, min 16)" in warned(17, 1, ["c_attn.v"])[0]  # the v part
    assert [w.split()[0] for w in warned(4, 0, ["c_attn"])] == ["lora_alpha=0"]


# ----------------------------------------------------------------------------------------------------
# A run folder that today's code wrote an HF export into


@pytest.fixture(scope="module")
def base_run_hf(tmp_path_factory, base_run, cache):
    """The base run exported to an HF folder."""
    hf = tmp_path_factory.mktemp("base-hf") / "hf"
    assert convert(base_run, hf, cache=cache).returncode == 0
    return hf


@pytest.fixture
def hybrid(tmp_path, run_dir, base_run_hf):
    """What `python -m nanogpt2.convert RUN RUN` made before the rule: the run's config.json replaced by the HF
    one, model.safetensors and generation_config.json beside the checkpoints."""
    pristine = Path(shutil.copytree(run_dir, tmp_path / "pristine"))
    for name in HF_FILES:
        shutil.copy(base_run_hf / name, run_dir / name)
    return run_dir, pristine


def test_a_hybrid_folder_is_read_as_the_run_by_sample_evaluate_and_resume(tmp_path, hybrid, cache):
    folder, pristine = hybrid
    sample = ["--max_new_tokens=20", "--num_samples=2", "--seed=3", "--device=cpu"]
    want = script("sample.py", f"--init_from={pristine}", *sample, cache=cache)
    got = script("sample.py", f"--init_from={folder}", *sample, cache=cache)
    assert want.returncode == 0 and got.returncode == 0, got.stderr
    assert got.stdout == want.stdout  # the run's model and its character tokenizer, not the HF weights with GPT-2's
    assert f"warning: {folder} holds a train.py run and an HF export written into it: reading the run " \
           f"(checkpoint_final.pt)" in got.stderr
    text = tmp_path / "text.txt"
    text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    scores = [script("-m nanogpt2.evaluate", f"--init_from={f}", f"--dataset={text}", "--split=all", "--json",
                     cache=cache) for f in (pristine, folder)]
    assert all(s.returncode == 0 for s in scores), scores[1].stderr
    assert json.loads(scores[0].stdout)["loss"] == json.loads(scores[1].stdout)["loss"]
    res = script("train.py", TINY, f"--out_dir={folder}", "--resume_from=auto", "--max_iters=3", "--eval_interval=0",
                 "--test_eval=false", cache=cache)
    assert res.returncode == 0 and "resum" in res.stdout.lower(), res.stdout + res.stderr
    after = script("sample.py", f"--init_from={folder}", *sample, cache=cache)  # config.json is the run's again
    assert after.returncode == 0 and "loaded" in after.stderr and "step 3" in after.stderr, after.stderr


def test_a_hybrid_folder_is_read_as_hf_where_hf_is_asked_for_or_refused_in_one_line(tmp_path, hybrid, cache):
    folder, _ = hybrid
    code = ("import sys, torch; from nanogpt2.errors import run_cli; from nanogpt2.model import GPT; "
            "m = run_cli(GPT.from_pretrained, sys.argv[1]); print(m.config.vocab_size)")
    res = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "65", res.stderr  # the HF export, while config.json is HF's
    run_config = tmp_path / "pristine" / "config.json"
    shutil.copy(run_config, folder / "config.json")  # what a resume writes
    res = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    line = refused(res, f"{folder / 'config.json'} holds a train.py run's settings, not an HF config",
                   f"python -m nanogpt2.convert {folder} {folder}-hf")
    assert "vocab_size=None" not in line


# ----------------------------------------------------------------------------------------------------
# Atomic writes, in process


def test_a_failed_replace_leaves_no_half_loadable_folder(tmp_path, monkeypatch):
    import nanogpt2.convert as conv
    from nanogpt2.model import GPT, GPTConfig

    hf = tmp_path / "hf"
    conv.save_pretrained(load_model(str(HF_DIR))[0], hf, log=None)
    old = snapshot(hf)
    real_save = conv.save_file

    def dies(tensors, path, metadata=None):  # a write that fails half-way: the temp file exists, then an error
        Path(path).with_name(f".{Path(path).name}.1.ab.tmp").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conv, "save_file", dies)
    other = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, activation="gelu"))
    with pytest.raises(OSError):
        conv.save_pretrained(other, hf, log=None)
    # the marker went first: the folder does not load (one clear line), and the old weights are whole
    assert not (hf / "config.json").exists() and (hf / "model.safetensors").read_bytes() == old["model.safetensors"]
    with pytest.raises(NanoGPT2Error, match="no config.json"):
        load_model(str(hf))
    with pytest.raises(NanoGPT2Error, match="an incomplete HF model folder"):
        ExportDir.check(hf, HF_MODEL)
    monkeypatch.setattr(conv, "save_file", real_save)
    notes = []
    conv.save_pretrained(other, hf, log=notes.append, overwrite=True)
    assert sorted(p.name for p in hf.iterdir()) == HF_FILES  # the temp file is cleared
    assert len([n for n in notes if n.startswith("--overwrite:")]) == 1 and len(notes) == 2  # + no HF tokenizer
    assert torch.equal(load_model(str(hf))[0].transformer.wte.weight, other.transformer.wte.weight)


def test_peft_and_classifier_exports_follow_the_rule(tmp_path):
    from nanogpt2.heads import GPTForSequenceClassification, save_peft_classifier
    from nanogpt2.model import GPTConfig
    from nanogpt2.peft import apply_lora, save_peft_adapter

    model = GPTForSequenceClassification(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20), 3)
    hf = model.save_pretrained(tmp_path / "clf")
    with pytest.raises(NanoGPT2Error, match="holds an HF model folder .* not a peft adapter folder"):
        save_peft_adapter(model, hf)
    apply_lora(model, 2, 4, ["c_attn"])
    notes = []
    save_peft_adapter(model, tmp_path / "adapter")
    save_peft_classifier(model, tmp_path / "adapter", log=notes.append)  # replaces the LoRA-only folder
    assert notes == [f"replaced the earlier peft adapter folder in {tmp_path / 'adapter'} (adapter_config.json, "
                     f"adapter_model.safetensors)"]
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    (tmp_path / "adapter" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "adapter")
    with pytest.raises(NanoGPT2Error, match=r"holds files this export did not write \(adapter_config.json, "
                                            r"adapter_model.safetensors, notes.txt\)"):
        save_peft_classifier(model, tmp_path / "adapter")
    with pytest.raises(NanoGPT2Error, match="holds files this export did not write"):
        model.save_pretrained(tmp_path / "adapter")
    assert snapshot(tmp_path / "adapter") == before
