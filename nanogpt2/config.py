"""
Run settings: every knob of a training run, its one default, and how config files and the command line
override it.

A run is configured in three layers, later ones winning (nanoGPT's "configurator" style):

1. the defaults below (`RunConfig`, one documented default per setting);
2. config files (`configs/*.py`): plain Python assignments of the settings they change, e.g.
   `learning_rate = 3e-4`; they are run in a fresh namespace and every public name they leave behind must
   be a run setting (modules, functions and `_private` names are ignored);
3. command-line overrides, `--key=value` or `--key value` (a bool may stand alone: `--compile`).

A setting given in a file or on the command line wins over a default of the one that competes with it for the
same thing (`COMPETING`: max_iters / max_epochs, warmup_iters / warmup_ratio); between two given ones the
later layer wins, with one `notice:` line saying which governs.

Values are type-checked against the setting's type: an int is accepted for a float, `true/false`
(also `1/0`, `yes/no`, `on/off`) for a bool, and `none`/`auto` for the settings whose default is None.
An unknown name is rejected with the closest valid names, or with ours when it is another recipe's name for
one of our settings (`RECIPE_NAMES`: `--d_model` -> `--n_embd`, `--epochs` -> `--max_epochs`). Every failure
is a `NanoGPT2Error` (one line, exit status 2 from the scripts).

nanoGPT's config files run as they are: its names are ours, and the few of its train.py settings we have no
setting for (`NANOGPT_KEYS`: `wandb_*`, `always_save_checkpoint`, `decay_lr`) are accepted, translated or
ignored, with one `notice:` line per file (or command line) naming them, shown above the effective config.

    from nanogpt2.config import load_config
    cfg = load_config(["configs/tiny.py", "--max_iters=50", "--dtype", "float32"])
    cfg.learning_rate, cfg.to_dict()

Every function takes the config class: a dataclass subclass of RunConfig (finetune.py's, with its own
settings, `script` name and setting groups) gets the same file and command-line parsing, type checks,
closest-name suggestions and `--help`: `load_config(argv, cls=FinetuneConfig)`.

`python -m nanogpt2.config` prints the settings table (docs/training.md is generated from it).
"""

import difflib
import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Mapping, Optional

from nanogpt2.errors import NanoGPT2Error, read_text

# ----------------------------------------------------------------------------------------------------
# The settings


def setting(default, help: str, group: str):
    """A run setting: its default, a one-line description and the group it is documented under."""
    return field(default=default, metadata={"help": help, "group": group})


def new_default(base, name: str, default):
    """In a subclass of `base`: setting `name` again, with another default (the same description and group)."""
    parent = {f.name: f for f in fields(base)}[name]
    return field(default=default, metadata=parent.metadata)


