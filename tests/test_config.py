"""
Run settings: defaults, config files, `--key=value` / `--key value` overrides, type checks, unknown keys with
suggestions, the shipped configs, and the one-line errors of `python train.py` (no traceback, exit 2).

    python -m pytest -q tests/test_config.py
"""

import os
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import pytest

from nanogpt2.config import (FIELDS, GROUPS, RunConfig, format_config, load_config, parse_argv, read_config_file, setting,
                             settings_markdown,
                             settings_text)
from conftest import one_error_line
from nanogpt2.errors import NanoGPT2Error

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="cfg.py"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ----------------------------------------------------------------------------------------------------
# Defaults and docs


def test_every_setting_has_one_documented_default():
    cfg = RunConfig()
    for f in fields(RunConfig):
        assert f.metadata["help"] and f.metadata["group"] in GROUPS, f.name
        assert getattr(cfg, f.name) == f.default
    # nanoGPT's names and the seeds' names are all there
    for name in ("out_dir", "dataset", "init_from", "batch_size", "block_size", "max_iters", "gradient_accumulation_steps",
                 "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1", "beta2",
                 "grad_clip", "eval_interval", "eval_iters", "log_interval", "dtype", "compile", "device", "seed",
                 "max_training_hours", "max_epochs", "resume_from", "warmup_ratio"):
        assert name in FIELDS
    assert cfg.max_training_hours == 12.0


def test_docs_list_every_setting_with_its_default():
    doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    table = settings_markdown()
    assert table in doc, "docs/training.md is out of date: paste `python -m nanogpt2.config` into it"
    for name in FIELDS:
        assert f"| `{name}` |" in doc


# ----------------------------------------------------------------------------------------------------
# Layers: defaults < config files < command line


def test_config_file_then_both_override_forms(tmp_path):
    f = write(tmp_path, "import math\nlearning_rate = 3e-4\nmax_iters = 100\n_helper = 5\nn_embd = 16 * 4\n"
                        "def unused():\n    pass\nbias = False\nmin_lr = learning_rate / 10\nn_head = 4\n")
    cfg = load_config([f, "--max_iters=7", "--batch_size", "3", "--compile", "--dtype", "bfloat16", "--bias=true",
                       "--vocab_size=none", "--learning_rate", "1"])
    assert cfg.max_iters == 7 and cfg.batch_size == 3 and cfg.compile is True and cfg.dtype == "bfloat16"
    assert cfg.bias is True and cfg.vocab_size is None and cfg.n_embd == 64
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)  # an int given for a float
    assert cfg.min_lr == pytest.approx(3e-5)  # computed in the file
    assert load_config([f]).learning_rate == 3e-4
    assert load_config([]).learning_rate == RunConfig().learning_rate
    # later files override earlier ones
    g = write(tmp_path, "max_iters = 9\n", "second.py")
    assert load_config([f, g]).max_iters == 9


def test_default_config_file_only_when_none_given(tmp_path):
    d = write(tmp_path, "max_iters = 11\n", "default.py")
    other = write(tmp_path, "batch_size = 2\n", "other.py")
    assert load_config(["--seed=1"], default_config_file=d).max_iters == 11
    assert load_config([other], default_config_file=d).max_iters == RunConfig().max_iters


@pytest.mark.parametrize("argv, value", [
    (["--dropout=0"], 0.0), (["--dropout", "1e-1"], 0.1), (["--max_iters=1_000"], 1000),
    (["--bias=FALSE"], False), (["--bias", "no"], False), (["--bias=1"], True), (["--compile=auto"], None),
    (["--compile", "--seed=3"], True), (["--sample_prompt", "Once upon"], "Once upon"),
])
def test_cli_value_parsing(argv, value):
    key = argv[0][2:].split("=")[0]
    assert getattr(load_config(argv), key) == value


