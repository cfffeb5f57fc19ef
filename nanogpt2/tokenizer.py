"""
Tokenizers: GPT-2's byte-level BPE written out by hand, tiktoken as the fast path, and a character-level
tokenizer for tiny runs.

GPT-2 turns text into ids in three steps, and this file follows them top to bottom:

1. **Pre-tokenize.** A regular expression cuts the text into pre-tokens: words with their leading space
   (" world"), runs of digits, runs of punctuation, runs of whitespace, and the contractions 's 't 're 've
   'm 'll 'd. BPE never merges across two pre-tokens.
2. **Bytes.** Each pre-token is encoded as UTF-8; every one of the 256 byte values is a token of its own,
   so any text at all can be encoded (no "unknown" token).
3. **Merge.** Adjacent parts are merged repeatedly, always the pair whose concatenation has the lowest
   rank (the earliest-learned merge), until no adjacent pair is a token. The ranks *are* the ids.

The ranks ship with the package (`nanogpt2/assets/gpt2.tiktoken`, checked against its sha256 at load
time) and can also be read from OpenAI's original `encoder.json` + `vocab.bpe`. `<|endoftext|>` is the
one special token, id 50256. The hand-written backend produces exactly the ids of tiktoken built from
the same ranks (tests/test_tokenizer.py checks it on real corpora and on a torture set).

References: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (section 2.2);
OpenAI's gpt-2 `src/encoder.py`; tiktoken (`src/lib.rs`, `tiktoken/load.py`); Sennrich et al. 2016 (BPE).

Run:
    python -m nanogpt2.tokenizer "Hello world"        # learner's view: the merges, the pieces, the ids
    python -m nanogpt2.tokenizer --decode 15496 995   # ids -> text
    python -m nanogpt2.tokenizer --bench              # MB/s of both backends (WikiText-2 test if present)

Use:
    from nanogpt2.tokenizer import get_tokenizer
    tok = get_tokenizer("gpt2")                       # backend="auto": tiktoken if installed, else python
    tok.encode("Hello world")                         # [15496, 995]
    tok.decode([15496, 995])                          # 'Hello world'
"""

import base64
import hashlib
import heapq
import json
import multiprocessing
import os
import sys
import time
import warnings
import weakref
from array import array
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from itertools import chain
from pathlib import Path

import regex

from nanogpt2.errors import NanoGPT2Error, read_text

# ---------------------------------------------------------------------------------------------------------
# Constants: where the ranks live, the pre-tokenizer pattern, the special token
# ---------------------------------------------------------------------------------------------------------

ASSETS = Path(__file__).resolve().parent / "assets"
GPT2_RANKS_FILE = ASSETS / "gpt2.tiktoken"
# sha256 of the bundled file; the same bytes as OpenAI's r50k_base.tiktoken.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# GPT-2's pre-tokenizer, exactly as in OpenAI's encoder.py. Alternatives are tried left to right:
#   's 't 're 've 'm 'll 'd   contractions (lower case only, as in GPT-2: "DON'T" splits as DON ' T)
#    ?\p{L}+                  a run of letters, with at most one leading space
#    ?\p{N}+                  a run of digits/numbers, same
#    ?[^\s\p{L}\p{N}]+        a run of anything else (punctuation, symbols, emoji), same
#   \s+(?!\S)                 whitespace, leaving the last space to prefix the next word
#   \s+                       whatever whitespace is left (e.g. at the end of the text)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode versions. The pattern's classes \p{L} and \p{N} come from each regex engine's own Unicode tables:
# tiktoken 0.14's Rust regex knows Unicode 16.0, the `regex` package (2026.5.9 here) knows 17.0, where
# these code points became letters or numbers. To give tiktoken's ids, the python backend treats them as
# "anything else" like tiktoken does: a text that contains one is re-split with the pattern below, whose
# letter and number classes leave them out. (Measured by probing every code point; tests/test_tokenizer.py
# checks all of them again, so a later tiktoken or regex that moves shows up there.)
UNICODE_17_LETTERS_NUMBERS = [
    (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4),
    (0xA7F1, 0xA7F1), (0x10940, 0x10959), (0x10EC5, 0x10EC7), (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18D09, 0x18D1E),
    (0x18D80, 0x18DF2), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED),
    (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479),
]
_U17 = "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in UNICODE_17_LETTERS_NUMBERS)
_L16, _N16 = rf"[\p{{L}}--[{_U17}]]", rf"[\p{{N}}--[{_U17}]]"  # (?V1) set difference
GPT2_PATTERN_UNICODE16 = rf"(?V1)'s|'t|'re|'ve|'m|'ll|'d| ?{_L16}+| ?{_N16}+| ?[^\s{_L16}{_N16}]+|\s+(?!\S)|\s+"
_HAS_U17 = regex.compile(f"[{_U17}]")

ENDOFTEXT = "<|endoftext|>"
GPT2_SPECIAL_TOKENS = {ENDOFTEXT: 50256}

# A pre-token longer than this many bytes is merged with the O(n log n) heap version of the same loop.
LONG_PIECE = 256
# The pre-token cache is emptied when it grows past this many entries (about 100 MB); pre-tokens longer
# than CACHE_MAX_PIECE characters are not cached at all (long whitespace runs, base64 blobs, ...).
CACHE_MAX_ENTRIES = 1 << 19
CACHE_MAX_PIECE = 128
# encode_ordinary cuts texts longer than this (in characters) into chunks at safe places, so that the
# list of pre-tokens never holds more than about this much text at once.
ENCODE_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------------
# GPT-2's byte-to-unicode map
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to 256 printable unicode characters.

    encoder.json and vocab.bpe store tokens as text, so every byte needs a visible character: the
    printable Latin-1 bytes stand for themselves ("a" -> "a") and the other 68 (controls, space, ...) are
    shifted to 256 + n in order: space (0x20) becomes "Ġ" (U+0120), newline (0x0A) becomes "Ċ" (U+010A).
    Copied in spirit from OpenAI's encoder.py.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return dict(sorted(chars.items()))