@dataclass
class RunConfig:
    script: ClassVar[str] = "train.py"  # what --help and error hints call the script
    groups: ClassVar[Mapping] = MappingProxyType({  # setting group -> heading in --help and docs; a subclass
        # extends it with its own: groups = MappingProxyType({**RunConfig.groups, "peft": "..."})
        "output": "Output, checkpoints, resume",
        "logging": "Evaluation, logging, samples",
        "data": "Data and batch",
        "model": "Model (init_from=scratch)",
        "optimizer": "Optimizer and learning-rate schedule",
        "system": "System",
    })
    choices: ClassVar[Mapping] = MappingProxyType({  # settings whose value must be one of a few names
        "tokenizer": ("auto", "gpt2", "char"),
        "lr_schedule": ("cosine", "linear", "constant"),
        "dtype": ("auto", "float32", "bfloat16", "float16"),
    })

    # --- output, checkpoints, resume ---
    out_dir: str = setting("out", "folder for checkpoints, metrics.jsonl, config.json, plots, TensorBoard events", "output")
    init_from: str = setting(
        "scratch",
        "scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | distilgpt2 | 124M | 355M | 774M | 1558M (OpenAI's "
        "release) | a local HF or OpenAI folder | a training checkpoint (.pt file or run folder; weights only) | "
        "a nanoGPT ckpt.pt or out_dir | an llm.c model file (.bin) | "
        "resume (= resume_from auto, but a checkpoint must exist)",
        "output")
    meta_pkl: str = setting(
        "", "the meta.pkl of a nanoGPT character init_from, when it is neither beside its ckpt.pt nor in "
        "data/<its dataset>/ ('': look there)", "output")
    resume_from: str = setting(
        "", "'' (start fresh), 'auto' (the checkpoint of out_dir with the highest step, damaged ones skipped, if there is "
        "one) or a checkpoint path: "
        "restores model, optimizer, scaler, step, sampler and RNG states", "output")
    overwrite: bool = setting(
        False, "a fresh run into an out_dir that holds another run's checkpoints or metrics: remove them (and its "
        "samples, plots, TensorBoard events) first; without it such a run is refused. finetune.py: also lets "
        "merge_and_export / out_dir/adapter replace other files (only the files the export writes; never a run folder)",
        "output")
    checkpoint_interval: int = setting(1000, "save checkpoint_step_N.pt every this many steps (0: never)", "output")
    keep_last: int = setting(
        3, "how many of the checkpoints a run writes again and again (step_N, epoch_N, interrupted, time_limit, "
        "together) to keep, the newest by step, as HF's save_total_limit; checkpoint_best.pt, checkpoint_final.pt and "
        "the newest resumable checkpoint are never deleted, nor another run's files (0: keep all)", "output")
    save_best: bool = setting(True, "save checkpoint_best.pt whenever the validation loss (classify: the validation "
                              "accuracy) reaches a new best", "output")
    max_training_hours: float = setting(
        12.0, "wall-clock budget of this process: stop before exceeding it, save checkpoint_time_limit.pt, exit 0 (0: none)",
        "output")

    # --- evaluation, logging, samples ---
    eval_interval: int = setting(500, "evaluate every this many steps, also at each epoch end and at the end (0: only those)", "logging")
    eval_iters: int = setting(200, "validation batches per evaluation (0: the whole validation split)", "logging")
    eval_only: bool = setting(False, "evaluate once and exit (no training)", "logging")
    early_stopping_patience: int = setting(
        0, "stop (a finished run: final checkpoint, test, exports) after this many evaluations in a row without a "
        "better task metric: the validation loss, classify's validation accuracy (0: never)", "logging")
    test_eval: bool = setting(True, "after the last step, strided perplexity on the dataset's test split when it has one (nanogpt2.evaluate)", "logging")
    test_stride: int = setting(512, "stride of that test evaluation (HF's perplexity guide; block_size: disjoint windows)", "logging")
    log_interval: int = setting(10, "print a progress line and append to metrics.jsonl every this many steps", "logging")
    log_grad_norms: bool = setting(
        True, "on the logged steps, the gradient norm of each part of the model (embeddings, each block, head) into "
        "metrics.jsonl (grad_norms), TensorBoard and the plot", "logging")
    tensorboard: bool = setting(True, "write TensorBoard event files to out_dir/tensorboard when tensorboard is installed", "logging")
    plot: bool = setting(True, "at the end, plot loss/perplexity/lr to out_dir/training_curves.png when matplotlib is installed", "logging")
    sample_interval: int = setting(500, "print (and append to out_dir/samples.txt) a generated sample every this many steps (0: never)", "logging")
    sample_tokens: int = setting(100, "tokens per generated sample", "logging")
    sample_prompt: str = setting("", "prompt of the samples ('': the end-of-text token, or a newline for the char tokenizer)", "logging")
    sample_temperature: float = setting(0.8, "sampling temperature of the samples", "logging")
    sample_top_k: int = setting(200, "top-k of the samples (0: off)", "logging")

    # --- data ---
    dataset: str = setting("shakespeare", "dataset name (see nanogpt2.data.DATASETS), a path to a text file/folder, a "
                           "nanoGPT data folder (train.bin, val.bin) or a folder of llm.c token shards", "data")
    tokenizer: str = setting("auto", "auto (the dataset's own: char for shakespeare_char, else gpt2) | gpt2 | char", "data")
    data_path: str = setting("", "local copy of the dataset's raw text (skips the download)", "data")
    val_fraction: Optional[float] = setting(
        None, "share held out for validation by datasets without a validation split (none: the dataset's default, "
        "0.1 for shakespeare, else 0.005)", "data")
    batch_size: int = setting(12, "sequences per micro-step on each process", "data")
    block_size: int = setting(1024, "sequence length (context) in tokens", "data")
    train_stride: int = setting(
        0, "0: random training windows (nanoGPT's); > 0: windows of block_size every this many tokens (overlapping "
        "when < block_size, the recipes' stride), each epoch in a new seeded order", "data")
    gradient_accumulation_steps: int = setting(
        1, "GLOBAL micro-steps per optimizer step (nanoGPT semantics): each of N processes runs this / N", "data")
    tokens_per_step: int = setting(
        0, "if > 0: tokens per optimizer step; sets gradient_accumulation_steps = this / (batch_size * block_size), "
        "which must divide evenly", "data")

    # --- model (used with init_from=scratch; dropout also for pretrained weights) ---
    n_layer: int = setting(12, "transformer blocks", "model")
    n_head: int = setting(12, "attention heads", "model")
    n_embd: int = setting(768, "embedding width", "model")
    dropout: float = setting(0.0, "dropout probability (embeddings, attention, residuals)", "model")
    bias: bool = setting(True, "biases in Linear layers and LayerNorms (GPT-2: true)", "model")
    n_inner: Optional[int] = setting(None, "MLP hidden width (none: 4 x n_embd; the recipes' d_ff)", "model")
    vocab_size: Optional[int] = setting(None, "vocabulary size (none: the tokenizer's; may be padded up, e.g. 50304)", "model")

    # --- optimizer and schedule ---
    learning_rate: float = setting(6e-4, "peak learning rate", "optimizer")
    max_iters: int = setting(5000, "optimizer steps to train for (0: set by max_epochs alone)", "optimizer")
    max_epochs: int = setting(0, "if > 0: stop after this many epochs (1 epoch = train tokens / tokens per step steps)", "optimizer")
    lr_schedule: str = setting("cosine", "cosine | linear | constant, after the linear warmup", "optimizer")
    warmup_iters: int = setting(100, "linear warmup steps", "optimizer")
    warmup_ratio: float = setting(0.0, "if > 0: warmup steps = round(warmup_ratio * lr_decay_iters), overriding warmup_iters", "optimizer")
    lr_decay_iters: int = setting(0, "step where the decay reaches min_lr (0: the total number of steps)", "optimizer")
    min_lr: float = setting(6e-5, "learning-rate floor of the decay", "optimizer")
    weight_decay: float = setting(0.1, "AdamW weight decay of the matrices (never biases or LayerNorm weights)", "optimizer")
    decay_pos_emb: bool = setting(True, "apply weight decay to the positional embedding table too", "optimizer")
    beta1: float = setting(0.9, "AdamW beta1", "optimizer")
    beta2: float = setting(0.95, "AdamW beta2", "optimizer")
    eps: float = setting(1e-8, "AdamW epsilon", "optimizer")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0: no clipping; the norm is logged anyway)", "optimizer")
    max_bad_steps: int = setting(5, "stop the run after this many non-finite losses in a row (each is skipped)", "optimizer")

    # --- system ---
    device: str = setting("auto", "auto (cuda if available, else mps if available, else cpu; under torchrun: cuda or cpu) | cpu | cuda | cuda:N | mps", "system")
    dtype: str = setting("auto", "auto (bfloat16 on CUDA if supported, else float16; float32 elsewhere) | float32 | bfloat16 | float16", "system")
    compile: Optional[bool] = setting(None, "torch.compile the model (none: on for CUDA, off elsewhere)", "system")
    gradient_checkpointing: bool = setting(
        False, "recompute each transformer block in the backward instead of keeping its activations "
        "(torch.utils.checkpoint, non-reentrant, RNG state kept): activation memory of about one block, for one more "
        "forward of the blocks per step; the same losses and gradients", "system")
    seed: int = setting(1337, "random seed (model init, data order, dropout)", "system")
    backend: str = setting("", "DDP backend ('': nccl on CUDA, gloo on CPU)", "system")
    dist_timeout: float = setting(
        1800.0, "seconds a process waits at a collective for the others (torchrun) before the run stops: a lost "
        "process ends the run in bounded time", "system")

    # --- conversions ---

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "RunConfig":
        """A config from a dict of settings (unknown keys and bad types rejected); missing keys keep defaults."""
        cfg = cls()
        for key, value in d.items():
            set_setting(cfg, key, value, where)
        return cfg.validate()

    def replace(self, **changes) -> "RunConfig":
        """A copy with some settings changed (type-checked)."""
        return type(self).from_dict({**self.to_dict(), **changes}, where="replace()")

    def validate(self) -> "RunConfig":
        """Range and choice checks that need no runtime information; a subclass extends it (super() first)."""
        return validate(self)


