"""
Text classification with GPT-2: `finetune.py --task classify`. The model is nanogpt2.heads'
GPTForSequenceClassification; this module holds the task around it: datasets, splits, batches, metrics, the
results tree, and `task(cfg) -> TaskParts` for nanogpt2.finetuning.

    python finetune.py configs/classify_imdb.py                       # GPT-2 small on IMDB, the users' recipe
    python finetune.py configs/classify_ag_news.py configs/classify_distilgpt2.py   # DistilGPT2 on AG News
    python finetune.py configs/classify_ag_news.py --data_path ../shared/data/ag_news --method lora
    python -m nanogpt2.evaluate --task classify --init_from out-classify-ag_news --dataset ag_news

What is here, in reading order:
- datasets (`CLASSIFY_DATASETS`), downloaded once into the cache (`data_path=` for a local copy):
  `imdb` (Stanford's aclImdb_v1.tar.gz, read straight from the tar; 0 negative, 1 positive; the reviews as
  released, `<br />` tags included), `ag_news` (train.csv / test.csv of `"class","title","description"`, classes
  1-4 -> labels 0-3: World, Sports, Business, Sci/Tech; text = title + " " + description, the corpus's
  backslashes, escaped line breaks, turned into spaces), and any local CSV / JSONL with `text` and `label`
  columns (label names, sorted, or ints 0..K-1), as a file or a folder of train / val / test files;
- splits: the official ones where present; a seeded stratified hold-out makes the missing ones (val from train;
  with a single file, e.g. only a test set, train / val / test all come from it), and the run says so;
- batches: tokens truncated to `max_length` (the head kept), right-padded with eos to the longest row of the
  step, rows sorted by length within shuffled buckets of `BUCKET_STEPS` steps; a step's rows are a pure function
  of (seed, step, rank), so resume needs only the step (nanogpt2.samplers' rule);
- metrics from the confusion matrix: accuracy, macro-F1, per-class precision / recall / F1 (sklearn's
  conventions: 0 where a class is never predicted);
- the results tree, `results_dir/<model>/<timestamp>/`: `baseline/` (the pretrained body with its fresh head,
  scored on the test split before training, as users do), `train/` (history, curves, `weights/`), `test/` (the
  fine-tuned model), each with `metrics/metrics.json` and `analysis/` (report.md, confusion-matrix PNG, curves
  PNG when matplotlib is installed), and `summary.md`, baseline vs fine-tuned;
- the task: the classifier built on init_from's body (or init_from's own classifier: an HF
  GPT2ForSequenceClassification folder, a classification run), loss, validation accuracy each evaluation,
  baseline before and test after training; the `python -m nanogpt2.evaluate --task classify` command.

Docs: docs/classification.md. Tests: python -m pytest -q tests/test_classify.py
"""

import argparse
import contextlib
import csv
import json
import re
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from nanogpt2.data import Remote, default_cache_root
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.heads import GPTForSequenceClassification, classification_loss
from nanogpt2.model import IGNORE_INDEX

BUCKET_STEPS = 50       # batches sorted by length within buckets of this many steps' rows
DEFAULT_VAL_FRACTION = 0.1
MAX_DEFAULT_LENGTH = 1024

# ----------------------------------------------------------------------------------------------------
# Examples


@dataclass
class Examples:
    """Texts and their int labels (one split)."""

    texts: list
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows) -> "Examples":
        rows = np.sort(np.asarray(rows, dtype=np.int64))  # the data's own order kept
        return Examples([self.texts[i] for i in rows], self.labels[rows])

    @staticmethod
    def concat(parts) -> "Examples":
        parts = list(parts)
        return Examples([t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]))


@dataclass
class ClassifyData:
    """A dataset as read: its class names and the splits it has ("train", "val", "test", or "all")."""

    name: str
    label_names: list
    splits: dict
    source: str


def _check_text(text: str, where: str) -> str:
    if not text.strip():
        raise NanoGPT2Error(f"{where}: empty text; remove the row or give it a text")
    return text


