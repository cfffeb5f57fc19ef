"""
finetune.py and nanogpt2.finetuning, the language-modelling task on tiny char-level runs (CPU, seconds): each
method trains only what it should (every frozen tensor bit-identical), layer-wise learning-rate groups, the
head-only first phase, exact resume, the adapter folder, run folders that load back, and bad settings as one
`error:` line.

    python -m pytest -q tests/test_finetune.py
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, one_error_line, oracle
from nanogpt2.config import defaults_markdown, load_config, settings_markdown
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, lr_scale_fn, run
from nanogpt2.loader import load_model

TINY = str(ROOT / "configs" / "tiny.py")
FINETUNE_GROUPS = ("method", "task")  # the settings finetune.py adds to train.py's


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def ft_cfg(out, *overrides):
    """A tiny fine-tuning run of a new 2-layer model on Tiny Shakespeare (characters)."""
    return load_config([TINY, f"--out_dir={out}", "--init_from=scratch", "--max_iters=6", "--eval_interval=3",
                        "--checkpoint_interval=0", "--learning_rate=1e-2", "--test_eval=false",
                        f"--results_dir={out}-results", *overrides], cls=FinetuneConfig)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A train.py run folder of the tiny model (block 32): a base to fine-tune."""
    from nanogpt2.trainer import Trainer

    out = tmp_path_factory.mktemp("base") / "run"
    Trainer(load_config([TINY, f"--out_dir={out}", "--max_iters=2", "--eval_interval=0", "--test_eval=false"])).train()
    return out


class Snapshot:
    """A hook keeping the weights as they were at the start of training, and after each step."""

    def __init__(self):
        self.start, self.steps = None, []

    def __call__(self, trainer, event):
        weights = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}
        if event == "train_start":
            self.start = weights
        elif event == "step_end":
            self.steps.append(weights)


def changed(a: dict, b: dict) -> set:
    return {n for n in a if not torch.equal(a[n], b[n])}


def losses(out: Path) -> list:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [float.hex(r["loss"]) for r in recs if "loss" in r]


@pytest.mark.parametrize("method, extra, trained", [
    ("full", (), lambda n: True),
    ("lora", ("--lora_targets=c_attn,c_fc", "--lora_rank=4"), lambda n: "lora_" in n),
    ("adapter", ("--adapter_size=8", "--adapter_train_layernorms=false"), lambda n: ".adapter." in n),
    ("selective", ("--freeze_layers=0", "--freeze_embeddings=true"), lambda n: ".h.1." in n or "ln_f" in n),
    ("prefix", ("--prefix_length=4", "--prefix_projection=8", "--block_size=28", "BASE"), lambda n: "prefix_encoder" in n),
    ("prompt", ("--prompt_length=4", "--block_size=28", "BASE"), lambda n: "prompt_encoder" in n),
])
def test_each_method_trains_exactly_its_parameters_and_the_run_loads_back(tmp_path, base_run, method, extra, trained):
    snap = Snapshot()
    extra = [f"--init_from={base_run}" if e == "BASE" else e for e in extra]
    cfg = ft_cfg(tmp_path / method, f"--method={method}", *extra)
    summary = run(cfg, hooks=[snap])
    assert summary["stopped"] == "done"
    end = snap.steps[-1]
    moved = changed(snap.start, end)
    assert moved and all(trained(n) for n in moved), sorted(moved)  # frozen tensors: bit-identical
    assert {n for n in end if trained(n)} == moved  # and everything trainable did train
    model, info = load_model(str(tmp_path / method))  # the run folder, as sample.py / evaluate load it
    weights = dict(model.named_parameters())
    assert all(torch.equal(weights[n], end[n]) for n in end)
    if method in ("lora", "adapter", "prefix", "prompt"):
        assert info["spec"][{"lora": "lora", "adapter": "adapters", "prefix": "prefix", "prompt": "prompt"}[method]]
        assert (tmp_path / method / "adapter").is_dir()