def token_to_str(token: bytes) -> str:
    """A token's bytes in GPT-2's printable spelling (b" world" -> "Ġworld"), for display."""
    enc = bytes_to_unicode()
    return "".join(enc[b] for b in token)


# ---------------------------------------------------------------------------------------------------------
# Loading the ranks: tiktoken's file, or OpenAI's encoder.json + vocab.bpe
# ---------------------------------------------------------------------------------------------------------


def _read_file(path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NanoGPT2Error(f"{what} not found: {path}. Check the path, or reinstall nanogpt2 for the bundled one") from None
    except OSError as e:
        raise NanoGPT2Error(f"cannot read {what} {path}: {e}. Check the file's permissions") from None


def load_tiktoken_ranks(path=GPT2_RANKS_FILE, sha256=None) -> dict:
    """Read a tiktoken rank file (lines `base64(token) rank`) into {token bytes: rank}.

    `sha256`: the expected hash of the file, checked before parsing. The bundled file is always checked.
    """
    path = Path(path)
    if sha256 is None and path.resolve() == GPT2_RANKS_FILE:
        sha256 = GPT2_RANKS_SHA256
    data = _read_file(path, "tokenizer rank file")
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise NanoGPT2Error(
                f"tokenizer rank file {path} has sha256 {got}, expected {sha256}: the file is corrupt or "
                f"was modified. Restore it (reinstall nanogpt2, or copy gpt2.tiktoken from ../shared/data)"
            )
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok64, rank = line.split()
            token, rank = base64.b64decode(tok64, validate=True), int(rank)
        except ValueError:  # wrong field count, bad base64 (binascii.Error), bad int
            raise NanoGPT2Error(
                f"tokenizer rank file {path} is corrupt at line {lineno} ({line[:60]!r}): expected "
                f"'<base64 token> <rank>'. Restore the file or point to a valid one"
            ) from None
        if token in ranks or rank < 0:
            raise NanoGPT2Error(f"tokenizer rank file {path} is corrupt at line {lineno}: duplicate token or negative rank")
        ranks[token] = rank
    _check_ranks(ranks, str(path))
    return ranks


def _check_ranks(ranks: dict, where: str) -> None:
    """Ranks must contain the 256 single bytes (so every text encodes) and be unique."""
    if len(set(ranks.values())) != len(ranks):
        raise NanoGPT2Error(f"tokenizer ranks from {where} are corrupt: two tokens share a rank")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise NanoGPT2Error(
            f"tokenizer ranks from {where} are incomplete: {len(missing)} of the 256 single bytes have no "
            f"rank (e.g. byte {missing[0]}), so some text could not be encoded. Use a complete rank file"
        )


def load_encoder_json_vocab_bpe(encoder_json, vocab_bpe):
    """Read OpenAI's original GPT-2 pair: `encoder.json` (token text -> id) and `vocab.bpe` (the merges).

    Returns (ranks {token bytes: rank}, special tokens {text: id}). The ids come from encoder.json; the
    merges are checked against them (merge i must create the token of rank 256 + i), so a mismatched
    pair of files is an error rather than a silently different tokenizer.
    """
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(s: str) -> bytes:
        return bytes(byte_decoder[c] for c in s)

    try:
        encoder = json.loads(_read_file(encoder_json, "encoder.json").decode("utf-8"))
        assert isinstance(encoder, dict)
    except (ValueError, AssertionError):
        raise NanoGPT2Error(f"{encoder_json} is not a valid encoder.json (a JSON object token -> id)") from None
    merges_text = _read_file(vocab_bpe, "vocab.bpe")
    try:
        lines = merges_text.decode("utf-8").split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split(" ")) for line in lines if line.strip()]
        assert all(len(m) == 2 for m in merges)
    except (UnicodeDecodeError, AssertionError):
        raise NanoGPT2Error(f"{vocab_bpe} is not a valid vocab.bpe (one merge 'a b' per line)") from None

    # Ids below 256 + len(merges) are BPE tokens; any after them (<|endoftext|> = 50256) are special tokens.
    ranks, special = {}, {}
    try:
        for text, idx in encoder.items():
            if int(idx) >= 256 + len(merges):
                special[text] = int(idx)
            else:
                ranks[to_bytes(text)] = int(idx)
    except (KeyError, ValueError, TypeError):
        raise NanoGPT2Error(f"{encoder_json} is corrupt: token {text!r} -> {idx!r} is not GPT-2 byte-level text -> id") from None
    _check_ranks(ranks, str(encoder_json))
    for i, (a, b) in enumerate(merges):
        try:
            ok = ranks[to_bytes(a) + to_bytes(b)] == 256 + i
        except KeyError:
            ok = False
        if not ok:
            raise NanoGPT2Error(
                f"{vocab_bpe} does not match {encoder_json}: merge {i} ({a!r} + {b!r}) should make the token "
                f"with id {256 + i}. Use the encoder.json and vocab.bpe that were released together"
            )
    return ranks, special


@lru_cache(maxsize=1)
def _bundled_ranks() -> dict:
    """The GPT-2 ranks shipped with the package (read and checked once per process; do not mutate)."""
    return load_tiktoken_ranks(GPT2_RANKS_FILE, GPT2_RANKS_SHA256)