@pytest.mark.parametrize("argv, message", [
    (["--max_iters=1.5"], "--max_iters must be an integer, not '1.5'"),
    (["--learning_rate=fast"], "--learning_rate must be a number"),
    (["--bias=maybe"], "--bias must be true or false"),
    (["--lerning_rate=1e-3"], "unknown setting 'lerning_rate'; did you mean learning_rate?"),
    (["--batchsize", "4"], "did you mean batch_size"),
    (["--max_iters"], "--max_iters needs a value"),
    (["--max_iters", "--seed=1"], "--max_iters needs a value"),
    (["-x"], "unknown option '-x'"),
    (["--dtype=fp16"], "dtype must be one of auto, float32, bfloat16, float16"),
    (["--lr_schedule=cosin"], "did you mean cosine"),
    (["--batch_size=0"], "batch_size must be >= 1"),
    (["--test_stride=0"], "test_stride must be >= 1"),
    (["--n_embd=30", "--n_head=4"], "divisible by n_head"),
    (["missing_config.py"], "config file missing_config.py does not exist"),
    (["--beta2=1"], "beta2 must be in [0, 1), not 1.0"),
    (["--beta1", "-0.1"], "beta1 must be in [0, 1)"),
    (["--eps=-1e-8"], "eps must be >= 0"),
    (["--sample_temperature=-1"], "sample_temperature must be >= 0"),
    (["--learning_rate=nan"], "learning_rate must be a finite number, not nan"),
    (["--learning_rate=inf"], "learning_rate must be a finite number, not inf"),
    (["--max_training_hours", "Infinity"], "max_training_hours must be a finite number, not inf"),
    (["--val_fraction=inf"], "val_fraction must be a finite number, not inf"),
    (["--dataset="], "dataset must not be empty"),
    (["--dataset", " "], "dataset must not be empty"),
    (["--out_dir="], "out_dir must not be empty"),
])
def test_cli_errors(argv, message):
    with pytest.raises(NanoGPT2Error) as e:
        load_config(argv)
    assert message in str(e.value)


# The names the recipes' own scripts use (the issue's list), each answered with ours.
RECIPE_CASES = [
    ("d_model", "nanogpt2 calls it n_embd: --n_embd"), ("d_ff", "nanogpt2 calls it n_inner: --n_inner"),
    ("epochs", "nanogpt2 calls it max_epochs"), ("output_dir", "nanogpt2 calls it out_dir"),
    ("dataset_path", "nanogpt2 calls it data_path"), ("model_path", "nanogpt2 calls it init_from"),
    ("checkpoint_dir", "nanogpt2 calls it out_dir"), ("num_layers", "nanogpt2 calls it n_layer"),
    ("num_heads", "nanogpt2 calls it n_head"), ("stride", "nanogpt2 calls it train_stride"),
]


@pytest.mark.parametrize("key, message", RECIPE_CASES)
def test_the_recipes_option_names_are_answered_with_ours(key, message):
    with pytest.raises(NanoGPT2Error) as e:
        load_config([f"--{key}=1"])
    assert str(e.value).startswith(f"command line: unknown setting {key!r}; {message}")
    with pytest.raises(NanoGPT2Error, match=f"unknown setting {key!r}; {message}"):
        load_config([f"--{key.replace('_', '-')}", "1"])  # --d-ff as well


def test_recipe_names_of_finetune_settings(tmp_path):
    from nanogpt2.finetuning import FinetuneConfig

    with pytest.raises(NanoGPT2Error, match=r"'modification_type'; it is finetune.py's --method \(full \| lora"):
        load_config(["--modification_type=lora"])  # train.py
    with pytest.raises(NanoGPT2Error, match="'modification_type'; nanogpt2 calls it method: --method"):
        load_config(["--modification_type=lora"], cls=FinetuneConfig)
    with pytest.raises(NanoGPT2Error, match=r"latin.py: unknown setting 'd_model'; nanogpt2 calls it n_embd"):
        read_config_file(write(tmp_path, "d_model = 64\n", "latin.py"))
    # every entry names a real setting of train.py, or of the script it says
    from nanogpt2.config import RECIPE_NAMES, settings_of

    for theirs, (ours, script, _) in RECIPE_NAMES.items():
        assert theirs not in settings_of(RunConfig)
        assert ours in settings_of(FinetuneConfig if script == "finetune.py" else RunConfig), theirs


def test_n_inner_sets_the_mlp_width_of_a_new_model(tmp_path):
    from nanogpt2.loader import build_run_model
    from nanogpt2.tokenizer import get_tokenizer

    cfg = load_config(["--n_layer=1", "--n_head=2", "--n_embd=16", "--n_inner=40", "--block_size=8"])
    model = build_run_model(cfg, get_tokenizer("gpt2"), log=lambda m: None)
    mlp = model.transformer.h[0].mlp
    assert model.config.n_inner == 40
    assert tuple(mlp.c_fc.weight.shape) == (40, 16) and tuple(mlp.c_proj.weight.shape) == (16, 40)
    default = build_run_model(cfg.replace(n_inner=None), get_tokenizer("gpt2"), log=lambda m: None)
    assert tuple(default.transformer.h[0].mlp.c_fc.weight.shape) == (64, 16)  # 4 x n_embd
    with pytest.raises(NanoGPT2Error, match="n_inner must be >= 1 or none"):
        load_config(["--n_inner=0"])