# ----------------------------------------------------------------------------------------------------
# The registry: IMDB and AG News


@dataclass(frozen=True)
class ClassifySpec:
    """A classification dataset: its class names, files to download, and how to read them.

    read: f(files) -> {split: Examples} for the splits those files hold; find: f(folder) -> the dataset's files in
    a local folder (data_path=); local: what data_path accepts, for messages and docs."""

    name: str
    description: str
    labels: tuple
    remote: tuple
    read: Callable
    find: Callable
    local: str
    homepage: str = ""
    license: str = ""


CLASSIFY_DATASETS: dict = {}


def register_classify_dataset(spec: ClassifySpec) -> ClassifySpec:
    CLASSIFY_DATASETS[spec.name] = spec
    return spec


IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
_IMDB_REVIEW = re.compile(r"(?:^|/)(train|test)/(neg|pos)/(\d+)_\d+\.txt$")  # <split>/<label>/<id>_<stars>.txt


def _imdb_reviews(path: Path):
    """(member name, bytes) of the labelled reviews in an aclImdb tar.gz (read as a stream: nothing unpacked) or
    an unpacked aclImdb folder."""
    if path.is_dir():
        for p in sorted(path.rglob("*.txt")):
            name = p.relative_to(path).as_posix()
            if _IMDB_REVIEW.search(name):
                yield name, p.read_bytes()
        return
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                if member.isfile() and _IMDB_REVIEW.search(member.name):
                    yield member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise NanoGPT2Error(f"cannot read {path} as the IMDB tar.gz ({type(e).__name__}: {e}); download it again, "
                            f"or pass another copy with --data_path") from None


def _read_imdb(files) -> dict:
    found = {}
    for path in files:
        for name, data in _imdb_reviews(Path(path)):
            split, label, rid = _IMDB_REVIEW.search(name).groups()
            found[(split, label == "pos", int(rid))] = (name, data)
    if not found:
        raise NanoGPT2Error(f"no IMDB reviews (aclImdb/<train|test>/<pos|neg>/*.txt) in {', '.join(map(str, files))}")
    splits = {}
    for split in ("train", "test"):
        keys = sorted(k for k in found if k[0] == split)  # by label, then review id: the same order every time
        if keys:
            texts = [_check_text(found[k][1].decode("utf-8", errors="replace"), found[k][0]) for k in keys]
            splits[split] = Examples(texts, np.array([int(k[1]) for k in keys], dtype=np.int64))
    return splits


def _find_imdb(folder: Path) -> list:
    full = folder / "aclImdb_v1.tar.gz"
    if full.is_file():
        return [full]
    tars = sorted(folder.glob("aclImdb*.tar.gz"))
    if tars:
        return tars
    unpacked = folder / "aclImdb"
    return [unpacked if unpacked.is_dir() else folder]


register_classify_dataset(ClassifySpec(
    name="imdb", description="IMDB Large Movie Review v1.0: 25,000 train + 25,000 test reviews, positive / negative",
    labels=("negative", "positive"),
    remote=(Remote("imdb/aclImdb_v1.tar.gz", urls=(IMDB_URL,)),),
    read=_read_imdb, find=_find_imdb,
    local="aclImdb_v1.tar.gz (or a tar.gz of one split, e.g. aclImdb_v1_test.tar.gz), a folder holding it, or an "
          "unpacked aclImdb folder",
    homepage="https://ai.stanford.edu/~amaas/data/sentiment/", license="research use (Maas et al., ACL 2011)"))

AG_NEWS_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def _split_of(path: Path) -> str:
    """The split a local file holds, by its name: train / val (valid, validation, dev) / test, else "all"."""
    return SPLIT_NAMES.get(path.name.split(".")[0].lower(), "all")