def vocabulary_checksum(ranks: dict, special_tokens: dict) -> str:
    """sha256 identifying a vocabulary, the same whichever file or backend it was loaded with.

    It hashes the canonical tiktoken text of the ranks (for GPT-2: the bytes of gpt2.tiktoken) followed by
    the special tokens in the same `base64 id` form.
    """
    h = hashlib.sha256()
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(base64.b64encode(token) + b" %d\n" % rank)
    for text, idx in sorted(special_tokens.items(), key=lambda kv: kv[1]):
        h.update(b"special " + base64.b64encode(text.encode("utf-8")) + b" %d\n" % idx)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The BPE merge loop
# ---------------------------------------------------------------------------------------------------------


def bpe_merge(piece: bytes, ranks: dict, trace=None) -> list:
    """Split one pre-token's bytes into tokens: merge the lowest-ranked adjacent pair until none is left.

    A pair's rank is the rank of its concatenation (GPT-2's merges were learned in rank order, so this
    is the same as looking the pair up in vocab.bpe). Ties go to the leftmost pair, like tiktoken.
    `trace`, if a list, receives the parts before every merge (for the learner's view).
    """
    if len(piece) > LONG_PIECE and trace is None:
        return _bpe_merge_long(piece, ranks)
    parts = [piece[i : i + 1] for i in range(len(piece))]  # start from single bytes: b"hi" -> [b"h", b"i"]
    while len(parts) > 1:
        if trace is not None:
            trace.append(list(parts))
        pair_ranks = [ranks.get(a + b, _NOT_A_TOKEN) for a, b in zip(parts, parts[1:])]
        best = min(pair_ranks)
        if best == _NOT_A_TOKEN:  # no adjacent pair is a token: done
            break
        i = pair_ranks.index(best)  # leftmost pair with the lowest rank
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


_NOT_A_TOKEN = float("inf")


def _bpe_merge_long(piece: bytes, ranks: dict) -> list:
    """Same result as `bpe_merge`, in O(n log n) instead of O(n^2), for long pre-tokens.

    The parts are a linked list of byte ranges [start, end). A heap holds every adjacent pair that is a
    token as (rank, left start, middle, right end); the smallest entry is the lowest rank, leftmost on
    ties. Entries made stale by an earlier merge are skipped when popped.
    """
    n = len(piece)
    end = list(range(1, n + 1))  # end[s]: end of the part that starts at s
    prev = list(range(-1, n - 1))  # prev[s]: start of the part before s (-1 for the first)
    alive = [True] * n  # alive[s]: a part starts at s
    heap = [(r, s, s + 1, s + 2) for s in range(n - 1) if (r := ranks.get(piece[s : s + 2])) is not None]
    heapq.heapify(heap)
    while heap:
        _, s, m, e = heapq.heappop(heap)
        if not (alive[s] and alive[m] and end[s] == m and end[m] == e):
            continue  # one of the two parts has changed since this pair was pushed
        alive[m] = False  # merge [s, m) and [m, e) into [s, e)
        end[s] = e
        if e < n:
            prev[e] = s
            if (r := ranks.get(piece[s : end[e]])) is not None:
                heapq.heappush(heap, (r, s, e, end[e]))
        p = prev[s]
        if p >= 0 and (r := ranks.get(piece[p:e])) is not None:
            heapq.heappush(heap, (r, p, s, e))
    parts, s = [], 0
    while s < n:
        parts.append(piece[s : end[s]])
        s = end[s]
    return parts


# ---------------------------------------------------------------------------------------------------------
# What every tokenizer shares: argument checks and special-token handling
# ---------------------------------------------------------------------------------------------------------


def _check_text(text, what="encode"):
    if not isinstance(text, str):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise NanoGPT2Error(f"{what} expects a str, got {type(text).__name__}{hint}")


def _id_list(ids) -> list:
    """ids as a list of Python ints: accepts lists, tuples, numpy arrays, torch tensors."""
    if hasattr(ids, "tolist"):  # numpy / torch
        ids = ids.tolist()
    if isinstance(ids, int) or isinstance(ids, (str, bytes)):
        raise NanoGPT2Error(f"decode expects a sequence of token ids, got {type(ids).__name__}; wrap one id in a list")
    try:
        ids = list(ids)
    except TypeError:
        raise NanoGPT2Error(f"decode expects a sequence of token ids, got {type(ids).__name__}") from None
    return ids


def _token_set(tokens, what) -> frozenset:
    if not isinstance(tokens, (str, bytes)):
        try:
            return frozenset(tokens)
        except TypeError:
            pass
    raise NanoGPT2Error(f"{what} must be 'all' or a set of special tokens such as {{'{ENDOFTEXT}'}}, got {tokens!r}")


class _Base:
    """Shared by the GPT-2 backends: special tokens, encode() on top of encode_ordinary(), checks."""

    name = "gpt2"

    def __init__(self, ranks: dict, special_tokens: dict):
        self.special_tokens = dict(special_tokens)
        self.n_vocab = max(chain(ranks.values(), self.special_tokens.values())) + 1
        self.eot_token = self.special_tokens.get(ENDOFTEXT)
        self._ranks = ranks
        self._checksum = None
        self._special_re = {}  # frozenset of specials -> compiled alternation

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = vocabulary_checksum(self._ranks, self.special_tokens)
        return self._checksum

    def _special_regex(self, tokens: frozenset):
        rx = self._special_re.get(tokens)
        if rx is None:  # longest first, so that one special token that is a prefix of another loses
            alts = sorted(tokens, key=lambda t: (-len(t), t))
            rx = self._special_re[tokens] = regex.compile("|".join(regex.escape(t) for t in alts))
        return rx

    def _allowed(self, text: str, allowed_special, disallowed_special) -> frozenset:
        """tiktoken's rules: the set of special tokens to encode as such; raise on a disallowed one."""
        _check_text(text)
        specials = frozenset(self.special_tokens)
        if allowed_special == "all":
            allowed = specials
        else:
            allowed = _token_set(allowed_special, "allowed_special") & specials
        if disallowed_special == "all":
            disallowed = specials - allowed
        else:
            disallowed = _token_set(disallowed_special, "disallowed_special")
        if disallowed and (m := self._special_regex(disallowed).search(text)):
            raise NanoGPT2Error(
                f"the text contains the special token {m.group()!r} at character {m.start()}. Pass "
                f"allowed_special={{{m.group()!r}}} (or 'all') to encode it as a special token, or "
                f"disallowed_special=() / encode_ordinary() to encode it as plain text"
            )
        return allowed

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r}, n_vocab={self.n_vocab})"


