"""
The training loop: one loop for pretraining (train.py) and fine-tuning (finetune.py).

What one optimizer step does, in order (`Trainer._train_step`):

1. set the learning rate from the schedule, a pure function of the step (`get_lr`);
2. take this process's rows of the step's global batch from the sampler (one call per step), split
   them into micro-batches, and for each: forward under autocast, loss / accumulation steps, backward
   (through the GradScaler when float16); under DDP the gradients are all-reduced on the last
   micro-step only (`no_sync` on the others);
3. unscale, clip the global gradient norm at `grad_clip`, AdamW step (skipped by the GradScaler on an
   inf/NaN gradient, and by us on a non-finite loss), zero the gradients.

Around the steps: evaluation every `eval_interval` steps and at each epoch end (val loss, perplexity,
`checkpoint_best.pt`), periodic and epoch checkpoints pruned to `keep_last`, progress lines with
tokens/s and MFU, `metrics.jsonl`, TensorBoard, samples, a plot at the end; SIGTERM/SIGINT, the
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

References: Karpathy's nanoGPT `train.py` (loop, schedule, DDP, MFU); PyTorch AMP recipe (GradScaler,
unscale before clipping); Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW).

Run:
    python train.py configs/shakespeare.py --max_iters=200
    torchrun --nproc_per_node=4 train.py configs/wikitext2.py

Reuse (fine-tuning):
    trainer = Trainer(cfg, model=model, tokenizer=tok, make_sampler=lambda t: MySampler(t.rows_per_step, ...),
                      eval_fn=my_eval, loss_fn=my_loss)
    trainer.train()
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
from nanogpt2.config import RunConfig, format_config, load_config, settings_text, wants_help
from nanogpt2.distributed import dist_from_env
from nanogpt2.errors import EXIT_INTERRUPTED, NanoGPT2Error
from nanogpt2.generate import generate
from nanogpt2.loader import build_run_model, check_resume_fits, model_spec
from nanogpt2.model import GPT, IGNORE_INDEX
from nanogpt2.optim import make_optimizer, resolve_schedule, set_lr
from nanogpt2.outputs import RunOutputs, fmt_hours
from nanogpt2.perf import mfu, peak_flops
from nanogpt2.rundir import RunDir
from nanogpt2.runtime import DTYPES, autocast, resolve_device, resolve_dtype

# ----------------------------------------------------------------------------------------------------
# Small helpers


def resolve_compile(setting: Optional[bool], device: torch.device) -> bool:
    """torch.compile or not: the setting when given, else on for CUDA and off elsewhere."""
    return setting if setting is not None else device.type == "cuda"


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


def default_optimizer(trainer, model) -> torch.optim.Optimizer:
    """The run config's AdamW (two groups, lr_scale 1.0)."""
    return make_optimizer(model, trainer.cfg, trainer.device.type)


def default_loss_fn(trainer, model, batch):
    """The language-modelling loss of a micro-batch (x, y): (mean over its scored targets, how many there are).
    return_logits=False: the model computes the loss in chunks and never holds the (B, T, vocab) logits."""
    x, y = batch
    return model(x, y, **_loss_only(trainer.raw_model))[1], (y != IGNORE_INDEX).sum()


def _loss_only(raw_model) -> dict:
    """The forward keyword that skips the logits, for a GPT (another model given to the Trainer may not take it)."""
    return {"return_logits": False} if isinstance(raw_model, GPT) else {}


