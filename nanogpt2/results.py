"""
The results tree of a fine-tuning run (users' recipe layout): `results_dir/<model>/<timestamp>/` holding
`baseline/` (the untouched model scored before training), `train/` (history, curves, `weights/`) and `test/` (the
fine-tuned model), each with `metrics/metrics.json` and `analysis/` (report.md, a confusion-matrix PNG for a
classifier, curves PNG when matplotlib is installed), and `summary.md`, baseline vs fine-tuned.

    res = Results.new("results", "gpt2")                       # results/gpt2/<timestamp>/
    res.write_evaluation("test", metrics, "AG News, fine-tuned")          # a classifier's metrics
    res.write_scores("test", {"splits": {"test": {"loss": 3.1, "ppl": 22.2}}}, "WikiText-2, fine-tuned")  # an LM's

A classifier's metrics are nanogpt2.classify's (accuracy, macro-F1, per class, confusion matrix); a language
model's are per split, {"splits": {name: {"loss", "ppl", "tokens", "bits_per_byte", ...}}} (nanogpt2.lm_results).
Used by nanogpt2/classify.py and nanogpt2/lm_results.py (tasks lm, instruct); docs/classification.md,
docs/finetuning.md.
"""

import json
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np

from nanogpt2.errors import NanoGPT2Error

# ----------------------------------------------------------------------------------------------------
# The results tree