# ---------------------------------------------------------------------------------------------------------
# The hand-written backend
# ---------------------------------------------------------------------------------------------------------


class _NeedsUnicode16(Exception):
    """Raised by the cache for a pre-token holding a code point that tiktoken's Unicode 16 does not know."""


class _PieceCache(dict):
    """pre-token (str) -> token ids (tuple). A miss runs BPE once and remembers the answer."""

    __slots__ = ("ranks", "check_u17")

    def __missing__(self, piece: str) -> tuple:
        if self.check_u17 and not piece.isascii() and _HAS_U17.search(piece) is not None:
            raise _NeedsUnicode16  # (never cached, so every text holding one comes through here)
        ids = self.encode_piece(piece)
        if len(piece) <= CACHE_MAX_PIECE:
            self[piece] = ids
        return ids

    def encode_piece(self, piece: str) -> tuple:
        data = piece.encode("utf-8")
        rank = self.ranks.get(data)
        if rank is not None:  # the whole pre-token is a token (most words): no merging needed
            return (rank,)
        return tuple([self.ranks[p] for p in bpe_merge(data, self.ranks)])


@lru_cache(maxsize=1)
def _check_regex_unicode():
    """Warn once when the regex package predates Unicode 16.0, tiktoken's tables: ids could then differ."""
    if regex.match(r"\p{L}", "\U00010D4A") is None:  # a Garay letter, new in Unicode 16.0
        warnings.warn(
            f"regex {regex.__version__} knows Unicode older than 16.0: the python tokenizer backend may give "
            f"other ids than tiktoken for letters added since. Upgrade it: pip install -U regex",
            stacklevel=3,
        )


