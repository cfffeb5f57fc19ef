"""
Datasets for language modelling: found by name or local path, downloaded once, tokenized once into
memmaps. (Serving them as batches is nanogpt2/samplers.py.)

    from nanogpt2.data import prepare_dataset
    ds = prepare_dataset("wikitext2")        # download once, tokenize once -> <cache>/data/wikitext2-gpt2/
    train = ds.tokens("train")               # a read-only memmap of token ids

What is here, in reading order:
- the registry (`DATASETS`): shakespeare (bundled, no download), shakespeare_char, wikitext2, wikitext103,
  tinystories, each with its URL(s), size/sha256 where known, its split files and what `data_path=` accepts;
  any local `.txt` file, folder of text files, or JSONL file with a "text" field works too;
- reading text: streamed UTF-8 decoding (bad bytes replaced and counted), documents, and cutting long texts
  at places where GPT-2's pre-tokenizer always has a boundary, so chunks encode exactly like the whole;
- sources: the bundled copy, a download (`nanogpt2.download`, the one downloader), or the user's copy;
- the cache: `<cache_root>/<dataset>-<tokenizer>/{train,val[,test]}.bin + meta.json`, built in a temporary
  folder and renamed into place only after `meta.json` is written, so a killed run leaves nothing trusted;

References: karpathy/nanoGPT `data/*/prepare.py` and `train.py:get_batch`; Merity et al. 2016 (WikiText);
Eldan & Li 2023 (TinyStories); HF "Perplexity of fixed-length models" (strided evaluation).

Run:
    python -m nanogpt2.data shakespeare          # prepare a dataset, print documents / tokens / bytes per token
    python -m nanogpt2.data --list               # the registry
    python -m nanogpt2.data ./my_corpus.jsonl --tokenizer gpt2
Docs: docs/data.md. Tests: python -m pytest -q tests/test_data.py
"""

import codecs
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

import numpy as np
import regex

from nanogpt2.checkpoint import tokenizer_info
from nanogpt2.download import FileLock, file_sha256
from nanogpt2.errors import DataWarning, NanoGPT2Error, write_error
from nanogpt2.progress import ProgressLine
from nanogpt2.tokenizer import ASSETS, ENDOFTEXT, CharTokenizer, get_tokenizer

__all__ = [
    "DATASETS", "DatasetSpec", "Remote", "register_dataset", "list_datasets", "DataWarning",
    "prepare_dataset", "PreparedDataset", "get_split_text", "own_splits", "split_name", "run_dataset",
    "default_cache_root", "main",
]

# --- constants ------------------------------------------------------------------------------------------------

CACHE_FORMAT = "nanogpt2-tokens"
CACHE_VERSION = 1
DEFAULT_VAL_FRACTION = 0.005
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
                  "all": "all"}
CHAR_DOC_SEPARATOR = "\n\n"      # the char tokenizer has no end-of-text token: documents are joined by a blank line
TEXT_SUFFIXES = (".txt", ".text", ".raw", ".md")
JSONL_SUFFIXES = (".jsonl",)

_READ_BLOCK = 1 << 22            # bytes read from a source file at a time
_PIECE_CHARS = 1 << 18           # long texts are cut into pieces of about this many characters ...
_BATCH_CHARS = 1 << 23           # ... and handed to encode_batch about this many characters at a time


def default_cache_root() -> Path:
    """`nanogpt2.download.cache_dir() / "data"`: $NANOGPT2_CACHE/data, else ~/.cache/nanogpt2/data."""
    from nanogpt2.download import cache_dir
    return cache_dir() / "data"


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Remote:
    """One file to download: mirrors tried in order (`urls`, then `hf` = ((repo_id, filename), ...) made into
    URLs with `download.hf_url` at download time), stored as `<cache_root>/downloads/<filename>`."""

    filename: str
    urls: tuple = ()
    hf: tuple = ()
    sha256: str | None = None
    size: int | None = None

    def all_urls(self) -> list:
        from nanogpt2.download import hf_url
        return list(self.urls) + [hf_url(repo, name) for repo, name in self.hf]


@dataclass(frozen=True)
class DatasetSpec:
    """How to get and read one dataset.

    layout: "archive" (one zip holding `archive_root/<split file>`, e.g. WikiText) or "files" (one file per
        split, e.g. TinyStories; a dataset with the single split "all" is split by `val_fraction`).
    splits: split name ("train", "val", "test", or "all") -> file name.
    fmt: how a split file is read: "text" (the whole file is one document) or "eot_text" (documents separated
        by "<|endoftext|>", as in the TinyStories files).
    remote: the download(s); for "archive" the zip, for "files" one Remote per split file (same filename).
    parquet: optional second source, used only when the download fails and pyarrow is installed:
        split -> tuple of Remote (HF parquet shards of rows of the raw text; wikitext only).
    bundled: file name in nanogpt2/assets: no download at all.
    tokenizer: a tokenizer this dataset always uses ("char" for shakespeare_char); None: the caller's.
    val_fraction: default held-out fraction when the dataset has no validation split of its own.
    crlf: turn "\\r\\n" into "\\n" while reading (copies of WikiText circulate with CRLF line ends).
    split_sha256: sha256 of a split's text (after crlf), to warn when a copy differs from the release.
    local: what `data_path=` accepts, for messages and docs.
    """

    name: str
    description: str
    layout: str
    splits: dict
    fmt: str = "text"
    remote: tuple = ()
    parquet: dict | None = None
    archive_root: str | None = None
    bundled: str | None = None
    tokenizer: str | None = None
    val_fraction: float | None = None
    crlf: bool = False
    split_sha256: dict = field(default_factory=dict)
    note: str = ""          # one notice line for the user (how the files were read), or ''
    local: str = ""
    license: str = ""
    homepage: str = ""


