"""
The training loop: one loop for pretraining (train.py) and fine-tuning (finetune.py).

What one optimizer step does, in order (`OptimizerStep`):

1. set the learning rate from the schedule, a pure function of the step (`get_lr`);
2. take this process's rows of the step's global batch from the sampler (one call per step), split
   them into micro-batches, and for each: forward under autocast, loss / accumulation steps, backward
   (through the GradScaler when float16); under DDP the gradients are all-reduced on the last
   micro-step only (`no_sync` on the others);
   (with `gradient_checkpointing`, the model recomputes each block in the backward: GPT.gradient_checkpointing_enable);
3. unscale; on the logged steps, the gradient norm of each part of the model (nanogpt2/monitor.py); clip the global
   gradient norm at `grad_clip`, AdamW step (skipped by the GradScaler on an inf/NaN gradient, and by us on a
   non-finite loss), zero the gradients.

Around the steps: evaluation every `eval_interval` steps and at each epoch end (val loss, perplexity,
`checkpoint_best.pt`), periodic and epoch checkpoints, all pruned by `keep_last`'s policy (a PEFT run's hold the
trained tensors and a reference to the base: nanogpt2/base_ref.py), progress lines with
tokens/s, samples/s, MFU and peak memory, `metrics.jsonl`, TensorBoard, samples, a plot at the end; SIGTERM/SIGINT, the
wall-clock budget and non-finite losses stop the run cleanly (see docs/training.md).

Accumulation and DDP semantics (nanoGPT's): `gradient_accumulation_steps` is the global number of
micro-batches per optimizer step; with N processes (torchrun) each runs gradient_accumulation_steps / N
of them. Each step draws the same global set of windows whatever N is (the sampler hands each rank
its slice), so a step's gradient does not depend on the number of processes.

The trainer keeps the loop and the order of its stages; its collaborators each own a concept:
  nanogpt2/distributed.py  the processes: torchrun's ranks, the process group, all-reduce, "one does it, a
                           failure there stops all"
  nanogpt2/rundir.py       the run folder: what it holds, the writability check, the checkpoint to resume from
  nanogpt2/loader.py       the model: built from init_from, or rebuilt from the resume checkpoint's spec
  nanogpt2/outputs.py      what the run reports: metrics.jsonl, TensorBoard, the progress line, the plot
  nanogpt2/monitor.py      the monitor's measurements: gradient norms by part of the model, peak memory

References: Karpathy's nanoGPT `train.py` (loop, schedule, DDP, MFU); PyTorch AMP recipe (GradScaler,
unscale before clipping); Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW).

Run:
    python train.py configs/shakespeare.py --max_iters=200
    torchrun --nproc_per_node=4 train.py configs/wikitext2.py

Reuse (fine-tuning):
    trainer = Trainer(cfg, model=model, tokenizer=tok, make_sampler=lambda t: MySampler(t.rows_per_step, ...),
                      eval_fn=my_eval, loss_fn=my_loss)
    trainer.train()

The optional parts of a Trainer (for finetune.py and tests); each defaults to the pretraining behaviour:
    model         an nn.Module whose forward fits `loss_fn` (default: built from cfg.init_from)
    tokenizer     for samples and checkpoints (default: the dataset's)
    make_sampler  f(trainer) -> sampler with next_batch(device) returning this process's rows of one
                  optimizer step (trainer.rows_per_step rows), state_dict() and load_state_dict()
                  (default: cfg.dataset's train split in random windows, or every train_stride tokens:
                  nanogpt2.samplers.train_sampler)
    eval_fn       f(trainer) -> {"val_loss": float, ...} (default: loss over the validation split)
    loss_fn       f(trainer, model, micro_batch) -> (loss, n_tokens): the micro-batch's mean loss and the
                  number of targets it averages over (default: model(x, y, return_logits=False)[1], the loss
                  without the logits, and the non-ignored targets).
                  Each micro-batch's mean counts 1/micro_steps of the step's loss (nanoGPT's accumulation);
                  the step's n_tokens on this process are summed into `trainer.last_loss_tokens`.
                  It may return a third item, {name: scalar tensor} of terms to log (a distillation loss's
                  KD and CLM terms): averaged like the loss (over micro-steps and processes) into the step
                  record under those names, so they reach the progress line, metrics.jsonl and TensorBoard
    make_optimizer  f(trainer, model) -> optimizer over the raw model's parameters; groups may carry an
                  `lr_scale` (default: nanogpt2.optim.make_optimizer from the run config)
    prepare_model f(trainer, model) -> model, applied to a new model (from init_from or scratch; never to
                  the `model` given here nor to one rebuilt from a checkpoint's spec on resume): finetune.py
                  applies its PEFT method there, so the spec the checkpoints record includes it
    steps_per_epoch  optimizer steps per epoch (default: train tokens / tokens per step)
    trainable_checkpoints  checkpoints hold the trained tensors and a reference to the base (path and sha256)
                  instead of the whole model, when the model was built from an init_from file or name
                  (finetune.py's PEFT methods; nanogpt2/base_ref.py)
    hooks         callables hook(trainer, event), event in "train_start" (before the first step of this
                  process, after a resume), "step_end", "eval_end", "train_end"
    metrics       a nanogpt2.task_metrics.TaskMetrics: how the reports name the loss and the task's metrics, and
                  the evaluation key that judges checkpoint_best.pt and `early_stopping_patience` (default: LM,
                  val_loss). A padded task's sampler may define real_tokens(micro_batch): the non-pad tokens the
                  model runs on, which tokens/s, MFU and `tokens` then count instead of batch x block_size.
"""

