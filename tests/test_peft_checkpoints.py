"""
PEFT checkpoints (nanogpt2/base_ref.py): a LoRA / adapter / prefix run's checkpoints hold the trained tensors and a
reference to the base (path, sha256), a small fraction of a whole-model checkpoint; sample.py, evaluate, convert
and init_from=RUN rebuild the model from base + checkpoint, bit for bit; a missing or changed base is one
`error:` line; resume stays bit-exact; a GPT-2 name resolves through the cache. And keep_last's policy over every
kind of checkpoint a run writes again and again, counted in the files real finetune.py runs leave.

    python -m pytest -q tests/test_peft_checkpoints.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, ROOT, one_error_line
from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.config import load_config
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.loader import load_model

TINY = str(ROOT / "configs" / "tiny.py")
GPT2_DATA = ("--dataset=shakespeare", "--tokenizer=gpt2")  # the GPT-2 vocabulary: a 1.6M-parameter tiny model


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A train.py run folder of the tiny model with GPT-2's vocabulary (1.6M parameters, most in the embedding)."""
    from nanogpt2.trainer import Trainer

    out = tmp_path_factory.mktemp("base") / "run"
    with pytest.MonkeyPatch.context() as mp:  # the data cache of the tests, not the user's
        mp.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))
        Trainer(load_config([TINY, *GPT2_DATA, f"--out_dir={out}", "--max_iters=2", "--eval_interval=0",
                             "--test_eval=false"])).train()
    return out


def ft_args(out, init_from, *more):
    return [TINY, *GPT2_DATA, f"--init_from={init_from}", f"--out_dir={out}", "--max_iters=6", "--eval_interval=3",
            "--checkpoint_interval=2", "--keep_last=0", "--learning_rate=1e-2", "--test_eval=false",
            "--baseline_eval=false", f"--results_dir={out}-results", *more]


LORA = ("--method=lora", "--lora_rank=2", "--lora_targets=c_attn")


def script(name, *args, cwd=None, env=None):
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


class Final:
    """A hook keeping the trained model's state_dict at the end of the run."""

    def __call__(self, trainer, event):
        if event == "train_end":
            self.state = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
            self.model = trainer.raw_model


# ----------------------------------------------------------------------------------------------------
# What a PEFT checkpoint holds, and its size


def test_lora_checkpoints_hold_the_trained_tensors_and_a_reference_to_the_base(tmp_path, base):
    final = Final()
    run(load_config(ft_args(tmp_path / "lora", base, *LORA), cls=FinetuneConfig), hooks=[final])
    state = ckpt_io.load_checkpoint(tmp_path / "lora" / "checkpoint_final.pt")
    trained = {n for n, p in final.model.named_parameters() if p.requires_grad}
    lora = {f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in (0, 1) for ab in "AB"}
    assert set(state["model"]) == trained == lora
    ref = state["base"]
    base_file = base / "checkpoint_final.pt"
    assert ref["init_from"] == str(base) and ref["load_from"] == str(base_file.resolve())
    digest = hashlib.sha256(base_file.read_bytes()).hexdigest()
    assert ref["files"] == [{"path": str(base_file.resolve()), "sha256": digest, "bytes": base_file.stat().st_size}]
    assert set(ref["tensors"]) | trained == set(final.state)  # every other tensor is the base's
    # the positional table, cropped to block_size from the base's: referred to as the base's leading rows
    assert ref["tensors"]["transformer.wpe.weight"] == ["transformer.wpe.weight", [32, 32]]
    # the moments of the trained tensors only
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == len(trained)
    rebuilt, info = load_model(str(tmp_path / "lora"))
    got = rebuilt.state_dict()
    assert set(got) == set(final.state) and all(torch.equal(got[k], final.state[k]) for k in got)