def test_prompt_run_resumes_exactly_samples_and_shares_a_peft_folder(tmp_path, base_run):
    """--method prompt from a text: the virtual tokens start as the text's embeddings; a run stopped at step 3 and
    resumed gives the uninterrupted run's losses bit for bit; sample.py continues from the run folder; out_dir/adapter
    is a peft PROMPT_TUNING folder that load_peft_adapter puts back on the base with the run's logits."""
    from nanogpt2.peft import load_peft_adapter

    args = ("--method=prompt", "--prompt_length=5", "--prompt_init_text=ROMEO:", "--block_size=27",
            f"--init_from={base_run}", "--eval_interval=0", "--dropout=0.1")
    snap = Snapshot()
    run(ft_cfg(tmp_path / "whole", *args), hooks=[snap])
    base, _ = load_model(str(base_run))
    from nanogpt2.data import prepare_dataset

    romeo = prepare_dataset("shakespeare_char", quiet=True).tokenizer().encode("ROMEO:")
    assert torch.equal(snap.start["prompt_encoder.embedding.weight"], base.transformer.wte.weight[(romeo * 2)[:5]])

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(ft_cfg(tmp_path / "cut", *args), hooks=[stop_at_3])["stopped"] == "signal"
    run(ft_cfg(tmp_path / "cut", *args, "--resume_from=auto"))
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    model, info = load_model(str(tmp_path / "whole"))
    assert info["spec"]["prompt"] == {"prompt_length": 5} and model.context_length == 27
    assert json.loads((tmp_path / "whole" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert load_peft_adapter(base, tmp_path / "whole" / "adapter") == ["prompt_encoder"]
    x = torch.randint(0, 65, (2, 27))
    with torch.no_grad():
        assert torch.equal(base.eval()(x)[0], model.eval()(x)[0])
    res = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"--init_from={tmp_path / 'whole'}", "--start=ROMEO",
                          "--max_new_tokens=40", "--num_samples=1", "--device=cpu", "--seed=1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = res.stdout.split("\n---")[0]  # the sample, then a separator line
    assert text.startswith("ROMEO") and len(text) == len("ROMEO") + 40


def test_adapter_folder_holds_only_the_trained_tensors_and_loads_back(tmp_path):
    from nanogpt2.loader import build_model
    from nanogpt2.peft import load_adapter_weights

    run(ft_cfg(tmp_path / "a", "--method=adapter", "--adapter_size=4"))
    model, info = load_model(str(tmp_path / "a"))
    stored = torch.load(tmp_path / "a" / "adapter" / "adapter_weights.pt", weights_only=True)
    assert all(".adapter." in n or "ln_" in n for n in stored["tensors"])
    fresh = build_model(stored["model_spec"])  # a base with adapters of the same shape, random adapter weights
    fresh.load_state_dict({n: t for n, t in model.state_dict().items() if ".adapter." not in n and "ln_" not in n},
                          strict=False)
    load_adapter_weights(fresh, tmp_path / "a" / "adapter")
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x)[0], model.eval()(x)[0])
    other = build_model({**stored["model_spec"], "adapters": {"adapter_size": 8, "train_layernorms": True}})
    with pytest.raises(NanoGPT2Error, match="another base model or method"):
        load_adapter_weights(other, tmp_path / "a" / "adapter")


def test_merge_and_export_writes_an_hf_folder_transformers_loads_with_our_logits(tmp_path):
    transformers = oracle("transformers")
    run(ft_cfg(tmp_path / "l", "--method=lora", "--lora_targets=c_attn,c_fc", f"--merge_and_export={tmp_path / 'hf'}"))
    ours, _ = load_model(str(tmp_path / "l"))
    assert getattr(ours, "lora_config", None) is not None  # the run's checkpoint stays unmerged
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.allclose(theirs(x).logits, ours.eval()(x)[0], atol=1e-5)


def test_layer_lr_scales_split_the_blocks_in_thirds():
    cfg = FinetuneConfig(layer_lr_scales="0.1,0.5,1.0")
    scale = lr_scale_fn(cfg, 12)
    assert [scale(f"transformer.h.{i}.attn.c_attn.weight") for i in range(12)] == [0.1] * 4 + [0.5] * 4 + [1.0] * 4
    assert scale("transformer.wte.weight") == 0.1 and scale("transformer.ln_f.weight") == 1.0
    assert lr_scale_fn(FinetuneConfig(), 12) is None


def test_layer_lr_scales_reach_the_optimizer(tmp_path):
    seen = {}

    def groups(trainer, event):
        if event == "train_start":
            names = {id(p): n for n, p in trainer.raw_model.named_parameters()}
            seen.update({names[id(p)]: g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]})
            seen["lrs"] = None
        elif event == "step_end" and seen.get("lrs") is None:
            seen["lrs"] = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups}

    run(ft_cfg(tmp_path / "s", "--method=full", "--layer_lr_scales=0.1,1.0", "--max_iters=1"), hooks=[groups])
    assert seen["transformer.h.0.attn.c_attn.weight"] == 0.1 and seen["transformer.h.1.mlp.c_fc.weight"] == 1.0
    assert seen["transformer.wte.weight"] == 0.1 and seen["transformer.ln_f.weight"] == 1.0
    assert seen["lrs"][0.1] == pytest.approx(0.1 * seen["lrs"][1.0])