GROUPS = RunConfig.groups
CHOICES = RunConfig.choices


SETTING_TYPES = (bool, int, float, str)


@lru_cache(maxsize=None)
def settings_of(cls=RunConfig) -> dict:
    """{name: dataclass field} of a config class, in declaration order. Every setting is a bool, int, float or
    str (optionally None): what a config file and the command line can say and this module type-checks."""
    out = {f.name: f for f in fields(cls)}
    for name in out:
        typ, _ = setting_type(name, cls)
        if typ not in SETTING_TYPES:
            raise TypeError(f"setting {cls.__name__}.{name} has type {typ}; settings are bool, int, float or str "
                            f"(a list is a comma-separated str)")
    return out


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def setting_type(name: str, cls=RunConfig):
    """(base type, optional) of a setting: e.g. (int, True) for Optional[int]."""
    hint = _hints(cls)[name]
    args = typing.get_args(hint)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


FIELDS = settings_of(RunConfig)


# ----------------------------------------------------------------------------------------------------
# Type checking


# The names other recipes give our settings (the course recipes' scripts, HF TrainingArguments, HF GPT2Config):
# their name -> (ours, the script that has it when train.py does not, a note). Only the unknown-key message reads
# it: a recipe's name is refused with ours, never silently accepted.
RECIPE_NAMES = MappingProxyType({
    "d_model": ("n_embd", None, ""),
    "hidden_size": ("n_embd", None, ""),
    "d_ff": ("n_inner", None, "the MLP width"),
    "intermediate_size": ("n_inner", None, "the MLP width"),
    "num_layers": ("n_layer", None, ""),
    "n_layers": ("n_layer", None, ""),
    "num_hidden_layers": ("n_layer", None, ""),
    "num_heads": ("n_head", None, ""),
    "n_heads": ("n_head", None, ""),
    "num_attention_heads": ("n_head", None, ""),
    "context_length": ("block_size", None, ""),
    "max_seq_length": ("block_size", None, ""),
    "seq_len": ("block_size", None, ""),
    "n_positions": ("block_size", None, ""),
    "max_position_embeddings": ("block_size", None, ""),
    "dropout_rate": ("dropout", None, ""),
    "drop_rate": ("dropout", None, ""),
    "epochs": ("max_epochs", None, ""),
    "num_epochs": ("max_epochs", None, ""),
    "num_train_epochs": ("max_epochs", None, ""),
    "max_steps": ("max_iters", None, ""),
    "lr": ("learning_rate", None, ""),
    "warmup_steps": ("warmup_iters", None, ""),
    "train_batch_size": ("batch_size", None, ""),
    "per_device_train_batch_size": ("batch_size", None, ""),
    "eval_steps": ("eval_interval", None, ""),
    "save_steps": ("checkpoint_interval", None, ""),
    "logging_steps": ("log_interval", None, ""),
    "output_dir": ("out_dir", None, ""),
    "checkpoint_dir": ("out_dir", None, "the run folder of checkpoints; --resume_from auto continues it"),
    "dataset_path": ("data_path", None, "a registered dataset's local copy; a text file or folder of your own goes "
                                        "to --dataset"),
    "model_path": ("init_from", None, "a GPT-2 name, an HF or OpenAI folder, a run folder or a checkpoint"),
    "model_name": ("init_from", None, ""),
    "model_name_or_path": ("init_from", None, ""),
    "stride": ("train_stride", None, "overlapping training windows every this many tokens"),
    "modification_type": ("method", "finetune.py", "full | lora | adapter | prefix | selective"),
    "lora_r": ("lora_rank", "finetune.py", ""),
    "max_length": ("max_length", "finetune.py", "tokens per classify / instruct example; train.py's windows are "
                                                "--block_size"),
})


