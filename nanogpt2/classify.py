"""
Text classification with GPT-2: `finetune.py --task classify`. The model is nanogpt2.heads'
GPTForSequenceClassification; this module holds the task around it: datasets, splits, batches, metrics, the
results tree, and `task(cfg) -> TaskParts` for nanogpt2.finetuning.

    python finetune.py configs/classify_imdb.py                       # GPT-2 small on IMDB, the users' recipe
    python finetune.py configs/classify_ag_news.py configs/classify_distilgpt2.py   # DistilGPT2 on AG News
    python finetune.py configs/classify_ag_news.py --data_path ../shared/data/ag_news --method lora
    python -m nanogpt2.evaluate --task classify --init_from out-classify-ag_news --dataset ag_news

Its parts: the datasets (`CLASSIFY_DATASETS`: imdb, ag_news, local CSV / JSONL), their splits and batches are in
nanogpt2/classify_data.py; the results tree (`results_dir/<model>/<timestamp>/`: baseline, train, test, summary.md)
in nanogpt2/results.py. Here, in reading order:
- metrics from the confusion matrix: accuracy, macro-F1, per-class precision / recall / F1 (sklearn's
  conventions: 0 where a class is never predicted);
- the baseline (the pretrained body with its fresh head, scored on the test split before training, as users do)
  and the fine-tuned model's test scores, written into the results tree;
- the task: the classifier built on init_from's body (or init_from's own classifier: an HF
  GPT2ForSequenceClassification folder, a classification run), loss, validation accuracy each evaluation,
  baseline before and test after training; the `python -m nanogpt2.evaluate --task classify` command.

Docs: docs/classification.md. Tests: python -m pytest -q tests/test_classify.py
"""

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nanogpt2.classify_data import (BucketSampler, ClassifyData, Encoded, encode, eval_batches, load_data,
                                    make_splits, pad_batch)
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.heads import GPTForSequenceClassification, classification_loss
from nanogpt2.model import IGNORE_INDEX
from nanogpt2.results import Results, model_name, report_markdown, summary_markdown, training_history
from nanogpt2.task_metrics import TaskMetrics

# The reports and the best checkpoint of a classifier: no perplexity (the loss is over classes, not tokens), the
# training batches' accuracy beside the loss, validation accuracy and macro-F1; the best is the most accurate.
METRICS = TaskMetrics(perplexity=False, train_metrics=("accuracy",), val_metrics=("val_accuracy", "val_macro_f1"),
                      best="val_accuracy", higher_is_better=True)

DEFAULT_VAL_FRACTION = 0.1
MAX_DEFAULT_LENGTH = 1024

