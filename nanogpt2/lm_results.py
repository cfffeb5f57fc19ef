"""
The baseline and the results tree of the language-modelling tasks (`finetune.py --task lm` and `--task instruct`),
in the layout of classify's (nanogpt2/results.py):

    results_dir/<model>/<timestamp>/
      baseline/metrics/metrics.json, analysis/report.md   the untouched model, scored before the first step
      train/metrics/metrics.json, analysis/curves.png     the run's history (train loss, val loss and perplexity)
      train/weights/                                      the fine-tuned model (an HF GPT-2 folder, LoRA merged)
      test/metrics/metrics.json, analysis/report.md       the fine-tuned model, scored after the last step
      summary.md                                          baseline vs fine-tuned, split by split

What is scored, per split ({"splits": {name: {"loss", "ppl", ...}}}):
- lm: `validation`, the run's validation loss and perplexity (its eval_fn: `eval_iters` batches of
  non-overlapping windows, 0: all), and `test`, the strided test perplexity and bits per byte of the dataset's
  test split when it has one and `test_eval` is on (nanogpt2.evaluate.test_perplexity, as papers report it);
- instruct: `held-out`, the response-only loss and perplexity of the held-out records (no test split: the test/
  stage scores the same records after training).
The fine-tuned numbers are the run's own final evaluation and test (the trainer's last `eval`, its `test_*`
record), so nothing is scored twice; a resumed run keeps its results folder (out_dir/<task>_results.txt) and reads
its baseline back. `baseline_eval=false` skips the baseline; `eval_only` writes no tree.

    from nanogpt2.lm_results import LMResults, lm_scores
    res = LMResults(cfg, "lm", lm_scores, save_weights, note)    # before_train / after_train for TaskParts

Docs: docs/finetuning.md ("The results tree"). Tests: python -m pytest -q tests/test_lm_results.py
"""

import json
import math
from typing import Callable, Optional

from nanogpt2.evaluate import test_perplexity
from nanogpt2.results import Results, model_name, scores_summary_markdown, training_history

# ----------------------------------------------------------------------------------------------------
# What is scored


def _split(loss: float, ppl: Optional[float] = None, **extra) -> dict:
    ppl = math.exp(min(loss, 700.0)) if ppl is None else ppl
    return {"loss": loss, "ppl": ppl, **{k: v for k, v in extra.items() if v is not None}}


def eval_scores(trainer, name: str) -> dict:
    """The run's eval_fn on the current weights as one split (every process calls it: it all-reduces)."""
    res = trainer.eval_fn(trainer)
    trainer.raw_model.train()
    return {name: _split(res["val_loss"], res.get("val_ppl"), tokens=res.get("val_tokens"))}


def lm_scores(trainer) -> dict:
    """The lm task's scores of the current weights: validation, and the strided test split when there is one."""
    splits = eval_scores(trainer, "validation")
    test = test_perplexity(trainer)
    trainer.raw_model.train()
    if test is not None:
        splits["test"] = _split(test["loss"], test["ppl"], tokens=test["tokens"], bits_per_byte=test.get("bits_per_byte"),
                                block_size=test["block_size"], stride=test["stride"])
    return splits


def final_scores(summary: dict, val_name: str, test_block: Optional[int] = None) -> dict:
    """The same splits from the run's own end: its last evaluation (summary["last"]) and final test record (whose
    windows were test_block tokens long)."""
    last, test, splits = summary.get("last") or {}, summary.get("test"), {}
    if "val_loss" in last:
        splits[val_name] = _split(last["val_loss"], last.get("val_ppl"), tokens=last.get("val_tokens"))
    if test:
        splits["test"] = _split(test["test_loss"], test["test_ppl"], tokens=test.get("test_tokens"),
                                bits_per_byte=test.get("test_bits_per_byte"), stride=test.get("test_stride"),
                                block_size=test_block)
    return splits


# ----------------------------------------------------------------------------------------------------
# The task's callbacks


class LMResults:
    """before_train / after_train of TaskParts (nanogpt2.finetuning): the baseline and the results tree.

    task: "lm" or "instruct" (names the record file and the summary); score(trainer) -> {split: scores}, called
    by every process; save_weights(trainer, folder) -> a line saying what it wrote; note(trainer) -> the data's
    one-line description; val_name: the split the run's own evaluation scores."""

    def __init__(self, cfg, task: str, score: Callable, save_weights: Callable, note: Callable,
                 val_name: str = "validation"):
        self.cfg, self.task, self.score, self.save_weights, self.note = cfg, task, score, save_weights, note
        self.val_name = val_name
        self.results, self.baseline = None, None

    def before_train(self, trainer):
        """The results folder (rank 0; a resumed run keeps its own) and the baseline, scored by every process."""
        if self.cfg.eval_only:
            return
        self.results = trainer.dist.together(trainer.dist.master, lambda: Results.for_run(
            trainer.out_dir, trainer.step > 0, self.cfg.results_dir, model_name(self.cfg.init_from),
            f"{self.task}_results.txt"), "cannot create the results folder (see rank 0's error)")
        if self.results is not None:
            trainer.log(f"results: {self.results.root}")
        if not self.cfg.baseline_eval or trainer.step > 0:  # a resumed run: the first run scored the baseline
            return
        self.baseline = {"splits": self.score(trainer)}
        trainer.log("baseline (before training): " + describe(self.baseline))
        if self.results is not None:
            self.results.write_scores("baseline", self.baseline, f"{self.cfg.dataset}, before fine-tuning")

    def after_train(self, trainer, summary):
        """Rank 0, after a finished run: the fine-tuned scores, the history, the weights, summary.md."""
        if not trainer.dist.master or self.results is None:
            return
        cfg, res = self.cfg, self.results
        test_block = min(cfg.block_size, trainer.raw_model.config.block_size)  # test_perplexity's windows
        tuned = {"splits": final_scores(summary, self.val_name, test_block)}
        res.write_scores("test", tuned, f"{cfg.dataset}, fine-tuned")
        res.write_training(training_history(trainer.out_dir / "metrics.jsonl"))
        trainer.log(f"weights: {self.save_weights(trainer, res.weights)}")
        baseline = self.baseline or _read_metrics(res.root / "baseline" / "metrics" / "metrics.json")
        rows = trainer.tokens_per_step // cfg.block_size  # over all processes
        window = f" x {cfg.block_size} tokens" if self.task == "lm" else ""
        run = (f"init_from={cfg.init_from}, method={cfg.method}, {trainer.step} steps ({trainer.epoch} epochs) of "
               f"{rows} rows{window}, learning_rate={cfg.learning_rate:g}"
               + (f", train_stride={cfg.train_stride}" if cfg.train_stride else "")
               + (f", key_token_alpha={cfg.key_token_alpha:g} ({cfg.key_token_formula})" if cfg.key_token_alpha else "")
               + f"; out_dir {cfg.out_dir}")
        title = f"{cfg.dataset}: {model_name(cfg.init_from)} fine-tuned ({self.task})"
        (res.root / "summary.md").write_text(scores_summary_markdown(title, self.note(trainer), run, baseline, tuned),
                                             encoding="utf-8")
        trainer.log(f"summary: {res.root / 'summary.md'}")


def describe(scores: dict) -> str:
    """One log line of a stage's splits: `validation loss 3.2100 | ppl 24.78; test ...`."""
    return "; ".join(f"{name} loss {m['loss']:.4f} | ppl {m['ppl']:.2f}" for name, m in scores["splits"].items())


def _read_metrics(path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None