def unknown_key_message(key: str, where: str, cls=RunConfig) -> str:
    """The error of a setting `cls` does not have: ours for a recipe's name (RECIPE_NAMES), else the closest."""
    known = settings_of(cls)
    if key in RECIPE_NAMES:
        ours, script, note = RECIPE_NAMES[key]
        note = f" ({note})" if note else ""
        if ours in known:
            return f"{where}: unknown setting {key!r}; nanogpt2 calls it {ours}: --{ours}{note}"
        if script is not None:
            return f"{where}: unknown setting {key!r}; it is {script}'s --{ours}{note}"
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; run `python {cls.script} --help` for the list"
    return f"{where}: unknown setting {key!r}{hint}"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(key: str, text: str, where: str = "command line", cls=RunConfig):
    """Turn the command-line string of setting `key` into a value of its type."""
    typ, optional = setting_type(key, cls)
    low = text.strip().lower()
    if optional and low in ("none", "null", "auto"):
        return None
    try:
        if typ is bool:
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if typ is int:
            return int(low.replace("_", ""))
        if typ is float:
            return float(low.replace("_", ""))
    except ValueError:
        pass
    else:
        return text
    kind = {bool: "true or false", int: "an integer", float: "a number"}[typ]
    raise NanoGPT2Error(f"{where}: --{key} must be {kind}{' or none' if optional else ''}, not {text!r}")