# ----------------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(labels, preds, num_labels: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def classification_metrics(cm: np.ndarray, names) -> dict:
    """accuracy, macro-F1, per-class precision / recall / F1 / support, from a confusion matrix (a class never
    predicted has precision 0; one never present, recall 0: sklearn's zero_division=0)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    total = int(cm.sum())
    return {
        "examples": total,
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "macro_f1": float(f1.mean()),
        "per_class": {str(n): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for n, p, r, f, s in zip(names, precision, recall, f1, support)},
        "labels": [str(n) for n in names],
        "confusion_matrix": cm.tolist(),
    }


@torch.no_grad()
def evaluate_classifier(model, enc: Encoded, names, *, batch_size: int, pad_id: int, device="cpu",
                        autocast=contextlib.nullcontext, max_batches: Optional[int] = None, seed: int = 0,
                        rank: int = 0, world_size: int = 1, all_reduce=None) -> dict:
    """Metrics of `model` on a split (classification_metrics + "loss", the mean cross-entropy, unsmoothed). Batch
    i goes to rank i % world_size; the confusion matrix and loss sums are all-reduced (`all_reduce(tensor)`)."""
    was_training = model.training
    model.eval()
    K = len(names)
    cm = torch.zeros(K * K, dtype=torch.float64, device=device)  # (K * K,) flat confusion matrix
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    for i, rows in enumerate(eval_batches(enc, batch_size, max_batches, seed)):
        if i % world_size != rank:
            continue
        batch = pad_batch(enc, rows, pad_id, device)
        with autocast():
            logits, _ = model(batch["idx"], batch["attention_mask"])  # (B, K)
        labels = batch["labels"]  # (B,)
        loss_sum += classification_loss(logits, labels, reduction="sum").double()
        cm.index_add_(0, labels * K + logits.argmax(-1), torch.ones(len(labels), dtype=torch.float64, device=device))
    both = torch.cat([cm, loss_sum])
    if all_reduce is not None:
        both = all_reduce(both)
    model.train(was_training)
    counts = both[:-1].round().long().view(K, K).cpu().numpy()
    metrics = classification_metrics(counts, names)
    metrics["loss"] = float(both[-1]) / max(1, metrics["examples"])
    return metrics


# ----------------------------------------------------------------------------------------------------
# The task (finetune.py --task classify)


def check_settings(cfg) -> None:
    """The classify settings of a FinetuneConfig, checked before any work."""
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise NanoGPT2Error(f"label_smoothing must be in [0, 1), not {cfg.label_smoothing}")
    if not 0.0 <= cfg.classifier_dropout < 1.0:
        raise NanoGPT2Error(f"classifier_dropout must be in [0, 1), not {cfg.classifier_dropout}")
    if cfg.num_labels == 1 or cfg.num_labels < 0:
        raise NanoGPT2Error(f"num_labels must be 0 (from the data) or >= 2 classes, not {cfg.num_labels} (the head "
                            f"does regression with 1, but the task's data are classes)")
    for key in ("max_length", "max_examples"):
        if getattr(cfg, key) < 0:
            raise NanoGPT2Error(f"{key} must be >= 0, not {getattr(cfg, key)}")
    for key, value in (("test_fraction", cfg.test_fraction), ("val_fraction", cfg.val_fraction)):
        if value is not None and not 0.0 < value < 1.0:
            raise NanoGPT2Error(f"{key} must be in (0, 1) for classify, not {value}")
    if cfg.tokens_per_step:
        raise NanoGPT2Error("tokens_per_step does not apply to classify (rows have their own lengths): set batch_size "
                            "and gradient_accumulation_steps")
    if cfg.tokenizer not in ("auto", "gpt2"):
        raise NanoGPT2Error(f"classify uses GPT-2's tokenizer; set tokenizer=gpt2 (or auto), not {cfg.tokenizer}")


def resolve_max_length(max_length: int, context: int) -> int:
    """Tokens per example: the setting, or (0) the model's context up to 1024; never beyond the context."""
    if max_length > context:
        raise NanoGPT2Error(f"max_length={max_length} exceeds the model's context of {context} positions (block_size); "
                            f"lower max_length")
    return max_length or min(context, MAX_DEFAULT_LENGTH)


def label_set(num_labels: int, data: ClassifyData, splits: dict, model=None) -> list:
    """The class names of the run (K of them): K = num_labels (0: the model's head, else the data's classes);
    a head of another size, or a label outside 0..K-1, is refused."""
    K = num_labels or (model.num_labels if model is not None else len(data.label_names))
    if model is not None and K != model.num_labels:
        raise NanoGPT2Error(f"num_labels={K}, but the model's classification head has {model.num_labels} labels; leave "
                            f"num_labels at 0 to use its head, or start from the base GPT-2 to train a new one")
    for split, ex in splits.items():
        bad = np.flatnonzero(ex.labels >= K)
        if len(bad):
            v = int(ex.labels[bad[0]])
            raise NanoGPT2Error(f"label {v} ({data.label_names[v]!r}) of the {split} split of {data.name} is outside "
                                f"num_labels={K} (labels 0-{K - 1}); raise num_labels or fix the data")
    return [*data.label_names[:K], *(f"LABEL_{i}" for i in range(len(data.label_names), K))]