def test_config_file_type_and_name_errors(tmp_path):
    with pytest.raises(NanoGPT2Error, match=r"unknown setting 'learning_rat'; did you mean learning_rate\?"):
        read_config_file(write(tmp_path, "learning_rat = 1e-3\n"))
    with pytest.raises(NanoGPT2Error, match=r"max_iters must be an int, not 1.5"):
        read_config_file(write(tmp_path, "max_iters = 1.5\n"))
    with pytest.raises(NanoGPT2Error, match=r"bias must be a bool"):
        read_config_file(write(tmp_path, "bias = 1\n"))
    with pytest.raises(NanoGPT2Error, match=r"out_dir must be a string"):
        read_config_file(write(tmp_path, "out_dir = 5\n"))
    with pytest.raises(NanoGPT2Error, match=r"cfg.py:2: SyntaxError"):
        read_config_file(write(tmp_path, "max_iters = 5\nmax_iters = = 6\n"))
    with pytest.raises(NanoGPT2Error, match=r"cfg.py:1: NameError"):
        read_config_file(write(tmp_path, "max_iters = undefined_name\n"))
    assert read_config_file(write(tmp_path, "warmup_ratio = 0\n"))["warmup_ratio"] == 0.0  # int for float


@dataclass
class SubConfig(RunConfig):
    """A config class of another script (as finetune.py's will be): its own settings, group and checks."""

    script: ClassVar[str] = "finetune.py"
    groups: ClassVar[dict] = {**RunConfig.groups, "peft": "Parameter-efficient fine-tuning"}
    lora_rank: int = setting(8, "LoRA rank", "peft")
    lora_alpha: float = setting(16.0, "LoRA alpha", "peft")

    def validate(self):
        super().validate()
        if self.lora_rank < 1:
            raise NanoGPT2Error(f"lora_rank must be >= 1, not {self.lora_rank}")
        return self


def test_a_subclass_gets_the_same_parsing_checks_and_help(tmp_path):
    path = write(tmp_path, "lora_rank = 4\nlearning_rate = 1e-4\n")
    cfg = load_config([path, "--lora_alpha", "32", "--max_iters=7"], cls=SubConfig)
    assert type(cfg) is SubConfig and (cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate, cfg.max_iters) == (4, 32.0, 1e-4, 7)
    assert SubConfig.from_dict(cfg.to_dict()) == cfg and cfg.replace(lora_rank=2).lora_rank == 2
    with pytest.raises(NanoGPT2Error, match="did you mean lora_rank"):
        load_config(["--lora_rnak=4"], cls=SubConfig)
    with pytest.raises(NanoGPT2Error, match="--lora_rank must be an integer"):
        load_config(["--lora_rank=four"], cls=SubConfig)
    with pytest.raises(NanoGPT2Error, match="lora_rank must be >= 1"):  # the subclass's own check
        load_config(["--lora_rank=0"], cls=SubConfig)
    with pytest.raises(NanoGPT2Error, match="learning_rate must be >= 0"):  # and RunConfig's
        load_config(["--learning_rate=-1"], cls=SubConfig)
    with pytest.raises(NanoGPT2Error, match="unknown setting 'lora_rank'.*python train.py --help"):
        load_config(["--lora_rank=4"])  # RunConfig knows no such setting
    with pytest.raises(NanoGPT2Error, match="python finetune.py --help"):
        load_config(["--zzzz=1"], cls=SubConfig)
    text = settings_text(SubConfig)
    assert text.startswith("usage: python finetune.py") and "Parameter-efficient fine-tuning:" in text
    assert "--lora_rank (int, default 8)" in text and "--learning_rate" in text
    assert "| `lora_alpha` | float | `16.0` | LoRA alpha |" in settings_markdown(SubConfig)


def test_a_setting_type_the_command_line_cannot_say_is_refused():
    from nanogpt2.config import settings_of

    @dataclass
    class Bad(RunConfig):
        targets: tuple = setting(("c_attn",), "LoRA targets", "model")

    with pytest.raises(TypeError, match="settings are bool, int, float or str"):
        settings_of(Bad)