DATASETS: dict = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a dataset in the registry; returns it."""
    if spec.layout not in ("archive", "files"):
        raise ValueError(f"layout must be 'archive' or 'files', got {spec.layout!r}")
    if spec.fmt not in ("text", "eot_text"):
        raise ValueError(f"fmt must be 'text' or 'eot_text', got {spec.fmt!r}")
    DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list:
    """The registered dataset names (sorted)."""
    return sorted(DATASETS)


_SHAKESPEARE = register_dataset(DatasetSpec(
    name="shakespeare",
    description="Tiny Shakespeare, 1.1 MB (karpathy/char-rnn input.txt), bundled with the package: no download",
    layout="files", splits={"all": "input.txt"}, bundled="tinyshakespeare.txt", val_fraction=0.1,
    remote=(Remote("input.txt", urls=("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                                      "tinyshakespeare/input.txt",),
                   sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", size=1115394),),
    local="the input.txt file, or a folder holding it",
    license="public domain", homepage="https://github.com/karpathy/char-rnn"))

register_dataset(replace(
    _SHAKESPEARE, name="shakespeare_char", tokenizer="char",
    description="Tiny Shakespeare with the character tokenizer (65 symbols), as nanoGPT's shakespeare_char"))


def _wikitext(name, n, zip_sha, zip_size, parquet, split_sha, mirrors, note):
    root = f"wikitext-{n}-raw"
    return register_dataset(DatasetSpec(
        name=name, description=f"WikiText-{n} raw v1 ({note}); Wikipedia Good/Featured articles, own val/test splits",
        layout="archive", archive_root=root,
        splits={"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"},
        remote=(Remote(f"wikitext-{n}-raw-v1.zip", urls=(f"https://wikitext.smerity.com/wikitext-{n}-raw-v1.zip",),
                       hf=mirrors, sha256=zip_sha, size=zip_size),),
        parquet={split: tuple(Remote(f"{name}-parquet/{f}", hf=(("datasets/Salesforce/wikitext",
                                                                  f"wikitext-{n}-raw-v1/{f}"),), sha256=s, size=z)
                              for f, s, z in files) for split, files in parquet.items()},
        crlf=True, split_sha256=split_sha,
        local=f"the zip (wikitext-{n}-raw-v1.zip), or a folder holding wiki.train.raw, wiki.valid.raw and "
              f"wiki.test.raw (directly or in {root}/)",
        license="CC BY-SA 3.0",
        homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/"))


_wikitext(
    "wikitext2", 2, "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11", 4721645,
    {"train": [("train-00000-of-00001.parquet",
                "e83889baabc497075506f91975be5fac0d45c5290b6b20582c8cd1e853d0c9f7", 6357543)],
     "val": [("validation-00000-of-00001.parquet",
              "204929b7ff9d6184953f867dedb860e40aa69c078fc1e54b3baaa8fb28511c4c", None)],
     "test": [("test-00000-of-00001.parquet",
               "5f1bea067869d04849c0f975a2b29c4ff47d867f484f5010ea5e861eab246d91", None)]},
    {"val": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
     "test": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"},
    (("datasets/ggml-org/ci", "wikitext-2-raw-v1.zip"),), "4.7 MB zip, 2.4M GPT-2 train tokens")

_wikitext(
    "wikitext103", 103, "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794", 191984949,
    {"train": [("train-00000-of-00002.parquet",
                "74da360f23826045b3e6ac6375411fdb15f003030aa74f2596ed08b857cb9212", 156987808),
               ("train-00001-of-00002.parquet", None, 157088770)],
     "val": [("validation-00000-of-00001.parquet", None, None)],
     "test": [("test-00000-of-00001.parquet", None, None)]},
    {}, (), "192 MB zip, about 118M GPT-2 train tokens")

register_dataset(DatasetSpec(
    name="tinystories",
    description="TinyStories V2 (GPT-4 stories), 2.2 GB train + 22 MB valid, stories separated by <|endoftext|>",
    layout="files", fmt="eot_text",
    splits={"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"},
    remote=(Remote("TinyStoriesV2-GPT4-train.txt", hf=(("datasets/roneneldan/TinyStories",
                                                        "TinyStoriesV2-GPT4-train.txt"),)),
            Remote("TinyStoriesV2-GPT4-valid.txt", hf=(("datasets/roneneldan/TinyStories",
                                                        "TinyStoriesV2-GPT4-valid.txt"),), size=22502601)),
    local="a folder holding TinyStoriesV2-GPT4-train.txt and TinyStoriesV2-GPT4-valid.txt",
    license="CDLA-Sharing-1.0", homepage="https://huggingface.co/datasets/roneneldan/TinyStories"))


# ---------------------------------------------------------------------------------------------------------------
# Reading text: UTF-8 with counted replacements, documents, safe cut points
# ---------------------------------------------------------------------------------------------------------------

_BAD = threading.local()


def _count_and_replace(err: UnicodeDecodeError):
    """Codec error handler: like errors="replace" (one U+FFFD per bad sequence), counting the bad bytes."""
    _BAD.n = getattr(_BAD, "n", 0) + (err.end - err.start)
    return "\ufffd", err.end


codecs.register_error("nanogpt2.count_replace", _count_and_replace)


def _bad_bytes() -> int:
    return getattr(_BAD, "n", 0)


def _warn_bad(name: str, n: int):
    warnings.warn(f"{name}: {n:,} byte(s) were not valid UTF-8 and were replaced with U+FFFD; check the file's "
                  f"encoding (convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8`) if that is unexpected",
                  DataWarning, stacklevel=3)


def _decode_bytes(data: bytes, name: str) -> str:
    """Whole-file decoding (a leading BOM dropped); invalid bytes replaced and counted in a DataWarning."""
    before = _bad_bytes()
    text = data.decode("utf-8-sig", errors="nanogpt2.count_replace")
    if _bad_bytes() > before:
        _warn_bad(name, _bad_bytes() - before)
    return text


class _Stats:
    """Running totals while reading a split: source bytes read (for progress), invalid bytes replaced."""

    def __init__(self):
        self.read = 0
        self.replaced = 0


def _decoded_stream(f, name: str, stats: _Stats, crlf: bool = False):
    """Yield the text of a binary file object in blocks (streamed: files may be larger than memory)."""
    dec = codecs.getincrementaldecoder("utf-8-sig")(errors="nanogpt2.count_replace")
    before, held = _bad_bytes(), ""
    while True:
        block = f.read(_READ_BLOCK)
        final = not block
        text = dec.decode(block, final=final)
        stats.read += len(block)
        if crlf:
            text, held = held + text, ""
            if text.endswith("\r") and not final:  # its "\n" may be in the next block
                text, held = text[:-1], "\r"
            text = text.replace("\r\n", "\n")
        if text:
            yield text
        if final:
            break
    bad = _bad_bytes() - before
    if bad:
        stats.replaced += bad
        _warn_bad(name, bad)


# GPT-2's pre-tokenizer never puts a non-space character and the whitespace after it into one pre-token, and
# matching at a position depends only on the text to its right (no look-behind; look-ahead is one character).
# So cutting just before a space or newline that follows a non-space character gives chunks whose pre-tokens
# are exactly those of the whole text: chunks can be encoded separately (in parallel) with identical ids.
_CUT = regex.compile(r"\S(?=[ \n])")


def _safe_pieces(fragments, chunk_chars: int | None = None):
    """Re-cut a stream of text fragments into pieces of about chunk_chars (default _PIECE_CHARS) at safe places
    (see _CUT)."""
    chunk_chars = chunk_chars or _PIECE_CHARS
    buf, searched = "", 0
    for frag in fragments:
        buf = buf + frag if buf else frag
        pos = 0
        while len(buf) - pos > chunk_chars:
            m = _CUT.search(buf, max(pos + chunk_chars, searched))
            if m is None:
                searched = max(len(buf) - 1, 0)  # nothing to cut at yet: wait for more text
                break
            yield buf[pos:m.end()]
            pos = m.end()
        if pos:
            buf, searched = buf[pos:], max(searched - pos, 0)
    if buf:
        yield buf


@dataclass
class _Entry:
    """One input file of a split: how to open it (binary), its size in bytes, and how to read it."""

    name: str
    open: object          # () -> binary file object
    size: int
    fmt: str              # "text" | "eot_text" | "jsonl" | "parquet_wikitext"


def _text_documents(f, name, stats, crlf, fmt):
    """Documents of one open file: a document is an iterator of text fragments."""
    if fmt == "text":
        yield _decoded_stream(f, name, stats, crlf)
    elif fmt == "eot_text":  # documents separated by "<|endoftext|>" (TinyStories); each one stripped
        buf = ""
        for text in _decoded_stream(f, name, stats, crlf):
            pos, find_from = 0, max(len(buf) - len(ENDOFTEXT) + 1, 0)
            buf += text
            while (i := buf.find(ENDOFTEXT, find_from)) >= 0:
                doc = buf[pos:i].strip()
                if doc:
                    yield iter((doc,))
                pos = find_from = i + len(ENDOFTEXT)
            buf = buf[pos:]
        doc = buf.strip()
        if doc:
            yield iter((doc,))
    elif fmt == "jsonl":
        yield from _jsonl_documents(f, name, stats)
    else:
        raise AssertionError(fmt)


def _jsonl_documents(f, name, stats):
    """One document per JSONL line: the string in its "text" field. Blank lines are skipped."""
    before = _bad_bytes()
    for lineno, raw in enumerate(f, 1):
        stats.read += len(raw)
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8", errors="nanogpt2.count_replace").strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise NanoGPT2Error(f"{name}, line {lineno}: not valid JSON ({e.msg}). A JSONL dataset has one JSON "
                                f"object per line, e.g. {{\"text\": \"...\"}}") from None
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str):
            raise NanoGPT2Error(f"{name}, line {lineno}: no string field \"text\" (keys: "
                                f"{sorted(rec) if isinstance(rec, dict) else type(rec).__name__}). Each JSONL "
                                f"line must be an object with a \"text\" field")
        if text:
            yield iter((text,))
    bad = _bad_bytes() - before
    if bad:
        stats.replaced += bad
        _warn_bad(name, bad)


def _wikitext_row(row: str) -> str:
    """A row of HF's wikitext parquet -> the line of the raw file (blank lines are " \\n" there)."""
    if not row:
        return " \n"
    return row if row.endswith("\n") else row + "\n"