import contextlib
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.base_ref import trainable_state
from nanogpt2.config import RunConfig, format_config, load_config, settings_text, wants_help
from nanogpt2.distributed import batch_geometry, dist_from_env
from nanogpt2.errors import EXIT_INTERRUPTED, NanoGPT2Error
from nanogpt2.evaluate import loss_only, test_perplexity, validation_loss
from nanogpt2.loader import build_traced_run_model, check_resume_fits, checkpoint_weights, model_spec
from nanogpt2.model import GPT, IGNORE_INDEX
from nanogpt2.monitor import GradNormGroups, peak_memory
from nanogpt2.optim import make_optimizer, resolve_schedule, run_length, set_lr
from nanogpt2.outputs import RunOutputs, Throughput, TrainingSamples, fmt_duration, time_left
from nanogpt2.perf import mfu_denominator
from nanogpt2.rundir import RunDir
from nanogpt2.runtime import autocast, resolve_device, resolve_dtype
from nanogpt2.task_metrics import LM, TaskMetrics

# ----------------------------------------------------------------------------------------------------
# Small helpers


def resolve_compile(setting: Optional[bool], device: torch.device) -> bool:
    """torch.compile or not: the setting when given, else on for CUDA and off elsewhere."""
    return setting if setting is not None else device.type == "cuda"


def logs_step(trainer, n: int) -> bool:
    """Whether optimizer step n (1-based) gets a progress line: every log_interval steps, the first and the last."""
    return n % trainer.cfg.log_interval == 0 or n == 1 or n == trainer.max_steps


def split_batch(batch, n: int) -> list:
    """Split a batch (a tensor, a tuple/list of tensors or a dict of tensors) into n equal micro-batches."""
    if isinstance(batch, torch.Tensor):
        if batch.size(0) % n:
            raise NanoGPT2Error(f"the sampler returned {batch.size(0)} rows, not a multiple of {n} micro-steps")
        return list(batch.chunk(n))
    if isinstance(batch, dict):
        parts = {k: split_batch(v, n) for k, v in batch.items()}
        return [{k: parts[k][i] for k in parts} for i in range(n)]
    parts = [split_batch(v, n) for v in batch]
    return [type(batch)(p[i] for p in parts) for i in range(n)]


def enable_gradient_checkpointing(model: nn.Module, log) -> None:
    """gradient_checkpointing=true: the model's switch (GPT.gradient_checkpointing_enable; a model without one is
    refused before the run writes anything)."""
    if not callable(getattr(model, "gradient_checkpointing_enable", None)):
        raise NanoGPT2Error(f"gradient_checkpointing=true needs a model with gradient_checkpointing_enable() (a GPT "
                            f"or the classifier); this {type(model).__name__} has none: set gradient_checkpointing=false")
    model.gradient_checkpointing_enable()
    log("gradient checkpointing: each block's activations are recomputed in the backward")


def default_optimizer(trainer, model) -> torch.optim.Optimizer:
    """The run config's AdamW (two groups, lr_scale 1.0)."""
    return make_optimizer(model, trainer.cfg, trainer.device.type)


def default_loss_fn(trainer, model, batch):
    """The language-modelling loss of a micro-batch (x, y): (mean over its scored targets, how many there are).
    return_logits=False: the model computes the loss in chunks and never holds the (B, T, vocab) logits."""
    x, y = batch
    return model(x, y, **loss_only(trainer.raw_model))[1], (y != IGNORE_INDEX).sum()


# ----------------------------------------------------------------------------------------------------
# One optimizer step


