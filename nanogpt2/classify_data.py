"""
The data of `--task classify` (nanogpt2/classify.py): labelled texts, their splits and their batches.

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
  of (seed, step, rank), so resume needs only the step (nanogpt2.samplers' rule).

    data = load_data("ag_news", data_path="../shared/data/ag_news")
    splits = make_splits(data, val_fraction=0.1, test_fraction=0.1, seed=0)   # {"train": Examples, ...}

Docs: docs/classification.md. Tests: python -m pytest -q tests/test_classify.py
"""

import contextlib
import csv
import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from nanogpt2.data import Remote, default_cache_root
from nanogpt2.errors import NanoGPT2Error

BUCKET_STEPS = 50       # batches sorted by length within buckets of this many steps' rows

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

    @staticmethod
    def real_tokens(batch: dict) -> torch.Tensor:
        """The non-pad tokens of a (micro-)batch, which the model runs on (its attention mask's ones): what the
        trainer's tokens/s and MFU count."""
        return batch["attention_mask"].sum()

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