def _parquet_document(paths, stats):
    import pyarrow.parquet as pq
    for p in paths:
        pf = pq.ParquetFile(p)
        for batch in pf.iter_batches(columns=["text"], batch_size=1 << 16):
            yield "".join(_wikitext_row(r) for r in batch.column(0).to_pylist())
        stats.read += Path(p).stat().st_size


def _documents(entries, stats, crlf=False):
    """All documents of a split, in order."""
    for e in entries:
        if e.fmt == "parquet_wikitext":
            yield _parquet_document(e.open(), stats)
            continue
        with e.open() as f:
            yield from _text_documents(f, e.name, stats, crlf, e.fmt)


# ---------------------------------------------------------------------------------------------------------------
# Sources: the bundled copy, a download, or the user's copy
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Source:
    """Where a dataset's text comes from: the files that define it (fingerprinted) and each split's entries."""

    kind: str               # "bundled" | "download" | "local"
    label: str              # for messages
    files: list             # Paths whose bytes are the source
    splits: dict            # split -> list of _Entry ("all" when the dataset has no splits of its own)
    crlf: bool = False
    split_sha256: dict = field(default_factory=dict)
    note: str = ""          # one notice line for the user (how the files were read), or ''


def _file_entry(path: Path, fmt: str) -> _Entry:
    return _Entry(str(path), lambda p=path: open(p, "rb"), path.stat().st_size, fmt)


def _zip_entries(zpath: Path, spec: DatasetSpec, need) -> dict:
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as e:
        raise NanoGPT2Error(f"{zpath} is not a readable zip ({e}); delete it and run again to download it anew, "
                            f"or pass data_path= to {spec.local}") from None
    with zf:
        names = [i for i in zf.infolist() if not i.is_dir()]
    out, missing = {}, []
    for split, fname in spec.splits.items():
        cands = [i for i in names if i.filename == fname or i.filename.endswith("/" + fname)]
        cands.sort(key=lambda i: (i.filename != f"{spec.archive_root}/{fname}", len(i.filename)))
        if not cands:
            if split in need:
                missing.append(fname)
            continue
        info = cands[0]
        out[split] = [_Entry(f"{zpath}:{info.filename}",
                             lambda m=info.filename: _ZipMember(zpath, m), info.file_size, spec.fmt)]
    if missing:
        raise NanoGPT2Error(f"{zpath} has no {', '.join(missing)}: it is not a {spec.name} archive. "
                            f"data_path= takes {spec.local}")
    return out