def check_value(key: str, value, where: str = "config", cls=RunConfig):
    """Check a Python value for setting `key` (from a config file or code); ints are accepted for floats."""
    typ, optional = setting_type(key, cls)
    if value is None and optional:
        return None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    want = {bool: "a bool (True/False)", int: "an int", float: "a float", str: "a string"}[typ]
    raise NanoGPT2Error(f"{where}: {key} must be {want}{' or None' if optional else ''}, not {value!r} ({type(value).__name__})")


# nanoGPT train.py settings that have no setting of ours of that name: name -> what happens to them.
# A callable turns nanoGPT's value into our settings ({} when there is nothing to set); a string is why the key
# is ignored. Other nanoGPT names (out_dir, eval_interval, n_layer, beta2, backend, ...) are ours already.
_NO_WANDB = "no Weights & Biases logging here: metrics go to out_dir/metrics.jsonl and TensorBoard"
NANOGPT_KEYS = MappingProxyType({
    "wandb_log": _NO_WANDB,
    "wandb_project": _NO_WANDB,
    "wandb_run_name": _NO_WANDB,
    "always_save_checkpoint": "checkpoint_best.pt is saved on each new best validation loss (save_best) and "
                              "checkpoint_step_N.pt every checkpoint_interval steps",
    "decay_lr": lambda value: {"lr_schedule": "cosine"} if value else {"lr_schedule": "constant", "warmup_iters": 0},
})
NANOGPT_TYPES = MappingProxyType({"wandb_log": bool, "wandb_project": str, "wandb_run_name": str,
                                  "always_save_checkpoint": bool, "decay_lr": bool})


def nanogpt_settings(values: dict, where: str, cls=RunConfig) -> tuple:
    """Split nanoGPT-only keys out of `values` ({name: value}): (our settings they become, one notice line or
    ''). The keys of `values` that are ours pass through unchanged; the translations come after them, so
    nanoGPT's `decay_lr = False` wins over a warmup_iters of the same file, as in nanoGPT."""
    ours, translated, ignored, replaced = {}, {}, {}, []
    for key, value in values.items():
        rule = NANOGPT_KEYS.get(key) if key not in settings_of(cls) else None
        if rule is None:
            ours[key] = value
        elif isinstance(rule, str):
            ignored.setdefault(rule, []).append(key)
        else:
            new = rule(value)
            translated.update(new)
            replaced.append(f"{key}={value!r} -> " + ", ".join(f"{k}={v!r}" for k, v in new.items()))
    if not ignored and not replaced:
        return ours, ""
    parts = [f"ignored {', '.join(keys)} ({why})" for why, keys in ignored.items()]
    parts += [f"replaced {r}" for r in replaced]
    return {**ours, **translated}, f"notice: nanoGPT settings in {where}: " + "; ".join(parts)