def _read_ag_news(files) -> dict:
    splits = {}
    for path in map(Path, files):
        texts, labels = [], []
        with _open_text(path) as f:
            for n, row in enumerate(csv.reader(f), 1):
                where = f"{path} line {n}"
                if len(row) != 3 or row[0].strip() not in ("1", "2", "3", "4"):
                    raise NanoGPT2Error(f"{where}: expected \"class\",\"title\",\"description\" with class 1-4 "
                                        f"(AG News), got {row[:3]!r}; is it the AG News CSV?")
                texts.append(_check_text(f"{row[1]} {row[2]}".replace("\\", " "), where))
                labels.append(int(row[0]) - 1)
        splits[_split_of(path)] = Examples(texts, np.array(labels, dtype=np.int64))
    return splits


def _find_ag_news(folder: Path) -> list:
    files = [folder / f for f in ("train.csv", "test.csv") if (folder / f).is_file()]
    if not files:
        raise NanoGPT2Error(f"{folder} holds neither train.csv nor test.csv (AG News); pass the folder that holds them")
    return files


register_classify_dataset(ClassifySpec(
    name="ag_news", description="AG News topics: 120,000 train + 7,600 test news, World / Sports / Business / Sci/Tech",
    labels=("World", "Sports", "Business", "Sci/Tech"),
    remote=tuple(Remote(f"ag_news/{f}", urls=(AG_NEWS_URL + f,)) for f in ("train.csv", "test.csv")),
    read=_read_ag_news, find=_find_ag_news,
    local="a folder holding train.csv and / or test.csv, or one of them",
    homepage="http://groups.di.unipi.it/~gulli/AG_corpus_of_news_articles.html", license="research / non-commercial"))


# ----------------------------------------------------------------------------------------------------
# Local CSV / JSONL files