class _ZipMember:
    """An open zip member that also closes its zip file."""

    def __init__(self, zpath, member):
        self.zf = zipfile.ZipFile(zpath)
        self.f = self.zf.open(member)

    def read(self, n=-1):
        return self.f.read(n)

    def __iter__(self):
        return iter(self.f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        self.zf.close()


def _local_registry_source(spec: DatasetSpec, path: Path, need) -> _Source:
    """The user's copy of a registry dataset (`data_path=`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NanoGPT2Error(f"data_path {path} does not exist; for {spec.name} it should be {spec.local}")
    if spec.layout == "archive":
        if path.is_file() and path.suffix == ".zip":
            return _Source("local", str(path), [path.resolve()], _zip_entries(path, spec, need), spec.crlf,
                           spec.split_sha256)
        if path.is_dir():
            zname = spec.remote[0].filename if spec.remote else None
            if zname and (path / zname).is_file() and not any((path / f).is_file() for f in spec.splits.values()):
                return _local_registry_source(spec, path / zname, need)
            found, missing = {}, []
            for split, fname in spec.splits.items():
                for cand in (path / fname, path / (spec.archive_root or "") / fname):
                    if cand.is_file():
                        found[split] = cand.resolve()
                        break
                else:
                    if split in need:
                        missing.append(fname)
            if missing:
                have = sorted(found.values())
                only = ", ".join(p.name for p in have) or "none of them"
                alone = (f" To train on one file on its own, pass it as --dataset instead (e.g. --dataset {have[0]}; "
                         f"its validation split is cut by --val_fraction)" if have else "")
                raise NanoGPT2Error(
                    f"{path} has no {', '.join(missing)} (found: {only}). --data_path for {spec.name} takes "
                    f"{spec.local}.{alone}")
            return _Source("local", str(path), list(found.values()),
                           {s: [_file_entry(p, spec.fmt)] for s, p in found.items()}, spec.crlf, spec.split_sha256)
        raise NanoGPT2Error(f"data_path {path} for {spec.name} should be {spec.local}")
    # layout "files"
    if path.is_file():
        if list(spec.splits) != ["all"]:
            raise NanoGPT2Error(f"data_path {path} is a file, but {spec.name} has several split files: pass "
                                f"{spec.local}")
        return _Source("local", str(path), [path.resolve()], {"all": [_file_entry(path.resolve(), spec.fmt)]},
                       spec.crlf, spec.split_sha256)
    found, missing = {}, []
    for split, fname in spec.splits.items():
        if (path / fname).is_file():
            found[split] = (path / fname).resolve()
        elif split in need:
            missing.append(fname)
    if missing:
        raise NanoGPT2Error(f"{path} has no {', '.join(missing)}; data_path= for {spec.name} takes {spec.local}")
    return _Source("local", str(path), list(found.values()),
                   {s: [_file_entry(p, spec.fmt)] for s, p in found.items()}, spec.crlf, spec.split_sha256)


def _have_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _download_remote(spec, remote: Remote, dl_dir: Path, quiet: bool, errors: list):
    """Try each mirror of `remote`; return the local Path, or None (the failures appended to `errors`)."""
    from nanogpt2.download import DownloadError, download
    dest = dl_dir / remote.filename
    for url in remote.all_urls():
        try:
            return download(url, dest, sha256=remote.sha256, size=remote.size, quiet=quiet,
                            desc=f"{spec.name} ({Path(remote.filename).name})")
        except DownloadError as e:
            errors.append((url, str(e)))
    return None


def _downloaded_source(spec: DatasetSpec, cache_root: Path, need, quiet: bool) -> _Source:
    """Download what the dataset needs (or find it already downloaded) under <cache_root>/downloads."""
    from nanogpt2.download import DownloadError
    dl_dir = cache_root / "downloads"
    errors = []
    if spec.layout == "archive":
        zpath = _download_remote(spec, spec.remote[0], dl_dir, quiet, errors)
        if zpath is not None:
            return _Source("download", str(zpath), [zpath], _zip_entries(zpath, spec, need), spec.crlf,
                           spec.split_sha256)
    else:
        by_name = {r.filename: r for r in spec.remote}
        files = {}
        for split in [s for s in spec.splits if s in need]:
            p = _download_remote(spec, by_name[spec.splits[split]], dl_dir, quiet, errors)
            if p is None:
                break
            files[split] = p
        else:
            return _Source("download", str(dl_dir), list(files.values()),
                           {s: [_file_entry(p, spec.fmt)] for s, p in files.items()}, spec.crlf, spec.split_sha256)
    parquet_note = ""
    if spec.parquet:
        if _have_pyarrow():
            files = {}
            for split in [s for s in spec.splits if s in need]:
                paths = [_download_remote(spec, r, dl_dir, quiet, errors) for r in spec.parquet[split]]
                if None in paths:
                    break
                files[split] = paths
            else:
                if not quiet:
                    print(f"{spec.name}: using the Hugging Face parquet copy", file=sys.stderr)
                return _Source("download", "HF parquet", [p for ps in files.values() for p in ps],
                               {s: [_Entry(f"{s} parquet", lambda ps=ps: ps, sum(p.stat().st_size for p in ps),
                                           "parquet_wikitext")] for s, ps in files.items()},
                               False, spec.split_sha256)
        else:
            parquet_note = ". With `pip install pyarrow`, the Hugging Face parquet copy is tried as well"
    tried = "; ".join(f"{url} ({_short_reason(msg, url)})" for url, msg in errors)
    raise DownloadError(
        f"could not download dataset '{spec.name}': tried {tried}. If you have a copy, pass it with --data_path PATH, "
        f"where PATH is {spec.local}{parquet_note}")


def _short_reason(msg: str, url: str) -> str:
    """The gist of a DownloadError message ("is unreachable (connection refused)"), for a list of mirrors."""
    short = re.sub(r"^could not download [^:]*: ", "", msg).replace(url, "").strip(" :")
    short = re.split(r"\. (?:Check|Run|Use|If|The file|Pass)|\.?\s+(?:pass a|use a) local", short)[0].strip(" .")
    return short or msg


def _registry_source(spec: DatasetSpec, data_path, cache_root: Path, need, quiet: bool) -> _Source:
    if data_path is not None:
        return _local_registry_source(spec, Path(data_path), need)
    if spec.bundled:
        p = ASSETS / spec.bundled
        if not p.is_file():
            raise NanoGPT2Error(f"the bundled corpus {p} is missing; reinstall nanogpt2, or pass data_path= "
                                f"({spec.local})")
        return _Source("bundled", f"bundled {p.name}", [p], {"all": [_file_entry(p, spec.fmt)]}, spec.crlf,
                       spec.split_sha256)
    return _downloaded_source(spec, cache_root, need, quiet)


# A split's word at the start of a word of the name: "wiki.valid.raw", "training.txt", "val.txt", "dev.jsonl";
# not "latest.txt", "interval.txt", "evaluation.md", "device.txt".
_NAME_SPLITS = (("train", re.compile(r"(?<![a-z])train")),
                ("val", re.compile(r"(?<![a-z])(valid|val(?![a-z])|dev(?![a-z]))")),
                ("test", re.compile(r"(?<![a-z])test")))


def _name_split(name: str):
    """The split a file's name says ("wiki.valid.raw" -> val, "my_train_set.txt" -> train), or None when it
    names none or more than one."""
    said = [split for split, pattern in _NAME_SPLITS if pattern.search(name.lower())]
    return said[0] if len(said) == 1 else None


def _split_by_name(path: Path):
    """A folder's own split files, by their names (*train*, *valid* / *val* / *dev*, *test*: WikiText's
    wiki.train.raw, wiki.valid.raw, wiki.test.raw; train.txt, val.txt): {split: [files]}, or None when no file
    names a split. Refused in one line: a folder whose named files lack a train or a val split, or that mixes
    named and unnamed files (which split would those be?)."""
    files = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
             and p.stem.lower() != "readme" and not p.name.startswith(".")]
    named = {p: _name_split(p.name) for p in files}
    if not any(named.values()):
        return None
    found = {}
    for p, split in named.items():
        if split is not None:
            found.setdefault(split, []).append(p)
    listing = ", ".join(f"{p.name} ({split or 'no split'})" for p, split in named.items())
    unnamed = [p.name for p, split in named.items() if split is None]
    if unnamed:
        raise NanoGPT2Error(f"{path} mixes split files with others ({listing}): move {', '.join(unnamed)} out, or "
                            f"name it *train*, *valid* or *test*")
    missing = [s for s in ("train", "val") if s not in found]
    if missing:
        raise NanoGPT2Error(
            f"{path} has {listing} but no {' or '.join(f'*{m}*' for m in missing)} file: add "
            f"{' and '.join({'train': 'a train file (e.g. wiki.train.raw)', 'val': 'a validation file (e.g. wiki.valid.raw)'}[m] for m in missing)}, "
            f"or pass one file as --dataset (its validation split is cut by --val_fraction)")
    return found


def _local_fmt(p: Path) -> str:
    return "jsonl" if p.suffix.lower() in JSONL_SUFFIXES else "text"


def _local_source(path: Path) -> _Source:
    """Any local text: a file (.txt and other text, or .jsonl with a "text" field) or a folder of them."""
    path = path.expanduser().resolve()
    if path.is_file():
        if path.suffix.lower() in (".zip", ".gz", ".bz2", ".xz", ".tar", ".parquet", ".arrow", ".bin", ".npy",
                                   ".json"):
            raise NanoGPT2Error(f"{path}: {path.suffix} files are not read directly. Pass a text file, a folder of "
                                f"text files, or a JSONL file with one {{\"text\": ...}} object per line")
        return _Source("local", str(path), [path], {"all": [_file_entry(path, _local_fmt(path))]})
    if not path.is_dir():
        raise NanoGPT2Error(f"{path} is not a file or folder")
    own = _split_by_name(path)
    if own:
        return _Source("local", str(path), [p for ps in own.values() for p in ps],
                       {s: [_file_entry(p, _local_fmt(p)) for p in ps] for s, ps in own.items()})
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
                   and p.stem.lower() != "readme"  # the folder's description, not its corpus
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise NanoGPT2Error(f"the folder {path} holds no text files ({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)}); "
                            f"put the corpus there as .txt files (one document each) or .jsonl")
    note = (f"notice: {path}: its {len(files)} files name no split (*train*, *valid*, *test*): used as one corpus, "
            f"the validation split cut by val_fraction" if len(files) > 1 else "")
    return _Source("local", str(path), files, {"all": [_file_entry(p, _local_fmt(p)) for p in files]}, note=note)


def _resolve(name_or_path):
    """(spec or None, local Path or None, cache key prefix) for a dataset name or a local path."""
    key = str(name_or_path)
    if key in DATASETS:
        return DATASETS[key], None, key
    p = Path(key).expanduser()
    if p.exists():
        p = p.resolve()
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem if p.is_file() else p.name)[:40] or "data"
        return None, p, f"local-{stem}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"
    looks_like_path = any(c in key for c in "/\\") or key.lower().endswith(TEXT_SUFFIXES + JSONL_SUFFIXES)
    if looks_like_path:
        raise NanoGPT2Error(f"dataset file or folder {key!r} does not exist (looked in {Path.cwd()}). Check the "
                            f"path, or use a known dataset: {', '.join(list_datasets())}")
    raise NanoGPT2Error(f"unknown dataset {key!r}. Known datasets: {', '.join(list_datasets())}; or pass the path "
                        f"of a .txt file, a folder of text files, or a .jsonl file with a \"text\" field")


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints and the lock
# ---------------------------------------------------------------------------------------------------------------

def _fingerprint(files, previous=None):
    """(sha256 of the source, per-file records). A file whose path, size and mtime match a record of
    `previous` keeps that record's sha256 instead of being hashed again (multi-GB sources stay fast)."""
    prev = {(r["path"], r["size"], r["mtime_ns"]): r["sha256"] for r in (previous or [])}
    records = []
    for p in files:
        p = Path(p)
        st = p.stat()
        sha = prev.get((str(p), st.st_size, st.st_mtime_ns)) or file_sha256(p)
        records.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})
    if len(records) == 1:
        return records[0]["sha256"], records
    h = hashlib.sha256()
    base = os.path.commonpath([r["path"] for r in records]) if records else ""
    for r in records:
        h.update(f"{os.path.relpath(r['path'], base)}\0{r['sha256']}\n".encode())
    return h.hexdigest(), records