class OptimizerStep:
    """One optimizer step of a Trainer (the module docstring's 1-3): the schedule's lr, the micro-batches with
    DDP's gradient sync on the last only, the GradScaler, clipping, the AdamW update, and the skip rules for a
    non-finite loss or a float16 overflow. It updates the trainer's step counters (bad_steps_in_row,
    bad_steps_total, overflow_steps, last_step_time, last_loss_tokens, loss_terms)."""

    def __init__(self, trainer):
        self.trainer = trainer
        # log_grad_norms: the parameters of each part of the model, whose gradient norms the logged steps record
        self.norm_groups = GradNormGroups(trainer.raw_model) if trainer.cfg.log_grad_norms else None

    def __call__(self) -> dict:
        """Run optimizer step number trainer.step (0-based); return its metrics."""
        t = self.trainer
        t0 = time.perf_counter()
        lr = t.schedule.lr_at(t.step)
        set_lr(t.optimizer, lr)  # times each group's lr_scale
        t.model.train()
        micro_batches = split_batch(t.sampler.next_batch(t.device), t.micro_steps)
        count_real = getattr(t.sampler, "real_tokens", None)  # a padded task's non-pad tokens (else B x T)
        loss_sum = torch.zeros((), device=t.device)
        n_tokens = torch.zeros((), device=t.device)
        n_real = torch.zeros((), device=t.device)
        terms = {}  # the loss_fn's extra terms to log, summed like the loss
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = t.model.no_sync() if t.dist.enabled and not last else contextlib.nullcontext()
            with sync:
                with t.autocast():
                    loss, n, *more = t.loss_fn(t, t.model, mb)
                    loss = loss / t.micro_steps  # each micro-batch's mean counts equally: one big batch's mean
                t.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
            n_tokens += n
            if count_real is not None:
                n_real += count_real(mb)
            for name, value in (more[0] if more else {}).items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() / t.micro_steps
        # The loss (and its terms), averaged over every micro-batch of every process, and the real tokens: one
        # all-reduce.
        means = t.dist.all_reduce(torch.stack([loss_sum, n_real, *terms.values()])) / t.dist.world_size  # (2 + terms,)
        loss_sum = means[0]
        t.loss_terms = t.outputs.loss_terms = tuple(terms)
        t.scaler.unscale_(t.optimizer)  # no-op unless float16
        # The monitor's norms per part of the model, of the unclipped gradients, on the steps that are logged (rank 0)
        parts = self.norm_groups.norms() if self.norm_groups and t.dist.master and logs_step(t, t.step + 1) else {}
        params = [p for g in t.optimizer.param_groups for p in g["params"]]
        max_norm = t.cfg.grad_clip if t.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss_val, norm_val, n_val, real_val, *rest = torch.stack(  # one read-back (a device sync) for all of them
            [loss_sum, grad_norm.float().to(loss_sum.device), n_tokens, *means[1:],
             *(v.to(loss_sum.device) for v in parts.values())]).tolist()
        term_vals, part_vals = rest[:len(terms)], rest[len(terms):]
        t.last_loss_tokens = int(n_val)
        t.last_step_tokens = round(real_val * t.dist.world_size) if count_real is not None else t.tokens_per_step

        rec = {"step": t.step + 1, "loss": loss_val, **dict(zip(t.loss_terms, term_vals)), "lr": lr,
               "grad_norm": norm_val}
        if parts:
            rec["grad_norms"] = dict(zip(parts, part_vals))
        if not math.isfinite(loss_val) or (not t.scaler.is_enabled() and not math.isfinite(norm_val)):
            # A non-finite loss (or gradient without a scaler to catch it): skip the update.
            t.optimizer.zero_grad(set_to_none=True)
            t.scaler.update()  # resets the scaler's per-step state (halves the scale on inf grads)
            t.bad_steps_in_row += 1
            t.bad_steps_total += 1
            rec["bad_step"] = True
            t.log(f"step {t.step + 1}: non-finite loss ({loss_val}) or gradient norm ({norm_val}); step skipped "
                  f"({t.bad_steps_in_row} in a row, {t.bad_steps_total} in all)")
        else:
            t.bad_steps_in_row = 0
            if t.scaler.is_enabled():
                scale_before = t.scaler.get_scale()
                t.scaler.step(t.optimizer)  # skipped when the unscaled gradients hold inf/NaN
                t.scaler.update()
                rec["loss_scale"] = t.scaler.get_scale()
                if not math.isfinite(norm_val):
                    t.overflow_steps += 1
                    rec["overflow"] = True
                    t.log(f"step {t.step + 1}: float16 gradient overflow, step skipped, loss scale "
                          f"{scale_before:g} -> {t.scaler.get_scale():g}")
            else:
                t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
        t.last_step_time = time.perf_counter() - t0
        return rec

    def check_bad_steps(self, rec: dict):
        """Stop the run (a NanoGPT2Error) after max_bad_steps non-finite steps in a row (called once trainer.step
        counts the step)."""
        t = self.trainer
        if rec.get("bad_step") and t.bad_steps_in_row >= t.cfg.max_bad_steps:
            last_good = t.rundir.latest_checkpoint()
            where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            raise NanoGPT2Error(
                f"the loss was non-finite for {t.bad_steps_in_row} steps in a row (steps "
                f"{t.step - t.bad_steps_in_row + 1}-{t.step}); stopping without saving; {where}. "
                f"Lower learning_rate, use dtype=bfloat16/float32 or set grad_clip")


# ----------------------------------------------------------------------------------------------------
# A run's checkpoint: what it holds, and putting it back


def run_state(trainer) -> dict:
    """Everything a Trainer needs to continue exactly (all processes call it: the RNG states are gathered)."""
    t = trainer
    rng = ckpt_io.rng_state()
    if t.dist.enabled:
        all_rng = t.dist.gather(rng)
        rng = {**all_rng[0], "per_rank": all_rng}
    return {
        "model": trainable_state(t.raw_model.state_dict(), t.base_ref),  # a PEFT run: the base's tensors left out
        **({"base": t.base_ref} if t.base_ref else {}),
        "model_spec": model_spec(t.raw_model),  # what the loader rebuilds before the weights
        "model_config": t.raw_model.config.to_dict() if isinstance(t.raw_model, GPT) else {},
        "run_config": t.cfg.to_dict(),
        "tokenizer": ckpt_io.tokenizer_info(t.tokenizer) if t.tokenizer is not None else None,
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict(),
        "scheduler": {**t.schedule.__dict__, "lr": t.schedule.lr_at(t.step)},
        "step": t.step,
        "epoch": t.epoch,
        "best_val_loss": t.best_val_loss,
        "best_score": t.best_score,  # by t.metrics.best (val_loss, or a task's metric)
        "evals_since_best": t.evals_since_best,
        "tokens_seen": t.tokens_seen,
        "sampler": t.sampler.state_dict(),
        "rng": rng,
        "world_size": t.dist.world_size,
    }