def test_a_lora_checkpoint_is_a_small_fraction_of_a_full_one_written_by_real_runs(tmp_path, base):
    sizes = {}
    for method, args in (("lora", LORA), ("full", ("--method=full",))):
        res = script("finetune.py", *ft_args(tmp_path / method, base, *args), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        names = sorted(p.name for p in (tmp_path / method).glob("checkpoint_*.pt"))
        assert names == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_2.pt", "checkpoint_step_4.pt"]
        sizes[method] = (tmp_path / method / "checkpoint_final.pt").stat().st_size
    assert "base" not in ckpt_io.load_checkpoint(tmp_path / "full" / "checkpoint_final.pt")  # full: the whole model
    weights = sum(p.numel() * 4 for p in load_model(str(base))[0].parameters())  # fp32 bytes of the base (tied once)
    assert sizes["full"] > 2 * weights  # weights and AdamW's two moments
    assert sizes["lora"] < 0.10 * sizes["full"] and sizes["lora"] < 0.05 * weights, sizes


@pytest.mark.parametrize("method, args", [
    ("adapter", ("--method=adapter", "--adapter_size=4", "--adapter_train_layernorms=false")),
    ("prefix", ("--method=prefix", "--prefix_length=4", "--prefix_projection=8", "--block_size=28")),
    ("prompt", ("--method=prompt", "--prompt_length=4", "--block_size=28")),
])
def test_adapter_prefix_and_prompt_checkpoints_rebuild_bit_for_bit(tmp_path, base, method, args):
    final = Final()
    run(load_config(ft_args(tmp_path / method, base, *args), cls=FinetuneConfig), hooks=[final])
    state = ckpt_io.load_checkpoint(tmp_path / method / "checkpoint_final.pt")
    assert "base" in state and "transformer.wte.weight" not in state["model"]
    assert all((".adapter." in k) if method == "adapter" else k.startswith(f"{method}_encoder.") for k in state["model"])
    rebuilt, _ = load_model(str(tmp_path / method / "checkpoint_final.pt"))
    got = rebuilt.state_dict()
    assert set(got) == set(final.state) and all(torch.equal(got[k], final.state[k]) for k in got)


def test_a_lora_classifier_checkpoint_holds_lora_and_its_new_head(tmp_path, base):
    final = Final()
    data = FIXTURES / "classify" / "ag_news_tiny.csv"
    cfg = load_config([TINY, "--task=classify", "--dataset=ag_news", f"--data_path={data}", f"--init_from={base}",
                       f"--out_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'results'}", "--max_length=32",
                       "--batch_size=8", "--max_iters=4", "--eval_interval=2", "--checkpoint_interval=0",
                       "--gradient_accumulation_steps=1", "--baseline_eval=false", "--test_on=final", *LORA],
                      cls=FinetuneConfig)  # test_on=final: the model keeps the last step's weights
    run(cfg, hooks=[final])
    state = ckpt_io.load_checkpoint(tmp_path / "out" / "checkpoint_final.pt")
    lora = {f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in (0, 1) for ab in "AB"}
    assert set(state["model"]) == {"score.weight", *lora}  # LoRA and the new head: nothing of the base
    rebuilt, info = load_model(str(tmp_path / "out"))
    assert info["spec"]["kind"] == "gpt_classifier"
    got = rebuilt.state_dict()
    assert set(got) == set(final.state) and all(torch.equal(got[k], final.state[k]) for k in got)


# ----------------------------------------------------------------------------------------------------
# Loading: sample.py, evaluate, convert, init_from; a base that is missing or changed


def test_sample_evaluate_convert_and_init_from_rebuild_from_base_plus_checkpoint(tmp_path, base):
    run(load_config(ft_args(tmp_path / "lora", base, *LORA), cls=FinetuneConfig))
    # evaluate scores it as the same model written whole, the format of before (which still loads)
    state = ckpt_io.load_checkpoint(tmp_path / "lora" / "checkpoint_final.pt")
    whole = {k: v for k, v in state.items() if k not in ("base", ckpt_io.CHECKSUM)}
    whole["model"] = load_model(str(tmp_path / "lora"))[0].state_dict()
    ckpt_io.save_checkpoint(tmp_path / "whole" / "checkpoint_final.pt", whole)
    scores = []
    for folder in ("lora", "whole"):
        ev = subprocess.run([sys.executable, "-m", "nanogpt2.evaluate", "--init_from", str(tmp_path / folder),
                             "--dataset", "shakespeare", "--split", "val", "--stride", "16", "--max_tokens", "200",
                             "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path)
        assert ev.returncode == 0, ev.stderr[-2000:]
        scores.append([line.split("(")[0] for line in ev.stdout.splitlines() if line.startswith("loss ")])
    assert scores[0] == scores[1] and len(scores[0]) == 1, scores
    texts = []
    for folder in ("lora", "whole"):  # and sample.py draws the same text from both
        res = script("sample.py", "--init_from", tmp_path / folder, "--max_new_tokens", 8, "--num_samples", 1,
                     "--seed", 3, "--device", "cpu", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        texts.append(res.stdout)
    assert texts[0] == texts[1] and len(texts[0].strip()) > 20
    conv = subprocess.run([sys.executable, "-m", "nanogpt2.convert", str(tmp_path / "lora"), str(tmp_path / "hf")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert conv.returncode == 0, conv.stderr[-2000:]
    ours, _ = load_model(str(tmp_path / "lora"))
    exported, _ = load_model(str(tmp_path / "hf"))  # LoRA merged: the same logits
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(x)[0], ours.eval()(x)[0], atol=1e-5, rtol=1e-5)
    # a PEFT run on a PEFT run: its base is the first run's checkpoint, itself rebuilt from its base
    final = Final()
    run(load_config(ft_args(tmp_path / "again", tmp_path / "lora", "--method=adapter", "--adapter_size=2"),
                    cls=FinetuneConfig), hooks=[final])
    again, _ = load_model(str(tmp_path / "again"))
    assert all(torch.equal(v, final.state[k]) for k, v in again.state_dict().items())


def test_a_missing_or_changed_base_is_one_error_line(tmp_path, base):
    own_base = tmp_path / "base"
    shutil.copytree(base, own_base)
    run(load_config(ft_args(tmp_path / "lora", own_base, *LORA), cls=FinetuneConfig))
    base_file = own_base / "checkpoint_final.pt"
    sample = ["--init_from", tmp_path / "lora", "--max_new_tokens", 4, "--device", "cpu"]
    saved = base_file.read_bytes()
    other = tmp_path / "other"
    from nanogpt2.trainer import Trainer

    Trainer(load_config([TINY, *GPT2_DATA, f"--out_dir={other}", "--max_iters=1", "--eval_interval=0",
                         "--test_eval=false", "--seed=7"])).train()
    shutil.copy(other / "checkpoint_final.pt", base_file)  # another valid model under the same name
    line = one_error_line(script("sample.py", *sample, cwd=tmp_path))
    assert str(base_file.resolve()) in line and "has changed since" in line and "restore that file" in line
    resume = ft_args(tmp_path / "lora", own_base, *LORA, "--max_iters=8", "--resume_from=auto")
    assert "has changed since" in one_error_line(script("finetune.py", *resume, cwd=tmp_path))
    base_file.unlink()
    line = one_error_line(script("sample.py", *sample, cwd=tmp_path))
    assert f"the base's file {base_file.resolve()} is missing; put it back" in line
    base_file.write_bytes(saved)  # the same bytes again: it loads
    assert script("sample.py", *sample, cwd=tmp_path).returncode == 0


def test_a_gpt2_name_base_resolves_through_the_cache(tmp_path, base, monkeypatch):
    """init_from=gpt2: the checkpoint records the name; another machine's cache (moved here) holding the same
    files loads it, and one holding other weights is refused."""
    cache = tmp_path / "cache"
    res = subprocess.run([sys.executable, "-m", "nanogpt2.convert", str(base), str(cache / "models" / "gpt2")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    monkeypatch.setenv("NANOGPT2_CACHE", str(cache))
    final = Final()
    run(load_config(ft_args(tmp_path / "lora", "gpt2", *LORA), cls=FinetuneConfig), hooks=[final])
    ref = ckpt_io.load_checkpoint(tmp_path / "lora" / "checkpoint_final.pt")["base"]
    assert ref["load_from"] == "gpt2"
    assert sorted(Path(f["path"]).name for f in ref["files"]) == ["config.json", "model.safetensors"]
    moved = tmp_path / "elsewhere"
    shutil.move(str(cache), str(moved))
    monkeypatch.setenv("NANOGPT2_CACHE", str(moved))
    rebuilt, _ = load_model(str(tmp_path / "lora"))
    assert all(torch.equal(v, final.state[k]) for k, v in rebuilt.state_dict().items())
    (moved / "models" / "gpt2" / "config.json").write_text(
        json.dumps({**json.loads((moved / "models" / "gpt2" / "config.json").read_text()), "layer_norm_epsilon": 1e-6}))
    env = {**os.environ, "NANOGPT2_CACHE": str(moved), "PYTHONPATH": str(ROOT)}
    line = one_error_line(script("sample.py", "--init_from", tmp_path / "lora", "--max_new_tokens", 2, cwd=tmp_path,
                                 env=env))
    assert "config.json has changed since" in line


# ----------------------------------------------------------------------------------------------------
# Resume


def test_lora_resume_is_bit_exact_with_checkpoints_that_refer_to_the_base(tmp_path, base):
    final = Final()
    run(load_config(ft_args(tmp_path / "whole", base, *LORA), cls=FinetuneConfig), hooks=[final])

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(load_config(ft_args(tmp_path / "cut", base, *LORA), cls=FinetuneConfig),
               hooks=[stop_at_3])["stopped"] == "signal"
    assert "base" in ckpt_io.load_checkpoint(tmp_path / "cut" / "checkpoint_interrupted.pt")
    resumed = Final()
    run(load_config(ft_args(tmp_path / "cut", base, *LORA, "--resume_from=auto"), cls=FinetuneConfig), hooks=[resumed])

    def losses(out):
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], float.hex(r["loss"])) for r in recs if "loss" in r]

    assert losses(tmp_path / "cut") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 6
    assert set(resumed.state) == set(final.state)
    assert all(torch.equal(resumed.state[k], final.state[k]) for k in final.state)  # trained tensors too


# ----------------------------------------------------------------------------------------------------
# keep_last: every kind a run writes again and again


def names(out: Path) -> list:
    return sorted(p.name for p in out.glob("checkpoint_*.pt"))


def test_keep_last_covers_every_repeated_kind_and_never_best_final_or_another_runs(tmp_path, base):
    out = tmp_path / "ft"
    args = ft_args(out, base, *LORA, "--keep_last=2", "--checkpoint_interval=1", "--eval_interval=0")
    first = script("finetune.py", *args, "--max_iters=10", "--max_training_hours=1e-7", cwd=tmp_path)  # stops at 1
    assert first.returncode == 0, first.stderr[-2000:]
    assert names(out) == ["checkpoint_step_1.pt", "checkpoint_time_limit.pt"]
    res = script("finetune.py", *args, "--max_iters=10", "--resume_from=auto", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    # steps 2..9 wrote step_N; step_1 and the time-limit checkpoint of step 1, older than the newest two: pruned
    assert names(out) == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_8.pt", "checkpoint_step_9.pt"]
    # a run resumed from another folder prunes only its own checkpoints, never what was in its out_dir before
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "checkpoint_step_8.pt", other / "checkpoint_step_1.pt")  # another run's file, left there
    more = ft_args(other, base, *LORA, "--keep_last=1", "--checkpoint_interval=1", "--eval_interval=0",
                   "--max_iters=12", f"--resume_from={out / 'checkpoint_step_9.pt'}")
    res = script("finetune.py", *more, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert names(other) == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_1.pt", "checkpoint_step_11.pt"]
    # best is never pruned
    keep = tmp_path / "keep"
    res = script("finetune.py", *ft_args(keep, base, *LORA, "--keep_last=1", "--checkpoint_interval=1",
                                         "--eval_interval=2"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert names(keep) == ["checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_step_5.pt"]


def test_a_base_from_scratch_cannot_be_referred_to_the_checkpoints_hold_the_whole_model(tmp_path):
    res = script("finetune.py", TINY, "--init_from=scratch", *LORA, "--max_iters=2", "--eval_interval=0",
                 "--checkpoint_interval=0", "--test_eval=false", "--baseline_eval=false", f"--out_dir={tmp_path / 'out'}",
                 f"--results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "checkpoints hold the whole model: it was not read from a base file or name" in res.stdout
    state = ckpt_io.load_checkpoint(tmp_path / "out" / "checkpoint_final.pt")
    assert "base" not in state and "transformer.wte.weight" in state["model"]