def given_classifier(cfg):
    """init_from's own classifier (an HF GPT2ForSequenceClassification folder, a classification run or checkpoint)
    with this run's dropouts, or None when init_from is a GPT (its body gets a fresh head)."""
    from nanogpt2.loader import hf_architecture, is_checkpoint, is_hf_folder, load_model, set_dropout

    path = Path(cfg.init_from)
    if cfg.init_from in ("scratch", "resume") or not path.exists():
        return None
    if is_hf_folder(path) and hf_architecture(path) is None or not (is_hf_folder(path) or is_checkpoint(path)):
        return None
    model, info = load_model(cfg.init_from)
    if not isinstance(model, GPTForSequenceClassification):
        return None
    if (info.get("tokenizer") or {}).get("name") != "gpt2" or model.config.vocab_size < 50257:
        raise NanoGPT2Error(f"init_from={cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens "
                            f"({(info.get('tokenizer') or {}).get('name')!r}); classify uses GPT-2's tokenizer (50,257)")
    set_dropout(model, cfg.dropout)
    model.dropout.p = cfg.classifier_dropout
    return model


class ClassifyTask:
    """The parts finetune.py takes (TaskParts), around the data of one run. Everything that needs the trainer
    (its device, ranks, out_dir) happens in the callbacks."""

    def __init__(self, cfg):
        from nanogpt2.tokenizer import get_tokenizer
        from nanogpt2.distributed import dist_from_env

        check_settings(cfg)
        self.cfg, self.master = cfg, dist_from_env().master
        self.tokenizer = get_tokenizer("gpt2")
        self.model = given_classifier(cfg)
        spent = cfg.prompt_length if cfg.method == "prompt" else 0  # the positions a prompt takes
        context = self.model.config.block_size - spent if self.model is not None else cfg.block_size
        self.max_length = resolve_max_length(cfg.max_length, context)
        data = load_data(cfg.dataset, cfg.data_path or None, quiet=not self.master)
        splits, self.note = make_splits(data, cfg.val_fraction or DEFAULT_VAL_FRACTION, cfg.test_fraction,
                                        cfg.max_examples, cfg.seed)
        self.dataset, self.source = data.name, data.source
        self.names = label_set(cfg.num_labels, data, splits, self.model)
        if self.model is not None and self.model.labels != self.names:
            generic = all(n == f"LABEL_{i}" for i, n in enumerate(self.model.labels))
            if not generic:
                self._log(f"warning: init_from names its classes {self.model.labels}, the data {self.names}; the "
                          f"data's label ids are used, under the data's names")
            self.model.labels = list(self.names)
        self.pad_id = self.tokenizer.eot_token
        if self.model is not None:
            if self.model.pad_token_id is None:
                self.model.pad_token_id = self.pad_id
            self.pad_id = self.model.pad_token_id
        self.enc = {s: encode(ex, self.tokenizer, self.max_length) for s, ex in splits.items()}
        rows = cfg.batch_size * cfg.gradient_accumulation_steps
        self.steps_per_epoch = len(self.enc["train"]) // rows
        if self.steps_per_epoch == 0:
            raise NanoGPT2Error(f"the train split has {len(self.enc['train']):,} examples, fewer than one step's "
                                f"batch (batch_size x gradient_accumulation_steps = {rows}); lower them or use more "
                                f"data")
        self.results, self.baseline, self.test, self.tested = None, None, None, None
        self._log(f"{self.note} (from {self.source})")
        self._log(f"{len(self.names)} classes ({', '.join(self.names)}); max_length {self.max_length}: " + ", ".join(
            f"{s} {e.truncated:,} truncated" for s, e in self.enc.items()))

    def _log(self, msg: str):
        if self.master:
            print(msg, flush=True)

    def parts(self):
        from nanogpt2.finetuning import TaskParts

        head = ("score.*",)
        return TaskParts(model=self.model, prepare_model=self.prepare_model, tokenizer=self.tokenizer,
                         make_sampler=self.make_sampler, eval_fn=self.eval_fn, loss_fn=self.loss_fn,
                         steps_per_epoch=self.steps_per_epoch, hooks=[self.test_at_end], head_patterns=head,
                         modules_to_save=head, before_train=self.before_train, after_train=self.after_train,
                         metrics=METRICS)

    # --- what the trainer calls ------------------------------------------------------------------------

    def prepare_model(self, trainer, gpt):
        return GPTForSequenceClassification.from_gpt(gpt, len(self.names), pad_token_id=self.pad_id, labels=self.names,
                                                     classifier_dropout=self.cfg.classifier_dropout)

    def make_sampler(self, trainer):
        return BucketSampler(self.enc["train"], trainer.rows_per_step, self.pad_id, seed=self.cfg.seed,
                             rank=trainer.dist.rank, world_size=trainer.dist.world_size)

    def loss_fn(self, trainer, model, batch):
        """The micro-batch's mean cross-entropy (label-smoothed as set), the number of labelled rows, and its
        accuracy (logged as the training `accuracy`)."""
        logits, _ = model(batch["idx"], batch["attention_mask"])  # (b, K)
        labels = batch["labels"]  # (b,)
        scored = labels != IGNORE_INDEX  # (b,)
        correct = (logits.detach().argmax(-1) == labels) & scored  # (b,)
        accuracy = correct.sum() / scored.sum().clamp(min=1)
        return classification_loss(logits, labels, self.cfg.label_smoothing), scored.sum(), {"accuracy": accuracy}

    def evaluate(self, trainer, split: str, max_batches: Optional[int] = None) -> dict:
        """A split's metrics on every process's share of the batches (all-reduced)."""
        return evaluate_classifier(trainer.eval_model, self.enc[split], self.names, batch_size=self.cfg.batch_size,
                                   pad_id=self.pad_id, device=trainer.device, autocast=trainer.autocast,
                                   max_batches=max_batches, seed=self.cfg.seed, rank=trainer.dist.rank,
                                   world_size=trainer.dist.world_size, all_reduce=trainer.dist.all_reduce)

    def eval_fn(self, trainer) -> dict:
        m = self.evaluate(trainer, "val", self.cfg.eval_iters or None)  # the trainer's line reports it (METRICS)
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"],
                "val_examples": m["examples"]}

    def before_train(self, trainer):
        """The results folder (a resumed run keeps its own), and the baseline: the model before any step."""
        # rank 0 makes the folder; a failure there stops every process (none waits at the baseline's all-reduce)
        self.results = trainer.dist.together(trainer.dist.master, lambda: self._results_folder(trainer),
                                         "cannot create the results folder (see rank 0's error)")
        if self.results is not None:
            trainer.log(f"results: {self.results.root}")
        if not self.cfg.baseline_eval or trainer.step > 0:  # a resumed run: the first run scored the baseline
            return
        self.baseline = self.evaluate(trainer, "test")
        trainer.log(f"baseline (before training) on test: accuracy {self.baseline['accuracy']:.4f} | macro-F1 "
                    f"{self.baseline['macro_f1']:.4f} | loss {self.baseline['loss']:.4f}")
        if self.results is not None:
            self.results.write_evaluation("baseline", self.baseline, f"{self.dataset} test, before fine-tuning")

    def _results_folder(self, trainer) -> Results:
        # out_dir/classify_results.txt: where this run's results go, for a resumed run
        return Results.for_run(trainer.out_dir, trainer.step > 0, self.cfg.results_dir, model_name(self.cfg.init_from),
                               "classify_results.txt")

    def test_at_end(self, trainer, event: str):
        """A trainer hook: at train_end of a finished run, the test evaluation (every process scores its share) of
        the weights test_on names (test_weights)."""
        if event == "train_end" and (trainer.step >= trainer.max_steps or trainer.early_stop):  # a finished run
            self.tested = test_weights(trainer, self.cfg.test_on)
            self.test = self.evaluate(trainer, "test")
            trainer.log(f"test on {self.tested}: accuracy {self.test['accuracy']:.4f} | macro-F1 "
                        f"{self.test['macro_f1']:.4f} | loss {self.test['loss']:.4f}")

    def after_train(self, trainer, summary):
        """Rank 0: the test metrics, the training history, the weights, summary.md; with LoRA, the head joins the
        adapter folder (an HF peft SEQ_CLS folder)."""
        if not trainer.dist.master or self.test is None:
            return
        from nanogpt2.heads import save_peft_classifier
        from nanogpt2.peft import lora_layers

        cfg, model, res = self.cfg, trainer.raw_model, self.results
        res.write_evaluation("test", self.test, f"{self.dataset} test, fine-tuned")
        res.write_training(training_history(trainer.out_dir / "metrics.jsonl"))
        trainer.log(f"weights: {self._save_weights(trainer, res.weights)}")
        if getattr(model, "lora_config", None) is not None and not any(l.partial for l in lora_layers(model).values()):
            save_peft_classifier(model, trainer.out_dir / "adapter", cfg.init_from)
        baseline = self.baseline or _read_metrics(res.root / "baseline" / "metrics" / "metrics.json")
        run = (f"init_from={cfg.init_from}, method={cfg.method}, {trainer.step} steps ({trainer.epoch} epochs) of "
               f"{cfg.batch_size * cfg.gradient_accumulation_steps} rows, learning_rate={cfg.learning_rate:g}, "
               f"label_smoothing={cfg.label_smoothing:g}, max_length={self.max_length}; out_dir {cfg.out_dir}. "
               f"Tested, and saved in train/weights: {self.tested}" + (f"; {trainer.early_stop}" if trainer.early_stop
                                                                       else ""))
        (res.root / "summary.md").write_text(summary_markdown(
            f"{self.dataset}: {model_name(cfg.init_from)} fine-tuned for classification", self.note, run, baseline,
            self.test), encoding="utf-8")
        trainer.log(f"summary: {res.root / 'summary.md'}")

    def _save_weights(self, trainer, folder: Path) -> str:
        """The fine-tuned classifier: an HF GPT2ForSequenceClassification folder (LoRA merged), or with Houlsby
        adapters or a tuned prompt, which HF GPT-2 cannot hold, a checkpoint the loader reads (checkpoint_final.pt)."""
        from nanogpt2.finetuning import save_model_checkpoint

        model = trainer.raw_model
        what = next((w for a, w in (("adapter_config", "Houlsby adapters"), ("prompt_config", "a tuned prompt"))
                     if getattr(model, a, None) is not None), None)
        if what is None:
            return f"{model.save_pretrained(folder)} (HF GPT2ForSequenceClassification folder)"
        return f"{save_model_checkpoint(trainer, folder)} (nanogpt2 checkpoint: HF GPT-2 cannot hold {what})"