@contextlib.contextmanager
def _open_text(path: Path):
    """A UTF-8 text file for csv / json reading; a missing, non-UTF-8 or malformed CSV file is one line."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))  # long texts (reviews) in one CSV field
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield f
    except FileNotFoundError:
        raise NanoGPT2Error(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise NanoGPT2Error(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise NanoGPT2Error(f"{path} is not a valid CSV file ({e}); check its quoting") from None


def _local_rows(path: Path):
    """(where, text, raw label) of each row of a CSV (header with text, label) or JSONL file ({"text", "label"})."""
    with _open_text(path) as f:
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise NanoGPT2Error(f"{path} line {n}: not JSON ({e})") from None
                if not (isinstance(row, dict) and "text" in row and "label" in row):
                    raise NanoGPT2Error(f"{path} line {n}: each line must be an object with \"text\" and \"label\"")
                yield f"{path} line {n}", str(row["text"]), row["label"]
            return
        reader = csv.DictReader(f)
        missing = [c for c in ("text", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise NanoGPT2Error(f"{path} has the columns {reader.fieldnames or []}, not {' and '.join(missing)}: a "
                                f"classification CSV needs a header with text and label columns")
        for n, row in enumerate(reader, 2):
            yield f"{path} line {n}", row["text"] or "", row["label"]


def _label_ids(raw: list, where: list):
    """Int labels and class names: ints (or digit strings) as they are, 0..K-1; names sorted."""
    if all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().lstrip("-").isdigit()
           for v in raw):
        ids = [int(v) for v in raw]
        bad = next((i for i, v in enumerate(ids) if v < 0), None)
        if bad is not None:
            raise NanoGPT2Error(f"{where[bad]}: label {ids[bad]} is negative; labels are 0..K-1 or class names")
        return ids, [str(i) for i in range(max(ids) + 1)]
    names = sorted({str(v).strip() for v in raw})
    index = {n: i for i, n in enumerate(names)}
    return [index[str(v).strip()] for v in raw], names


def read_local(path: Path) -> tuple:
    """({split: Examples}, class names) of a local CSV / JSONL file (split "all") or a folder of split files."""
    suffixes = (".csv", ".jsonl")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes
                                                 and _split_of(p) != "all")
    if not files or any(p.suffix.lower() not in suffixes for p in files):
        raise NanoGPT2Error(f"{path}: a local classification dataset is a .csv or .jsonl file with text and label "
                            f"columns, or a folder of train / val / test files of that kind")
    rows = {}
    for p in files:
        rows[_split_of(p) if path.is_dir() else "all"] = [(where, _check_text(text, where), label)
                                                         for where, text, label in _local_rows(p)]
    flat = [r for split_rows in rows.values() for r in split_rows]
    if not flat:
        raise NanoGPT2Error(f"{path} holds no examples")
    ids, names = _label_ids([r[2] for r in flat], [r[0] for r in flat])
    splits, start = {}, 0
    for split, split_rows in rows.items():
        labels = np.array(ids[start:start + len(split_rows)], dtype=np.int64)
        splits[split] = Examples([r[1] for r in split_rows], labels)
        start += len(split_rows)
    return splits, names


# ----------------------------------------------------------------------------------------------------
# Sources: a local copy, the download cache, a local file


def _download(spec: ClassifySpec, cache_root: Path, quiet: bool) -> list:
    from nanogpt2.download import download

    return [download(r.urls[0], cache_root / "downloads" / r.filename, sha256=r.sha256, size=r.size, quiet=quiet,
                     desc=f"{spec.name} ({Path(r.filename).name})",
                     local_hint=f"If you have a copy, pass it with --data_path PATH, where PATH is {spec.local}.")
            for r in spec.remote]


def load_data(name_or_path: str, data_path: Optional[str] = None, cache_root=None, quiet: bool = False) -> ClassifyData:
    """A dataset as read: a registered name (downloaded once into `cache_root`/downloads, or read from
    `data_path`), or a local CSV / JSONL file or folder."""
    spec = CLASSIFY_DATASETS.get(name_or_path)
    if spec is None:
        path = Path(name_or_path)
        if not path.exists():
            raise NanoGPT2Error(f"dataset {name_or_path!r} is neither a classification dataset "
                                f"({', '.join(CLASSIFY_DATASETS)}) nor a local .csv / .jsonl file or folder")
        splits, names = read_local(path)
        return ClassifyData(path.stem, names, splits, str(path))
    if data_path:
        local = Path(data_path)
        if not local.exists():
            raise NanoGPT2Error(f"data_path {data_path} does not exist; give {spec.name}'s files: {spec.local}")
        files, source = (spec.find(local) if local.is_dir() else [local]), f"{data_path} (local copy)"
    else:
        files = _download(spec, Path(cache_root) if cache_root else default_cache_root(), quiet)
        source = str(files[0].parent)
    return ClassifyData(spec.name, list(spec.labels), spec.read(files), source)


# ----------------------------------------------------------------------------------------------------
# Splits: a seeded stratified sample and hold-out


def stratified_order(labels: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A seeded order of the rows in which every prefix holds the classes in their proportions: each row's key is
    its (shuffled) rank within its class over the class size; ties in random order."""
    rng = np.random.default_rng([seed, salt])
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keys[rng.permutation(rows)] = (np.arange(len(rows)) + 0.5) / len(rows)
    return np.lexsort((rng.random(len(labels)), keys))


def holdout(ex: Examples, fraction: float, seed: int, salt: int) -> tuple:
    """(held, rest): a stratified `fraction` of the rows and the others."""
    order = stratified_order(ex.labels, seed, salt)
    k = int(round(fraction * len(ex)))
    return ex.take(order[:k]), ex.take(order[k:])


SALTS = {"sample": 1, "test": 2, "val": 3}


