"""
Fine-tuning on the one training loop: a method (how much of the model trains) times a task (what it learns).

    python finetune.py configs/finetune_lora.py --init_from gpt2 --method lora --lora_rank 8 --lora_alpha 16
    python finetune.py configs/finetune_selective.py --freeze_layers 0,1,2,3 --layer_lr_scales 0.1,0.5,1.0
    python finetune.py --help                       # every setting with its default (docs/finetuning.md)

Methods (`method`):
  full        every parameter trains (train.py from pretrained weights, with the fine-tuning extras below)
  lora        LoRA on `lora_targets` (nanogpt2.peft.apply_lora); the base is frozen
  adapter     Houlsby adapters of `adapter_size` in every block (nanogpt2.peft.apply_adapters)
  prefix      prefix tuning: `prefix_length` learned keys/values per layer (nanogpt2.peft.apply_prefix); the
              windows (`block_size`) must leave those positions free in the model's context
  prompt      prompt tuning: `prompt_length` learned input embeddings before the tokens' (nanogpt2.peft.apply_prompt),
              random or from `prompt_init_text`; like a prefix, they take positions of the model's context
  selective   full, but the blocks of `freeze_layers` (and the embeddings / head with `freeze_embeddings` /
              `freeze_head`) stay frozen
For every method: `layer_lr_scales` gives the blocks contiguous groups with their own multiple of the scheduled
learning rate (three scales: lower / middle / top thirds; embeddings take the first scale, everything above the
blocks the last), and `head_only_steps` / `head_only_epochs` train only the task's head first, then the method's
whole trainable set.

Tasks (`task`) are modules with a `task(cfg) -> TaskParts` function, registered in `TASKS`: `lm` (here: any
dataset train.py knows, validation perplexity each eval_interval, the final strided test perplexity; with
`key_token_alpha` the key-token weighted loss of nanogpt2.losses), `classify`
(nanogpt2/classify.py: GPT-2 as a text classifier, baseline and test accuracy, a results tree), `instruct` (nanogpt2/instruct.py: Alpaca
instruction tuning, loss on the response only), `distill` (nanogpt2/distill.py: a student learns a teacher,
docs/distill.md). A task says what its model is built from, its data, losses and evaluations; the method and the
loop are shared.

What a run leaves in out_dir, besides train.py's checkpoints (full resume state, exact as in train.py; for the
PEFT methods the trained tensors and a reference to the base instead of its weights: nanogpt2/base_ref.py) and logs:
`adapter/`, the trainable weights alone for sharing (an HF peft folder for LoRA; `adapter_weights.pt` for the
others), and with `merge_and_export=DIR` an HF GPT-2 folder of the merged model.
"""

import importlib
import math
import re
import sys
from pathlib import Path
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Optional

import torch.nn as nn

from nanogpt2.config import RunConfig, load_config, new_default, setting, settings_text, wants_help
from nanogpt2.errors import EXIT_INTERRUPTED, NanoGPT2Error
from nanogpt2.distributed import dist_from_env
from nanogpt2.export_dir import ADAPTER_WEIGHTS, HF_MODEL, PEFT_ADAPTER, ExportDir
from nanogpt2.inspect import trainability_table
from nanogpt2.lm_results import LMResults, lm_scores
from nanogpt2.loader import model_context, model_spec
from nanogpt2.losses import KEY_TOKEN_FORMULAS, key_token_entries
from nanogpt2.model import GPT
from nanogpt2.optim import block_of, frozen_blocks, make_adamw, matches, param_groups, set_trainable
from nanogpt2.peft import (PromptTuned, apply_adapters, apply_lora, apply_prefix, apply_prompt, lora_layers,
                           save_adapter_weights, save_peft_adapter)
from nanogpt2.task_metrics import TaskMetrics
from nanogpt2.trainer import Trainer

METHODS = ("full", "lora", "adapter", "prefix", "prompt", "selective")
# task name -> module whose `task(cfg)` returns its TaskParts (imported when the task is chosen)
TASKS = {"lm": "nanogpt2.finetuning", "classify": "nanogpt2.classify", "instruct": "nanogpt2.instruct",
         "distill": "nanogpt2.distill"}

# ----------------------------------------------------------------------------------------------------
# Settings