def test_weights(trainer, test_on: str) -> str:
    """test_on=best: checkpoint_best.pt's weights into the model, as HF's load_best_model_at_end (the test, the
    results tree's weights and the exports then hold them; checkpoint_final.pt keeps the last step's). Returns
    which weights the model now holds, in words."""
    from nanogpt2 import checkpoint as ckpt_io

    final = f"the final weights (step {trainer.step})"
    path = trainer.rundir.checkpoint_path("best")
    if test_on != "best":
        return final
    if not path.exists():
        return f"{final}: test_on=best, but no checkpoint_best.pt was saved (save_best=false, or no evaluation)"
    state = ckpt_io.load_checkpoint(path, map_location=trainer.device)
    model = trainer.raw_model
    missing, unexpected = model.load_state_dict(ckpt_io.strip_prefixes(state["model"]), strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):  # a checkpoint of trainable tensors alone may leave the frozen out
        raise NanoGPT2Error(f"{path} does not hold this run's model ({len(unexpected)} unexpected, "
                            f"{len(trainable & set(missing))} missing tensors); test it with --test_on final")
    score = state.get("best_score")
    by = f", {METRICS.best_label} {score:.4f}" if score is not None else ""
    return f"the best checkpoint (checkpoint_best.pt, step {state['step']}{by})"