def make_splits(data: ClassifyData, val_fraction: float, test_fraction: float, max_examples: int = 0,
                seed: int = 0) -> tuple:
    """({"train", "val", "test": Examples}, note): the data's own splits (at most `max_examples` rows each, a
    stratified sample); the missing ones held out, stratified and seeded: val from train, test from train; with no
    train split, all three from what there is. The note says how the splits were made."""
    splits, notes = {}, []
    for name, ex in data.splits.items():
        if max_examples and len(ex) > max_examples:
            ex = ex.take(stratified_order(ex.labels, seed, SALTS["sample"])[:max_examples])
            notes.append(f"{name} split: a stratified sample of {max_examples:,} of {len(data.splits[name]):,} rows")
        splits[name] = ex
    if "train" not in splits:  # e.g. only the test set is here: train / val / test all come from it
        have = sorted(splits)
        pool = Examples.concat(splits[s] for s in have)
        splits = {}
        splits["test"], rest = holdout(pool, test_fraction, seed, SALTS["test"])
        splits["val"], splits["train"] = holdout(rest, val_fraction, seed, SALTS["val"])
        what = "one file without splits" if have == ["all"] else f"only the {' + '.join(have)} split here"
        notes.append(f"{what} ({len(pool):,} rows): train / val / test are a seeded stratified hold-out of it "
                     f"(seed {seed}), not the official splits")
    else:
        for split, fraction in (("test", test_fraction), ("val", val_fraction)):
            if split not in splits:
                splits[split], splits["train"] = holdout(splits["train"], fraction, seed, SALTS[split])
                notes.append(f"no {split} split: {fraction:g} of train held out (stratified, seed {seed})")
    for split in ("train", "val", "test"):
        if len(splits[split]) == 0:
            rows = sum(map(len, data.splits.values()))
            raise NanoGPT2Error(f"{data.name}: the {split} split is empty ({rows:,} rows in all); use more data or "
                                f"other val_fraction / test_fraction")
    note = f"{data.name}: " + "; ".join(notes + [f"train {len(splits['train']):,} / val {len(splits['val']):,} / "
                                                  f"test {len(splits['test']):,}"])
    return splits, note


# ----------------------------------------------------------------------------------------------------
# Tokens and batches


@dataclass
class Encoded:
    """A split's token ids (each truncated to max_length, the head kept), lengths and labels."""

    ids: list            # n int32 arrays
    lengths: np.ndarray  # (n,) int64
    labels: np.ndarray   # (n,) int64
    truncated: int       # how many were cut

    def __len__(self) -> int:
        return len(self.ids)


def encode(ex: Examples, tokenizer, max_length: int) -> Encoded:
    ids = tokenizer.encode_batch(ex.texts)
    truncated = sum(len(t) > max_length for t in ids)
    ids = [np.asarray(t[:max_length], dtype=np.int32) for t in ids]
    return Encoded(ids, np.array([len(t) for t in ids], dtype=np.int64), ex.labels, truncated)


def pad_batch(enc: Encoded, rows, pad_id: int, device=None) -> dict:
    """Rows of a split, right-padded with pad_id to the longest: idx and attention_mask (B, T), labels (B,)."""
    rows = np.asarray(rows)
    T = int(enc.lengths[rows].max())
    idx = np.full((len(rows), T), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(rows), T), dtype=np.int64)  # (B, T)
    for i, r in enumerate(rows):
        idx[i, :enc.lengths[r]] = enc.ids[r]
        mask[i, :enc.lengths[r]] = 1
    batch = {"idx": torch.from_numpy(idx), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(enc.labels[rows].astype(np.int64))}  # (B,)
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