# ---------------------------------------------------------------------------------------------------------------
# The prepared dataset
# ---------------------------------------------------------------------------------------------------------------

def split_name(split: str) -> str:
    """The canonical name of a split: "train", "val" (also valid, validation), "test" or "all"."""
    s = _SPLIT_ALIASES.get(str(split).lower())
    if s is None:
        raise NanoGPT2Error(f"unknown split {split!r}; use 'train', 'val' or 'test'")
    return s


class PreparedDataset:
    """A tokenized dataset in its cache folder: `dir`, `meta` (the meta.json dict), `tokens(split)`,
    `tokenizer()`. Made by `prepare_dataset`."""

    def __init__(self, directory, meta: dict):
        self.dir = Path(directory)
        self.meta = meta
        self.name = meta["dataset"]
        self.splits = list(meta["splits"])
        self.dtype = np.dtype(meta["dtype"])
        self.built = False  # True when this prepare_dataset call tokenized (False: the cache was reused)

    def tokens(self, split: str) -> np.ndarray:
        """The token ids of a split as a read-only np.memmap (uint16 or uint32); "train", "val" or "test"."""
        s = split_name(split)
        if s not in self.meta["splits"]:
            raise NanoGPT2Error(f"dataset {self.name} has no {s!r} split; it has {', '.join(self.splits)}")
        info = self.meta["splits"][s]
        if info["tokens"] == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.dir / info["file"], dtype=self.dtype, mode="r", shape=(info["tokens"],))

    def tokenizer(self, backend: str = "auto"):
        """The tokenizer the tokens were made with (for "char": its vocabulary, saved beside the tokens)."""
        t = self.meta["tokenizer"]
        if t.get("vocab_file"):
            return CharTokenizer.load(self.dir / t["vocab_file"])
        return get_tokenizer(t["name"], backend=backend)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    def __repr__(self):
        toks = ", ".join(f"{s}={v['tokens']:,}" for s, v in self.meta["splits"].items())
        return f"PreparedDataset({self.name!r}, tokenizer={self.meta['tokenizer']['name']!r}, {toks}, dir={self.dir})"


def _read_meta(d: Path):
    try:
        meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _bins_ok(d: Path, meta: dict) -> bool:
    """Every split file is there with exactly the recorded number of tokens."""
    try:
        item = np.dtype(meta["dtype"]).itemsize
        return all((d / v["file"]).stat().st_size == v["tokens"] * item for v in meta["splits"].values())
    except (OSError, KeyError, TypeError):
        return False


def _ids_reason(d: Path, meta: dict):
    """Why the token files cannot be used (None: every id is in [0, vocab_size)). A damaged or foreign
    train.bin of the right size would otherwise reach the embedding as an IndexError in the first step."""
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        return f"meta.json has no valid vocab_size ({vocab!r})"
    dtype, chunk = np.dtype(meta["dtype"]), 1 << 26
    for split, v in meta["splits"].items():
        if v["tokens"] == 0:
            continue
        ids = np.memmap(d / v["file"], dtype=dtype, mode="r", shape=(v["tokens"],))
        for i in range(0, len(ids), chunk):  # the largest id, a block at a time (unsigned: none is negative)
            top = int(ids[i:i + chunk].max())
            if top >= vocab:
                return f"{v['file']} holds token id {top}, outside the vocabulary of {vocab} (a damaged cache)"
    return None


def _cache_reason(d, meta, tok_name, tok_checksum, val_fraction):
    """Why the cache in `d` cannot be used (None: it can, source permitting)."""
    if meta is None:
        return "no cache yet"
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION or not meta.get("complete"):
        return "an older or incomplete cache"
    if meta["tokenizer"]["name"] != tok_name:
        return "a different tokenizer"
    if tok_checksum is not None and meta["tokenizer"]["checksum"] != tok_checksum:
        return "the tokenizer's vocabulary changed"
    if meta.get("split_method") == "val_fraction" and meta.get("val_fraction") != val_fraction:
        return f"val_fraction changed ({meta.get('val_fraction')} -> {val_fraction})"
    if not _bins_ok(d, meta):
        return "token files are missing or truncated"
    return _ids_reason(d, meta)


def _current_files(spec, data_path, local_path):
    """The source files a rebuild would read now, in order, found without downloading (None: a download)."""
    if spec is None:
        return _local_source(local_path).files
    if data_path is not None:
        return _local_registry_source(spec, Path(data_path), set()).files
    if spec.bundled:
        return [ASSETS / spec.bundled]
    return None


def _source_unchanged(meta, spec, data_path, local_path):
    """Is the recorded source still the source? True / False, or None when only a download could tell."""
    src = meta["source"]
    try:
        files = _current_files(spec, data_path, local_path)
    except NanoGPT2Error:
        return False
    if files is None:  # a registry download
        if src["kind"] != "download":
            return None  # the cache was made from the user's copy; the registry's file is needed to compare
        known = spec.remote[0].sha256 if spec.layout == "archive" and spec.remote else None
        if known and src["label"].endswith(".zip") and src["sha256"] != known:
            return False  # the registry now expects another file
        files = [Path(r["path"]) for r in src["files"]]
        if not all(p.is_file() for p in files):
            return True  # the download was deleted to save space; the cache came from the registry's file
    if [str(p) for p in files] != [r["path"] for r in src["files"]]:
        return False
    return _fingerprint(files, src["files"])[0] == src["sha256"]