@dataclass
class FinetuneConfig(RunConfig):
    script = "finetune.py"
    groups = MappingProxyType({**RunConfig.groups, "method": "Fine-tuning method", "task": "Task"})
    choices = MappingProxyType({**RunConfig.choices, "method": METHODS, "task": tuple(TASKS),
                                "student_init": ("teacher", "scratch"), "key_token_formula": KEY_TOKEN_FORMULAS,
                                "test_on": ("best", "final")})

    # --- defaults that differ from train.py's: the fine-tuning recipe of the configs (GPT-2 small, WikiText-2:
    # 3 epochs of 16,384-token steps, linear warmup over 10 % then linear decay to 1e-7, weight decay 0.01, AdamW
    # beta2 0.999, GPT-2's own dropout); a config file sets the method and its learning rate ---
    out_dir: str = new_default(RunConfig, "out_dir", "out-finetune")
    init_from: str = new_default(RunConfig, "init_from", "gpt2")
    dataset: str = new_default(RunConfig, "dataset", "wikitext2")
    dropout: float = new_default(RunConfig, "dropout", 0.1)
    batch_size: int = new_default(RunConfig, "batch_size", 8)
    gradient_accumulation_steps: int = new_default(RunConfig, "gradient_accumulation_steps", 2)
    max_iters: int = new_default(RunConfig, "max_iters", 0)
    max_epochs: int = new_default(RunConfig, "max_epochs", 3)
    learning_rate: float = new_default(RunConfig, "learning_rate", 2e-4)
    lr_schedule: str = new_default(RunConfig, "lr_schedule", "linear")
    warmup_ratio: float = new_default(RunConfig, "warmup_ratio", 0.1)
    min_lr: float = new_default(RunConfig, "min_lr", 1e-7)
    weight_decay: float = new_default(RunConfig, "weight_decay", 0.01)
    beta2: float = new_default(RunConfig, "beta2", 0.999)
    eval_interval: int = new_default(RunConfig, "eval_interval", 100)
    eval_iters: int = new_default(RunConfig, "eval_iters", 0)
    checkpoint_interval: int = new_default(RunConfig, "checkpoint_interval", 200)
    keep_last: int = new_default(RunConfig, "keep_last", 2)
    sample_interval: int = new_default(RunConfig, "sample_interval", 200)

    # --- the method ---
    method: str = setting("lora", "full | lora | adapter | prefix | prompt | selective (see docs/finetuning.md)", "method")
    lora_rank: int = setting(8, "LoRA rank r", "method")
    lora_alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)", "method")
    lora_dropout: float = setting(0.0, "dropout on the LoRA branch's input", "method")
    lora_targets: str = setting(
        "c_attn", "comma-separated GPT-2 layers that get LoRA: c_attn, c_proj, attn.c_proj, mlp.c_proj, c_fc, c_attn.q, "
        "c_attn.k, c_attn.v", "method")
    use_rslora: bool = setting(False, "rank-stabilised LoRA scaling alpha / sqrt(r)", "method")
    adapter_size: int = setting(64, "Houlsby adapter bottleneck width m", "method")
    adapter_train_layernorms: bool = setting(True, "with adapters, train the LayerNorms too (Houlsby et al. do)", "method")
    prefix_length: int = setting(20, "prefix tuning: virtual tokens per layer (their keys and values are learned)", "method")
    prefix_projection: int = setting(
        0, "prefix tuning: hidden size of the reparameterisation MLP used in training (0: learn the table directly); "
        "collapsed to the table at the end of the run", "method")
    prompt_length: int = setting(20, "prompt tuning: learned input embeddings (virtual tokens) before the real tokens", "method")
    prompt_init_text: str = setting(
        "", "prompt tuning: start the virtual tokens from this text's token embeddings, cut or repeated to "
        "prompt_length (peft's prompt_tuning_init=TEXT); '': random N(0, 1), peft's RANDOM", "method")
    freeze_layers: str = setting("", "method=selective: comma-separated block indices to freeze, e.g. 0,1,2,3", "method")
    freeze_embeddings: bool = setting(False, "method=selective: freeze the token and position embeddings (a tied LM "
                                      "head shares the token embedding, so it freezes too)", "method")
    freeze_head: bool = setting(False, "method=selective: freeze the task's head (lm: the final LayerNorm and the head)", "method")
    layer_lr_scales: str = setting(
        "", "comma-separated multiples of the learning rate for contiguous groups of blocks, lowest first ('': all "
        "1.0); 0.1,0.5,1.0: thirds at 0.1x / 0.5x / 1x (12 layers: blocks 0-3, 4-7, 8-11)", "method")
    head_only_steps: int = setting(0, "train only the task's head for this many steps first, then the method's whole set", "method")
    head_only_epochs: int = setting(0, "the same in epochs (adds to head_only_steps)", "method")
    merge_and_export: str = setting(
        "", "at the end, write the fine-tuned model (LoRA merged) as an HF GPT-2 folder here ('': no export); an absent "
        "or empty folder, or an earlier export (replaced); never a run folder or init_from (docs/conversion.md)", "method")

    # --- the task ---
    task: str = setting("lm", "what to fine-tune for: " + " | ".join(TASKS), "task")
    max_length: int = setting(0, "tokens per example for classify / instruct, longer ones truncated (0: the task's default: classify the model's context up to 1024, instruct 512)", "task")
    # --- task classify ---
    num_labels: int = setting(0, "classify: number of classes (0: the data's, or init_from's classification head)", "task")
    label_smoothing: float = setting(0.0, "classify: label smoothing of the training cross-entropy (the users' recipe: 0.1)", "task")
    classifier_dropout: float = setting(0.1, "classify: dropout before the classification head", "task")
    test_fraction: float = setting(
        0.1, "classify: the test rows held out (seeded, stratified) when the data has no test split; val_fraction "
        "(none: 0.1) does the same for the validation rows", "task")
    max_examples: int = setting(
        0, "classify: use at most this many rows of each split of the data (a seeded stratified sample, before any "
        "hold-out; 0: all)", "task")
    baseline_eval: bool = setting(True, "classify / lm / instruct: score the model before training (classify: the "
                                  "pretrained body with its fresh head, on the test split; lm: validation and test "
                                  "perplexity; instruct: the held-out response loss)", "task")
    results_dir: str = setting("results", "classify / lm / instruct: the results tree goes to "
                               "results_dir/<model>/<timestamp>/", "task")
    test_on: str = setting("best", "classify: the weights the final test scores, and the results tree and exports "
                           "hold: best (checkpoint_best.pt's, by validation accuracy, as HF's load_best_model_at_end; "
                           "the final ones when there is none) | final", "task")

    # --- task instruct ---
    template: str = setting(
        "alpaca", "instruct: the prompt template: alpaca (Stanford Alpaca's, with / without input), a file (template "
        "text, or JSON with prompt_input / prompt_no_input), or the text itself with {instruction} and {input}", "task")
    train_on_input: bool = setting(False, "instruct: the loss covers the prompt tokens too (default: the response only)", "task")
    key_tokens: str = setting(
        "", "lm / instruct: tokens that raise a sample's loss weight: comma-separated ids or strings, or a JSON list "
        "(strings with leading spaces: [\" yes\", \" no\"]); each string one token", "task")
    key_token_alpha: float = setting(
        0.0, "lm / instruct: > 0 turns on the key-token weighted loss: per-sample mean cross-entropy, sample weight "
        "1 + alpha x (key tokens among its targets), normalised over the batch", "task")
    key_token_formula: str = setting(
        "normalised", "lm / instruct, with key_token_alpha: normalised (ours, above) | hf_course (the HF course's: "
        "sample weight alpha x (1 + key tokens among its input ids), a plain mean over the samples; see "
        "docs/instruct.md)", "task")

    # --- task distill ---
    teacher: str = setting("gpt2", "task=distill: the model the student learns from, anything init_from takes (a GPT-2 "
                           "name, an HF folder, a train.py run folder or checkpoint); never trained", "task")
    student_init: str = setting("teacher", "task=distill: teacher (the student's blocks, embeddings, final LayerNorm "
                                "and head copied from the teacher) | scratch (a new GPT of n_layer, n_head, n_embd)", "task")
    student_layers: str = setting("", "task=distill: comma-separated teacher blocks the student's blocks copy, e.g. "
                                  "0,2,4,7,9,11 ('': half the teacher's depth, evenly spaced with the first and last: "
                                  "gpt2 -> 0,2,4,7,9,11, DistilGPT2's choice)", "task")
    temperature: float = setting(2.0, "task=distill: softmax temperature T of the KD term", "task")
    alpha_ce: float = setting(0.5, "task=distill: weight of the KD term T^2 * KL(teacher || student), softened by T", "task")
    alpha_clm: float = setting(0.5, "task=distill: weight of the language-modelling cross-entropy on the data", "task")
    alpha_cos: float = setting(0.0, "task=distill: weight of 1 - cosine(student, teacher) of the final hidden states "
                               "(needs the teacher's n_embd)", "task")

    def validate(self) -> "FinetuneConfig":
        super().validate()
        positive = ["lora_rank", "adapter_size", "prefix_length", "prompt_length"]
        for key in positive:
            if getattr(self, key) < 1:
                raise NanoGPT2Error(f"{key} must be >= 1, not {getattr(self, key)}")
        for key in ("head_only_steps", "head_only_epochs", "lora_alpha", "prefix_projection", "max_length",
                    "key_token_alpha"):
            if getattr(self, key) < 0:
                raise NanoGPT2Error(f"{key} must be >= 0, not {getattr(self, key)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise NanoGPT2Error(f"lora_dropout must be in [0, 1), not {self.lora_dropout}")
        layer_scales(self.layer_lr_scales)
        frozen_blocks(self.freeze_layers)
        if self.method != "selective" and (self.freeze_layers or self.freeze_embeddings or self.freeze_head):
            raise NanoGPT2Error(f"freeze_layers / freeze_embeddings / freeze_head choose what trains with "
                                f"method=selective, not method={self.method}; add --method selective")
        key_token_entries(self.key_tokens)  # the syntax; each token is checked with the run's tokenizer at start
        if bool(self.key_tokens.strip()) != (self.key_token_alpha > 0):
            raise NanoGPT2Error("key_tokens and key_token_alpha > 0 go together (the weighted loss needs both); "
                                "set both, or neither")
        if self.key_token_formula != "normalised" and self.key_token_alpha == 0:
            raise NanoGPT2Error(f"key_token_formula={self.key_token_formula} chooses the key-token weighted loss; "
                                f"set key_tokens and key_token_alpha > 0 too (the course's alpha: 1.0)")
        if self.train_stride and self.task in ("classify", "instruct"):
            raise NanoGPT2Error(f"train_stride walks a token stream in windows (tasks lm and distill); task={self.task} "
                                f"trains on whole examples: drop train_stride")
        if self.merge_and_export and self.method == "adapter":
            raise NanoGPT2Error("Houlsby adapters cannot be merged into GPT-2 weights, so merge_and_export cannot "
                                "write an HF GPT-2 folder; share out_dir/adapter/ instead, or use method=lora")
        if self.merge_and_export and self.method == "prompt" and self.task == "classify":
            raise NanoGPT2Error("a classifier's prompt cannot be merged into its weights, so merge_and_export cannot "
                                "write an HF folder; share out_dir/adapter/ instead, or use method=lora")
        return self


def layer_scales(text: str) -> list:
    """`layer_lr_scales` as floats ('' -> [])."""
    try:
        scales = [float(s) for s in text.split(",")] if text.strip() else []
    except ValueError:
        raise NanoGPT2Error(f"layer_lr_scales must be comma-separated numbers, e.g. 0.1,0.5,1.0, not {text!r}") from None
    if any(not (math.isfinite(s) and s >= 0) for s in scales):
        raise NanoGPT2Error(f"layer_lr_scales must be finite numbers >= 0, not {text!r}")
    return scales


# ----------------------------------------------------------------------------------------------------
# Tasks


@dataclass
class TaskParts:
    """What a task gives the trainer (see nanogpt2.trainer.Trainer for the callables' signatures)."""

    model: Optional[nn.Module] = None            # a ready model; None: the trainer builds one from init_from
    prepare_model: Optional[Callable] = None     # f(trainer, base GPT) -> the task's model (before the method)
    tokenizer: object = None
    make_sampler: Optional[Callable] = None
    eval_fn: Optional[Callable] = None
    loss_fn: Optional[Callable] = None
    steps_per_epoch: Optional[int] = None
    hooks: list = field(default_factory=list)
    # The task's head, as fnmatch patterns of parameter names: what trains alone during head_only_steps and what
    # freeze_head freezes. The LM head is tied to the token embedding, so for `lm` that is the head too.
    head_patterns: tuple = ("transformer.ln_f.*", "lm_head.*", "transformer.wte.*")
    modules_to_save: tuple = ()  # new parameters of the task (a classifier's score): trainable under every method
    before_train: Optional[Callable] = None      # f(trainer): e.g. a baseline evaluation
    after_train: Optional[Callable] = None       # f(trainer, summary): e.g. the test evaluation
    metrics: Optional[TaskMetrics] = None        # how the loss and metrics are reported, what judges the best (None: LM)


def task(cfg: FinetuneConfig) -> TaskParts:
    """`lm`: language modelling on any dataset train.py knows, with train.py's data, loss and evaluations (with
    key_token_alpha > 0, the key-token weighted loss of nanogpt2.losses), the baseline before training and the
    results tree (nanogpt2.lm_results)."""
    def note(trainer):
        return (f"{cfg.dataset}: {trainer.train_tokens:,} train / {len(trainer.val_data):,} validation tokens "
                f"({trainer.tokenizer.name} tokenizer)")

    results = LMResults(cfg, "lm", lm_scores, save_weights, note)
    loss_fn = None
    if cfg.key_token_alpha > 0:
        from nanogpt2.losses import KeyTokenLoss

        loss_fn = KeyTokenLoss(cfg.key_tokens, cfg.key_token_alpha, cfg.key_token_formula)
    return TaskParts(loss_fn=loss_fn, before_train=results.before_train, after_train=results.after_train)


def load_task(name: str) -> Callable:
    if name not in TASKS:
        raise NanoGPT2Error(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).task


# ----------------------------------------------------------------------------------------------------
# The method: what trains, at what rate


def apply_method(model: nn.Module, cfg: FinetuneConfig, tokenizer=None) -> nn.Module:
    """The method's modules (recorded in the model spec, so checkpoints rebuild them); `tokenizer` encodes
    prompt_init_text."""
    if cfg.method == "lora":
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha, [t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
                   cfg.lora_dropout, cfg.use_rslora)
        for line in lora_warnings(model):
            print(f"warning: {line}", file=sys.stderr, flush=True)
    elif cfg.method == "adapter":
        apply_adapters(model, cfg.adapter_size, cfg.adapter_train_layernorms)
    elif cfg.method == "prefix":
        model = apply_prefix(model, cfg.prefix_length, cfg.prefix_projection or None)
    elif cfg.method == "prompt":
        init = None
        if cfg.prompt_init_text:
            if tokenizer is None:
                raise NanoGPT2Error("prompt_init_text needs the run's tokenizer; this task gives none")
            init = tokenizer.encode_ordinary(cfg.prompt_init_text)  # plain text: no special tokens
        model = apply_prompt(model, cfg.prompt_length, init)
    return model


def lora_warnings(model: nn.Module) -> list:
    """What cannot work in a model's LoRA settings, one line each: lora_alpha 0 (every update is scaled to zero),
    and a rank above min(in, out) of a targeted layer (the update is full-rank there: the extra rank adds
    parameters, not expressiveness)."""
    layers = lora_layers(model)
    if not layers:
        return []
    lines, rank = [], model.lora_config["rank"]
    if model.lora_config["alpha"] == 0:
        lines.append("lora_alpha=0 scales every LoRA update by 0: the adapter changes nothing and learns nothing (its "
                     "gradients are 0 too); set lora_alpha > 0, e.g. 2 x lora_rank")
    small = {n: min(m.in_features, len(m.out_rows)) for n, m in layers.items()}
    over = {n: k for n, k in small.items() if rank > k}
    if over:
        name, k = next(iter(over.items()))
        m = layers[name]
        lines.append(f"lora_rank={rank} is above min(in, out) of {len(over)} targeted layer(s) (e.g. {name}: "
                     f"{m.in_features} -> {len(m.out_rows)}, min {k}): there the update is a full-rank one, and each "
                     f"rank past {k} adds parameters that cannot raise it; use lora_rank <= {min(over.values())}, or "
                     f"method=full")
    return lines


def lr_scale_fn(cfg: FinetuneConfig, n_layer: int) -> Optional[Callable[[str], float]]:
    """name -> the multiple of the learning rate its group gets: block i of n in group i * k // n of the k scales;
    the embeddings take the first scale, everything else outside the blocks the last. None: all 1.0."""
    scales = layer_scales(cfg.layer_lr_scales)
    if not scales:
        return None
    if len(scales) > n_layer:
        raise NanoGPT2Error(f"layer_lr_scales has {len(scales)} groups but the model has {n_layer} blocks")

    def scale(name: str) -> float:
        block = block_of(name)
        if block is not None:
            return scales[block * len(scales) // n_layer]
        return scales[0] if re.search(r"(^|\.)(wte|wpe)\.", name) else scales[-1]

    return scale


def make_finetune_optimizer(head_patterns, modules_to_save=()):
    """The trainer's make_optimizer for fine-tuning: set what trains, then AdamW groups with lr_scale (decay on
    matrices only). Called on fresh runs and on resume alike, so the groups always match."""
    def make(trainer, model):
        cfg = trainer.cfg
        set_trainable(model, cfg.method, head_patterns, modules_to_save, cfg.freeze_layers, cfg.freeze_embeddings,
                      cfg.freeze_head)
        groups = param_groups(model, cfg.weight_decay, cfg.decay_pos_emb, lr_scale=lr_scale_fn(cfg, len(model.transformer.h)))
        if not any(g["params"] for g in groups):
            raise NanoGPT2Error(f"method={cfg.method} leaves nothing to train; freeze fewer parts")
        trainer.log(trainability_table(model, grouped=True))  # what trains, then peft's totals line
        return make_adamw(groups, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.eps, trainer.device.type)

    return make


class HeadOnlyPhase:
    """A trainer hook: for the first `head_only` steps only the head's parameters train (the others keep
    requires_grad False, so AdamW leaves them alone), then the method's whole trainable set. Pure function of
    the step, so a resumed run lands in the right phase."""

    def __init__(self, head_patterns, steps: int, epochs: int):
        self.head_patterns, self.steps, self.epochs = head_patterns, steps, epochs
        self.trainable = None

    def __call__(self, trainer, event: str):
        if event not in ("train_start", "step_end"):
            return
        model = trainer.raw_model
        if self.trainable is None:  # the method's set, as the optimizer was built with it
            if trainer.dist.enabled:
                raise NanoGPT2Error("head_only_steps / head_only_epochs are not supported under torchrun (DDP needs "
                                    "the same trainable set at every step); run the phases as two runs")
            self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            self.steps += self.epochs * (trainer.steps_per_epoch or 0)
            if self.epochs and not trainer.steps_per_epoch:
                raise NanoGPT2Error("head_only_epochs needs the epoch length; use head_only_steps")
            head = {n for n in self.trainable if matches(n, self.head_patterns)}
            if not head:
                raise NanoGPT2Error("head_only_steps: this task's head has no trainable parameter under "
                                    f"method={trainer.cfg.method}")
            trainer.log(f"head only for the first {self.steps} steps ({len(head)} tensors), then "
                        f"{len(self.trainable)} tensors")
        head_phase = trainer.step < self.steps
        for n, p in model.named_parameters():
            p.requires_grad_(n in self.trainable and (not head_phase or matches(n, self.head_patterns)))


# ----------------------------------------------------------------------------------------------------
# Outputs of a run


def peft_base(init_from: str, log=None) -> str:
    """What a peft folder's base_model_name_or_path records: the HF repo of a GPT-2 name, the absolute path of a
    local HF folder; else '' and one line through `log` saying peft needs an HF base and how to make one."""
    from nanogpt2.hf_checkpoint import HF_REPOS

    if init_from in HF_REPOS:
        return HF_REPOS[init_from]
    folder = Path(init_from).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file() and any(folder.glob("model.safetensors*")):
        return str(folder.resolve())
    if log is not None:
        log(f"the peft adapter folder names no base model: peft needs an HF base, and init_from={init_from} is not "
            f"one; make one with `python -m nanogpt2.convert {init_from} DIR` and set base_model_name_or_path "
            f"to DIR in adapter_config.json")
    return ""


def save_adapter(model: nn.Module, folder, overwrite: bool = False, log=None, base: str = "") -> str:
    """The trainable weights alone, for sharing: an HF peft folder for LoRA (when peft can express it), prefix
    tuning and a language model's prompt tuning, naming `base` (peft_base) as its base model, else
    `adapter_weights.pt` (nanogpt2.peft.save_adapter_weights). Returns what was written."""
    lora = getattr(model, "lora_config", None) is not None and not any(l.partial for l in lora_layers(model).values())
    prompt = isinstance(model, PromptTuned) and isinstance(model, GPT)
    if lora or prompt or getattr(model, "prefix_config", None) is not None:
        return str(save_peft_adapter(model, folder, base, overwrite=overwrite, log=log, name="out_dir/adapter"))
    return str(save_adapter_weights(model, folder, model_spec(model), overwrite, log))


def export_merged(model: nn.Module, folder, tokenizer=None, log=None, overwrite: bool = False,
                  reserved: dict = None, base: str = "") -> str:
    """An HF GPT-2 folder of the fine-tuned model (nanogpt2.convert.save_pretrained: LoRA merged on a copy, the
    run's model stays unmerged); a prefix or a prompt cannot merge into GPT-2's weights, so it is exported as an HF
    peft PREFIX_TUNING / PROMPT_TUNING folder naming `base` (peft_base) as its base model. Where: the export rule of
    nanogpt2/export_dir.py."""
    from nanogpt2.convert import save_pretrained

    name = "merge_and_export"
    for attr, what in (("prefix_config", "prefix-tuning"), ("prompt_config", "prompt-tuning")):
        if getattr(model, attr, None) is not None:
            return str(save_peft_adapter(model, folder, base, overwrite=overwrite, log=log, reserved=reserved,
                                         name=name)) + f" (peft {what} folder; the base model is init_from)"
    return str(save_pretrained(model, folder, tokenizer=tokenizer, log=log, overwrite=overwrite, reserved=reserved,
                               name=name)) + " (HF folder)"


def export_plans(cfg: FinetuneConfig) -> list:
    """The export folders the run writes at its end, checked against the export rule (nanogpt2/export_dir.py)
    before anything is done: a refusal is one line, and nothing is written."""
    out = Path(cfg.out_dir)
    plans = []
    if cfg.method not in ("full", "selective"):
        prompt_ok = cfg.method == "prompt" and cfg.task != "classify"  # a classifier's prompt: adapter_weights.pt
        peft_ok = cfg.method == "prefix" or prompt_ok or (cfg.method == "lora" and "c_attn." not in cfg.lora_targets)
        plans.append(ExportDir.check(out / "adapter", PEFT_ADAPTER if peft_ok else ADAPTER_WEIGHTS, cfg.overwrite,
                                     name="out_dir/adapter"))
    if cfg.merge_and_export:
        plans.append(ExportDir.check(cfg.merge_and_export, PEFT_ADAPTER if cfg.method in ("prefix", "prompt") else HF_MODEL,
                                     cfg.overwrite, export_reserved(cfg), "merge_and_export"))
    return plans


def export_reserved(cfg: FinetuneConfig) -> dict:
    """What merge_and_export must not be, nor hold: the run's out_dir (and its adapter folder), init_from (a path)."""
    reserved = {"the run's out_dir": cfg.out_dir, "the run's out_dir/adapter": str(Path(cfg.out_dir) / "adapter")}
    return {**reserved, "init_from": cfg.init_from} if Path(cfg.init_from).exists() else reserved


def save_model_checkpoint(trainer, folder) -> Path:
    """The run's model as one checkpoint the loader reads (folder/checkpoint_final.pt: weights, spec, tokenizer,
    run config), for what an HF GPT-2 folder cannot hold (Houlsby adapters, a char vocabulary)."""
    from nanogpt2 import checkpoint as ckpt_io

    model = trainer.raw_model
    return ckpt_io.save_checkpoint(Path(folder) / f"{ckpt_io.PREFIX}final{ckpt_io.SUFFIX}", {
        "model": model.state_dict(), "model_spec": model_spec(model), "model_config": {}, "step": trainer.step,
        "tokenizer": ckpt_io.tokenizer_info(trainer.tokenizer), "run_config": trainer.cfg.to_dict()})


def save_weights(trainer, folder) -> str:
    """The results tree's train/weights/ of a language model: an HF GPT-2 folder (LoRA merged on a copy; a prefix:
    an HF peft folder), or a checkpoint (`save_model_checkpoint`) with Houlsby adapters or a char vocabulary."""
    model = trainer.raw_model
    if getattr(model, "adapter_config", None) is not None:
        return f"{save_model_checkpoint(trainer, folder)} (nanogpt2 checkpoint: Houlsby adapters have no HF GPT-2 form)"
    if getattr(trainer.tokenizer, "name", "gpt2") != "gpt2":
        return f"{save_model_checkpoint(trainer, folder)} (nanogpt2 checkpoint: it holds the {trainer.tokenizer.name} vocabulary)"
    prefix_or_prompt = any(getattr(model, a, None) is not None for a in ("prefix_config", "prompt_config"))
    base = peft_base(trainer.cfg.init_from) if prefix_or_prompt else ""
    return export_merged(model, folder, trainer.tokenizer, trainer.log, base=base)


def write_outputs(trainer) -> None:
    """After a finished run (rank 0): the adapter folder and the merge_and_export folder."""
    cfg, model = trainer.cfg, trainer.raw_model
    if not trainer.dist.master:
        return
    peft = any(getattr(model, a, None) is not None for a in ("lora_config", "prefix_config", "prompt_config"))
    base = peft_base(cfg.init_from, trainer.log) if peft else ""  # out_dir/adapter's and a prefix / prompt export's
    if cfg.method not in ("full", "selective"):
        trainer.log(f"adapter weights: {save_adapter(model, trainer.out_dir / 'adapter', cfg.overwrite, trainer.log, base)}")
    if cfg.merge_and_export:
        where = export_merged(model, cfg.merge_and_export, trainer.tokenizer, trainer.log, cfg.overwrite,
                              export_reserved(cfg), base)
        trainer.log(f"exported to {where}")


# ----------------------------------------------------------------------------------------------------
# finetune.py


def cap_block_size(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> FinetuneConfig:
    """block_size is the recipe's longest window, not a demand: a base model (`init_from`) of a shorter context
    trains at its context, less a prefix's or a prompt's positions, said in one line. (A distillation's teacher bounds the
    student's windows itself: nanogpt2.distill.)"""
    base = cfg.init_from
    context = None if cfg.task == "distill" else model_context(base)
    if context is None:
        return cfg
    virtual = {"prefix": cfg.prefix_length, "prompt": cfg.prompt_length}.get(cfg.method, 0)
    room = context - virtual
    if not 1 <= room < cfg.block_size:
        return cfg  # fits (or a prefix longer than the context: the method says so)
    log(f"block_size={cfg.block_size} is longer than the context of {base} ({context} tokens"
        + (f", {virtual} of them for the {cfg.method}" if virtual else "") + f"): using block_size={room}")
    capped = cfg.replace(block_size=room)
    capped._sources = getattr(cfg, "_sources", None)  # the config files, for the config line
    return capped


def run(cfg: FinetuneConfig, hooks=()) -> dict:
    """One fine-tuning run: the task's parts, the method on its model, the trainer."""
    export_plans(cfg)  # refused exports stop the run here, before anything is loaded or written
    cfg = cap_block_size(cfg, log=print if dist_from_env().master else (lambda msg: None))
    parts = load_task(cfg.task)(cfg)
    head_patterns = tuple(parts.head_patterns)

    def prepare(trainer, base):
        model = parts.prepare_model(trainer, base) if parts.prepare_model is not None else base
        return apply_method(model, cfg, trainer.tokenizer)

    model = apply_method(parts.model, cfg, parts.tokenizer) if parts.model is not None else None
    all_hooks = [*parts.hooks, *hooks]
    if cfg.head_only_steps or cfg.head_only_epochs:
        all_hooks.insert(0, HeadOnlyPhase(head_patterns, cfg.head_only_steps, cfg.head_only_epochs))
    trainer = Trainer(cfg, model=model, tokenizer=parts.tokenizer, make_sampler=parts.make_sampler,
                      eval_fn=parts.eval_fn, loss_fn=parts.loss_fn, steps_per_epoch=parts.steps_per_epoch,
                      hooks=all_hooks, make_optimizer=make_finetune_optimizer(head_patterns, tuple(parts.modules_to_save)),
                      prepare_model=prepare, metrics=parts.metrics,
                      trainable_checkpoints=cfg.method not in ("full", "selective"))  # PEFT: the base by reference
    if parts.before_train is not None:
        parts.before_train(trainer)
    summary = trainer.train()
    if summary["stopped"] == "done":  # not after a signal or the time limit: that model is not the finished one
        write_outputs(trainer)
        if parts.after_train is not None:
            parts.after_train(trainer, summary)
    return summary


def main(argv=None, default_config=None, hooks=()):
    """`python finetune.py [config.py ...] [--key=value | --key value]...` (see docs/finetuning.md)."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(settings_text(FinetuneConfig))
        return None
    cfg = load_config(argv, default_config_file=default_config, cls=FinetuneConfig)
    summary = run(cfg, hooks)
    if summary["stopped"] == "signal":  # saved and resumable: a scheduler should requeue the job
        raise SystemExit(EXIT_INTERRUPTED)
    return summary