def test_head_only_phase_then_everything_and_exact_resume(tmp_path):
    snap = Snapshot()
    args = ("--method=full", "--head_only_steps=2", "--eval_interval=0")
    run(ft_cfg(tmp_path / "whole", *args), hooks=[snap])
    head = {"transformer.wte.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"}
    assert changed(snap.start, snap.steps[1]) == head  # steps 1-2: the head only
    assert len(changed(snap.steps[1], snap.steps[2])) > len(head)  # then everything

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(ft_cfg(tmp_path / "cut", *args), hooks=[stop_at_3])["stopped"] == "signal"
    run(ft_cfg(tmp_path / "cut", *args, "--resume_from=auto"))
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_lora_head_only_has_no_head_to_train(tmp_path):
    with pytest.raises(NanoGPT2Error, match="head has no trainable parameter"):
        run(ft_cfg(tmp_path / "x", "--method=lora", "--head_only_steps=2"))


@pytest.mark.parametrize("args, message", [
    (["--method=dora"], "method must be one of full, lora"),
    (["--lora_rank=0"], "lora_rank must be >= 1"),
    (["--lora_targets=q_proj"], "lora targets"),
    (["--method=selective", "--freeze_layers=0,7"], "names block 7, but this model has 2 blocks"),
    (["--freeze_layers=0"], "add --method selective"),
    (["--layer_lr_scales=a,b"], "layer_lr_scales must be comma-separated numbers"),
    (["--method=adapter", "--merge_and_export=x"], "cannot be merged"),
    (["--task=chat"], "task must be one of"),
    (["--method=prefix", "--prefix_length=8"], "block_size=32 exceeds the model's context of 24 tokens"),
    (["--method=prompt", "--prompt_length=8"], "block_size=32 exceeds the model's context of 24 tokens"),
    (["--method=prompt", "--prompt_length=0"], "prompt_length must be >= 1"),
    (["--method=prompt", "--task=classify", "--merge_and_export=x"], "a classifier's prompt cannot be merged"),
])
def test_bad_settings_are_one_error_line(tmp_path, args, message):
    from nanogpt2.data import prepare_dataset

    prepare_dataset("shakespeare_char", quiet=True)  # a warm cache: a cold one prints progress lines on stderr first
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, "--init_from=scratch", "--max_iters=2",
                          f"--out_dir={tmp_path / 'out'}", *args], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in one_error_line(res)
    assert not (tmp_path / "out" / "checkpoint_final.pt").exists()


@pytest.mark.parametrize("method, extra, block, note", [
    ("lora", (), 32, "32 tokens"),
    ("prefix", ("--prefix_length=4",), 28, "32 tokens, 4 of them for the prefix"),
])
def test_the_recipes_block_size_is_capped_at_the_base_models_context(tmp_path, base_run, method, extra, block, note):
    """configs/finetune_lora.py keeps finetune.py's block_size=1024; on a base of 32 positions the run trains at 32
    (a prefix: 32 less its positions), one line says so, and the run folder records the block_size it used."""
    from nanogpt2.data import prepare_dataset

    prepare_dataset("shakespeare_char", quiet=True)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), str(ROOT / "configs" / "finetune_lora.py"),
                          f"--init_from={base_run}", "--dataset=shakespeare_char", f"--method={method}", *extra,
                          "--max_iters=2", "--max_epochs=0", "--eval_interval=0", "--eval_iters=1", "--test_eval=false",
                          "--sample_interval=0", f"--out_dir={out}"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert f"block_size=1024 is longer than the context of {base_run} ({note}): using block_size={block}" in lines
    assert json.loads((out / "config.json").read_text())["block_size"] == block
    model, _ = load_model(str(out))
    assert model.context_length == block


def test_a_run_of_another_tokenizer_is_pointed_at_its_own_dataset(tmp_path, base_run):
    """A char-level base on GPT-2-tokenized data cannot work: the one line names the base run's own dataset."""
    from nanogpt2.data import prepare_dataset

    prepare_dataset("shakespeare", quiet=True)
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), str(ROOT / "configs" / "finetune_lora.py"),
                          f"--init_from={base_run}", "--dataset=shakespeare", "--max_iters=2",
                          f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=tmp_path)
    line = one_error_line(res)
    assert "tokenizer 'char'" in line and "--dataset shakespeare_char, its own" in line
    assert not (tmp_path / "out").exists()


def test_finetune_help_lists_the_methods_and_docs_table_matches():
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: python finetune.py" in res.stdout and "lora_rank" in res.stdout
    doc = (ROOT / "docs" / "finetuning.md").read_text(encoding="utf-8")
    assert settings_markdown(FinetuneConfig, FINETUNE_GROUPS) in doc, "regenerate the settings tables of docs/finetuning.md"
    assert defaults_markdown(FinetuneConfig) in doc, "regenerate the table of defaults that differ from train.py's"