class BucketSampler:
    """Training batches of a split: each epoch a seeded permutation, cut into buckets of BUCKET_STEPS global
    batches, each bucket sorted by length (little padding) and its batches shuffled. Call k returns this
    process's rows of step k's global batch (world_size * batch_size rows), so a batch is a pure function of
    (seed, step, rank) and the union over ranks does not depend on the world size. An epoch is
    n // (world_size * batch_size) steps (the last rows of each permutation wait for another epoch)."""

    def __init__(self, enc: Encoded, batch_size: int, pad_id: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.enc, self.batch_size, self.pad_id = enc, batch_size, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.global_rows = batch_size * world_size
        self.steps_per_epoch = len(enc) // self.global_rows
        if self.steps_per_epoch == 0:
            raise NanoGPT2Error(f"the train split has {len(enc):,} examples, fewer than one step's batch "
                                f"({self.global_rows:,} rows); lower batch_size / gradient_accumulation_steps")
        self.step = 0
        self._epoch = (None, None)  # (epoch, its batches), the one in use

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, global_rows) row indices of an epoch's batches."""
        if self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.enc))[: self.steps_per_epoch * self.global_rows]
            chunk = self.global_rows * BUCKET_STEPS
            for start in range(0, len(perm), chunk):  # sort each bucket by length, longest first
                bucket = perm[start:start + chunk]
                perm[start:start + chunk] = bucket[np.argsort(-self.enc.lengths[bucket], kind="stable")]
            batches = perm.reshape(self.steps_per_epoch, self.global_rows)
            self._epoch = (epoch, batches[rng.permutation(self.steps_per_epoch)])
        return self._epoch[1]

    def rows(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.epoch_batches(epoch)[i, self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def next_batch(self, device=None) -> dict:
        batch = pad_batch(self.enc, self.rows(self.step), self.pad_id, device)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"kind": "bucket", "seed": self.seed, "step": self.step}

    def load_state_dict(self, d: dict):
        self.step = int(d["step"])


def eval_batches(enc: Encoded, batch_size: int, max_batches: Optional[int] = None, seed: int = 0) -> list:
    """Row indices of evaluation batches, longest first (the least padding; a memory problem shows at once); with
    `max_batches`, of a seeded random subset of max_batches * batch_size rows (not the shortest ones)."""
    rows = np.arange(len(enc))
    if max_batches and max_batches * batch_size < len(rows):
        rows = np.random.default_rng([seed, 7]).permutation(rows)[: max_batches * batch_size]
    rows = rows[np.argsort(-enc.lengths[rows], kind="stable")]
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


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
    """Training loss and validation loss against the step; validation accuracy and macro-F1 beside them."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    train, val = history["train"], history["val"]
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    left.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    left.set_title("loss")
    for key in ("accuracy", "macro_f1"):
        right.plot([r["step"] for r in val], [r[key] for r in val], "o-", label=f"val {key}")
    right.set_title("validation accuracy")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_history(metrics_jsonl: Path) -> dict:
    """The trainer's metrics.jsonl as {"train": [{step, epoch, loss, lr}], "val": [{step, loss, accuracy,
    macro_f1}]}."""
    recs = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    return {"train": [{k: r.get(k) for k in ("step", "epoch", "loss", "lr")} for r in recs if "loss" in r],
            "val": [{"step": r["step"], "loss": r["val_loss"], "accuracy": r.get("val_accuracy"),
                     "macro_f1": r.get("val_macro_f1")} for r in recs if "val_loss" in r]}


class Results:
    """One run's results folder, results_dir/<model>/<timestamp>/ (see the module docstring); rank 0 writes it."""

    def __init__(self, root):
        self.root = Path(root)

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