def base_reference(trainer, base, resume_state) -> Optional[dict]:
    """The `base` entry of a run's checkpoints (nanogpt2/base_ref.py), or None for whole-model checkpoints: with
    trainable_checkpoints, the parameters of the `base` (a BaseRef) that the optimizer does not train (on resume:
    the checkpoint's own choice)."""
    t = trainer
    if not t.trainable_checkpoints:
        return None
    if resume_state is not None:
        return resume_state.get("base")
    if base is None:
        t.log(f"checkpoints hold the whole model: it was not read from a base file or name they could refer to "
              f"(init_from={t.cfg.init_from}, or a model the task built itself)")
        return None
    trained = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    names = [n for n, p in t.raw_model.named_parameters(remove_duplicate=False) if id(p) in trained]
    buffers = [n for n, _ in t.raw_model.named_buffers(remove_duplicate=False)]  # a forward may update them: stored
    return base.without(names + buffers).record()  # the base's files hashed, once for the run


def restore_run_state(trainer, state: dict) -> None:
    """Load what a checkpoint holds into a Trainer, but the RNG states (restored last, `restore_rng`)."""
    t, path = trainer, state["_path"]
    with ckpt_io.rebuilding(path, "the model weights"):
        t.raw_model.load_state_dict(checkpoint_weights(state, path))
    with ckpt_io.rebuilding(path, "the optimizer state"):
        t.optimizer.load_state_dict(state["optimizer"])
        for group in t.optimizer.param_groups:  # torch does not compare the moments' shapes
            for p in group["params"]:
                for k, v in t.optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                        raise ValueError(f"{k} of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")
        if t.scaler.is_enabled() and state.get("scaler"):
            t.scaler.load_state_dict(state["scaler"])
    with ckpt_io.rebuilding(path, "the training state"):
        t.step = int(state["step"])
        t.epoch = int(state.get("epoch", 0))
        t.best_val_loss = float(state.get("best_val_loss", float("inf")))
        t.best_score = float(state.get("best_score", t.best_val_loss if t.metrics.best == "val_loss" else t.best_score))
        t.evals_since_best = int(state.get("evals_since_best", 0))
        t.tokens_seen = int(state.get("tokens_seen", 0))
        t.sampler.load_state_dict(state["sampler"])
    old = state.get("run_config") if isinstance(state.get("run_config"), dict) else {}
    exactness = ("batch_size", "block_size", "gradient_accumulation_steps", "tokens_per_step", "train_stride", "seed",
                 "dtype")
    changed = [f"{k} {old[k]!r} -> {getattr(t.cfg, k)!r}" for k in exactness if k in old and old[k] != getattr(t.cfg, k)]
    if changed:
        t.log(f"warning: resuming with changed settings ({'; '.join(changed)}): the run continues but "
              f"does not reproduce an uninterrupted one")


def own_checkpoints(out_dir: Path, resume_state) -> Optional[set]:
    """The checkpoint names keep_last may prune: every one of out_dir (None), unless the run resumed from another
    folder: then those the run writes (a set it fills)."""
    elsewhere = resume_state is not None and Path(resume_state["_path"]).parent.resolve() != out_dir.resolve()
    return set() if elsewhere else None


def prune_after_save(trainer, path: Path) -> None:
    """keep_last's policy after each save, over every kind the run writes again and again (rank 0)."""
    if trainer.own_checkpoints is not None:
        trainer.own_checkpoints.add(path.name)
    if trainer.dist.master:
        trainer.rundir.prune(trainer.cfg.keep_last, trainer.own_checkpoints)


def restore_rng(trainer, rng: dict, path=None) -> None:
    """This process's RNG states from a checkpoint (its own rank's when it was written by as many processes)."""
    dist = trainer.dist
    with ckpt_io.rebuilding(path, "the random number generator states"):
        per_rank = rng.get("per_rank")
        if per_rank and len(per_rank) == dist.world_size:
            ckpt_io.set_rng_state(per_rank[dist.rank])
        else:
            if dist.world_size > 1 or per_rank:
                trainer.log("warning: the checkpoint was written with another number of processes; RNG streams differ")
            ckpt_io.set_rng_state(rng)