def _read_metrics(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def task(cfg):
    """`classify`: GPT-2 as a text classifier (see the module docstring)."""
    return ClassifyTask(cfg).parts()


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.evaluate --task classify


# Settings that pick the rows to score: the training run's own (its config.json / checkpoint) unless given, so that a
# held-out test split is the one the run held out; then these defaults.
SPLIT_SETTINGS = {"dataset": None, "data_path": "", "max_examples": 0, "val_fraction": DEFAULT_VAL_FRACTION,
                  "test_fraction": 0.1, "seed": 1337, "max_length": 0}


def _evaluate_args(argv):
    ap = argparse.ArgumentParser(
        prog="python -m nanogpt2.evaluate --task classify",
        description="Accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix of a saved "
                    "classifier on a split of a classification dataset.")
    ap.add_argument("--init_from", required=True, help="a finetune.py --task classify run folder or checkpoint, its "
                    "results' train/weights folder, or an HF GPT2ForSequenceClassification folder")
    ap.add_argument("--dataset", default=None,
                    help="imdb | ag_news | a .csv / .jsonl file or folder (default: the run's)")
    ap.add_argument("--data_path", default=None, help="local copy of the dataset (default: the run's)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to score")
    for key in ("max_examples", "max_length", "seed"):
        ap.add_argument(f"--{key}", type=int, default=None, help=f"as in finetune.py (default: the run's, else "
                        f"{SPLIT_SETTINGS[key]})")
    for key in ("val_fraction", "test_fraction"):
        ap.add_argument(f"--{key}", type=float, default=None, help=f"as in finetune.py (default: the run's, else "
                        f"{SPLIT_SETTINGS[key]})")
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass")
    ap.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="autocast dtype; auto = bfloat16 on a GPU that supports it (else float16), float32 elsewhere")
    ap.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    return ap.parse_args(argv)