def _replace_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded: pair them up or replace them with U+FFFD, like tiktoken."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class BPETokenizer(_Base):
    """GPT-2's byte-level BPE in pure Python: pre-tokenizer regex + merge loop + a cache of pre-tokens.

    Same interface as `TiktokenTokenizer`, and the same ids. Usually built by `get_tokenizer("gpt2",
    backend="python")`.
    """

    backend = "python"

    def __init__(self, ranks: dict, special_tokens=GPT2_SPECIAL_TOKENS, pattern=GPT2_PATTERN):
        super().__init__(ranks, special_tokens)
        self.pattern = pattern
        self._findall = regex.compile(pattern).findall
        self._findall_u16 = regex.compile(GPT2_PATTERN_UNICODE16).findall
        self._cache = _PieceCache()
        self._cache.ranks = ranks
        self._cache.check_u17 = pattern == GPT2_PATTERN
        if pattern == GPT2_PATTERN:
            _check_regex_unicode()
        # id -> bytes, for decoding; None where no token has that id
        self._decoder = [None] * self.n_vocab
        for token, rank in ranks.items():
            self._decoder[rank] = token
        for text, idx in self.special_tokens.items():
            self._decoder[idx] = text.encode("utf-8")
        self._pool = None  # (num_workers, ProcessPoolExecutor) for encode_batch, made on first use
        self._safe_cut = regex.compile(r"\S(?=\n)")  # see _chunks

    def encode_ordinary(self, text: str) -> list:
        """Text -> ids, treating special-token text like any other text."""
        if type(text) is not str:
            _check_text(text, "encode_ordinary")
        if len(text) > ENCODE_CHUNK:
            return list(chain.from_iterable(map(self._encode_chunk, self._chunks(text))))
        return self._encode_chunk(text)

    def _encode_chunk(self, text: str) -> list:
        cache = self._cache
        try:
            # One C-level pass: cut into pre-tokens, look every pre-token up (BPE on a miss), flatten.
            ids = list(chain.from_iterable(map(cache.__getitem__, self._findall(text))))
        except UnicodeEncodeError:  # lone surrogates
            return self._encode_chunk(_replace_surrogates(text))
        except _NeedsUnicode16:  # rare: see UNICODE_17_LETTERS_NUMBERS
            pieces = self._findall_u16(_replace_surrogates(text))
            return list(chain.from_iterable(map(cache.encode_piece, pieces)))
        if len(cache) > CACHE_MAX_ENTRIES:
            cache.clear()
        return ids

    def _chunks(self, text: str):
        """Cut a long text just before a newline that follows a non-space character.

        No pre-token crosses such a place (pre-tokens that hold a newline are all-whitespace), and the
        pattern never looks more than one character past a match, so the pieces of the chunks are exactly
        the pieces of the whole text.
        """
        start = 0
        while len(text) - start > ENCODE_CHUNK:
            m = self._safe_cut.search(text, start + ENCODE_CHUNK)
            if m is None:
                break
            yield text[start : m.end()]
            start = m.end()
        yield text[start:]

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list:
        """Text -> ids. Special-token text is an error unless allowed (tiktoken's rules)."""
        allowed = self._allowed(text, allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for m in self._special_regex(allowed).finditer(text):
            ids += self.encode_ordinary(text[start : m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def decode_bytes(self, ids) -> bytes:
        """ids -> the raw bytes (which may end in the middle of a UTF-8 character)."""
        ids = _id_list(ids)
        try:
            if ids and min(ids) < 0:  # (a negative index would silently count from the end)
                raise IndexError
            return b"".join([self._decoder[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.n_vocab and self._decoder[i] is not None))
            raise NanoGPT2Error(
                f"cannot decode token id {bad!r}: ids must be ints in [0, {self.n_vocab}). If the model's "
                f"vocabulary is padded, keep sampling to the first {self.n_vocab} logits"
            ) from None

    def decode(self, ids) -> str:
        """ids -> text. Bytes that are not valid UTF-8 (a character split across ids) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode_batch(self, texts, num_workers=None) -> list:
        """Ordinary-encode many texts in worker processes (one per core by default); order is kept."""
        texts = list(texts)
        for t in texts:
            _check_text(t, "encode_batch")
        num_workers = _num_workers(num_workers)
        total = sum(map(len, texts))
        # Serial when processes are not worth starting, or not allowed (inside a daemonic worker process).
        if num_workers <= 1 or len(texts) < 2 or total < 200_000 or multiprocessing.current_process().daemon:
            return [self.encode_ordinary(t) for t in texts]
        pool = self._process_pool(num_workers)
        chunks = list(_chunk_texts(texts, max(64_000, total // (8 * num_workers))))
        out = []
        try:
            for lengths, flat in pool.map(_worker_encode, chunks):
                flat, start = flat.tolist(), 0
                for n in lengths:
                    out.append(flat[start : start + n])
                    start += n
        except BrokenProcessPool:
            self.close()
            raise NanoGPT2Error(
                "a tokenizer worker process died (out of memory?). Retry with fewer workers (num_workers=1 "
                "encodes in this process) or use the tiktoken backend"
            ) from None
        return out

    def _process_pool(self, num_workers):
        """One pool per tokenizer, kept for later calls (its workers' caches stay warm)."""
        if self._pool is None or self._pool[0] != num_workers:
            self.close()
            pool = ProcessPoolExecutor(
                num_workers, initializer=_worker_init, initargs=(self._ranks, self.special_tokens, self.pattern)
            )
            # Shut the workers down when the tokenizer is garbage collected or at exit.
            self._pool = (num_workers, pool, weakref.finalize(self, pool.shutdown, wait=False, cancel_futures=True))
        return self._pool[1]

    def close(self):
        """Stop encode_batch's worker processes (they also stop at exit)."""
        if self._pool is not None:
            _, pool, finalizer = self._pool
            finalizer.detach()
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def clear_cache(self):
        """Forget the encoded pre-tokens (the next encode runs 'cold')."""
        self._cache.clear()


# Process-pool workers: the ranks arrive once per worker through the initializer, never per task.
_WORKER = None


def _worker_init(ranks, special_tokens, pattern):
    global _WORKER
    _WORKER = BPETokenizer(ranks, special_tokens, pattern)


def _worker_encode(texts):
    """-> (number of ids of each text, all ids in one array): an array pickles as raw bytes, far faster
    than lists of ints."""
    ids = [_WORKER.encode_ordinary(t) for t in texts]
    return [len(x) for x in ids], array("I", chain.from_iterable(ids))


def _chunk_texts(texts, chunk_chars):
    """Group consecutive texts into lists of about chunk_chars characters."""
    chunk, size = [], 0
    for t in texts:
        chunk.append(t)
        size += len(t)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _num_workers(num_workers):
    if num_workers is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    if not isinstance(num_workers, int) or num_workers < 1:
        raise NanoGPT2Error(f"num_workers must be a positive int or None (one per core), got {num_workers!r}")
    return num_workers


# ---------------------------------------------------------------------------------------------------------
# The tiktoken backend: the same ranks, the same pattern, Rust speed
# ---------------------------------------------------------------------------------------------------------


class TiktokenTokenizer(_Base):
    """GPT-2 through tiktoken, built from the bundled ranks with `tiktoken.Encoding(...)`: no download."""

    backend = "tiktoken"

    def __init__(self, ranks: dict, special_tokens=GPT2_SPECIAL_TOKENS, pattern=GPT2_PATTERN):
        try:
            import tiktoken
        except ImportError:
            raise NanoGPT2Error("backend='tiktoken' needs the tiktoken package: pip install tiktoken, or use backend='python'") from None
        super().__init__(ranks, special_tokens)
        self.pattern = pattern
        self._enc = tiktoken.Encoding(
            name="nanogpt2-gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )

    def encode_ordinary(self, text: str) -> list:
        if type(text) is not str:
            _check_text(text, "encode_ordinary")
        return self._enc.encode_ordinary(text)

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list:
        allowed = self._allowed(text, allowed_special, disallowed_special)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def decode_bytes(self, ids) -> bytes:
        ids = _id_list(ids)
        if ids and not all(isinstance(i, int) and 0 <= i < self.n_vocab for i in ids):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.n_vocab))
            raise NanoGPT2Error(
                f"cannot decode token id {bad!r}: ids must be ints in [0, {self.n_vocab}). If the model's "
                f"vocabulary is padded, keep sampling to the first {self.n_vocab} logits"
            )
        try:
            return self._enc.decode_bytes(ids)
        except KeyError as e:  # an id inside the range that no token has
            raise NanoGPT2Error(f"cannot decode token id {e.args[0]!r}: no token has that id") from None

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode_batch(self, texts, num_workers=None) -> list:
        """Ordinary-encode many texts on threads (tiktoken releases the GIL); order is kept."""
        texts = list(texts)
        for t in texts:
            _check_text(t, "encode_batch")
        num_workers = _num_workers(num_workers)
        total = sum(map(len, texts))
        if num_workers <= 1 or len(texts) < 2 or total < 50_000:
            return [self._enc.encode_ordinary(t) for t in texts]
        chunks = list(_chunk_texts(texts, max(16_000, total // (8 * num_workers))))
        encode = self._enc.encode_ordinary
        with ThreadPoolExecutor(num_workers) as pool:
            return list(chain.from_iterable(pool.map(lambda c: [encode(t) for t in c], chunks)))

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------------------
# Character-level tokenizer (nanoGPT's shakespeare_char)
# ---------------------------------------------------------------------------------------------------------


class CharTokenizer:
    """One id per character; the vocabulary is the sorted set of the corpus' characters.

    For tiny CPU runs. There is no end-of-text token (`eot_token` is None), so the vocabulary is exactly
    the corpus' characters (65 for Tiny Shakespeare), as in nanoGPT. Save the vocabulary with the dataset
    (`save` / `load`, JSON): the ids mean nothing without it.
    """

    name = "char"
    backend = "python"
    eot_token = None
    special_tokens = {}

    def __init__(self, chars):
        chars = list(chars)
        if not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise NanoGPT2Error("CharTokenizer needs a non-empty sequence of single characters")
        if len(set(chars)) != len(chars):
            raise NanoGPT2Error(
                "CharTokenizer's chars are the vocabulary in id order and must not repeat; to build one from "
                "a corpus use CharTokenizer.from_text(text) or get_tokenizer('char', text=...)"
            )
        self.chars = chars
        self.n_vocab = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}
        self.checksum = hashlib.sha256(json.dumps(chars).encode("utf-8")).hexdigest()

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        _check_text(text, "CharTokenizer.from_text")
        return cls(sorted(set(text)))

    def save(self, path) -> None:
        data = {"format": "nanogpt2-char-tokenizer", "version": 1, "chars": "".join(self.chars)}
        try:
            Path(path).write_text(json.dumps(data), encoding="utf-8")
        except OSError as e:
            raise NanoGPT2Error(f"cannot write the character vocabulary to {path}: {e}. Check the folder exists and is writable") from None

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        raw = _read_file(path, "character vocabulary")
        try:
            data = json.loads(raw.decode("utf-8"))
            assert data.get("format") == "nanogpt2-char-tokenizer" and isinstance(data["chars"], str)
        except (ValueError, AssertionError, AttributeError, KeyError):
            raise NanoGPT2Error(f"{path} is not a character vocabulary saved by CharTokenizer.save; rebuild it from the corpus") from None
        return cls(data["chars"])

    def encode_ordinary(self, text: str) -> list:
        _check_text(text, "encode_ordinary")
        try:
            return list(map(self._stoi.__getitem__, text))
        except KeyError:
            unknown = sorted(set(text) - self._stoi.keys())
            raise NanoGPT2Error(
                f"{len(unknown)} character(s) are not in the character vocabulary, e.g. {unknown[:5]!r}. "
                f"Rebuild the vocabulary from a corpus that contains them (CharTokenizer.from_text)"
            ) from None

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list:
        """Same as encode_ordinary: a character vocabulary has no special tokens."""
        return self.encode_ordinary(text)

    def decode(self, ids) -> str:
        ids = _id_list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return "".join([self.chars[i] for i in ids])
        except (IndexError, TypeError):
            raise NanoGPT2Error(
                f"cannot decode: ids must be ints in [0, {self.n_vocab}). If the model's vocabulary is padded, "
                f"keep sampling to the first {self.n_vocab} logits"
            ) from None

    def decode_bytes(self, ids) -> bytes:
        return self.decode(ids).encode("utf-8")

    def encode_batch(self, texts, num_workers=None) -> list:
        """Serial: a dictionary lookup per character is faster than shipping texts to workers."""
        return [self.encode_ordinary(t) for t in texts]

    def close(self):
        pass

    def __repr__(self):
        return f"CharTokenizer(n_vocab={self.n_vocab})"


# ---------------------------------------------------------------------------------------------------------
# get_tokenizer: by name
# ---------------------------------------------------------------------------------------------------------

BACKENDS = ("auto", "python", "tiktoken")


def get_tokenizer(name="gpt2", backend="auto", **kw):
    """A tokenizer by name.

    "gpt2": GPT-2's BPE. backend "auto" (tiktoken if it is installed, else the hand-written one),
        "python" or "tiktoken"; both give the same ids. Keywords pick other rank files:
        `ranks_file=` (tiktoken format, optional `sha256=`) or `encoder_json=` + `vocab_bpe=` (OpenAI's
        pair), or `bpe_dir=` (a folder with both). Without them: the bundled ranks.
    "char": character level; pass exactly one of `chars=` (the vocabulary in id order), `text=` (a
        corpus to build it from) or `path=` (a JSON file written by CharTokenizer.save).
    """
    if backend not in BACKENDS:
        raise NanoGPT2Error(f"unknown tokenizer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name == "gpt2":
        return _gpt2(backend, **kw)
    if name == "char":
        if backend == "tiktoken":
            raise NanoGPT2Error("the char tokenizer has no tiktoken backend; use backend='auto' or 'python'")
        given = {k: v for k, v in kw.items() if v is not None}
        if set(given) - {"chars", "text", "path"} or len(given) != 1:
            raise NanoGPT2Error("get_tokenizer('char', ...) needs exactly one of chars=, text= or path=")
        if "chars" in given:
            return CharTokenizer(given["chars"])
        if "text" in given:
            return CharTokenizer.from_text(given["text"])
        return CharTokenizer.load(given["path"])
    raise NanoGPT2Error(f"unknown tokenizer {name!r}; choose 'gpt2' or 'char'")


def _gpt2(backend, ranks_file=None, sha256=None, encoder_json=None, vocab_bpe=None, bpe_dir=None, **extra):
    if extra:
        raise NanoGPT2Error(f"unknown option(s) for the gpt2 tokenizer: {', '.join(sorted(extra))}")
    if bpe_dir is not None:
        encoder_json, vocab_bpe = Path(bpe_dir) / "encoder.json", Path(bpe_dir) / "vocab.bpe"
    if (encoder_json is None) != (vocab_bpe is None):
        raise NanoGPT2Error("pass both encoder_json= and vocab_bpe= (they only work as a pair)")
    if encoder_json is not None and ranks_file is not None:
        raise NanoGPT2Error("pass either ranks_file= or encoder_json= + vocab_bpe=, not both")
    if encoder_json is None and ranks_file is None:
        return _default_gpt2(backend)
    if encoder_json is not None:
        ranks, special = load_encoder_json_vocab_bpe(encoder_json, vocab_bpe)
        special = special or dict(GPT2_SPECIAL_TOKENS)
    else:
        ranks, special = load_tiktoken_ranks(ranks_file, sha256), dict(GPT2_SPECIAL_TOKENS)
    return _build(backend, ranks, special)


@lru_cache(maxsize=None)
def _default_gpt2(backend):
    """The bundled tokenizers are made once per process and shared (the python one shares its cache)."""
    return _build(backend, _bundled_ranks(), GPT2_SPECIAL_TOKENS)


def _build(backend, ranks, special):
    if backend == "python":
        return BPETokenizer(ranks, special)
    if backend == "tiktoken":
        return TiktokenTokenizer(ranks, special)
    try:  # auto
        import tiktoken  # noqa: F401
    except ImportError:
        return BPETokenizer(ranks, special)
    return TiktokenTokenizer(ranks, special)


# ---------------------------------------------------------------------------------------------------------
# Learner's view: the merges applied to each pre-token
# ---------------------------------------------------------------------------------------------------------


def explain(text: str, tokenizer=None) -> str:
    """A readable trace of how `text` is encoded: pre-tokens, each merge, the final pieces and ids.

    Pieces are shown in GPT-2's printable spelling: a space is "Ġ", a newline "Ċ".
    """
    _check_text(text, "explain")
    tok = tokenizer if isinstance(tokenizer, BPETokenizer) else get_tokenizer("gpt2", backend="python")
    ranks = tok._ranks
    out = [f"text: {text!r}   (pieces use GPT-2's byte map: space = 'Ġ', newline = 'Ċ')"]
    text = _replace_surrogates(text)
    pieces = regex.findall(tok.pattern, text)
    if tok._cache.check_u17 and _HAS_U17.search(text):
        pieces = regex.findall(GPT2_PATTERN_UNICODE16, text)
    for piece in pieces:
        data = piece.encode("utf-8")
        trace = []
        parts = bpe_merge(data, ranks, trace)
        out.append(f"pre-token {piece!r}")
        for step, before in enumerate(trace):
            after = trace[step + 1] if step + 1 < len(trace) else parts
            if len(after) == len(before):
                break
            i = next(j for j in range(len(after)) if after[j] != before[j])
            merged = f"merge {token_to_str(before[i])!r} + {token_to_str(before[i + 1])!r} (rank {ranks[after[i]]})"
            out.append(f"    {' '.join(token_to_str(p) for p in before):<40} {merged}")
        ids = list(tok._cache.encode_piece(piece))
        pieces = [token_to_str(tok._decoder[i]) for i in ids]
        out.append(f"    -> {' '.join(pieces)}  ids {ids}")
        if data in ranks and len(parts) > 1:
            out.append("    (the whole pre-token is a token, and encode uses it directly, as tiktoken does)")
    ids = tok.encode_ordinary(text)
    out.append(f"pieces: {[token_to_str(tok._decoder[i]) for i in ids]}")
    out.append(f"ids: {ids}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Benchmark: MB/s of both backends, cold and warm, and of the batch encoders
# ---------------------------------------------------------------------------------------------------------

DEFAULT_BENCH_TEXT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"


def benchmark(text_path=None, repeats=5, num_workers=None) -> dict:
    """Encode throughput (MB of UTF-8 per second) of the python backend and of tiktoken, in this process.

    text_path: defaults to ../shared/data/wikitext-2-raw/wiki.test.raw beside the project, else the
    bundled Tiny Shakespeare.
    - One text, one core: "cold" is the first pass of a fresh tokenizer (empty pre-token cache), "warm"
      the best of `repeats` later passes, python and tiktoken taking turns so that both see the same
      machine load. `*_cpu_mbps` divide by CPU seconds instead of wall seconds: on a shared machine those
      barely move with the load, wall figures do.
    - Batch: the text's lines as a list, serially (num_workers=1) and with `num_workers` workers (default
      one per core), warm. "cores busy" is the CPU seconds of the parent and its workers over the wall
      seconds (2.0 = both cores of a 2-core machine all the time); "cpu cost" is that CPU over the serial
      call's CPU (1.0 = parallelism costs nothing extra).
    Returns a dict of figures; `python -m nanogpt2.tokenizer --bench` prints them.
    """
    if text_path is None:
        text_path = DEFAULT_BENCH_TEXT if DEFAULT_BENCH_TEXT.exists() else ASSETS / "tinyshakespeare.txt"
    text = read_text(text_path, "benchmark text")
    mb = len(text.encode("utf-8")) / 1e6
    workers = _num_workers(num_workers)
    lines = text.splitlines(keepends=True)
    ranks = _bundled_ranks()

    def timed(fn, pool=None):
        """(wall seconds, CPU seconds of this process and of the pool's workers, result)"""
        w0, c0, p0 = time.perf_counter(), time.process_time(), _workers_cpu(pool)
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        return wall, cpu + (_workers_cpu(pool) - p0 if pool is not None else 0.0), out

    res = {"text": str(text_path), "mb": round(mb, 3), "cpus": _num_workers(None), "num_workers": workers,
           "date": time.strftime("%Y-%m-%d"), "load_avg_1min": round(os.getloadavg()[0], 2)}
    try:
        tk = TiktokenTokenizer(ranks)
    except NanoGPT2Error:
        tk = None
        res["tiktoken"] = "not installed"

    # one text, one core: cold then warm, python and tiktoken taking turns
    py = BPETokenizer(ranks)
    wall, cpu, ids = timed(lambda: py.encode_ordinary(text))
    res.update(n_tokens=len(ids), python_cold_mbps=mb / wall, python_cold_cpu_mbps=mb / cpu)
    if tk is not None:
        wall, cpu, tk_ids = timed(lambda: tk.encode_ordinary(text))
        res.update(tiktoken_first_mbps=mb / wall, ids_equal=ids == tk_ids)
    py_runs, tk_runs = [], []
    for _ in range(repeats):
        py_runs.append(timed(lambda: py.encode_ordinary(text))[:2])
        if tk is not None:
            tk_runs.append(timed(lambda: tk.encode_ordinary(text))[:2])
    res["python_warm_mbps"] = mb / min(w for w, _ in py_runs)
    res["python_warm_cpu_mbps"] = mb / min(c for _, c in py_runs)
    if tk is not None:
        res["tiktoken_warm_mbps"] = mb / min(w for w, _ in tk_runs)
        res["tiktoken_warm_cpu_mbps"] = mb / min(c for _, c in tk_runs)
        res["ratio_warm"] = res["tiktoken_warm_mbps"] / res["python_warm_mbps"]
        res["ratio_warm_cpu"] = res["tiktoken_warm_cpu_mbps"] / res["python_warm_cpu_mbps"]

    # batch encoders: the lines of the text, serial then parallel, warm
    def batch(prefix, tok, pool_of=lambda: None):
        serial = [timed(lambda: tok.encode_batch(lines, 1)) for _ in range(repeats)]
        out = tok.encode_batch(lines, workers)  # starts the workers, warms their caches
        par = [timed(lambda: tok.encode_batch(lines, workers), pool_of()) for _ in range(repeats)]
        res[f"{prefix}_batch_serial_mbps"] = mb / min(w for w, _, _ in serial)
        res[f"{prefix}_batch_mbps"] = mb / min(w for w, _, _ in par)
        res[f"{prefix}_batch_cores_busy"] = sum(c for _, c, _ in par) / sum(w for w, _, _ in par)
        res[f"{prefix}_batch_cpu_cost"] = sum(c for _, c, _ in par) / sum(c for _, c, _ in serial)
        return out

    py_batch = BPETokenizer(ranks)
    batch_ids = batch("python", py_batch, lambda: py_batch._pool[1] if py_batch._pool else None)
    py_batch.close()
    if tk is not None:
        tk_batch_ids = batch("tiktoken", tk)
        res["ids_equal"] = res["ids_equal"] and batch_ids == tk_batch_ids == [tk.encode_ordinary(t) for t in lines]
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}


def _workers_cpu(pool) -> float:
    """CPU seconds used so far by a process pool's workers (from /proc on Linux; 0.0 where unknown)."""
    if pool is None:
        return 0.0
    total = 0.0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def format_benchmark(res: dict) -> str:
    rows = [f"tokenizer benchmark, {res['date']}: {res['text']} ({res['mb']} MB, {res.get('n_tokens')} tokens); "
            f"{res['cpus']} CPU(s), {res['num_workers']} batch workers, load average {res['load_avg_1min']}",
            f"  {'':<44} {'MB/s':>7} {'MB/cpu-s':>9}"]
    for key, label in [
        ("python_cold", "python backend, one text, cold cache"),
        ("python_warm", "python backend, one text, warm cache"),
        ("tiktoken_first", "tiktoken, one text, first call"),
        ("tiktoken_warm", "tiktoken, one text, warm"),
        ("python_batch_serial", "python encode_batch(lines, 1)"),
        ("python_batch", f"python encode_batch(lines, {res['num_workers']}), processes"),
        ("tiktoken_batch_serial", "tiktoken encode_batch(lines, 1)"),
        ("tiktoken_batch", f"tiktoken encode_batch(lines, {res['num_workers']}), threads"),
    ]:
        if f"{key}_mbps" in res:
            cpu = res.get(f"{key}_cpu_mbps")
            extra = ""
            if f"{key}_cores_busy" in res:
                extra = f"   cores busy {res[key + '_cores_busy']:.2f}, cpu cost {res[key + '_cpu_cost']:.2f}x serial"
            rows.append(f"  {label:<44} {res[key + '_mbps']:7.2f} {cpu if cpu is not None else '':>9}{extra}")
    if "ratio_warm" in res:
        rows.append(f"  tiktoken / python, warm: {res['ratio_warm']:.2f}x wall, {res['ratio_warm_cpu']:.2f}x CPU; "
                    f"same ids: {res['ids_equal']}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m nanogpt2.tokenizer", description="GPT-2 tokenizer: show the merges for a text, decode ids, or benchmark.")
    p.add_argument("text", nargs="*", help="text to explain (the words are joined with spaces)")
    p.add_argument("--decode", nargs="+", type=int, metavar="ID", help="decode these ids")
    p.add_argument("--bench", action="store_true", help="benchmark both backends")
    p.add_argument("--bench-text", default=None, help="text file for --bench (default: WikiText-2 test if present)")
    args = p.parse_args(argv)
    if args.bench:
        print(format_benchmark(benchmark(args.bench_text)))
    elif args.decode:
        print(get_tokenizer("gpt2").decode(args.decode))
    elif args.text:
        print(explain(" ".join(args.text)))
    else:
        p.print_help()


if __name__ == "__main__":
    from nanogpt2.errors import run_cli

    run_cli(main, sys.argv[1:])