def judge_evaluation(trainer, res: dict) -> tuple:
    """An evaluation's verdict: the best val loss; a new best by the task's metric (trainer.metrics.best) saves
    checkpoint_best.pt (save_best); early_stopping_patience evaluations in a row without one set trainer.early_stop.
    Returns (improved, saved)."""
    t = trainer
    t.best_val_loss = min(t.best_val_loss, res["val_loss"])
    score = res.get(t.metrics.best)
    improved = score is not None and t.metrics.improved(score, t.best_score)
    saved = improved and t.cfg.save_best and not t.cfg.eval_only
    if improved:
        t.best_score, t.evals_since_best = score, 0
        if saved:
            t.save("best")
    else:
        t.evals_since_best += 1
    patience = t.cfg.early_stopping_patience
    if patience and t.evals_since_best >= patience and not t.cfg.eval_only:
        n = t.evals_since_best
        t.early_stop = (f"early stopping after step {t.step}: {n} evaluation{'s' * (n > 1)} without a better "
                        f"{t.metrics.best_label} (early_stopping_patience={patience}; best {t.best_score:.4f})")
    return improved, saved


# ----------------------------------------------------------------------------------------------------
# Signals


class StopSignal:
    """SIGTERM / SIGINT while training: the first asks the run to stop after the current step (it saves a
    checkpoint and exits); a second Ctrl-C aborts at once. `name` holds the signal that asked."""

    def __init__(self, master: bool):
        self.master = master
        self.name: Optional[str] = None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.name = name
        if self.master:
            print(f"\n{name} received: finishing the current step, then saving a checkpoint and exiting "
                  f"(Ctrl-C again to abort without saving)", flush=True)

    @contextlib.contextmanager
    def installed(self):
        """The handlers, for the duration of a `with` (the main thread only: signals go there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------------------------------
# The trainer


def seed_everything(seed: int) -> None:
    """torch's, numpy's and Python's random generators, from one seed (a process's: the run's seed + its rank)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """One training run. `Trainer(cfg).train()` is all train.py does; the optional parts finetune.py and tests
    give it are listed in the module docstring ("Reuse")."""

    def __init__(self, cfg: RunConfig, *, model: Optional[nn.Module] = None, tokenizer=None,
                 make_sampler: Optional[Callable] = None, eval_fn: Optional[Callable] = None,
                 loss_fn: Optional[Callable] = None, steps_per_epoch: Optional[int] = None, hooks=(),
                 make_optimizer: Optional[Callable] = None, prepare_model: Optional[Callable] = None,
                 metrics: Optional[TaskMetrics] = None, trainable_checkpoints: bool = False):
        self.cfg = cfg
        self.metrics = metrics or LM
        self.trainable_checkpoints = trainable_checkpoints
        self.prepare_model = prepare_model
        self.make_optimizer = make_optimizer or default_optimizer
        self.t_start = time.time()
        self.hooks = list(hooks)
        self.loss_fn = loss_fn or default_loss_fn
        self.eval_fn = eval_fn
        self.tokenizer = tokenizer
        self.steps_per_epoch = steps_per_epoch
        self.out_dir = Path(cfg.out_dir)
        self.rundir = RunDir(cfg.out_dir)
        self.dist = dist_from_env()
        self.outputs = RunOutputs(self.rundir, cfg, active=self.dist.master, log=self.log, metrics=self.metrics)
        self.stop_signal = StopSignal(self.dist.master)
        try:
            # Setup, in the one order that works: each stage needs the ones above it.
            self._setup_processes()                    # torchrun ranks, device, dtype, process group, seeds
            self._setup_batch_geometry()               # accumulation steps, rows and tokens per step
            self._check_out_dir()                      # writable? (checked without writing anything yet)
            self._setup_data(make_sampler)             # the sampler; the tokenizer (the dataset's by default)
            self._setup_run_length()                   # epochs -> steps, the schedule
            resume_state = self._find_resume()         # before the model: a checkpoint holds its architecture
            self.own_checkpoints = own_checkpoints(self.out_dir, resume_state)  # what keep_last may prune
            self._setup_model(model, resume_state)     # model, optimizer, scaler, counters (restored on resume)
            self._setup_outputs()                      # config line, config.json: only now (a refusal writes nothing)
            self._setup_wrappers()                     # torch.compile, DDP (checkpoints come from raw_model)
            self._setup_mfu()
            if resume_state is not None:  # last: model init and the MFU probe above draw random numbers
                restore_rng(self, resume_state["rng"], resume_state["_path"])
                self.log(f"resumed from {resume_state['_path']} at step {self.step} (epoch {self.epoch}, "
                         f"best val loss {self.best_val_loss:.4f})")
        except BaseException:
            self.close()  # e.g. a missing dataset under torchrun: leave the process group cleanly
            raise

    # --- setup stages, in order ----------------------------------------------------------------------

    def _setup_processes(self):
        cfg = self.cfg
        self.device = resolve_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.dist.init_process_group(self.device, cfg.backend, cfg.dist_timeout)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(cfg.seed + self.dist.rank)

    def _setup_batch_geometry(self):
        g = batch_geometry(self.cfg, self.dist.world_size)  # global micro-steps, each process's, its rows, global tokens
        self.accum_steps, self.micro_steps, self.rows_per_step, self.tokens_per_step = \
            g.accum_steps, g.micro_steps, g.rows_per_step, g.tokens_per_step
        if g.notice:
            self.log(g.notice)

    def _check_out_dir(self):
        """Refuse, before any work and writing nothing, an out_dir unwritable, owned by a live run, or holding a run."""
        self.dist.together(self.dist.master, lambda: self.rundir.check_start(self.cfg),
                           f"out_dir={self.cfg.out_dir} refused on rank 0 (see its error)")

    def _setup_outputs(self):
        self.log(format_config(self.cfg))
        self.dist.together(self.dist.master, lambda: self.rundir.create(self.cfg, self.log),
                           f"cannot write to out_dir={self.cfg.out_dir} (see rank 0's error)")

    def _setup_data(self, make_sampler):
        if make_sampler is None:
            self._setup_default_data()
        else:
            self.sampler = make_sampler(self)
            self.train_tokens = None
        TrainingSamples(self.cfg, self.tokenizer).check_prompt()

    def _setup_run_length(self):
        if self.steps_per_epoch is None and self.train_tokens is not None:
            self.steps_per_epoch = max(1, math.ceil(self.train_tokens / self.tokens_per_step))
        self.max_steps = run_length(self.cfg, self.steps_per_epoch)
        self.schedule = resolve_schedule(self.cfg, self.max_steps)

    def _setup_model(self, model, resume_state):
        self.raw_model, base = build_traced_run_model(
            self.cfg, self.tokenizer, model=model, resume_state=resume_state, log=self.log,
            prepare=None if self.prepare_model is None else lambda m: self.prepare_model(self, m))
        self.raw_model.to(device=self.device, dtype=torch.float32)  # fp32 master weights and optimizer state
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.raw_model, self.log)
        self.optimizer = self.make_optimizer(self, self.raw_model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "float16")
        self._optimizer_step = OptimizerStep(self)
        self.base_ref = base_reference(self, base, resume_state)
        self.step = 0
        self.epoch = 0
        self.best_val_loss = float("inf")
        # the best evaluation by metrics.best, the evaluations since it, and why the run stops early (judge_evaluation)
        self.best_score, self.evals_since_best, self.early_stop = self.metrics.worst, 0, None
        self.tokens_seen = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.overflow_steps = 0
        self.last_step_time = 0.0
        self.last_loss_tokens = 0  # targets the latest step's loss averaged over, on this process
        self.last_step_tokens = 0  # tokens the latest step ran on, all processes (a padded task's: the real ones)
        self.loss_terms = ()  # names of the extra terms the loss_fn returned at the latest step
        self.last_record = None  # metrics of the latest step (for hooks)
        if resume_state is not None:
            restore_run_state(self, resume_state)

    def _setup_wrappers(self):
        self.model = self.raw_model
        if resolve_compile(self.cfg.compile, self.device):
            self.log("compiling the model with torch.compile (first steps are slow) ...")
            self.model = torch.compile(self.raw_model)
        self.eval_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)

    def _setup_mfu(self):
        """The MFU denominator: the model's FLOPs per token and the device's peak."""
        self.flops_per_token, self.peak_flops, self.peak_source = mfu_denominator(
            self.raw_model, self.cfg.block_size, self.device, self.dtype)

    # --- setup helpers -------------------------------------------------------------------------------

    def _setup_default_data(self):
        from nanogpt2.data import prepare_run_data
        from nanogpt2.samplers import train_sampler

        cfg = self.cfg
        self.dataset, self.tokenizer, train, val = prepare_run_data(cfg, self.dist, self.tokenizer)
        self.train_tokens = len(train)
        self.val_data = val
        self.sampler = train_sampler(train, cfg.block_size, self.rows_per_step, cfg.train_stride, seed=cfg.seed,
                                     rank=self.dist.rank, world_size=self.dist.world_size)
        # strided windows: an epoch is the sampler's (every window once), not train tokens / tokens per step
        self.steps_per_epoch = self.steps_per_epoch or getattr(self.sampler, "steps_per_epoch", None)
        if self.eval_fn is None:
            self.eval_fn = validation_loss
        self.log(f"data: {cfg.dataset} ({self.tokenizer.name} tokenizer, vocab {self.tokenizer.n_vocab}): "
                 f"{len(train):,} train / {len(val):,} val tokens in {self.dataset.dir}")

    def _find_resume(self):
        """The checkpoint to resume from (or None), checked against this run's tokenizer and block size."""
        state = self.rundir.find_resume(self.cfg, self.log)
        if state is not None:
            check_resume_fits(self.cfg, state, self.tokenizer, self.log)
        return state

    # --- helpers ----------------------------------------------------------------------------------------

    def log(self, msg: str):
        if self.dist.master if hasattr(self, "dist") else True:
            print(msg, flush=True)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def _emit(self, event: str):
        for hook in self.hooks:
            hook(self, event)

    def _train_step(self) -> dict:
        """Run optimizer step number self.step (0-based); return its metrics (OptimizerStep)."""
        return self._optimizer_step()

    # --- evaluation -------------------------------------------------------------------------------------

    def evaluate_val(self) -> dict:
        """The validation loss of the current weights (nanogpt2.evaluate.validation_loss)."""
        return validation_loss(self)

    def evaluate_test(self) -> Optional[dict]:
        """The final test evaluation (`test_eval`, nanogpt2.evaluate.test_perplexity): rank 0 logs it and appends
        it to metrics.jsonl as test_loss, test_ppl, test_bits_per_byte."""
        res = test_perplexity(self)
        if res is None:
            return None
        self.raw_model.train()
        if not self.dist.master:
            return None
        rec = {"step": self.step, "test_loss": res["loss"], "test_ppl": res["ppl"],
               "test_bits_per_byte": res.get("bits_per_byte"), "test_tokens": res["tokens"], "test_stride": res["stride"]}
        self.log(self.outputs.test_line(res))
        self.outputs.write(rec)
        return rec

    def _evaluate(self, rec: dict, reason: str):
        res = self.eval_fn(self)
        self.raw_model.train()
        rec.update(res)
        improved, saved = judge_evaluation(self, res)
        self.log(self.outputs.eval_line(self.step, reason, res, improved, saved))
        if self.early_stop:
            self.log(self.early_stop)
        self._emit("eval_end")

    # --- samples ----------------------------------------------------------------------------------------

    def sample(self) -> Optional[str]:
        """A short generated text from the current weights (rank 0; own RNG, so training is unaffected)."""
        if not self.dist.master or self.tokenizer is None or not isinstance(self.raw_model, GPT):
            return None
        return TrainingSamples(self.cfg, self.tokenizer).generate(self.raw_model, self.step, self.device, self.autocast)

    # --- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (run_state; see nanogpt2/checkpoint.py for the keys)."""
        return run_state(self)

    def save(self, name: str) -> Path:
        """Write checkpoint_{name}.pt (all processes must call this: RNG states are gathered; rank 0 writes).
        A failed write (a full disk) is a NanoGPT2Error on every process; the previous checkpoints stay as they were."""
        state = self.state_dict()
        path = self.rundir.checkpoint_path(name)
        self.dist.together(self.dist.master, lambda: ckpt_io.save_checkpoint(path, state),
                       f"writing {path} failed on rank 0 (see its error)")
        prune_after_save(self, path)
        return path

    # --- logging outputs ----------------------------------------------------------------------------------

    def _time_left(self, step_time: float) -> dict:
        """elapsed_h, eta_h, budget_left_h (nanogpt2.outputs.time_left) after self.step of max_steps."""
        return time_left(self.t_start, self.max_steps - self.step, step_time, self.cfg.max_training_hours)

    def _progress_line(self, rec: dict) -> str:
        return self.outputs.progress_line(rec, self.max_steps)

    @property
    def _stop_signal(self) -> Optional[str]:
        """The name of the signal that asked the run to stop (None: none did); a hook may set it."""
        return self.stop_signal.name

    @_stop_signal.setter
    def _stop_signal(self, name: Optional[str]):
        self.stop_signal.name = name

    # --- the loop ---------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Train to max_steps (or until a stop); return a summary dict."""
        try:
            with self.stop_signal.installed(), self.dist.lost_processes():
                return self._train()
        finally:
            self.close()

    def close(self):
        """Close the TensorBoard writer and leave the process group (idempotent)."""
        self.outputs.close()
        self.dist.close()
        self.rundir.release()

    def _train(self) -> dict:
        cfg = self.cfg
        self.outputs.open(resumed_at=self.step)
        self.log(f"{self.dist.world_size} process(es) on {self.device} ({self.dtype}); "
                 f"{self.accum_steps} micro-steps of {cfg.batch_size} x {cfg.block_size} tokens per step "
                 f"({self.micro_steps} per process) = {self.tokens_per_step:,} tokens/step; "
                 f"{self.max_steps} steps" + (f", {self.steps_per_epoch} per epoch" if self.steps_per_epoch else ""))
        self.log(f"MFU peak: {self.peak_source}")
        if cfg.eval_only:
            if self.eval_fn is None:
                raise NanoGPT2Error("eval_only needs validation data")
            rec = {"step": self.step}
            self._evaluate(rec, "eval_only")
            return {"step": self.step, "stopped": "eval_only", **rec}

        stopped, last_rec = None, None
        self._emit("train_start")
        self._throughput = Throughput(self.flops_per_token, self.peak_flops, self.dist.world_size,
                                      samples_per_step=self.rows_per_step * self.dist.world_size)
        while self.step < self.max_steps:
            rec = self._train_step()
            self.step += 1
            self.tokens_seen += self.last_step_tokens
            self._throughput.add(self.last_step_tokens, self.last_step_time)
            self._optimizer_step.check_bad_steps(rec)
            epoch_end = bool(self.steps_per_epoch) and self.step % self.steps_per_epoch == 0
            if epoch_end:
                self.epoch += 1
            rec["epoch"] = self.epoch
            if self.metrics.perplexity:
                rec["ppl"] = math.exp(min(rec["loss"], 700.0)) if math.isfinite(rec["loss"]) else float("nan")
            final = self.step == self.max_steps
            self._evaluate_if_due(rec, epoch_end, final)
            self._log_step(rec, final)
            last_rec = self.last_record = rec
            self._periodic_outputs(epoch_end, final)
            self._emit("step_end")
            sig, time_up, elapsed = self._agreed_stops()  # every process calls it every step (a collective)
            if final or self.early_stop:
                break
            stopped = self._stop(sig, time_up, elapsed)
            if stopped:
                break
        return self._finish(stopped, last_rec)

    # --- pieces of the loop, in the order they run ---------------------------------------------------------

    def _evaluate_if_due(self, rec: dict, epoch_end: bool, final: bool):
        """Evaluation: every eval_interval steps, at each epoch end, at the end."""
        if self.eval_fn is None:
            return
        cfg = self.cfg
        reason = ("interval" if cfg.eval_interval and self.step % cfg.eval_interval == 0 else
                  "epoch end" if epoch_end else "end" if final else None)
        if reason:
            self._evaluate(rec, reason)

    def _log_step(self, rec: dict, final: bool):
        """Throughput, MFU and time left into the record; the progress line; metrics.jsonl."""
        logged = logs_step(self, self.step)
        if not (logged or "val_loss" in rec):
            return
        step_time = self._throughput.take(rec, self.last_step_time)
        rec.update(self._time_left(step_time))
        rec["tokens"] = self.tokens_seen
        rec.update(peak_memory(self.device))
        if logged:
            self.log(self._progress_line(rec))
        self.outputs.write(rec)

    def _periodic_outputs(self, epoch_end: bool, final: bool):
        """Samples every sample_interval steps; step and epoch checkpoints (the final one is saved at the end)."""
        cfg = self.cfg
        if cfg.sample_interval and self.step % cfg.sample_interval == 0:
            text = self.sample()
            if text is not None:
                self.log(f"--- sample at step {self.step} ---\n{text}\n---")
                self.outputs.write_sample(self.step, text)
        if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0 and not final:
            self.save(f"step_{self.step}")
        if epoch_end and not final:
            self.save(f"epoch_{self.epoch}")

    def _agreed_stops(self):
        """(a signal arrived, the next step would cross the wall-clock budget, elapsed seconds): agreed by all
        processes (an all-reduce), so that every one stops after the same step."""
        elapsed = time.time() - self.t_start
        limit = self.cfg.max_training_hours * 3600
        sig = self._stop_signal is not None
        time_up = limit > 0 and elapsed + self.last_step_time >= limit
        if self.dist.enabled:
            flags = torch.tensor([float(sig), float(time_up)], device=self.device)
            sig, time_up = (bool(v) for v in self.dist.all_reduce(flags, op="max").tolist())
        return sig, time_up, elapsed

    def _stop(self, sig: bool, time_up: bool, elapsed: float) -> Optional[str]:
        """Save and say why when a signal or the budget stops the run early; None to go on."""
        if sig:
            path = self.save("interrupted")
            self.log(f"stopped by {self._stop_signal or 'a signal on another process'} after step {self.step}: "
                     f"saved {path}; continue with --resume_from auto")
            return "signal"
        if time_up:
            path = self.save("time_limit")
            self.log(f"wall-clock limit max_training_hours={self.cfg.max_training_hours} reached after step {self.step} "
                     f"(elapsed {fmt_duration(elapsed)}): saved {path}; continue with --resume_from auto")
            return "time_limit"
        return None

    def _finish(self, stopped: Optional[str], last_rec) -> dict:
        """The final checkpoint and test evaluation of a finished run, the plot, and the summary."""
        test_rec = None
        if stopped is None:
            path = self.save("final")
            self.log(f"done: {self.step} steps in {fmt_duration(time.time() - self.t_start)}; saved {path}; "
                     f"best {self.metrics.best_label} {self.best_score:.4f}")
            stopped = "done"
            try:
                test_rec = self.evaluate_test()
            except NanoGPT2Error as e:  # the run itself succeeded: its checkpoints and metrics stand
                self.log(f"warning: no final test evaluation: {e}")
        plot = self.outputs.plot()
        if plot is not None:
            self.log(f"plot: {plot}")
        self._emit("train_end")
        # Every rank gets here (stops are agreed on by all-reduce): leave together, so that no rank tears its
        # process group down while rank 0 is still writing (gloo's threads could abort the early leaver).
        self.dist.barrier()
        return {"step": self.step, "stopped": stopped, "early_stop": self.early_stop, "best_val_loss": self.best_val_loss,
                "last": last_rec, "test": test_rec, "bad_steps": self.bad_steps_total, "overflow_steps": self.overflow_steps}

# ----------------------------------------------------------------------------------------------------
# train.py


def main(argv=None, default_config=None, hooks=(), cls=RunConfig):
    """`python train.py [config.py ...] [--key=value | --key value]...` (see docs/training.md). Returns the
    summary of `Trainer.train`; a run stopped by SIGTERM/SIGINT exits with status EXIT_INTERRUPTED (75).
    `cls`: the config class (RunConfig or a dataclass subclass of it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(settings_text(cls))
        return None
    cfg = load_config(argv, default_config_file=default_config, cls=cls)
    summary = Trainer(cfg, hooks=hooks).train()
    if summary["stopped"] == "signal":  # saved and resumable, but not finished: a scheduler should requeue the job
        raise SystemExit(EXIT_INTERRUPTED)
    return summary