def model_name(init_from: str) -> str:
    """The results folder's <model>: a GPT-2 name as it is, a path by its last part."""
    p = Path(init_from)
    name = p.name if p.exists() else init_from
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


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
        from nanogpt2.trainer import dist_from_env

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
        self.results, self.baseline, self.test = None, None, None
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
                         modules_to_save=head, before_train=self.before_train, after_train=self.after_train)

    # --- what the trainer calls ------------------------------------------------------------------------

    def prepare_model(self, trainer, gpt):
        return GPTForSequenceClassification.from_gpt(gpt, len(self.names), pad_token_id=self.pad_id, labels=self.names,
                                                     classifier_dropout=self.cfg.classifier_dropout)

    def make_sampler(self, trainer):
        return BucketSampler(self.enc["train"], trainer.rows_per_step, self.pad_id, seed=self.cfg.seed,
                             rank=trainer.dist.rank, world_size=trainer.dist.world_size)

    def loss_fn(self, trainer, model, batch):
        """The micro-batch's mean cross-entropy (label-smoothed as set) and the number of labelled rows."""
        logits, _ = model(batch["idx"], batch["attention_mask"])  # (b, K)
        labels = batch["labels"]  # (b,)
        return classification_loss(logits, labels, self.cfg.label_smoothing), (labels != IGNORE_INDEX).sum()

    def evaluate(self, trainer, split: str, max_batches: Optional[int] = None) -> dict:
        """A split's metrics on every process's share of the batches (all-reduced)."""
        return evaluate_classifier(trainer.eval_model, self.enc[split], self.names, batch_size=self.cfg.batch_size,
                                   pad_id=self.pad_id, device=trainer.device, autocast=trainer.autocast,
                                   max_batches=max_batches, seed=self.cfg.seed, rank=trainer.dist.rank,
                                   world_size=trainer.dist.world_size, all_reduce=trainer._all_reduce)

    def eval_fn(self, trainer) -> dict:
        m = self.evaluate(trainer, "val", self.cfg.eval_iters or None)
        trainer.log(f"val accuracy {m['accuracy']:.4f} | macro-F1 {m['macro_f1']:.4f} ({m['examples']:,} examples)")
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}

    def before_train(self, trainer):
        """The results folder (a resumed run keeps its own), and the baseline: the model before any step."""
        # rank 0 makes the folder; a failure there stops every process (none waits at the baseline's all-reduce)
        self.results = trainer._together(trainer.dist.master, lambda: self._results_folder(trainer),
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
        record = trainer.out_dir / "classify_results.txt"  # where this run's results go, for a resumed run
        if trainer.step > 0 and record.exists() and Path(record.read_text().strip()).is_dir():
            return Results(record.read_text().strip())
        results = Results.new(self.cfg.results_dir, model_name(self.cfg.init_from))
        record.write_text(str(results.root.resolve()) + "\n")
        return results

    def test_at_end(self, trainer, event: str):
        """A trainer hook: the test evaluation of the final weights, at train_end of a finished run (every process
        scores its share)."""
        if event == "train_end" and trainer.step >= trainer.max_steps:
            self.test = self.evaluate(trainer, "test")
            trainer.log(f"test: accuracy {self.test['accuracy']:.4f} | macro-F1 {self.test['macro_f1']:.4f} | "
                        f"loss {self.test['loss']:.4f}")

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
               f"label_smoothing={cfg.label_smoothing:g}, max_length={self.max_length}; out_dir {cfg.out_dir}")
        (res.root / "summary.md").write_text(summary_markdown(
            f"{self.dataset}: {model_name(cfg.init_from)} fine-tuned for classification", self.note, run, baseline,
            self.test), encoding="utf-8")
        trainer.log(f"summary: {res.root / 'summary.md'}")

    def _save_weights(self, trainer, folder: Path) -> str:
        """The fine-tuned classifier: an HF GPT2ForSequenceClassification folder (LoRA merged), or with Houlsby
        adapters or a tuned prompt, which HF GPT-2 cannot hold, a checkpoint the loader reads (checkpoint_final.pt)."""
        from nanogpt2 import checkpoint as ckpt_io
        from nanogpt2.loader import model_spec

        model = trainer.raw_model
        what = next((w for a, w in (("adapter_config", "Houlsby adapters"), ("prompt_config", "a tuned prompt"))
                     if getattr(model, a, None) is not None), None)
        if what is None:
            return f"{model.save_pretrained(folder)} (HF GPT2ForSequenceClassification folder)"
        path = ckpt_io.save_checkpoint(folder / f"{ckpt_io.PREFIX}final{ckpt_io.SUFFIX}", {
            "model": model.state_dict(), "model_spec": model_spec(model), "model_config": {}, "step": trainer.step,
            "tokenizer": ckpt_io.tokenizer_info(self.tokenizer), "run_config": self.cfg.to_dict()})
        return f"{path} (nanogpt2 checkpoint: HF GPT-2 cannot hold {what})"


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