# ----------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run. `Trainer(cfg).train()` is all train.py does.

    Optional parts (for finetune.py and tests); each defaults to the pretraining behaviour:
      model         an nn.Module whose forward fits `loss_fn` (default: built from cfg.init_from)
      tokenizer     for samples and checkpoints (default: the dataset's)
      make_sampler  f(trainer) -> sampler with next_batch(device) returning this process's rows of one
                    optimizer step (trainer.rows_per_step rows), state_dict() and load_state_dict()
                    (default: RandomWindowSampler over cfg.dataset's train split)
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
      hooks         callables hook(trainer, event), event in "train_start" (before the first step of this
                    process, after a resume), "step_end", "eval_end", "train_end"
    """

    def __init__(self, cfg: RunConfig, *, model: Optional[nn.Module] = None, tokenizer=None,
                 make_sampler: Optional[Callable] = None, eval_fn: Optional[Callable] = None,
                 loss_fn: Optional[Callable] = None, steps_per_epoch: Optional[int] = None, hooks=(),
                 make_optimizer: Optional[Callable] = None, prepare_model: Optional[Callable] = None):
        self.cfg = cfg
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
        self.outputs = RunOutputs(self.rundir, cfg, active=self.dist.master, log=self.log)
        self._stop_signal = None  # name of the signal that asked us to stop
        try:
            # Setup, in the one order that works: each stage needs the ones above it.
            self._setup_processes()                    # torchrun ranks, device, dtype, process group, seeds
            self._setup_batch_geometry()               # accumulation steps, rows and tokens per step
            self._check_out_dir()                      # writable? (checked without writing anything yet)
            self._setup_data(make_sampler)             # the sampler; the tokenizer (the dataset's by default)
            self._setup_run_length()                   # epochs -> steps, the schedule
            resume_state = self._find_resume()         # before the model: a checkpoint holds its architecture
            self._setup_model(model, resume_state)     # model, optimizer, scaler, counters (restored on resume)
            self._setup_outputs()                      # the config line, out_dir, config.json (rank 0): written
                                                       # only once everything above passed (a refused run
                                                       # leaves out_dir as it was)
            self._setup_wrappers()                     # torch.compile, DDP (checkpoints come from raw_model)
            self._setup_mfu()
            if resume_state is not None:  # last: model init and the MFU probe above draw random numbers
                self._restore_rng(resume_state["rng"], resume_state["_path"])
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
        self.dist.init_process_group(self.device, cfg.backend)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed((cfg.seed + self.dist.rank) % 2**32)
        random.seed(cfg.seed + self.dist.rank)

    def _setup_batch_geometry(self):
        cfg = self.cfg
        accum = cfg.gradient_accumulation_steps
        if cfg.tokens_per_step:
            per_micro = cfg.batch_size * cfg.block_size
            if cfg.tokens_per_step % per_micro:
                raise NanoGPT2Error(
                    f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size * block_size = {per_micro}; "
                    f"pick a multiple, e.g. {max(1, round(cfg.tokens_per_step / per_micro)) * per_micro}")
            accum = cfg.tokens_per_step // per_micro
        W = self.dist.world_size
        if accum % W:
            raise NanoGPT2Error(
                f"gradient_accumulation_steps={accum} is the global count and must be divisible by the "
                f"{W} processes; use a multiple of {W}")
        self.accum_steps = accum
        self.micro_steps = accum // W  # micro-steps each process runs per optimizer step
        self.rows_per_step = cfg.batch_size * self.micro_steps  # rows this process gets per step
        self.tokens_per_step = cfg.batch_size * cfg.block_size * accum  # global

    def _check_out_dir(self):
        """Refuse an out_dir that cannot be created or written before any work (data, downloads) starts."""
        self.dist.together(self.dist.master, self.rundir.check_writable,
                           f"cannot write to out_dir={self.cfg.out_dir} (see rank 0's error)")

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
        self._check_sample_prompt()

    def _setup_run_length(self):
        cfg = self.cfg
        if self.steps_per_epoch is None and self.train_tokens is not None:
            self.steps_per_epoch = max(1, math.ceil(self.train_tokens / self.tokens_per_step))
        total = cfg.max_iters if cfg.max_iters > 0 else None
        if cfg.max_epochs > 0:
            if not self.steps_per_epoch:
                raise NanoGPT2Error("max_epochs needs to know the epoch length; set max_iters instead")
            by_epochs = cfg.max_epochs * self.steps_per_epoch
            total = by_epochs if total is None else min(total, by_epochs)
        self.max_steps = total or 0
        self.schedule = resolve_schedule(cfg, self.max_steps)

    def _setup_model(self, model, resume_state):
        self.raw_model = build_run_model(
            self.cfg, self.tokenizer, model=model, resume_state=resume_state, log=self.log,
            prepare=None if self.prepare_model is None else lambda m: self.prepare_model(self, m))
        self.raw_model.to(device=self.device, dtype=torch.float32)  # fp32 master weights and optimizer state
        self.optimizer = self.make_optimizer(self, self.raw_model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == "float16")
        self.step = 0
        self.epoch = 0
        self.best_val_loss = float("inf")
        self.tokens_seen = 0
        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.overflow_steps = 0
        self.last_step_time = 0.0
        self.last_loss_tokens = 0  # targets the latest step's loss averaged over, on this process
        self.loss_terms = ()  # names of the extra terms the loss_fn returned at the latest step
        self.last_record = None  # metrics of the latest step (for hooks)
        if resume_state is not None:
            self._restore(resume_state)

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
        fpt = getattr(self.raw_model, "flops_per_token", None)
        block = getattr(getattr(self.raw_model, "config", None), "block_size", self.cfg.block_size)
        self.flops_per_token = fpt(min(self.cfg.block_size, block)) if callable(fpt) else float("nan")
        # The CPU peak is a matmul probe on random matrices, run once per process (cached): keep it off the
        # global RNG, or a run's dropout masks would depend on whether an earlier run in the process probed.
        with torch.random.fork_rng(devices=[]):
            self.peak_flops, self.peak_source = peak_flops(self.device, self.dtype)

    # --- setup helpers -------------------------------------------------------------------------------

    def _setup_default_data(self):
        from nanogpt2.data import prepare_dataset
        from nanogpt2.samplers import RandomWindowSampler

        cfg = self.cfg
        # The first process per machine prepares (downloads, tokenizes, writes memmaps); the others wait for
        # it (an all-reduce of its failure flag, so that they stop with it instead of hanging), then read the cache.
        def prepare(quiet):
            return prepare_dataset(cfg.dataset, tokenizer=None if cfg.tokenizer == "auto" else cfg.tokenizer,
                                   data_path=cfg.data_path or None, val_fraction=cfg.val_fraction, quiet=quiet)

        ds = self.dist.together(self.dist.local_master, lambda: prepare(quiet=not self.dist.master),
                            "preparing the dataset failed on another process (see its error)")
        if not self.dist.local_master:
            ds = prepare(quiet=True)
        self.dataset = ds
        if self.tokenizer is None:
            self.tokenizer = ds.tokenizer()
        elif ckpt_io.tokenizer_info(self.tokenizer) != ckpt_io.tokenizer_info(ds.tokenizer()):
            raise NanoGPT2Error(f"{cfg.dataset} is tokenized with {ds.tokenizer().name!r}, but this run's model uses "
                                f"{self.tokenizer.name!r}; set tokenizer={self.tokenizer.name} (or another dataset)")
        train, val = ds.tokens("train"), ds.tokens("val")
        T = cfg.block_size
        for split, toks in (("train", train), ("val", val)):
            if len(toks) < T + 1:
                raise NanoGPT2Error(
                    f"the {split} split of {cfg.dataset} has {len(toks)} tokens, fewer than block_size + 1 = {T + 1}; "
                    f"lower block_size or use more data")
        self.train_tokens = len(train)
        self.val_data = val
        self.sampler = RandomWindowSampler(train, T, self.rows_per_step, seed=cfg.seed,
                                           rank=self.dist.rank, world_size=self.dist.world_size)
        if self.eval_fn is None:
            self.eval_fn = Trainer.evaluate_val
        self.log(f"data: {cfg.dataset} ({self.tokenizer.name} tokenizer, vocab {self.tokenizer.n_vocab}): "
                 f"{len(train):,} train / {len(val):,} val tokens in {ds.dir}")

    def _find_resume(self):
        """The checkpoint to resume from (or None), checked against this run's tokenizer and block size."""
        state = self.rundir.find_resume(self.cfg, self.log, master=self.dist.master)
        if state is not None:
            check_resume_fits(self.cfg, state, self.tokenizer, self.log)
        return state

    def _restore(self, state):
        """Load what a checkpoint holds, but the RNG states (restored last, see __init__)."""
        cfg, path = self.cfg, state["_path"]
        with ckpt_io.rebuilding(path, "the model weights"):
            self.raw_model.load_state_dict(ckpt_io.strip_prefixes(state["model"]))
        with ckpt_io.rebuilding(path, "the optimizer state"):
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # torch does not compare the moments' shapes
                for p in group["params"]:
                    for k, v in self.optimizer.state.get(p, {}).items():
                        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                            raise ValueError(f"{k} of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        with ckpt_io.rebuilding(path, "the training state"):
            self.step = int(state["step"])
            self.epoch = int(state.get("epoch", 0))
            self.best_val_loss = float(state.get("best_val_loss", float("inf")))
            self.tokens_seen = int(state.get("tokens_seen", 0))
            self.sampler.load_state_dict(state["sampler"])
        old = state.get("run_config") if isinstance(state.get("run_config"), dict) else {}
        exactness = ("batch_size", "block_size", "gradient_accumulation_steps", "tokens_per_step", "seed", "dtype")
        changed = [f"{k} {old[k]!r} -> {getattr(cfg, k)!r}" for k in exactness if k in old and old[k] != getattr(cfg, k)]
        if changed:
            self.log(f"warning: resuming with changed settings ({'; '.join(changed)}): the run continues but "
                     f"does not reproduce an uninterrupted one")

    def _restore_rng(self, rng: dict, path=None):
        with ckpt_io.rebuilding(path, "the random number generator states"):
            per_rank = rng.get("per_rank")
            if per_rank and len(per_rank) == self.dist.world_size:
                ckpt_io.set_rng_state(per_rank[self.dist.rank])
            else:
                if self.dist.world_size > 1 or per_rank:
                    self.log("warning: the checkpoint was written with another number of processes; RNG streams differ")
                ckpt_io.set_rng_state(rng)

    # --- helpers ----------------------------------------------------------------------------------------

    def log(self, msg: str):
        if self.dist.master if hasattr(self, "dist") else True:
            print(msg, flush=True)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def _emit(self, event: str):
        for hook in self.hooks:
            hook(self, event)

    # --- one optimizer step -----------------------------------------------------------------------------

    def _train_step(self) -> dict:
        """Run optimizer step number self.step (0-based); return its metrics."""
        t0 = time.perf_counter()
        lr = self.schedule.lr_at(self.step)
        set_lr(self.optimizer, lr)  # times each group's lr_scale
        self.model.train()
        micro_batches = split_batch(self.sampler.next_batch(self.device), self.micro_steps)
        loss_sum = torch.zeros((), device=self.device)
        n_tokens = torch.zeros((), device=self.device)
        terms = {}  # the loss_fn's extra terms to log, summed like the loss
        for i, mb in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = self.model.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    loss, n, *more = self.loss_fn(self, self.model, mb)
                    loss = loss / self.micro_steps  # each micro-batch's mean counts equally: one big batch's mean
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
            n_tokens += n
            for name, value in (more[0] if more else {}).items():
                terms[name] = terms.get(name, 0.0) + value.detach().float() / self.micro_steps
        # The loss (and its terms), averaged over every micro-batch of every process: one all-reduce.
        means = self.dist.all_reduce(torch.stack([loss_sum, *terms.values()])) / self.dist.world_size  # (1 + terms,)
        loss_sum = means[0]
        self.loss_terms = tuple(terms)
        self.scaler.unscale_(self.optimizer)  # no-op unless float16
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        loss_val, norm_val, n_val, *term_vals = torch.stack(
            [loss_sum, grad_norm.float().to(loss_sum.device), n_tokens, *means[1:]]).tolist()
        self.last_loss_tokens = int(n_val)

        rec = {"step": self.step + 1, "loss": loss_val, **dict(zip(self.loss_terms, term_vals)), "lr": lr,
               "grad_norm": norm_val}
        if not math.isfinite(loss_val) or (not self.scaler.is_enabled() and not math.isfinite(norm_val)):
            # A non-finite loss (or gradient without a scaler to catch it): skip the update.
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # resets the scaler's per-step state (halves the scale on inf grads)
            self.bad_steps_in_row += 1
            self.bad_steps_total += 1
            rec["bad_step"] = True
            self.log(f"step {self.step + 1}: non-finite loss ({loss_val}) or gradient norm ({norm_val}); step skipped "
                     f"({self.bad_steps_in_row} in a row, {self.bad_steps_total} in all)")
        else:
            self.bad_steps_in_row = 0
            if self.scaler.is_enabled():
                scale_before = self.scaler.get_scale()
                self.scaler.step(self.optimizer)  # skipped when the unscaled gradients hold inf/NaN
                self.scaler.update()
                rec["loss_scale"] = self.scaler.get_scale()
                if not math.isfinite(norm_val):
                    self.overflow_steps += 1
                    rec["overflow"] = True
                    self.log(f"step {self.step + 1}: float16 gradient overflow, step skipped, loss scale "
                             f"{scale_before:g} -> {self.scaler.get_scale():g}")
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.last_step_time = time.perf_counter() - t0
        return rec

    # --- evaluation -------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_val(self) -> dict:
        """Mean loss over `eval_iters` validation batches (0: the whole split) of non-overlapping windows, each
        process taking every world_size-th batch; token-weighted and all-reduced. Returns val_loss, val_ppl."""
        from nanogpt2.samplers import eval_windows

        cfg = self.cfg
        model = self.eval_model
        model.eval()
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # (sum of token losses, tokens)
        # The first eval_iters batches of the split (built on the CPU); this process takes every world_size-th.
        batches = eval_windows(self.val_data, cfg.block_size, cfg.batch_size, max_batches=cfg.eval_iters or None)
        for i, (x, y) in enumerate(batches):
            if i % self.dist.world_size != self.dist.rank:
                continue
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast():
                _, loss = model(x, y, **_loss_only(self.raw_model))  # the loss alone: no (B, T, vocab) logits
            n = (y != IGNORE_INDEX).sum()
            total += torch.stack([loss.double() * n, n.double()])
        self.dist.all_reduce(total)
        loss_sum, count = total.tolist()
        if count == 0:
            raise NanoGPT2Error("the validation split yields no full window; lower block_size")
        val_loss = loss_sum / count
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    @torch.no_grad()
    def evaluate_test(self) -> Optional[dict]:
        """The final test evaluation (`test_eval`): strided perplexity of the last weights on the dataset's
        own test split, when it has one — the numbers papers report (nanogpt2/evaluate.py). Under DDP every
        process scores its share of the windows and the sums are all-reduced; rank 0 logs the result and
        appends it to metrics.jsonl as test_loss, test_ppl, test_bits_per_byte."""
        from nanogpt2.evaluate import evaluate_perplexity

        cfg, ds = self.cfg, getattr(self, "dataset", None)
        if not (cfg.test_eval and ds is not None and "test" in ds.meta.get("splits", {})):
            return None
        block = min(cfg.block_size, self.raw_model.config.block_size)
        res = evaluate_perplexity(self.raw_model, ds.tokens("test"), block_size=block,
                                  stride=min(cfg.test_stride, block), batch_size=cfg.batch_size, device=self.device,
                                  dtype=None if self.dtype == "float32" else DTYPES[self.dtype],
                                  n_bytes=ds.meta["splits"]["test"].get("text_bytes"),
                                  rank=self.dist.rank, world_size=self.dist.world_size, all_reduce=self.dist.all_reduce)
        self.raw_model.train()
        if not self.dist.master:
            return None
        rec = {"step": self.step, "test_loss": res["loss"], "test_ppl": res["ppl"],
               "test_bits_per_byte": res.get("bits_per_byte"), "test_tokens": res["tokens"], "test_stride": res["stride"]}
        self.log(f"test ({res['tokens']:,} tokens, block {block}, stride {res['stride']}) | loss {res['loss']:.4f} | "
                 f"ppl {res['ppl']:.2f}" + (f" | {res['bits_per_byte']:.4f} bits/byte" if res.get("bits_per_byte") else ""))
        self._write_record(rec)
        return rec

    def _evaluate(self, rec: dict, reason: str):
        res = self.eval_fn(self)
        self.raw_model.train()
        rec.update(res)
        val = res["val_loss"]
        msg = f"eval step {self.step} ({reason}) | val loss {val:.4f} | val ppl {res.get('val_ppl', math.exp(min(val, 700))):.2f}"
        if val < self.best_val_loss:
            self.best_val_loss = val
            msg += " | new best"
            if self.cfg.save_best and not self.cfg.eval_only:
                self.save("best")
                msg += " (saved checkpoint_best.pt)"
        self.log(msg)
        self._emit("eval_end")

    # --- samples ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self) -> Optional[str]:
        """A short generated text from the current weights (rank 0; own RNG, so training is unaffected)."""
        if not self.dist.master or self.tokenizer is None or not isinstance(self.raw_model, GPT):
            return None
        cfg, tok, model = self.cfg, self.tokenizer, self.raw_model
        ids = self._sample_prompt_ids()
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T0)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + self.step)
        model.eval()
        try:
            with self.autocast():
                out = generate(model, idx, cfg.sample_tokens, temperature=cfg.sample_temperature,
                               top_k=cfg.sample_top_k or None, generator=gen, tokenizer=tok)
        finally:
            model.train()
        return tok.decode(out[0, len(ids):].tolist())

    def _sample_prompt_ids(self) -> list:
        """The token ids the samples start from: sample_prompt, else the end-of-text token (char: a newline)."""
        tok = self.tokenizer
        if self.cfg.sample_prompt:
            return tok.encode(self.cfg.sample_prompt)
        if tok.eot_token is not None:
            return [tok.eot_token]
        return tok.encode("\n") if "\n" in getattr(tok, "chars", "\n") else [0]

    def _check_sample_prompt(self):
        """Encode sample_prompt once at start: a prompt the tokenizer cannot encode would otherwise stop the
        run at its first sample, losing the steps since the last checkpoint."""
        if not (self.cfg.sample_interval and self.cfg.sample_prompt and self.tokenizer is not None):
            return
        try:
            self._sample_prompt_ids()
        except NanoGPT2Error as e:
            chars = getattr(self.tokenizer, "chars", None)
            why = (f"it has characters the dataset's character vocabulary lacks: "
                   f"{sorted(set(self.cfg.sample_prompt) - set(chars))!r}" if chars is not None else str(e))
            raise NanoGPT2Error(f"sample_prompt={self.cfg.sample_prompt!r} cannot be encoded by the "
                                f"{getattr(self.tokenizer, 'name', '?')} tokenizer: {why}. Change sample_prompt, or "
                                f"set sample_interval=0") from None

    # --- checkpoints ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (see nanogpt2/checkpoint.py for the keys)."""
        rng = ckpt_io.rng_state()
        if self.dist.enabled:
            all_rng = self.dist.gather(rng)
            rng = {**all_rng[0], "per_rank": all_rng}
        return {
            "model": self.raw_model.state_dict(),
            "model_spec": model_spec(self.raw_model),  # what the loader rebuilds before the weights
            "model_config": self.raw_model.config.to_dict() if isinstance(self.raw_model, GPT) else {},
            "run_config": self.cfg.to_dict(),
            "tokenizer": ckpt_io.tokenizer_info(self.tokenizer) if self.tokenizer is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {**self.schedule.__dict__, "lr": self.schedule.lr_at(self.step)},
            "step": self.step,
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "tokens_seen": self.tokens_seen,
            "sampler": self.sampler.state_dict(),
            "rng": rng,
            "world_size": self.dist.world_size,
        }

    def save(self, name: str) -> Path:
        """Write checkpoint_{name}.pt (all processes must call this: RNG states are gathered; rank 0 writes).
        A failed write (a full disk) is a NanoGPT2Error on every process; the previous checkpoints stay as they were."""
        state = self.state_dict()
        path = self.rundir.checkpoint_path(name)
        self.dist.together(self.dist.master, lambda: ckpt_io.save_checkpoint(path, state),
                       f"writing {path} failed on rank 0 (see its error)")
        return path

    # --- logging outputs ----------------------------------------------------------------------------------

    def _write_record(self, rec: dict):
        self.outputs.loss_terms = self.loss_terms
        self.outputs.write(rec)

    def _time_left(self, step_time: float) -> dict:
        """elapsed_h; eta_h, the hours to the end of the run (steps left x `step_time`, the mean training-step
        time of the last log interval; evaluations and checkpoints come on top), or to the end of the wall-clock
        budget when that comes first; budget_left_h (None without a budget)."""
        elapsed = time.time() - self.t_start
        eta = (self.max_steps - self.step) * step_time
        budget_left = None
        if self.cfg.max_training_hours > 0:
            budget_left = max(0.0, self.cfg.max_training_hours * 3600 - elapsed)
            eta = min(eta, budget_left)
        return {"elapsed_h": elapsed / 3600, "eta_h": eta / 3600,
                "budget_left_h": None if budget_left is None else budget_left / 3600}

    def _progress_line(self, rec: dict) -> str:
        self.outputs.loss_terms = self.loss_terms
        return self.outputs.progress_line(rec, self.max_steps)

    # --- signals ------------------------------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop_signal = name
        if self.dist.master:
            print(f"\n{name} received: finishing the current step, then saving a checkpoint and exiting "
                  f"(Ctrl-C again to abort without saving)", flush=True)

    @contextlib.contextmanager
    def _signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # --- the loop ---------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Train to max_steps (or until a stop); return a summary dict."""
        try:
            with self._signal_handlers():
                return self._train()
        finally:
            self.close()

    def close(self):
        """Close the TensorBoard writer and leave the process group (idempotent)."""
        self.outputs.close()
        self.dist.close()

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
        self._window = [0, 0.0]  # tokens and seconds of training steps since the last logged step
        while self.step < self.max_steps:
            rec = self._train_step()
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            self._window[0] += self.tokens_per_step
            self._window[1] += self.last_step_time
            self._check_bad_steps(rec)
            epoch_end = bool(self.steps_per_epoch) and self.step % self.steps_per_epoch == 0
            if epoch_end:
                self.epoch += 1
            rec["epoch"] = self.epoch
            rec["ppl"] = math.exp(min(rec["loss"], 700.0)) if math.isfinite(rec["loss"]) else float("nan")
            final = self.step == self.max_steps
            self._evaluate_if_due(rec, epoch_end, final)
            self._log_step(rec, final)
            last_rec = self.last_record = rec
            self._periodic_outputs(epoch_end, final)
            self._emit("step_end")
            sig, time_up, elapsed = self._agreed_stops()  # every process calls it every step (a collective)
            if final:
                break
            stopped = self._stop(sig, time_up, elapsed)
            if stopped:
                break
        return self._finish(stopped, last_rec)

    # --- pieces of the loop, in the order they run ---------------------------------------------------------

    def _check_bad_steps(self, rec: dict):
        if rec.get("bad_step") and self.bad_steps_in_row >= self.cfg.max_bad_steps:
            last_good = self.rundir.latest_checkpoint()
            where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
            raise NanoGPT2Error(
                f"the loss was non-finite for {self.bad_steps_in_row} steps in a row (steps "
                f"{self.step - self.bad_steps_in_row + 1}-{self.step}); stopping without saving; {where}. "
                f"Lower learning_rate, use dtype=bfloat16/float32 or set grad_clip")

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
        cfg = self.cfg
        if not (self.step % cfg.log_interval == 0 or self.step == 1 or final or "val_loss" in rec):
            return
        win_tokens, win_time = self._window
        tps = win_tokens / win_time if win_time > 0 else float("nan")
        rec["tokens_per_sec"] = tps
        rec["mfu"] = mfu(self.flops_per_token, tps / self.dist.world_size, self.peak_flops)
        step_time = win_time * self.tokens_per_step / win_tokens if win_tokens else self.last_step_time
        rec.update(self._time_left(step_time))
        rec["tokens"] = self.tokens_seen
        if self.step % cfg.log_interval == 0 or self.step == 1 or final:
            self.log(self._progress_line(rec))
        self._write_record(rec)
        self._window = [0, 0.0]

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
            if self.dist.master:
                self.rundir.prune("step", cfg.keep_last)
        if epoch_end and not final:
            self.save(f"epoch_{self.epoch}")
            if self.dist.master:
                self.rundir.prune("epoch", cfg.keep_last)

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
                     f"(Elapsed: {fmt_hours(elapsed)}): saved {path}; continue with --resume_from auto")
            return "time_limit"
        return None

    def _finish(self, stopped: Optional[str], last_rec) -> dict:
        """The final checkpoint and test evaluation of a finished run, the plot, and the summary."""
        test_rec = None
        if stopped is None:
            path = self.save("final")
            self.log(f"done: {self.step} steps in {fmt_hours(time.time() - self.t_start)}; saved {path}; "
                     f"best val loss {self.best_val_loss:.4f}")
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
        return {"step": self.step, "stopped": stopped, "best_val_loss": self.best_val_loss,
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
