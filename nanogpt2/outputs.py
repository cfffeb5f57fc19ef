"""
What a run reports: the progress line, metrics.jsonl, TensorBoard and the plot at the end.

Every record is one JSON line of the run folder's metrics.jsonl (a step's loss, lr, grad_norm, tokens_per_sec,
mfu, time left; an evaluation's val_loss; the final test_*), the same numbers as TensorBoard scalars
(`train/<name>`, `val_loss`, `val_ppl`) when tensorboard=True, and on the console the progress line every
log_interval steps. Only rank 0 writes: the other processes' RunOutputs do nothing.

On resume, metrics.jsonl keeps the records up to the checkpoint's step (the steps after it are redone) and
TensorBoard purges its events past that step, so the curves of a resumed run have no doubled stretch.

    out = RunOutputs(RunDir(cfg.out_dir), cfg, active=dist.master, log=print)
    out.open(resumed_at=0)
    out.write(rec)                                  # metrics.jsonl + TensorBoard
    print(out.progress_line(rec, max_steps=5000))
    out.plot(); out.close()
    text = TrainingSamples(cfg, tokenizer).generate(model, step, device, autocast_ctx)   # samples.txt's texts
"""

import json
import math
import time
from typing import Callable, Optional, Sequence

import torch

from nanogpt2.config import RunConfig
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.generate import generate
from nanogpt2.perf import mfu
from nanogpt2.rundir import RunDir

TB_KEYS = ("loss", "ppl", "lr", "grad_norm", "tokens_per_sec", "mfu", "val_loss", "val_ppl", "loss_scale")


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}h"


def time_left(t_start: float, steps_left: int, step_time: float, budget_hours: float) -> dict:
    """elapsed_h; eta_h, the hours to the end of the run (steps left x `step_time`, the mean training-step time of
    the last log interval; evaluations and checkpoints come on top), or to the end of the wall-clock budget when
    that comes first; budget_left_h (None without a budget, budget_hours 0)."""
    elapsed = time.time() - t_start
    eta = steps_left * step_time
    budget_left = None
    if budget_hours > 0:
        budget_left = max(0.0, budget_hours * 3600 - elapsed)
        eta = min(eta, budget_left)
    return {"elapsed_h": elapsed / 3600, "eta_h": eta / 3600,
            "budget_left_h": None if budget_left is None else budget_left / 3600}


class Throughput:
    """The tokens and seconds of the training steps since the last logged step: tokens/s, MFU (per process,
    against the device's peak) and the mean step time of that window."""

    def __init__(self, flops_per_token: float, peak_flops: float, world_size: int):
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.tokens, self.seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def take(self, rec: dict, tokens_per_step: int, last_step_time: float) -> float:
        """tokens_per_sec and mfu into `rec`; returns the window's mean step time; starts a new window."""
        tps = self.tokens / self.seconds if self.seconds > 0 else float("nan")
        rec["tokens_per_sec"] = tps
        rec["mfu"] = mfu(self.flops_per_token, tps / self.world_size, self.peak_flops)
        step_time = self.seconds * tokens_per_step / self.tokens if self.tokens else last_step_time
        self.tokens, self.seconds = 0, 0.0
        return step_time