def test_parse_argv_keeps_order_and_files():
    files, overrides = parse_argv(["a.py", "--max-iters=1", "b.py", "--seed", "5"])
    assert files == ["a.py", "b.py"] and overrides == {"max_iters": "1", "seed": "5"}


# ----------------------------------------------------------------------------------------------------
# Shipped configs


def load_shipped(path):
    """A shipped config with train.py's settings, else finetune.py's (every file must load with one)."""
    from nanogpt2.finetuning import FinetuneConfig

    try:
        return load_config([str(path)])
    except NanoGPT2Error:
        return load_config([str(path)], cls=FinetuneConfig)


def test_shipped_configs_load_with_the_issue_values():
    configs = {p.name: load_shipped(p) for p in sorted((ROOT / "configs").glob("*.py"))}
    assert {"shakespeare.py", "wikitext2.py", "wikitext2_finetune.py", "tiny.py"} <= set(configs)
    w = configs["wikitext2.py"]
    assert (w.init_from, w.dataset, w.n_layer, w.n_head, w.n_embd, w.block_size) == ("scratch", "wikitext2", 12, 12, 768, 1024)
    assert (w.learning_rate, w.beta1, w.beta2, w.eps, w.weight_decay) == (3e-4, 0.9, 0.95, 1e-8, 0.01)
    assert (w.warmup_iters, w.lr_schedule, w.min_lr, w.grad_clip) == (2000, "cosine", 0.0, 1.0)
    assert (w.eval_interval, w.checkpoint_interval) == (500, 1000)
    f = configs["wikitext2_finetune.py"]
    assert (f.init_from, f.learning_rate, f.lr_schedule, f.warmup_ratio, f.min_lr) == ("gpt2", 5e-5, "linear", 0.1, 1e-7)
    s = configs["shakespeare.py"]
    assert s.n_layer * s.n_embd <= 4 * 128 and s.sample_interval > 0  # small, prints samples
    lora, small = configs["finetune_lora.py"], configs["finetune_lora_r4.py"]
    assert (lora.method, lora.lora_rank, lora.lora_alpha, small.lora_rank, small.lora_alpha) == ("lora", 16, 32.0, 4, 8.0)
    assert (configs["finetune_adapter.py"].method, configs["finetune_adapter.py"].adapter_size) == ("adapter", 64)
    sel = configs["finetune_selective.py"]
    assert (sel.method, sel.freeze_layers, sel.layer_lr_scales) == ("selective", "0,1,2,3", "0.1,0.5,1.0")
    prompt = configs["finetune_prompt.py"]
    assert (prompt.method, prompt.prompt_length, prompt.block_size) == ("prompt", 50, 1024 - 50)


# ----------------------------------------------------------------------------------------------------
# The script: one clear line, exit 2, no traceback


