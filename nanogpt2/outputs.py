"""
What a run reports: the progress line, metrics.jsonl, TensorBoard and the plot at the end.

Every record is one JSON line of the run folder's metrics.jsonl (a step's loss, lr, grad_norm, tokens_per_sec,
samples_per_sec, mfu, time left, the monitor's figures: grad_norms by part of the model and the peak memory (see
nanogpt2/monitor.py), the loss_fn's terms (a distillation's kd_loss, a classifier's accuracy); an evaluation's
val_loss and the task's val_* metrics; the final test_*), the same numbers as TensorBoard scalars under one tag
scheme when tensorboard=True (`train/<name>`, `val/<name>` for val_<name>, `test/<name>`, `grad_norms/<part>`,
`memory/<name>`), and on the console the progress line every log_interval steps and a line per evaluation. The
task's TaskMetrics (nanogpt2/task_metrics.py) names its loss and says whether exp(loss) is a perplexity: a
classifier's records, lines and plot have no ppl. Throughput counts the tokens the model ran on: a padded task's
real (non-pad) tokens. Only rank 0 writes: the other processes' RunOutputs do nothing. The plot at the end
(training_curves.png): the losses (train, its terms beside the val loss), perplexity or the task's metrics,
learning rate and the gradient norms (the global one and each part's), one figure.

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
from nanogpt2.task_metrics import LM, TaskMetrics, label

TB_TRAIN_KEYS = ("loss", "ppl", "lr", "grad_norm", "tokens_per_sec", "samples_per_sec", "mfu", "loss_scale")
TB_SPLITS = ("val", "test")  # rec["val_loss"] -> val/loss, rec["test_ppl"] -> test/ppl
MEMORY_KEYS = ("peak_mem_allocated_mib", "peak_mem_reserved_mib", "peak_rss_mib")  # nanogpt2.monitor.peak_memory's


def fmt_duration(seconds: float) -> str:
    """A time span in the units that fit: `42s`, `5m07s`, `1h05m`, `3d04h` (rounded down to the unit shown)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


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
    """The tokens, steps and seconds of the training steps since the last logged step: tokens/s, samples/s (rows:
    windows, examples), MFU (per process, against the device's peak) and the mean step time of that window.
    The tokens are the ones the model ran on: batch x block_size for language modelling, the real (non-pad)
    tokens of a padded task's batches (the sampler's `real_tokens`, see nanogpt2.trainer).
    samples_per_step: the rows of one optimizer step over all processes."""

    def __init__(self, flops_per_token: float, peak_flops: float, world_size: int, samples_per_step: int = 0):
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.samples_per_step = samples_per_step
        self.tokens, self.steps, self.seconds = 0, 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        """One optimizer step of `tokens` (over all processes) that took `seconds`."""
        self.tokens += tokens
        self.steps += 1
        self.seconds += seconds

    def take(self, rec: dict, last_step_time: float) -> float:
        """tokens_per_sec, samples_per_sec and mfu into `rec`; returns the window's mean step time; starts a new
        window."""
        per_sec = (lambda n: n / self.seconds) if self.seconds > 0 else (lambda n: float("nan"))
        tps = per_sec(self.tokens)
        rec["tokens_per_sec"] = tps
        rec["samples_per_sec"] = per_sec(self.samples_per_step * self.steps)
        rec["mfu"] = mfu(self.flops_per_token, tps / self.world_size, self.peak_flops)
        step_time = self.seconds / self.steps if self.steps else last_step_time
        self.tokens, self.steps, self.seconds = 0, 0, 0.0
        return step_time


def tensorboard_scalars(rec: dict, terms: Sequence[str] = ()) -> dict:
    """{tag: value} of a record's numbers under one scheme: `train/<key>` for a step's (TB_TRAIN_KEYS and the
    loss_fn's terms), `val/<name>` and `test/<name>` for val_<name> / test_<name>."""
    scalars = {f"train/{key}": rec.get(key) for key in (*TB_TRAIN_KEYS, *terms)}
    for key, value in rec.items():
        split, _, name = key.partition("_")
        if split in TB_SPLITS and name:
            scalars[f"{split}/{name}"] = value
    return scalars


def memory_text(rec: dict) -> list:
    """The progress line's peak memory: `mem 1,234/1,536 MiB` (CUDA: allocated / reserved) or `RSS 1,234 MiB`."""
    if rec.get("peak_mem_allocated_mib") is not None:
        return [f"mem {rec['peak_mem_allocated_mib']:,.0f}/{rec['peak_mem_reserved_mib']:,.0f} MiB"]
    if rec.get("peak_rss_mib") is not None:
        return [f"RSS {rec['peak_rss_mib']:,.0f} MiB"]
    return []


