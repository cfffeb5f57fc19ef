"""
Token ids used as they are, from files another tool wrote (nanoGPT's train.bin / val.bin, llm.c's shards): no
copy, no re-tokenization. The readers of those formats (nanogpt2/nanogpt_format.py, nanogpt2/llmc.py) say where
the ids lie; this module maps them and serves them.

- `MappedTokens`: one read-only stream of ids over one or more memory-mapped files (each a byte offset and a
  count), sliced like an array (`len`, `tokens[a:b]` -> np.ndarray) by nanogpt2.samplers. Every slice read is
  checked against the vocabulary (a damaged or foreign file would otherwise reach the embedding as an
  IndexError mid-run); a stream small enough to scan in a moment is checked whole when it is opened, so a
  17 GB OpenWebText folder starts at once and a small one fails at once.
- `TokenFileDataset`: the splits of such a folder with the interface of nanogpt2.data.PreparedDataset
  (`dir`, `name`, `meta`, `splits`, `tokens(split)`, `tokenizer()`, `vocab_size`), what prepare_dataset returns
  for one.

    from nanogpt2.data import prepare_dataset
    ds = prepare_dataset("nanoGPT/data/openwebtext")    # train.bin + val.bin: a TokenFileDataset
    ds.tokens("train")[:8]                               # np.ndarray of uint16, read from the file
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from nanogpt2.errors import NanoGPT2Error

_SCAN_AT_OPEN = 1 << 26  # ids: a stream this short is checked whole when it is opened (~0.1 s)
_SCAN_CHUNK = 1 << 24


class MappedTokens:
    """Token ids over memory-mapped file parts [(path, byte offset, count)], in order, as one sequence."""

    def __init__(self, parts, dtype, vocab_size: int):
        self.dtype = np.dtype(dtype)
        self.vocab_size = int(vocab_size)
        self.parts = [(Path(p), int(off), int(n)) for p, off, n in parts if int(n) > 0]
        self.maps = [np.memmap(p, dtype=self.dtype, mode="r", offset=off, shape=(n,)) for p, off, n in self.parts]
        self.starts = np.cumsum([0] + [n for _, _, n in self.parts]).tolist()  # part i holds [starts[i], starts[i+1])
        if len(self.parts) == 1:
            self.filename = str(self.parts[0][0])  # what nanogpt2.samplers names in messages
        if len(self) <= _SCAN_AT_OPEN:
            self.check_all()

    def __len__(self) -> int:
        return self.starts[-1]

    def _check(self, ids: np.ndarray, start: int) -> np.ndarray:
        if ids.size and int(ids.max()) >= self.vocab_size:
            at = start + int(np.argmax(ids >= self.vocab_size))
            i = bisect.bisect_right(self.starts, at) - 1
            raise NanoGPT2Error(f"{self.parts[i][0]} holds token id {int(ids.max())} (token {at - self.starts[i]:,} of "
                                f"the file), outside the vocabulary of {self.vocab_size}: the file is damaged, or its "
                                f"ids are of another tokenizer")
        return ids

    def check_all(self) -> None:
        """Every id of the stream below the vocabulary size, a block at a time (a NanoGPT2Error naming the file)."""
        for m, start in zip(self.maps, self.starts):
            for i in range(0, len(m), _SCAN_CHUNK):
                self._check(np.asarray(m[i:i + _SCAN_CHUNK]), start + i)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"token index {key} out of range for {len(self)} tokens")
            return self[i:i + 1][0]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("MappedTokens takes an index or a contiguous slice")
        a, b, _ = key.indices(len(self))
        if b <= a:
            return np.zeros(0, dtype=self.dtype)
        first = bisect.bisect_right(self.starts, a) - 1
        pieces, pos, i = [], a, first
        while pos < b:  # a window may cross from one file into the next
            end = min(b, self.starts[i + 1])
            pieces.append(self.maps[i][pos - self.starts[i]:end - self.starts[i]])
            pos, i = end, i + 1
        ids = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return self._check(np.asarray(ids), a)

    def __repr__(self):
        return f"MappedTokens({len(self):,} ids in {len(self.parts)} file(s), vocab {self.vocab_size})"


class TokenFileDataset:
    """A folder of token files as a dataset: splits name -> MappedTokens, and the tokenizer of their ids."""

    def __init__(self, directory, fmt: str, splits: dict, tokenizer):
        self.dir = Path(directory)
        self.name = str(directory)
        self.format = fmt
        self._splits = splits
        self._tokenizer = tokenizer
        self.splits = list(splits)
        self.dtype = next(iter(splits.values())).dtype
        self.built = False  # nothing was tokenized
        self.meta = {"format": fmt, "dataset": self.name, "dtype": self.dtype.name, "vocab_size": tokenizer.n_vocab,
                     "tokenizer": {"name": tokenizer.name},
                     "splits": {s: {"tokens": len(t), "files": [str(p) for p, _, _ in t.parts]}
                                for s, t in splits.items()}}

    def tokens(self, split: str) -> MappedTokens:
        s = {"valid": "val", "validation": "val"}.get(split, split)
        if s not in self._splits:
            raise NanoGPT2Error(f"{self.dir} ({self.format}) has no {split!r} split; it has {', '.join(self.splits)}")
        return self._splits[s]

    def tokenizer(self, backend: str = "auto"):
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.n_vocab

    def __repr__(self):
        toks = ", ".join(f"{s}={len(t):,}" for s, t in self._splits.items())
        return f"TokenFileDataset({self.format}, tokenizer={self._tokenizer.name!r}, {toks}, dir={self.dir})"