def evaluate_main(argv=None) -> dict:
    """Score a saved classifier (see _evaluate_args); prints the metrics and returns them."""
    from nanogpt2.loader import load_model
    from nanogpt2.runtime import autocast, resolve_device, resolve_dtype
    from nanogpt2.tokenizer import get_tokenizer

    args = _evaluate_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.batch_size < 1:
        raise NanoGPT2Error(f"--batch_size must be >= 1, not {args.batch_size}")
    model, info = load_model(args.init_from, device=device)
    if not isinstance(model, GPTForSequenceClassification):
        raise NanoGPT2Error(f"{args.init_from} holds a {type(model).__name__}, not a classifier; give a run of "
                            f"finetune.py --task classify or an HF GPT2ForSequenceClassification folder")
    run = info.get("config") if (info.get("config") or {}).get("task") == "classify" else {}
    s = {k: next(v for v in (getattr(args, k), run.get(k), default) if v is not None)
         for k, default in SPLIT_SETTINGS.items()}
    if not s["dataset"]:
        raise NanoGPT2Error(f"{args.init_from} does not say which dataset it was trained on: give --dataset")
    data = load_data(s["dataset"], s["data_path"] or None)
    splits, note = make_splits(data, s["val_fraction"], s["test_fraction"], s["max_examples"], s["seed"])
    names = label_set(0, data, splits, model)
    max_length = resolve_max_length(s["max_length"], getattr(model, "context_length", model.config.block_size))
    enc = encode(splits[args.split], get_tokenizer("gpt2"), max_length)
    pad = model.pad_token_id if model.pad_token_id is not None else get_tokenizer("gpt2").eot_token
    t0 = time.perf_counter()
    metrics = evaluate_classifier(model, enc, names, batch_size=args.batch_size, pad_id=pad, device=device,
                                  autocast=lambda: autocast(device, dtype))
    metrics.update(model=info["description"], dataset=data.name, split=args.split, splits=note,
                   seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"model {info['description']}\n{note}")
        print(report_markdown(metrics, f"{data.name} {args.split}"), end="")
    return metrics