class RunOutputs:
    """metrics.jsonl, TensorBoard, the progress line and the plot of one run (rank 0; inactive elsewhere)."""

    def __init__(self, rundir: RunDir, cfg: RunConfig, active: bool, log: Callable[[str], None],
                 metrics: TaskMetrics = LM):
        self.rundir = rundir
        self.cfg = cfg
        self.active = active
        self.log = log
        self.metrics = metrics  # how the task's loss and metrics are named and shown (nanogpt2/task_metrics.py)
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
        if self._tb is None:
            return
        scalars = tensorboard_scalars(rec, self.loss_terms)
        scalars.update({f"memory/{key}": rec.get(key) for key in MEMORY_KEYS})
        scalars.update({f"grad_norms/{part}": v for part, v in rec.get("grad_norms", {}).items()})
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(tag, value, rec["step"])

    def write_sample(self, step: int, text: str) -> None:
        if self.active:
            self.rundir.append(self.rundir.samples_path, f"--- step {step} ---\n{text}\n", "samples")

    def progress_line(self, rec: dict, max_steps: int) -> str:
        """The console line of a logged step: the loss (the task's name for it), its terms and the task's training
        metrics, ppl (when the loss is a token-level cross-entropy), lr, gradient norm, throughput (tokens and
        samples), MFU, peak memory, elapsed, ETA, budget."""
        budget = rec["budget_left_h"]
        by_budget = budget is not None and rec["step"] < max_steps and rec["eta_h"] >= budget
        parts = [
            f"step {rec['step']}/{max_steps}",
            f"{self.metrics.loss_name} {rec['loss']:.4f}",
            *(f"{name} {rec[name]:.4f}" for name in self.loss_terms if name in rec),
            *([f"ppl {rec['ppl']:.2f}"] if "ppl" in rec else []),
            f"lr {rec['lr']:.2e}",
            f"grad {rec['grad_norm']:.3f}",
            f"{rec['tokens_per_sec']:,.0f} tok/s",
            *([f"{rec['samples_per_sec']:,.2f} samples/s"] if "samples_per_sec" in rec else []),
            f"MFU {100 * rec['mfu']:.2f}%" if math.isfinite(rec["mfu"]) else "MFU n/a",
            *memory_text(rec),
            f"elapsed {fmt_duration(3600 * rec['elapsed_h'])}",
            f"ETA {fmt_duration(3600 * rec['eta_h'])}" + (" (time limit)" if by_budget else ""),
            f"budget left {fmt_duration(3600 * budget)}" if budget is not None else "budget left none",
        ]
        return " | ".join(parts)

    def eval_line(self, step: int, reason: str, res: dict, improved: bool, saved: bool) -> str:
        """The console line of an evaluation: val loss, val ppl (when the loss is a perplexity's), the task's
        validation metrics (val accuracy, val macro-F1), and whether it is a new best by the task's best key."""
        val = res["val_loss"]
        parts = [f"eval step {step} ({reason})", f"val loss {val:.4f}"]
        if self.metrics.perplexity:
            parts.append(f"val ppl {res.get('val_ppl', math.exp(min(val, 700))):.2f}")
        parts += [f"{label(key)} {res[key]:.4f}" for key in self.metrics.val_metrics if res.get(key) is not None]
        if improved:
            by = "" if self.metrics.best == "val_loss" else f" ({self.metrics.best_label})"
            parts.append(f"new best{by}" + (" (saved checkpoint_best.pt)" if saved else ""))
        return " | ".join(parts)

    @staticmethod
    def test_line(res: dict) -> str:
        """The console line of the final test evaluation (nanogpt2.evaluate.evaluate_perplexity's result)."""
        return (f"test ({res['tokens']:,} tokens, block {res['block_size']}, stride {res['stride']}) | loss "
                f"{res['loss']:.4f} | ppl {res['ppl']:.2f}"
                + (f" | {res['bits_per_byte']:.4f} bits/byte" if res.get("bits_per_byte") else ""))

    def plot(self) -> Optional[object]:
        """One figure of the run, to training_curves.png: loss (train and val), perplexity, learning rate and the
        gradient norms against the step (see plot_run)."""
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
        fig = plot_run(plt, recs, self.metrics, self.loss_terms)
        out = self.rundir.plot_path
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        """Close the TensorBoard writer (idempotent)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_run(plt, recs: list, metrics: TaskMetrics = LM, terms: Sequence[str] = ()):
    """A 2 x 2 figure of step records: the losses (plot_losses), perplexity (log scale) or, for a task whose loss
    is no perplexity's, its metrics (a classifier's train and val accuracy, val macro-F1), learning rate, gradient
    norms."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (loss_ax, ppl_ax), (lr_ax, norm_ax) = axes
    plot_losses(loss_ax, recs, [t for t in terms if t not in metrics.train_metrics])
    if metrics.perplexity:
        train = [(r["step"], math.exp(min(r["loss"], 50))) for r in recs if math.isfinite(r["loss"])]
        val = [(r["step"], math.exp(min(r["val_loss"], 50))) for r in recs if "val_loss" in r]
        series = [("train", train, "-"), ("val", val, "o-")]
        ppl_ax.set_title("perplexity")
    else:
        series = [(f"train {label(k)}", [(r["step"], r[k]) for r in recs if k in r], "-") for k in metrics.train_metrics]
        series += [(label(k), [(r["step"], r[k]) for r in recs if r.get(k) is not None], "o-") for k in metrics.val_metrics]
        ppl_ax.set_title("task metrics")
    for name, points, style in series:
        if points:
            ppl_ax.plot(*zip(*points), style, label=name)
    if metrics.perplexity:
        ppl_ax.set_yscale("log")
    ppl_ax.legend()
    lr_ax.plot([r["step"] for r in recs], [r["lr"] for r in recs])
    lr_ax.set_title("learning rate")
    plot_grad_norms(plt, norm_ax, recs)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_losses(ax, recs: list, terms: Sequence[str]) -> None:
    """The training loss, its terms (a distillation's kd_loss and clm_loss: each unweighted, in nats like the
    validation loss, so the student's train CLM and its val loss are the same measure; a log scale keeps a
    larger KD term on the same axes) and the validation loss, against the step."""
    train = [(r["step"], r["loss"]) for r in recs if math.isfinite(r["loss"])]
    if train:
        ax.plot(*zip(*train), label="train (weighted sum)" if terms else "train")
    for name in terms:
        points = [(r["step"], r[name]) for r in recs if name in r and math.isfinite(r[name])]
        if points:
            ax.plot(*zip(*points), linewidth=1, label=f"train {name}")
    val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    values = [v for _, v in train + val] + [r[n] for r in recs for n in terms if n in r]
    if terms and values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title("loss (nats)" if terms else "loss")
    ax.legend()