def prepare_dataset(name_or_path="shakespeare", tokenizer=None, data_path=None, cache_root=None,
                    val_fraction=None, quiet=False, *, backend="auto", num_workers=None,
                    force=False) -> PreparedDataset:
    """Find, download (once), tokenize (once) and return a dataset.

    name_or_path: a registered name (`list_datasets()`), or a local .txt file, folder of text files, or .jsonl
        file (a "text" field per line). A folder with train.* and val.*/valid.* (and test.*) files uses them as
        its splits; otherwise its files (sorted) are the documents of one stream.
    tokenizer: "gpt2", "char" (vocabulary built from the data), or a tokenizer object; None: the dataset's own
        ("char" for shakespeare_char), else "gpt2".
    data_path: your copy of a registered dataset (no download); what it accepts is in DATASETS[name].local.
    cache_root: default `download.cache_dir() / "data"` ($NANOGPT2_CACHE/data or ~/.cache/nanogpt2/data).
    val_fraction: held-out fraction (the last tokens) for datasets without a validation split of their own;
        None: the dataset's default (0.1 for Tiny Shakespeare as in nanoGPT, else 0.005).
    backend / num_workers: the GPT-2 tokenizer backend ("auto", "tiktoken", "python") and encode_batch workers
        (None: one per core). force: rebuild even if the cache is valid.
    """
    foreign = _token_folder(name_or_path, tokenizer, data_path)
    if foreign is not None:
        return foreign
    spec, local_path, key = _resolve(name_or_path)
    if data_path is not None and spec is None:
        raise NanoGPT2Error(f"data_path= is for registered datasets ({', '.join(list_datasets())}); "
                            f"{name_or_path} is already a local path")
    tok_obj, tok_name = _resolve_tokenizer(tokenizer, spec, backend)
    if val_fraction is None:
        val_fraction = spec.val_fraction if spec is not None and spec.val_fraction is not None else DEFAULT_VAL_FRACTION
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise NanoGPT2Error(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    val_fraction = float(val_fraction)
    cache_root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    d = cache_root / f"{key}-{re.sub(r'[^A-Za-z0-9_-]+', '_', tok_name)}"
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NanoGPT2Error(f"cannot create the data cache {cache_root}: {e}. Set NANOGPT2_CACHE (or cache_root=) "
                            f"to a writable folder") from None
    with FileLock(cache_root / f".{d.name}.lock"):
        for stale in cache_root.glob(f".tmp-{d.name}.*"):  # left by a killed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        meta = _read_meta(d)
        checksum = tok_obj.checksum if tok_obj is not None else None
        why = "forced" if force else _cache_reason(d, meta, tok_name, checksum, val_fraction)
        if why is None:
            same = _source_unchanged(meta, spec, data_path, local_path)
            if same:
                return PreparedDataset(d, meta)
            why = "the source changed" if same is False else "the cache was made from another copy"
        src_files = (meta or {}).get("source", {}).get("files")
        if spec is not None:
            source = _registry_source(spec, data_path, cache_root, list(spec.splits), quiet)
        else:
            source = _local_source(local_path)
            if not quiet and source.note:
                print(source.note, file=sys.stderr)
        if not quiet and meta is not None:
            print(f"{d.name}: rebuilding the token cache ({why})", file=sys.stderr)
        name = spec.name if spec is not None else str(local_path)
        return _build(d, name, source, tok_obj, tok_name, val_fraction, quiet, num_workers, src_files)


def _token_folder(name_or_path, tokenizer, data_path):
    """A folder of token ids another tool wrote, used as it is (nanoGPT's train.bin + val.bin, llm.c's shards:
    nanogpt2/token_files.py), else None. Its ids fix the tokenizer: another one asked for is refused."""
    from nanogpt2 import llmc, nanogpt_format

    p = Path(str(name_or_path)).expanduser()
    if str(name_or_path) in DATASETS or not p.is_dir():
        return None
    ds = nanogpt_format.open_data_folder(p) or llmc.open_shard_folder(p)
    if ds is None:
        return None
    asked = tokenizer if tokenizer is None or isinstance(tokenizer, str) else getattr(tokenizer, "name", None)
    if asked not in (None, ds.tokenizer().name) or data_path is not None:
        why = f"tokenizer={asked}" if data_path is None else f"data_path={data_path}"
        raise NanoGPT2Error(f"{p} holds token ids already ({ds.format}, {ds.tokenizer().name} tokenizer): {why} "
                            f"cannot apply; drop it (tokenizer=auto)")
    return ds


def _resolve_tokenizer(tokenizer, spec, backend):
    """(tokenizer object, or None for a char vocabulary still to be built from the data; tokenizer name)."""
    pinned = spec.tokenizer if spec is not None else None
    if pinned is not None:
        asked = tokenizer if tokenizer is None or isinstance(tokenizer, str) else getattr(tokenizer, "name", None)
        if asked not in (None, pinned):
            warnings.warn(f"dataset {spec.name} always uses the {pinned!r} tokenizer; ignoring tokenizer={asked!r} "
                          f"(use dataset 'shakespeare' for other tokenizers)", DataWarning, stacklevel=3)
            tokenizer = pinned
        elif tokenizer is None:
            tokenizer = pinned
    if tokenizer is None:
        tokenizer = "gpt2"
    if isinstance(tokenizer, str):
        if tokenizer == "char":
            return None, "char"
        return get_tokenizer(tokenizer, backend=backend), tokenizer
    for attr in ("name", "n_vocab", "checksum", "encode_batch"):
        if not hasattr(tokenizer, attr):
            raise NanoGPT2Error(f"tokenizer must be 'gpt2', 'char' or a tokenizer object (with {attr}); got "
                                f"{type(tokenizer).__name__}")
    return tokenizer, tokenizer.name


# ---------------------------------------------------------------------------------------------------------------
# Building the cache: tokenize into a temporary folder, write meta.json last, rename into place
# ---------------------------------------------------------------------------------------------------------------

def _tokenizing_progress(desc: str, total: int, quiet: bool):
    """progress(done_bytes, tokens, final=False) for one split: the shared progress line (nanogpt2.progress),
    `tokenizing <desc>: 5.0 MB / 11.0 MB (45%) 2.4 MB/s, 1,090,233 tokens`."""
    line = ProgressLine(f"tokenizing {desc}", quiet)
    return lambda done, tokens, final=False: line.update(done, total, final, note=f"{tokens:,} tokens")


def _build_char_vocab(source: _Source):
    """The character tokenizer for a source: every character of every split (plus the document separator)."""
    chars, n_docs, stats = set(), 0, _Stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # warned once, when the text is encoded
        for entries in source.splits.values():
            for doc in _documents(entries, stats, source.crlf):
                n_docs += 1
                for frag in doc:
                    chars.update(frag)
    if n_docs > 1:
        chars.update(CHAR_DOC_SEPARATOR)
    if not chars:
        raise NanoGPT2Error(f"{source.label} holds no text (it is empty); nothing to tokenize")
    return CharTokenizer(sorted(chars))


def _encode_split(entries, tok, out_path, dtype, sep_ids, progress, num_workers, crlf, want_sha):
    """Encode a split's documents into `out_path` (raw ids), documents joined by `sep_ids`; `progress(bytes
    read, tokens)` after each batch. Returns dict(tokens, documents, text_bytes, replaced_bytes, text_sha256)."""
    stats = _Stats()
    n_tokens = n_docs = text_bytes = 0
    hasher = hashlib.sha256() if want_sha else None
    batch, batch_chars = [], 0

    with open(out_path, "wb") as f:
        def flush():
            nonlocal n_tokens, n_docs, batch, batch_chars
            if not batch:
                return
            ids_lists = tok.encode_batch([p for p, _ in batch], num_workers=num_workers)
            parts = []
            for (_, new_doc), ids in zip(batch, ids_lists):
                if new_doc:
                    if n_docs:
                        if sep_ids is None:
                            raise NanoGPT2Error("the character vocabulary has no '\\n' to join documents with; "
                                                "build it with the corpus (tokenizer='char')")
                        parts.append(sep_ids)
                    n_docs += 1
                parts.append(ids)
            count = sum(map(len, parts))
            arr = np.fromiter(chain.from_iterable(parts), dtype=np.int64, count=count)
            f.write(arr.astype(dtype).tobytes())
            n_tokens += count
            batch, batch_chars = [], 0
            progress(stats.read, n_tokens)

        for doc in _documents(entries, stats, crlf):
            new_doc = True
            for piece in _safe_pieces(doc):
                b = piece.encode("utf-8", errors="surrogatepass")
                text_bytes += len(b)
                if hasher is not None:
                    hasher.update(b)
                batch.append((piece, new_doc))
                new_doc = False
                batch_chars += len(piece)
                if batch_chars >= _BATCH_CHARS:
                    flush()
        flush()
        f.flush()
        os.fsync(f.fileno())
    return {"tokens": n_tokens, "documents": n_docs, "text_bytes": text_bytes, "replaced_bytes": stats.replaced,
            "text_sha256": hasher.hexdigest() if hasher is not None else None, "source_bytes": stats.read}


def _build(d: Path, name, source: _Source, tok, tok_name, val_fraction, quiet, num_workers, previous_files):
    t0 = time.perf_counter()
    sha, records = _fingerprint(source.files, previous_files)
    if tok is None:  # "char": the vocabulary is the data's characters
        tok = _build_char_vocab(source)
    dtype = np.dtype(np.uint16 if tok.n_vocab < 65536 else np.uint32)
    eot = getattr(tok, "eot_token", None)
    sep_ids, separator = _document_separator(tok)
    tmp = d.parent / f".tmp-{d.name}.{os.getpid()}-{time.time_ns() % 10**9}"
    tmp.mkdir(parents=True)
    try:
        splits, total_src = _encode_splits(tmp, name, source, tok, dtype, sep_ids, quiet, num_workers)
        n_total = sum(v["tokens"] for v in splits.values())
        n_docs = sum(v["documents"] for v in splits.values())
        if n_total == 0:
            raise NanoGPT2Error(f"{source.label} holds no text (it is empty); nothing to train on. Check the path "
                                f"or the file's contents")
        if "all" in splits:
            split_method = "val_fraction"
            splits = _split_by_fraction(tmp, splits["all"], val_fraction, tok, dtype, name)
        else:
            split_method = "dataset"
            if "val" not in splits:
                raise NanoGPT2Error(f"{name} has no validation split")
        for split, info in splits.items():
            info["file"] = f"{split}.bin"
            info.pop("source_bytes", None)
        seconds = time.perf_counter() - t0
        meta = {
            "format": CACHE_FORMAT, "version": CACHE_VERSION,
            "dataset": name,
            "source": {"kind": source.kind, "label": source.label, "sha256": sha, "files": records},
            "tokenizer": {"name": tok_name, "checksum": tok.checksum, "n_vocab": tok.n_vocab,
                          "eot_token": eot, "backend": getattr(tok, "backend", None),
                          "vocab_file": "char_vocab.json" if tok_name == "char" else None},
            "vocab_size": tok.n_vocab, "dtype": dtype.name,
            "document_separator": separator,
            "split_method": split_method, "val_fraction": val_fraction if split_method == "val_fraction" else None,
            "splits": splits,
            "tokens": n_total,
            "documents": n_docs,
            "text_bytes": sum(v["text_bytes"] for v in splits.values()),
            "replaced_bytes": sum(v.get("replaced_bytes", 0) for v in splits.values()),
            "tokenize_seconds": round(seconds, 3),
            "mb_per_s": round(total_src / 1e6 / max(seconds, 1e-9), 2),
            "num_workers": num_workers,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": True,
        }
        if tok_name == "char":
            tok.save(tmp / "char_vocab.json")
        _publish(tmp, d, meta)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(e, f"the token cache {d}", d.parent,
                          fix=f"free some space or set NANOGPT2_CACHE to a larger disk"
                              f"{'; the previous cache is untouched' if d.exists() else ''}")
        if err is not None:
            raise err from None
        raise
    if not quiet:
        print(f"{Path(name).name}: {n_total:,} tokens in {d} ({meta['tokenize_seconds']:.1f} s, "
              f"{meta['mb_per_s']:.1f} MB/s)", file=sys.stderr)
    ds = PreparedDataset(d, meta)
    ds.built = True
    return ds


def _document_separator(tok) -> tuple:
    """(ids, text) put between documents: <|endoftext|> for a BPE vocabulary, else CHAR_DOC_SEPARATOR (ids None
    for a character vocabulary without it: fine as long as there is one document)."""
    eot = getattr(tok, "eot_token", None)
    if eot is not None:
        return [eot], ENDOFTEXT
    try:
        return list(tok.encode_ordinary(CHAR_DOC_SEPARATOR)), CHAR_DOC_SEPARATOR
    except NanoGPT2Error:
        return None, CHAR_DOC_SEPARATOR


def _encode_splits(tmp: Path, name, source: _Source, tok, dtype, sep_ids, quiet, num_workers) -> tuple:
    """Tokenize each split of the source into tmp/<split>.bin: ({split: info}, source bytes read). A split whose
    text differs from the official release's checksum is warned about."""
    splits, total_src = {}, 0
    for split, entries in source.splits.items():
        size = sum(e.size for e in entries)
        progress = _tokenizing_progress(Path(name).name + ("" if split == "all" else f" {split}"), size, quiet)
        want_sha = source.split_sha256.get(split)
        info = _encode_split(entries, tok, tmp / f"{split}.bin", dtype, sep_ids, progress, num_workers,
                             source.crlf, want_sha)
        progress(info["source_bytes"], info["tokens"], final=True)
        total_src += info["source_bytes"]
        if want_sha and info["text_sha256"] != want_sha:
            warnings.warn(f"the {split} text of {name} from {source.label} differs from the official release "
                          f"(sha256 {info['text_sha256'][:12]}..., expected {want_sha[:12]}...): results will "
                          f"not be comparable with published numbers", DataWarning, stacklevel=4)
        splits[split] = info
    return splits, total_src


def _publish(tmp: Path, d: Path, meta: dict) -> None:
    """Write meta.json into the finished tmp folder, then swap it in for d (the old cache removed after)."""
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:  # written last: its presence means the rest is complete
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    old = None
    if d.exists():
        old = d.parent / f".tmp-{d.name}.old-{os.getpid()}"
        os.replace(d, old)
    os.replace(tmp, d)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _split_by_fraction(tmp: Path, info: dict, val_fraction: float, tok, dtype, name) -> dict:
    """Cut all.bin into train.bin (first tokens) and val.bin (the last val_fraction of the tokens)."""
    n = info["tokens"]
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        if n < 2:
            raise NanoGPT2Error(f"{name} has only {n} token(s): too little text to split into train and val. "
                                f"Use more data")
        n_val = min(max(n_val, 1), n - 1)
    n_train = n - n_val
    item = dtype.itemsize
    all_path = tmp / "all.bin"
    with open(all_path, "rb") as src, open(tmp / "val.bin", "wb") as dst:
        src.seek(n_train * item)
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.truncate(all_path, n_train * item)
    os.replace(all_path, tmp / "train.bin")
    val_ids = np.fromfile(tmp / "val.bin", dtype=dtype)
    eot = getattr(tok, "eot_token", None)
    val_bytes = len(tok.decode_bytes(val_ids[val_ids != eot].tolist() if eot is not None else val_ids.tolist()))
    return {
        "train": {"tokens": n_train, "documents": None, "text_bytes": info["text_bytes"] - val_bytes,
                  "replaced_bytes": info["replaced_bytes"]},
        "val": {"tokens": n_val, "documents": None, "text_bytes": val_bytes, "replaced_bytes": 0},
    }


# ---------------------------------------------------------------------------------------------------------------
# Raw text of a split
# ---------------------------------------------------------------------------------------------------------------

def run_dataset(cfg, quiet: bool = False) -> PreparedDataset:
    """The dataset of a run's settings (a RunConfig's dataset, tokenizer, data_path, val_fraction), prepared: the
    tokens train.py trains and validates on (`python -m nanogpt2.evaluate --init_from RUN` scores them too)."""
    return prepare_dataset(cfg.dataset, tokenizer=None if cfg.tokenizer == "auto" else cfg.tokenizer,
                           data_path=cfg.data_path or None, val_fraction=cfg.val_fraction, quiet=quiet)


def prepare_run_data(cfg, dist, tokenizer=None):
    """A training run's data: (dataset, tokenizer, train tokens, val tokens) for a RunConfig's dataset,
    data_path, tokenizer and val_fraction. Under torchrun the first process of each machine prepares it
    (downloads, tokenizes, writes the cache) while the others wait, stopping with it when it fails
    (`dist.together`), then read the cache. A `tokenizer` given (the model's) must be the dataset's; both
    splits must hold at least one window of block_size + 1 tokens."""
    ds = dist.together(dist.local_master, lambda: run_dataset(cfg, quiet=not dist.master),
                       "preparing the dataset failed on another process (see its error)")
    if not dist.local_master:
        ds = run_dataset(cfg, quiet=True)
    if tokenizer is None:
        tokenizer = ds.tokenizer()
    elif tokenizer_info(tokenizer) != tokenizer_info(ds.tokenizer()):
        raise NanoGPT2Error(f"{cfg.dataset} is tokenized with {ds.tokenizer().name!r}, but this run's model uses "
                            f"{tokenizer.name!r}; set tokenizer={tokenizer.name} (or another dataset)")
    train, val = ds.tokens("train"), ds.tokens("val")
    T = cfg.block_size
    for split, toks in (("train", train), ("val", val)):
        if len(toks) < T + 1:
            raise NanoGPT2Error(
                f"the {split} split of {cfg.dataset} has {len(toks)} tokens, fewer than block_size + 1 = {T + 1}; "
                f"lower block_size or use more data")
    return ds, tokenizer, train, val


def own_splits(name_or_path) -> tuple:
    """The splits a dataset's raw text has of its own: ("train", "val", "test") for WikiText, ("all",) for a text
    without split files (Tiny Shakespeare, most local files), whose val split is the last val_fraction of its
    tokens (`prepare_dataset(...).tokens("val")`). Nothing is downloaded."""
    spec, local_path, _ = _resolve(name_or_path)
    return tuple(spec.splits) if spec is not None else tuple(_local_source(local_path).splits)


def get_split_text(name_or_path, split, data_path=None, cache_root=None, quiet=False) -> str:
    """The raw text of one split, e.g. get_split_text("wikitext2", "test") for published-comparable
    perplexity. Documents are joined with "\\n\\n". Datasets without their own splits (shakespeare, local
    files) have only "all" (their val split is a cut of the tokens: use prepare_dataset(...).tokens("val"))."""
    spec, local_path, _ = _resolve(name_or_path)
    s = split_name(split)
    if spec is not None:
        if s not in spec.splits:
            have = ", ".join(sorted(spec.splits))
            raise NanoGPT2Error(
                f"{spec.name} has no {s!r} split of its own (it has: {have})" +
                (f"; its val split is the last val_fraction of its tokens: use "
                 f"prepare_dataset('{spec.name}').tokens('val'), or get_split_text('{spec.name}', 'all')"
                 if "all" in spec.splits else ""))
        cache_root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
        source = _registry_source(spec, data_path, cache_root, {s}, quiet)
    else:
        source = _local_source(local_path)
        if s not in source.splits:
            raise NanoGPT2Error(f"{local_path} has no {s!r} split; it has {', '.join(source.splits)}")
    docs = []
    stats = _Stats()
    for doc in _documents(source.splits[s], stats, source.crlf):
        docs.append("".join(doc))
    return "\n\n".join(docs)


# ---------------------------------------------------------------------------------------------------------------
# Command line: python -m nanogpt2.data NAME_OR_PATH
# ---------------------------------------------------------------------------------------------------------------

def format_stats(ds: PreparedDataset, built: bool) -> str:
    m = ds.meta
    t = m["tokenizer"]
    rows = [f"dataset    {m['dataset']}",
            f"source     {m['source']['label']} (sha256 {m['source']['sha256'][:16]}...)",
            f"cache      {ds.dir}",
            f"tokenizer  {t['name']} (vocab {t['n_vocab']:,}, stored as {m['dtype']})",
            f"documents  {m['documents']:,}" + (" (joined by " + repr(m["document_separator"]) + ")"),
            f"split      {'documents':>10} {'tokens':>14} {'MB of text':>11} {'bytes/token':>12}"]
    for s, v in m["splits"].items():
        docs = f"{v['documents']:,}" if v.get("documents") is not None else "-"
        bpt = f"{v['text_bytes'] / v['tokens']:.2f}" if v["tokens"] else "-"
        rows.append(f"{s:<10} {docs:>10} {v['tokens']:>14,} {v['text_bytes'] / 1e6:>11.2f} {bpt:>12}")
    rows.append(f"{'total':<10} {m['documents']:>10,} {m['tokens']:>14,} {m['text_bytes'] / 1e6:>11.2f} "
                f"{m['text_bytes'] / m['tokens']:>12.2f}")
    if m["split_method"] == "val_fraction":
        rows.append(f"val split  the last {m['val_fraction']:g} of the tokens (no validation split of its own)")
    if m.get("replaced_bytes"):
        rows.append(f"warning    {m['replaced_bytes']:,} invalid UTF-8 bytes were replaced with U+FFFD")
    when = "now" if built else f"earlier ({m['created']}), reused"
    rows.append(f"tokenized  {when}: {m['tokenize_seconds']:.2f} s, {m['mb_per_s']:.2f} MB/s "
                f"(backend {t.get('backend')})")
    return "\n".join(rows)


def format_registry() -> str:
    rows = [f"{'name':<17} description"]
    for name in list_datasets():
        spec = DATASETS[name]
        rows.append(f"{name:<17} {spec.description}")
        rows.append(f"{'':<17} local copy (data_path=): {spec.local}")
    rows.append("any path          a .txt file, a folder of text files, or a .jsonl file with a \"text\" field")
    return "\n".join(rows)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m nanogpt2.data",
                                description="Prepare (download + tokenize) a dataset and print its statistics.")
    p.add_argument("dataset", nargs="?", help="a dataset name (--list) or a local .txt / folder / .jsonl path")
    p.add_argument("--tokenizer", default=None, help="gpt2 or char (default: the dataset's, else gpt2)")
    p.add_argument("--data_path", "--data-path", default=None, help="your copy of a registered dataset")
    p.add_argument("--cache_root", "--cache-root", default=None, help="default: $NANOGPT2_CACHE/data")
    p.add_argument("--val_fraction", "--val-fraction", type=float, default=None)
    p.add_argument("--backend", default="auto", choices=["auto", "tiktoken", "python"])
    p.add_argument("--num_workers", "--num-workers", type=int, default=None)
    p.add_argument("--force", action="store_true", help="tokenize again even if the cache is valid")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list", action="store_true", help="list the registered datasets")
    args = p.parse_args(argv)
    if args.list or not args.dataset:
        print(format_registry())
        return
    with warnings.catch_warnings():  # data warnings as one plain line each, not file:line + source
        warnings.showwarning = _one_line_warning
        ds = prepare_dataset(args.dataset, tokenizer=args.tokenizer, data_path=args.data_path,
                             cache_root=args.cache_root, val_fraction=args.val_fraction, quiet=args.quiet,
                             backend=args.backend, num_workers=args.num_workers, force=args.force)
    print(format_stats(ds, ds.built))


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


if __name__ == "__main__":
    from nanogpt2.errors import run_cli
    # Run the package's copy of this module, not this `__main__` copy: the codec error handler that counts
    # invalid UTF-8 bytes is registered process-wide, so two copies of the module would count into different
    # totals as soon as anything imports nanogpt2.data.
    from nanogpt2.data import main as _package_main
    run_cli(_package_main, sys.argv[1:])