def set_setting(cfg: RunConfig, key: str, value, where: str):
    cls = type(cfg)
    if key not in settings_of(cls):
        raise NanoGPT2Error(unknown_key_message(key, where, cls))
    setattr(cfg, key, check_value(key, value, where, cls))


def validate(cfg: RunConfig) -> RunConfig:
    """RunConfig's range and choice checks that need no runtime information (the trainer checks the rest)."""
    for key, choices in type(cfg).choices.items():
        if getattr(cfg, key) not in choices:
            raise NanoGPT2Error(unknown_choice(key, getattr(cfg, key), choices))
    positive = ["batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head", "n_embd", "max_bad_steps",
                "test_stride"]
    for key in positive:
        if getattr(cfg, key) < 1:
            raise NanoGPT2Error(f"{key} must be >= 1, not {getattr(cfg, key)}")
    non_negative = ["max_iters", "max_epochs", "warmup_iters", "warmup_ratio", "lr_decay_iters", "min_lr", "weight_decay",
                    "grad_clip", "eval_interval", "eval_iters", "checkpoint_interval", "keep_last", "sample_interval",
                    "early_stopping_patience",
                    "sample_tokens", "sample_top_k", "tokens_per_step", "train_stride", "max_training_hours", "learning_rate", "eps",
                    "sample_temperature"]
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise NanoGPT2Error(f"{key} must be >= 0, not {getattr(cfg, key)}")
    if not cfg.dist_timeout > 0:
        raise NanoGPT2Error(f"dist_timeout must be > 0 seconds, not {cfg.dist_timeout}")
    if cfg.n_inner is not None and cfg.n_inner < 1:
        raise NanoGPT2Error(f"n_inner must be >= 1 or none (4 x n_embd), not {cfg.n_inner}")
    if cfg.log_interval < 1:
        raise NanoGPT2Error(f"log_interval must be >= 1, not {cfg.log_interval}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise NanoGPT2Error(f"dropout must be in [0, 1), not {cfg.dropout}")
    for key in settings_of(type(cfg)):
        value = getattr(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise NanoGPT2Error(f"{key} must be a finite number, not {value}")
    for key in ("beta1", "beta2"):  # AdamW's own range, checked before a run starts rather than inside torch
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise NanoGPT2Error(f"{key} must be in [0, 1), not {getattr(cfg, key)}")
    if cfg.warmup_ratio >= 1.0:
        raise NanoGPT2Error(f"warmup_ratio must be < 1, not {cfg.warmup_ratio}")
    if cfg.n_embd % cfg.n_head:
        raise NanoGPT2Error(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if cfg.max_iters == 0 and cfg.max_epochs == 0 and not cfg.eval_only:
        raise NanoGPT2Error("set max_iters or max_epochs (both are 0, so the run has no length)")
    if not cfg.init_from:
        raise NanoGPT2Error("init_from must not be empty; use scratch, a GPT-2 name, a folder or resume")
    if not cfg.dataset.strip():
        raise NanoGPT2Error("dataset must not be empty; give a dataset name (shakespeare, wikitext2, ...) or the path "
                            "of a text file or folder")
    if not cfg.out_dir.strip():
        raise NanoGPT2Error("out_dir must not be empty; give the folder for checkpoints and logs, e.g. --out_dir=out")
    return cfg


def unknown_choice(key, value, choices) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key} must be one of {', '.join(choices)}, not {value!r}{hint}"


# ----------------------------------------------------------------------------------------------------
# Config files and the command line


def read_config_file(path, cls=RunConfig) -> dict:
    """The settings a config file assigns, type-checked; unknown names rejected."""
    path = Path(path)
    if not path.is_file():
        raise NanoGPT2Error(f"config file {path} does not exist; pass a path such as configs/shakespeare.py")
    source = read_text(path, "config file")
    namespace = {"__file__": str(path), "__name__": "__nanogpt2_config__"}
    try:
        exec(compile(source, str(path), "exec"), namespace)
    except NanoGPT2Error:
        raise
    except Exception as e:  # the user's file: show where it failed, in one line
        line = getattr(e, "lineno", None)
        if line is None and e.__traceback__ is not None:
            tb = e.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            line = tb.tb_lineno
        raise NanoGPT2Error(f"{path}:{line}: {type(e).__name__}: {e}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if key in NANOGPT_KEYS and key not in settings_of(cls):  # nanoGPT's own; nanogpt_settings translates it
            values[key] = value
            continue
        if key not in settings_of(cls):
            raise NanoGPT2Error(unknown_key_message(key, str(path), cls))
        values[key] = check_value(key, value, str(path), cls)
    return values


def parse_argv(argv, cls=RunConfig) -> tuple:
    """Split argv into (config files, {key: string value}). Both `--key=value` and `--key value`."""
    files, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if arg.startswith("-") and arg not in ("-",):
                raise NanoGPT2Error(f"unknown option {arg!r}; settings are written --key=value or --key value")
            files.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in settings_of(cls) and key not in NANOGPT_KEYS:
            raise NanoGPT2Error(unknown_key_message(key, "command line", cls))
        if not eq:
            typ = setting_type(key, cls)[0] if key in settings_of(cls) else NANOGPT_TYPES[key]
            nxt = argv[i] if i < len(argv) else None
            if typ is bool and (nxt is None or nxt.startswith("--") or nxt.lower() not in _TRUE | _FALSE):
                value = "true"  # a bare boolean flag: --compile
            elif nxt is None or nxt.startswith("--"):
                raise NanoGPT2Error(f"command line: --{key} needs a value (--{key}=VALUE or --{key} VALUE)")
            else:
                value = nxt
                i += 1
        overrides[key] = value
    return files, overrides


def load_config(argv, default_config_file=None, cls=RunConfig) -> RunConfig:
    """The effective config of `python train.py [config.py ...] [--key=value | --key value]...` as a `cls`
    (RunConfig or a dataclass subclass of it).

    When argv names no config file, `default_config_file` (if given) is applied instead.
    """
    files, overrides = parse_argv(list(argv), cls)
    if not files and default_config_file is not None:
        files = [str(default_config_file)]
    cfg, notices, given = cls(), [], {}
    for f in files:
        values, notice = nanogpt_settings(read_config_file(f, cls), f, cls)
        notices += [notice] if notice else []
        for key, value in values.items():
            setattr(cfg, key, value)
            given[key] = (len(given), f)
    parsed = {k: (parse_value(k, t, cls=cls) if k in settings_of(cls) else parse_value_nanogpt(k, t))
              for k, t in overrides.items()}
    values, notice = nanogpt_settings(parsed, "the command line", cls)
    notices += [notice] if notice else []
    for key, value in values.items():
        setattr(cfg, key, value)
        given[key] = (len(files), "the command line")
    notices += resolve_given(cfg, {k: layer for k, (_, layer) in given.items()}, files)
    cfg.validate()
    cfg._sources = files  # noqa: not a setting; shown by format_config
    cfg._notices = notices  # noqa: not a setting; shown by format_config above the settings
    return cfg


# Pairs of settings that both set one thing: (a, b, what they set, the rule when both are active in one layer).
# Active: > 0. A setting given (config file or command line) wins over the other's default; between two given
# ones the later layer (command line > later file > earlier file) wins; the loser is set to 0.
COMPETING = (
    ("max_iters", "max_epochs", "the run length", "the fewer steps"),
    ("warmup_iters", "warmup_ratio", "the warmup", "warmup_ratio"),
)


def resolve_given(cfg, given: dict, files) -> list:
    """Apply COMPETING to `cfg` in place: given {setting: where it was given ('the command line' or a config
    file)}, in the order applied. Returns the notice lines, one per pair where two given settings conflict."""
    order = [*files, "the command line"]
    notices = []
    for a, b, what, same_layer_rule in COMPETING:
        va, vb = getattr(cfg, a), getattr(cfg, b)
        if not (va > 0 and vb > 0) or (a not in given and b not in given):
            continue
        if a in given and b in given:
            la, lb = order.index(given[a]), order.index(given[b])
            if la == lb:
                notices.append(f"notice: {a}={va!r} and {b}={vb!r} are both set in {given[a]}: {same_layer_rule} "
                               f"governs {what}")
                continue
            winner, loser = (a, b) if la > lb else (b, a)
            notices.append(f"notice: {winner}={getattr(cfg, winner)!r} ({given[winner]}) governs {what}, not "
                           f"{loser}={getattr(cfg, loser)!r} ({given[loser]}): {loser} set to 0")
        else:
            winner, loser = (a, b) if a in given else (b, a)
        setattr(cfg, loser, type(getattr(cfg, loser))(0))  # given wins over the other's default, silently
    return notices


def parse_value_nanogpt(key: str, text: str):
    """A nanoGPT-only key from the command line, as its NANOGPT_TYPES type (its rule in NANOGPT_KEYS decides
    what it does)."""
    low = text.strip().lower()
    if NANOGPT_TYPES[key] is not bool:
        return text
    if low not in _TRUE | _FALSE:
        raise NanoGPT2Error(f"command line: --{key} must be true or false, not {text!r}")
    return low in _TRUE


def wants_help(argv) -> bool:
    return any(a in ("-h", "--help") for a in argv)


# ----------------------------------------------------------------------------------------------------
# Showing settings


def format_config(cfg: RunConfig, width: int = 110) -> str:
    """The effective config as `key=value` items wrapped at `width` columns; changed settings marked '*'."""
    defaults = type(cfg)()
    sources = getattr(cfg, "_sources", None)
    lines = [*getattr(cfg, "_notices", []),
             f"effective config (config files: {', '.join(sources) if sources else 'none'}; * = not the default):"]
    line = " "
    for name in settings_of(type(cfg)):
        value = getattr(cfg, name)
        item = f" {'*' if value != getattr(defaults, name) else ''}{name}={value!r}"
        if len(line) + len(item) > width:
            lines.append(line)
            line = " "
        line += item
    lines.append(line)
    return "\n".join(lines)


def save_config(cfg: RunConfig, path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n", encoding="utf-8")


def _type_name(name: str, cls=RunConfig) -> str:
    typ, optional = setting_type(name, cls)
    return typ.__name__ + (" or none" if optional else "")


def _grouped(cls):
    """(group title, [fields]) in the class's group order; a field with an unknown group is a bug."""
    unknown = [f.name for f in fields(cls) if f.metadata["group"] not in cls.groups]
    if unknown:
        raise ValueError(f"settings {unknown} of {cls.__name__} name a group missing from {cls.__name__}.groups")
    return [(title, [f for f in fields(cls) if f.metadata["group"] == group]) for group, title in cls.groups.items()]


def defaults_markdown(cls, base=RunConfig) -> str:
    """A markdown table of the settings whose default in `cls` differs from `base`'s."""
    mine, theirs = {f.name: f.default for f in fields(cls)}, {f.name: f.default for f in fields(base)}
    rows = [f"| `{k}` | `{theirs[k]!r}` | `{v!r}` |" for k, v in mine.items() if k in theirs and v != theirs[k]]
    return "\n".join([f"| setting | {base.script} | {cls.script} |", "|---|---|---|", *rows]) + "\n"


def settings_markdown(cls=RunConfig, groups=None) -> str:
    """Markdown tables of every setting (of the named `groups` only, when given) with type, default and
    description (used in docs/training.md and docs/finetuning.md)."""
    out = []
    titles = None if groups is None else {cls.groups[g] for g in groups}
    for title, group_fields in _grouped(cls):
        if titles is not None and title not in titles:
            continue
        out.append(f"### {title}\n\n| setting | type | default | meaning |\n|---|---|---|---|")
        for f in group_fields:
            default = f.default if f.default is not MISSING else None
            help_text = f.metadata["help"].replace("|", "\\|")
            out.append(f"| `{f.name}` | {_type_name(f.name, cls)} | `{default!r}` | {help_text} |")
        out.append("")
    return "\n".join(out)


def settings_text(cls=RunConfig) -> str:
    """Plain-text list of the settings (for --help), naming the class's script."""
    out = [f"usage: python {cls.script} [config.py ...] [--key=value | --key value]...", ""]
    for title, group_fields in _grouped(cls):
        out.append(f"{title}:")
        for f in group_fields:
            out.append(f"  --{f.name} ({_type_name(f.name, cls)}, default {f.default!r})\n      {f.metadata['help']}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_markdown())