def plot_grad_norms(plt, ax, recs: list) -> None:
    """The global gradient norm (before clipping) and each part's (grad_norms): the blocks shaded from the
    first (dark) to the last (light) with a colour bar, the embeddings and the head in lines of their own."""
    total = [(r["step"], r["grad_norm"]) for r in recs if r.get("grad_norm") is not None and math.isfinite(r["grad_norm"])]
    if total:
        ax.plot(*zip(*total), color="black", linewidth=2, label="global")
    parts = [part for r in recs for part in r.get("grad_norms", {})]
    parts = list(dict.fromkeys(parts))  # in order of first appearance: embeddings, block_0, ..., head, other
    blocks = [p for p in parts if p.startswith("block_")]
    cmap = plt.get_cmap("viridis")
    styles = {"embeddings": dict(color="tab:red", linestyle="--"), "head": dict(color="tab:orange", linestyle="--"),
              "other": dict(color="tab:gray", linestyle=":")}
    for part in parts:
        points = [(r["step"], r["grad_norms"][part]) for r in recs
                  if part in r.get("grad_norms", {}) and math.isfinite(r["grad_norms"][part])]
        if not points:
            continue
        if part.startswith("block_"):
            i = blocks.index(part)
            ax.plot(*zip(*points), color=cmap(i / max(1, len(blocks) - 1)), linewidth=1)
        else:
            ax.plot(*zip(*points), label=part, linewidth=1.5, **styles[part])
    if blocks:
        bar = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(blocks) - 1))
        from matplotlib.ticker import MaxNLocator

        bar = ax.figure.colorbar(bar, ax=ax, label="block")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # block numbers, not fractions
    if total and min(v for _, v in total) > 0:
        ax.set_yscale("log")
    ax.set_title("gradient norm (before clipping)")
    ax.legend(fontsize="small")


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