def run_train(*args, tmp_path):
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--max_iter=5"], "unknown setting 'max_iter'; did you mean max_iters"),
    (["--d_model", "64"], "unknown setting 'd_model'; nanogpt2 calls it n_embd: --n_embd"),
    (["--batch_size=four"], "--batch_size must be an integer, not 'four'"),
    (["--dataset=no_such_dataset", "--out_dir=o"], "no_such_dataset"),
])
def test_train_py_errors_are_one_line(args, message, tmp_path):
    res = run_train(str(ROOT / "configs" / "tiny.py"), *args, tmp_path=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


@pytest.mark.parametrize("args, message", [
    (["--dataset="], "error: dataset must not be empty"),  # was: the current folder taken as the dataset
    (["--out_dir="], "error: out_dir must not be empty"),  # was: config.json and checkpoints written into it
    (["--learning_rate=inf"], "error: learning_rate must be a finite number, not inf"),
    (["--min_lr", "-inf"], "error: min_lr must be >= 0, not -inf"),
])
def test_train_py_refuses_empty_paths_and_non_finite_numbers_before_writing(args, message, tmp_path):
    (tmp_path / "notes.txt").write_text("the user's file")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_train(str(ROOT / "configs" / "tiny.py"), *args, tmp_path=tmp_path)
    assert one_error_line(res).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written into the current folder
    assert (tmp_path / "notes.txt").read_text() == "the user's file"


def test_train_py_non_utf8_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "latin1.py"
    cfg.write_bytes('max_iters = 5\nsample_prompt = "caf\u00e9"\n'.encode("latin-1"))
    res = run_train(str(cfg), "--out_dir=o", tmp_path=tmp_path)
    line = one_error_line(res)
    assert str(cfg) in line and "not UTF-8" in line and "line 2" in line and "0xe9" in line, line
    assert not (tmp_path / "o").exists()


def test_train_py_unwritable_out_dir_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    res = run_train(str(ROOT / "configs" / "tiny.py"), "--out_dir", "a_file/run", tmp_path=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to out_dir=a_file/run"), res.stderr


def test_train_py_help_lists_settings(tmp_path):
    res = run_train("--help", tmp_path=tmp_path)
    assert res.returncode == 0
    assert "--max_training_hours" in res.stdout and "--key=value" in res.stdout


# ----------------------------------------------------------------------------------------------------
# nanoGPT's own config files (tests/fixtures/nanogpt_configs, as published) run unchanged

NANOGPT_CONFIGS = ROOT / "tests" / "fixtures" / "nanogpt_configs"
NANOGPT_ONLY = {"wandb_log", "wandb_project", "wandb_run_name", "always_save_checkpoint", "decay_lr"}
TINY_OVERRIDES = ["--init_from", "scratch", "--dataset", "shakespeare_char", "--n_layer", "1", "--n_head", "2",
                  "--n_embd", "16", "--block_size", "16", "--batch_size", "2", "--gradient_accumulation_steps", "1",
                  "--max_iters", "4", "--eval_interval", "4", "--eval_iters", "1", "--log_interval", "1",
                  "--device", "cpu", "--dtype", "float32", "--compile", "false", "--tensorboard", "false",
                  "--plot", "false", "--sample_interval", "0", "--test_eval", "false", "--out_dir", "o"]


def nanogpt_assignments(path):
    """What nanoGPT's configurator would set from the file: its public names after exec."""
    namespace = {}
    exec(path.read_text(), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not hasattr(v, "__name__")}


@pytest.mark.parametrize("name", ["train_shakespeare_char.py", "finetune_shakespeare.py", "eval_gpt2.py", "train_gpt2.py"])
def test_nanogpt_config_files_load_with_one_notice(name):
    path = NANOGPT_CONFIGS / name
    theirs = nanogpt_assignments(path)
    cfg = load_config([str(path)])
    for key, value in theirs.items():
        if key not in NANOGPT_ONLY:
            assert getattr(cfg, key) == value, key  # every name that is ours carries the file's value
    notices = [line for line in cfg._notices]
    assert len(notices) == 1 and notices[0].startswith(f"notice: nanoGPT settings in {path}: ")
    for key in NANOGPT_ONLY & set(theirs):
        assert key in notices[0], (key, notices[0])
    assert format_config(cfg).splitlines()[0] == notices[0]
    if theirs.get("decay_lr") is False:  # nanoGPT: lr = learning_rate on every step, no warmup
        assert (cfg.lr_schedule, cfg.warmup_iters) == ("constant", 0) and "decay_lr=False -> " in notices[0]


def test_nanogpt_only_keys_on_the_command_line():
    cfg = load_config(["--wandb_log=True", "--wandb_run_name", "mini-gpt", "--decay_lr=false", "--max_iters=5"])
    assert (cfg.lr_schedule, cfg.warmup_iters, cfg.max_iters) == ("constant", 0, 5)
    assert cfg._notices == ["notice: nanoGPT settings in the command line: ignored wandb_log, wandb_run_name (no "
                            "Weights & Biases logging here: metrics go to out_dir/metrics.jsonl and TensorBoard); "
                            "replaced decay_lr=False -> lr_schedule='constant', warmup_iters=0"]
    with pytest.raises(NanoGPT2Error, match="--decay_lr must be true or false, not 'maybe'"):
        load_config(["--decay_lr=maybe"])
    assert load_config(["--max_iters=5"])._notices == []  # our own settings: no notice


def test_train_py_runs_nanogpt_finetune_config_at_constant_lr(tmp_path):
    import json

    path = NANOGPT_CONFIGS / "finetune_shakespeare.py"
    res = run_train(str(path), *TINY_OVERRIDES, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    notices = [line for line in res.stdout.splitlines() if line.startswith("notice: nanoGPT")]
    assert len(notices) == 1 and "always_save_checkpoint" in notices[0] and "wandb_log" in notices[0], res.stdout
    records = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert len(lrs) == 4 and all(lr == pytest.approx(3e-5) for lr in lrs), lrs  # the file's learning_rate, constant