def _pyplot():
    """matplotlib.pyplot (Agg backend), or None when matplotlib is not installed (then no PNGs)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def report_markdown(metrics: dict, title: str) -> str:
    """A split's metrics as markdown: the headline numbers, a per-class table and the confusion matrix."""
    names = metrics["labels"]
    lines = [f"# {title}", "", f"{metrics['examples']:,} examples: accuracy {metrics['accuracy']:.4f}, macro-F1 "
             f"{metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f}", "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for n in names:
        c = metrics["per_class"][n]
        lines.append(f"| {n} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']:,} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| **{n}** | " + " | ".join(f"{v:,}" for v in row) + " |"
              for n, row in zip(names, metrics["confusion_matrix"])]
    return "\n".join(lines) + "\n"


def plot_confusion(metrics: dict, path: Path, title: str) -> Optional[Path]:
    plt = _pyplot()
    if plt is None:
        return None
    cm, names = np.array(metrics["confusion_matrix"]), metrics["labels"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.2 * len(names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(history: dict, path: Path) -> Optional[Path]:
    """Training loss and validation loss against the step; beside them validation accuracy and macro-F1 (a
    classifier) or validation perplexity (a language model)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    train, val = history["train"], history["val"]
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    left.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    left.set_title("loss")
    keys = [k for k in ("accuracy", "macro_f1") if any(r.get(k) is not None for r in val)] or ["ppl"]
    for key in keys:
        right.plot([r["step"] for r in val], [r.get(key) for r in val], "o-", label=f"val {key}")
    right.set_title("validation accuracy" if keys != ["ppl"] else "validation perplexity")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_history(metrics_jsonl: Path) -> dict:
    """The trainer's metrics.jsonl as {"train": [{step, epoch, loss, lr}], "val": [{step, loss, ppl, accuracy,
    macro_f1}]} (a language model's accuracy and macro-F1 are None)."""
    recs = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    return {"train": [{k: r.get(k) for k in ("step", "epoch", "loss", "lr")} for r in recs if "loss" in r],
            "val": [{"step": r["step"], "loss": r["val_loss"], "ppl": r.get("val_ppl"),
                     "accuracy": r.get("val_accuracy"), "macro_f1": r.get("val_macro_f1")}
                    for r in recs if "val_loss" in r]}


class Results:
    """One run's results folder, results_dir/<model>/<timestamp>/ (see the module docstring); rank 0 writes it."""

    def __init__(self, root):
        self.root = Path(root)

    @classmethod
    def for_run(cls, out_dir, resumed: bool, results_dir, model_name: str, record: str) -> "Results":
        """The results folder of the run in out_dir: the one out_dir/`record` names when the run resumes (and it is
        still there), else a new one (`new`), recorded there for a later resume."""
        path = Path(out_dir) / record
        if resumed and path.exists() and Path(path.read_text().strip()).is_dir():
            return cls(path.read_text().strip())
        results = cls.new(results_dir, model_name)
        path.write_text(str(results.root.resolve()) + "\n")
        return results

    @classmethod
    def new(cls, results_dir, model_name: str) -> "Results":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root, n = Path(results_dir) / model_name / stamp, 1
        while root.exists():  # two runs in the same second
            root, n = Path(results_dir) / model_name / f"{stamp}-{n}", n + 1
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise NanoGPT2Error(f"cannot create the results folder {root} ({e.strerror or e}); set results_dir to a "
                                f"folder you can write to") from None
        return cls(root)

    def dirs(self, stage: str) -> tuple:
        metrics, analysis = self.root / stage / "metrics", self.root / stage / "analysis"
        metrics.mkdir(parents=True, exist_ok=True)
        analysis.mkdir(parents=True, exist_ok=True)
        return metrics, analysis

    def write_evaluation(self, stage: str, metrics: dict, title: str) -> None:
        """metrics/metrics.json, analysis/report.md and analysis/confusion_matrix.png of an evaluated split."""
        m, a = self.dirs(stage)
        _write_json(m / "metrics.json", metrics)
        (a / "report.md").write_text(report_markdown(metrics, title), encoding="utf-8")
        plot_confusion(metrics, a / "confusion_matrix.png", title)

    def write_scores(self, stage: str, metrics: dict, title: str) -> None:
        """metrics/metrics.json and analysis/report.md of a language model's scores ({"splits": {...}})."""
        m, a = self.dirs(stage)
        _write_json(m / "metrics.json", metrics)
        (a / "report.md").write_text(scores_markdown(metrics, title), encoding="utf-8")

    def write_training(self, history: dict) -> None:
        m, a = self.dirs("train")
        _write_json(m / "metrics.json", history)
        plot_curves(history, a / "curves.png")

    @property
    def weights(self) -> Path:
        return self.root / "train" / "weights"


def summary_markdown(title: str, note: str, run: str, baseline: Optional[dict], tuned: dict) -> str:
    """summary.md: baseline vs fine-tuned on the test split, overall and per class."""
    def cells(m, key, fmt="{:.4f}"):
        return fmt.format(m[key]) if m is not None else "-"

    lines = [f"# {title}", "", note + ".", "", run, "",
             "| model | test examples | accuracy | macro-F1 | loss |", "|---|---|---|---|---|"]
    for name, m in (("baseline (before training: init_from's body, a fresh head)", baseline), ("fine-tuned", tuned)):
        lines.append(f"| {name} | {cells(m, 'examples', '{:,}')} | {cells(m, 'accuracy')} | {cells(m, 'macro_f1')} | "
                     f"{cells(m, 'loss')} |")
    lines += ["", "| class | baseline F1 | fine-tuned F1 | support |", "|---|---|---|---|"]
    for n in tuned["labels"]:
        base = f"{baseline['per_class'][n]['f1']:.4f}" if baseline is not None else "-"
        c = tuned["per_class"][n]
        lines.append(f"| {n} | {base} | {c['f1']:.4f} | {c['support']:,} |")
    return "\n".join(lines) + "\n"


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def scores_markdown(metrics: dict, title: str) -> str:
    """A language model's scores as markdown: one row per split (tokens scored, loss, perplexity, bits per byte,
    the windows of a strided evaluation)."""
    lines = [f"# {title}", "", "| split | tokens scored | loss | perplexity | bits per byte | windows |",
             "|---|---|---|---|---|---|"]
    for name, m in metrics["splits"].items():
        windows = f"{m['block_size']} every {m['stride']}" if m.get("block_size") and m.get("stride") else "-"
        lines.append(f"| {name} | {_cell(m.get('tokens'), '{:,}')} | {m['loss']:.4f} | {m['ppl']:.3f} | "
                     f"{_cell(m.get('bits_per_byte'), '{:.4f}')} | {windows} |")
    return "\n".join(lines) + "\n"


def scores_summary_markdown(title: str, note: str, run: str, baseline: Optional[dict], tuned: dict) -> str:
    """summary.md of a language model: baseline vs fine-tuned loss and perplexity on each split."""
    lines = [f"# {title}", "", note + ".", "", run, "",
             "| split | tokens scored | baseline loss | baseline ppl | fine-tuned loss | fine-tuned ppl | ppl change |",
             "|---|---|---|---|---|---|---|"]
    for name, m in tuned["splits"].items():
        b = (baseline or {}).get("splits", {}).get(name)
        change = f"{(m['ppl'] / b['ppl'] - 1) * 100:+.1f} %" if b else "-"
        lines.append(f"| {name} | {_cell(m.get('tokens'), '{:,}')} | {_cell(b and b['loss'], '{:.4f}')} | "
                     f"{_cell(b and b['ppl'], '{:.3f}')} | {m['loss']:.4f} | {m['ppl']:.3f} | {change} |")
    bpb = [(name, m["bits_per_byte"], ((baseline or {}).get("splits", {}).get(name) or {}).get("bits_per_byte"))
           for name, m in tuned["splits"].items() if m.get("bits_per_byte") is not None]
    for name, tuned_bpb, base_bpb in bpb:
        lines += ["", f"Bits per byte on {name}: {_cell(base_bpb, '{:.4f}')} before, {tuned_bpb:.4f} after."]
    if baseline is None:
        lines += ["", "No baseline: baseline_eval was off, or its metrics are missing."]
    return "\n".join(lines) + "\n"


def model_name(init_from: str) -> str:
    """The results folder's <model>: a GPT-2 name as it is, a path by its last part."""
    p = Path(init_from)
    name = p.name if p.exists() else init_from
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
