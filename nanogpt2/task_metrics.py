"""
What a task's numbers are: how the reports name its loss, whether exp(loss) is a perplexity, which of its loss_fn's
terms and evaluation keys are its metrics, and which evaluation key judges the best checkpoint and early stopping.

A task gives one `TaskMetrics` to the trainer (Trainer(metrics=...), from finetune.py's TaskParts.metrics); the
trainer keeps the best score by it (checkpoint_best.pt, `early_stopping_patience`), nanogpt2/outputs.py reports by it
(the progress line, the evaluation line, metrics.jsonl, TensorBoard, the plot).

    LM = TaskMetrics()                                            # language modelling: loss, ppl, best = val_loss
    TaskMetrics(perplexity=False, train_metrics=("accuracy",), val_metrics=("val_accuracy", "val_macro_f1"),
                best="val_accuracy", higher_is_better=True)      # classification (nanogpt2/classify.py)
    m.improved(0.81, best=0.80)                                   # True: a better score
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskMetrics:
    """A task's report and selection rules (see the module docstring)."""

    loss_name: str = "loss"         # what the progress line calls the training loss (instruct: "response loss")
    perplexity: bool = True         # exp(loss) is a perplexity (a token-level cross-entropy); False: no ppl anywhere
    train_metrics: tuple = ()       # loss_fn terms that are metrics, not loss terms (classify: "accuracy")
    val_metrics: tuple = ()         # evaluation keys reported beside val_loss (classify: val_accuracy, val_macro_f1)
    best: str = "val_loss"          # the evaluation key that judges checkpoint_best.pt and early stopping
    higher_is_better: bool = False

    @property
    def worst(self) -> float:
        """The score before any evaluation: every real score improves on it."""
        return -math.inf if self.higher_is_better else math.inf

    def improved(self, value: float, best: float) -> bool:
        """Whether `value` is strictly better than `best` (a tie is no improvement, as in HF's EarlyStoppingCallback)."""
        return value > best if self.higher_is_better else value < best

    @property
    def best_label(self) -> str:
        """The best key as the reports write it: `val accuracy`, `val loss`."""
        return label(self.best)


LM = TaskMetrics()


def label(key: str) -> str:
    """A record key as the console lines write it: val_macro_f1 -> `val macro-F1`, val_accuracy -> `val accuracy`."""
    return key.replace("macro_f1", "macro-F1").replace("_", " ")