class RunOutputs:
    """metrics.jsonl, TensorBoard, the progress line and the plot of one run (rank 0; inactive elsewhere)."""

    def __init__(self, rundir: RunDir, cfg: RunConfig, active: bool, log: Callable[[str], None]):
        self.rundir = rundir
        self.cfg = cfg
        self.active = active
        self.log = log
        self.loss_terms: Sequence[str] = ()  # extra loss terms of the records (a distillation loss's KD and CLM)
        self._tb = None

    def open(self, resumed_at: int = 0) -> None:
        """Start metrics.jsonl afresh, or on resume (`resumed_at` = the checkpoint's step > 0) keep its records
        up to that step; open the TensorBoard writer."""
        if not self.active:
            return
        path = self.rundir.metrics_path
        if resumed_at and path.exists():  # drop records past the checkpoint (they will be redone),
            keep = []                     # and a final test record (redone at the end)
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    if rec.get("step", 0) <= resumed_at and "test_loss" not in rec:
                        keep.append(line)
                except ValueError:  # a line cut short by a crash
                    pass
            path.write_text("".join(line + "\n" for line in keep))
        elif not resumed_at:
            path.write_text("")
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(self.rundir.tensorboard_dir),
                                         purge_step=resumed_at + 1 if resumed_at else None)

    def write(self, rec: dict) -> None:
        """One record into metrics.jsonl and its numbers into TensorBoard."""
        if not self.active:
            return
        self.rundir.append(self.rundir.metrics_path, json.dumps(rec) + "\n", "metrics")
        if self._tb is not None:
            for key in (*TB_KEYS, *self.loss_terms):
                if key in rec and rec[key] is not None and math.isfinite(rec[key]):
                    self._tb.add_scalar(key if key.startswith("val") else f"train/{key}", rec[key], rec["step"])

    def write_sample(self, step: int, text: str) -> None:
        if self.active:
            self.rundir.append(self.rundir.samples_path, f"--- step {step} ---\n{text}\n", "samples")

    def progress_line(self, rec: dict, max_steps: int) -> str:
        """The console line of a logged step: loss, ppl, lr, gradient norm, throughput, MFU, elapsed, ETA, budget."""
        budget = rec["budget_left_h"]
        by_budget = budget is not None and rec["step"] < max_steps and rec["eta_h"] >= budget
        parts = [
            f"step {rec['step']}/{max_steps}",
            f"loss {rec['loss']:.4f}",
            *(f"{name} {rec[name]:.4f}" for name in self.loss_terms if name in rec),
            f"ppl {rec['ppl']:.2f}",
            f"lr {rec['lr']:.2e}",
            f"grad {rec['grad_norm']:.3f}",
            f"{rec['tokens_per_sec']:,.0f} tok/s",
            f"MFU {100 * rec['mfu']:.2f}%" if math.isfinite(rec["mfu"]) else "MFU n/a",
            f"Elapsed: {fmt_hours(3600 * rec['elapsed_h'])}",
            f"ETA: {fmt_hours(3600 * rec['eta_h'])}" + (" (time limit)" if by_budget else ""),
            f"Budget left: {fmt_hours(3600 * budget)}" if budget is not None else "Budget left: none",
        ]
        return " | ".join(parts)

    def plot(self) -> Optional[object]:
        """loss (train and val), perplexity and learning rate against the step, to training_curves.png."""
        path = self.rundir.metrics_path
        if not (self.cfg.plot and self.active and path.exists()):
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.log("matplotlib is not installed: no plot (pip install matplotlib)")
            return None
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        recs = [r for r in recs if "loss" in r]  # step records (not the final test_* record)
        if not recs:
            return None
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        train = [(r["step"], r["loss"]) for r in recs if math.isfinite(r["loss"])]
        val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        for ax, key, title in ((axes[0], None, "loss"), (axes[1], "ppl", "perplexity")):
            f = (lambda v: v) if key is None else (lambda v: math.exp(min(v, 50)))
            if train:
                ax.plot([s for s, _ in train], [f(v) for _, v in train], label="train")
            if val:
                ax.plot([s for s, _ in val], [f(v) for _, v in val], "o-", label="val")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.legend()
        axes[1].set_yscale("log")
        axes[2].plot([r["step"] for r in recs], [r["lr"] for r in recs])
        axes[2].set_title("learning rate")
        axes[2].set_xlabel("step")
        fig.tight_layout()
        out = self.rundir.plot_path
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        """Close the TensorBoard writer (idempotent)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class TrainingSamples:
    """The short texts a run generates every sample_interval steps (sample_prompt, sample_tokens,
    sample_temperature, sample_top_k), each from its own generator seeded by (seed + step): training's random
    streams are unaffected."""

    def __init__(self, cfg: RunConfig, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer

    def prompt_ids(self) -> list:
        """The token ids the samples start from: sample_prompt, else the end-of-text token (char: a newline)."""
        tok = self.tokenizer
        if self.cfg.sample_prompt:
            return tok.encode(self.cfg.sample_prompt)
        if tok.eot_token is not None:
            return [tok.eot_token]
        return tok.encode("\n") if "\n" in getattr(tok, "chars", "\n") else [0]

    def check_prompt(self) -> None:
        """Encode sample_prompt once at start: a prompt the tokenizer cannot encode would otherwise stop the
        run at its first sample, losing the steps since the last checkpoint."""
        cfg, tok = self.cfg, self.tokenizer
        if not (cfg.sample_interval and cfg.sample_prompt and tok is not None):
            return
        try:
            self.prompt_ids()
        except NanoGPT2Error as e:
            chars = getattr(tok, "chars", None)
            why = (f"it has characters the dataset's character vocabulary lacks: "
                   f"{sorted(set(cfg.sample_prompt) - set(chars))!r}" if chars is not None else str(e))
            raise NanoGPT2Error(f"sample_prompt={cfg.sample_prompt!r} cannot be encoded by the "
                                f"{getattr(tok, 'name', '?')} tokenizer: {why}. Change sample_prompt, or "
                                f"set sample_interval=0") from None

    @torch.no_grad()
    def generate(self, model, step: int, device: torch.device, autocast) -> str:
        """The text a GPT continues the prompt with at `step` (the model is put back in training mode)."""
        cfg, tok = self.cfg, self.tokenizer
        ids = self.prompt_ids()
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T0)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + step)
        model.eval()
        try:
            with autocast():
                out = generate(model, idx, cfg.sample_tokens, temperature=cfg.sample_temperature,
                               top_k=cfg.sample_top_k or None, generator=gen, tokenizer=tok)
        finally:
            model.train()
        return tok.decode(out[0, len(ids):].tolist())
