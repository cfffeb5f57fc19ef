"""Tests for nanogpt2/tokenizer.py: the hand-written GPT-2 BPE against tiktoken, loaders, errors, char level.

The oracle is tiktoken built from the same bundled ranks (`tiktoken.Encoding(...)`, no download). Real
corpora come from ../shared/data and are skipped with a reason when it is absent. The committed torture set
(tests/fixtures/tokenizer_torture.json) stores tiktoken's ids next to each text, so both backends are held
to a fixed record too (a later tiktoken that changed its answers would show up there).

Run: python -m pytest -q tests/test_tokenizer.py
Regenerate the torture set's ids after editing its texts: python tests/test_tokenizer.py --regenerate-torture
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # (for running this file as a script, see above)

from conftest import oracle, shared_data  # noqa: E402
from nanogpt2 import tokenizer as T  # noqa: E402
from nanogpt2.errors import NanoGPT2Error  # noqa: E402
from nanogpt2.tokenizer import CharTokenizer, get_tokenizer  # noqa: E402

TORTURE = ROOT / "tests" / "fixtures" / "tokenizer_torture.json"
SHAKESPEARE_ASSET = ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt"
# The vocabulary checksum the data cache keys on; changing its definition invalidates every tokenized file.
GPT2_CHECKSUM = "081b9d145e0c2443d38650502a92e07a486d907839a5565cf264bee1f11458e2"

tiktoken = oracle("tiktoken", reason="tiktoken is the oracle for these tests: pip install tiktoken")


@pytest.fixture(scope="module")
def py():
    return get_tokenizer("gpt2", backend="python")


@pytest.fixture(scope="module")
def tk():
    return get_tokenizer("gpt2", backend="tiktoken")


@pytest.fixture(scope="module")
def oracle():
    """tiktoken itself, built straight from the bundled file (not through nanogpt2's wrapper)."""
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(T.GPT2_RANKS_FILE))
    return tiktoken.Encoding(
        name="oracle-gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",  # tiktoken's r50k form
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


def torture_cases():
    return json.loads(TORTURE.read_text(encoding="utf-8"))["cases"]


# ---------------------------------------------------------------------------------------------------------
# Known ids, special tokens, interface
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "tiktoken", "auto"])
def test_known_ids(backend):
    tok = get_tokenizer("gpt2", backend=backend)
    assert tok.name == "gpt2" and tok.n_vocab == 50257 and tok.eot_token == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode_ordinary("Hello world") == [15496, 995]
    assert tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.decode([50256]) == "<|endoftext|>"
    assert tok.decode_bytes([15496, 995]) == b"Hello world"
    assert tok.checksum == GPT2_CHECKSUM


def test_auto_prefers_tiktoken_and_backends_share_interface(py, tk):
    assert get_tokenizer("gpt2").backend == "tiktoken"
    assert get_tokenizer("gpt2", backend="python") is py  # bundled tokenizers are made once
    for attr in ["name", "n_vocab", "eot_token", "checksum", "encode", "encode_ordinary", "decode", "decode_bytes", "encode_batch"]:
        assert getattr(py, attr) is not None and getattr(tk, attr) is not None
    assert (py.name, py.n_vocab, py.eot_token, py.checksum) == (tk.name, tk.n_vocab, tk.eot_token, tk.checksum)


@pytest.mark.parametrize("backend", ["python", "tiktoken"])
def test_special_token_rules_match_tiktoken(backend, oracle):
    tok = get_tokenizer("gpt2", backend=backend)
    s = "a<|endoftext|>b <|endoftext|><|endoftext|> c<|endoftext"
    # Special text is an error unless allowed ...
    with pytest.raises(NanoGPT2Error, match="allowed_special"):
        tok.encode(s)
    with pytest.raises(ValueError):  # (tiktoken agrees)
        oracle.encode(s)
    # ... allowed: the special id; "all" allows all
    assert tok.encode(s, allowed_special={"<|endoftext|>"}) == oracle.encode(s, allowed_special={"<|endoftext|>"})
    assert tok.encode(s, allowed_special="all") == oracle.encode(s, allowed_special="all")
    assert tok.encode(s, allowed_special="all").count(50256) == 3
    # encode_ordinary and disallowed_special=() treat it as text
    assert tok.encode_ordinary(s) == oracle.encode_ordinary(s)
    assert 50256 not in tok.encode_ordinary(s)
    assert tok.encode(s, disallowed_special=()) == oracle.encode(s, disallowed_special=())
    assert tok.decode(tok.encode(s, allowed_special="all")) == s
    assert tok.decode(tok.encode_ordinary(s)) == s
    with pytest.raises(NanoGPT2Error, match="allowed_special must be"):
        tok.encode(s, allowed_special="<|endoftext|>")
    with pytest.raises(NanoGPT2Error, match="disallowed_special must be"):
        tok.encode(s, disallowed_special=5)


# ---------------------------------------------------------------------------------------------------------
# python backend == tiktoken: torture set, random Unicode, real corpora
# ---------------------------------------------------------------------------------------------------------


def test_torture_set(py, tk):
    cases = torture_cases()
    assert len(cases) >= 100
    texts = {c["text"] for c in cases}
    # the set covers what the issue lists
    for needle in ["\u200d", "日本", "مرحبا", "שלום", "\u0301", "\x00", "\r\n", "  ", "\t\t", "\n\n", "0123", "'S", "'ll", "DON'T"]:
        assert any(needle in t for t in texts), needle
    assert "" in texts and any(t != t.rstrip() for t in texts)
    for c in cases:
        text, ids = c["text"], c["ids"]
        assert py.encode_ordinary(text) == ids, text
        assert tk.encode_ordinary(text) == ids, text
        assert py.decode(ids) == text and tk.decode(ids) == text


def test_torture_set_cold_cache():
    """The same ids from a fresh tokenizer, where every pre-token goes through the merge loop once."""
    fresh = T.BPETokenizer(T._bundled_ranks())
    for c in torture_cases():
        assert fresh.encode_ordinary(c["text"]) == c["ids"], c["text"]


def _random_text(rng: random.Random) -> str:
    """Random Unicode: mostly any code point (no surrogates), mixed with the characters the pattern cares about."""
    fragments = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x0b", "\x1c", "'", "'s", "'S", "'ll", "'LL", "'t", "'d", "0", "42", "a", "Z", "é", ".", "!", "\u200d", "\u0301", "😀", "日"]
    blocks = [(0x20, 0x7F), (0x80, 0x800), (0x300, 0x370), (0x590, 0x700), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x0, 0x20), (0x2000, 0x2070)]
    out = []
    for _ in range(rng.randrange(0, 24)):
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice(fragments))
        elif r < 0.7:
            lo, hi = rng.choice(blocks)
            out.append(chr(rng.randrange(lo, hi)))
        else:
            cp = rng.randrange(0x110000 - 0x800)
            out.append(chr(cp + 0x800 if cp >= 0xD800 else cp))  # skip the surrogate block
    return "".join(out)


def test_random_unicode_seeded(py, tk, oracle):
    rng = random.Random(1234)
    texts = [_random_text(rng) for _ in range(5000)]
    for s in texts:
        ids = py.encode_ordinary(s)
        assert ids == oracle.encode_ordinary(s), repr(s)
        assert py.decode(ids) == s, repr(s)
    # and all at once, through both backends' batch encoders
    assert tk.encode_batch(texts) == [oracle.encode_ordinary(s) for s in texts]


def test_random_unicode_hypothesis(py, oracle):
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (the seeded test still runs)")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=1500, deadline=None, derandomize=True, database=None)
    @hypothesis.given(st.text(max_size=40))
    def check(s):
        ids = py.encode_ordinary(s)
        assert ids == oracle.encode_ordinary(s)
        assert py.decode(ids) == s

    check()


@pytest.mark.slow
def test_every_code_point_is_classed_like_tiktoken(oracle):
    """Letters, numbers, whitespace and "anything else" must agree with tiktoken's Rust regex for every
    assigned code point (planes 0-3 and 14 in full; the unassigned and private-use planes sampled). The
    contexts make the class visible in the ids: "'s" after a letter or number is a contraction, after
    anything else it joins the punctuation; a letter joins "a", a number joins "1". Then again for the
    code points where the installed regex's Unicode tables differ from tiktoken's (regex 2026.11.19: 17,480),
    where the python backend leaves its fast path."""
    py = T.BPETokenizer(T._bundled_ranks())
    cps = list(range(0xD800)) + list(range(0xE000, 0x40000)) + list(range(0xE0000, 0xE1000))
    cps += list(range(0x40000, 0xE0000, 61)) + list(range(0xE1000, 0x110000, 61))
    for k in range(0, len(cps), 16384):
        s = "".join(f"{c}'s {c}1a{c}\n" for c in map(chr, cps[k : k + 16384]))
        assert py.encode_ordinary(s) == oracle.encode_ordinary(s), f"code points {cps[k]:X}..{cps[min(k + 16383, len(cps) - 1)]:X}"
    # all of them in one text per context, and the first and last of each range alone
    ranges = T.regex_table_differences()
    for template in ["{c}'s", "x{c}y", " {c}{c}1", "{c}\ud800{c}'ll", "ok {c}", "  {c}\n"]:
        together = "".join(template.format(c=chr(c)) for a, b in ranges for c in range(a, b + 1))
        assert py.encode_ordinary(together) == oracle.encode_ordinary(together), template
        for c in sorted({c for a, b in ranges for c in (a, b)}):
            s = template.format(c=chr(c))
            assert py.encode_ordinary(s) == oracle.encode_ordinary(s), repr(s)
            assert py.decode(py.encode_ordinary(s)) == T._replace_surrogates(s)


# ---------------------------------------------------------------------------------------------------------
# The pre-tokenizer's classes: shipped as tiktoken's code points, never taken from regex's Unicode tables
# ---------------------------------------------------------------------------------------------------------


def rust_pattern(classes) -> str:
    """GPT-2's pattern for tiktoken's Rust regex with the classes spelled out as ranges (no \\p{...})."""

    def rust_set(ranges, negate=False):
        return "[" + "^" * negate + "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"

    L, N, W = rust_set(classes["L"]), rust_set(classes["N"]), rust_set(classes["s"])
    other, not_w = rust_set(T._union([classes["L"], classes["N"], classes["s"]]), True), rust_set(classes["s"], True)
    return rf"""'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?{other}+|{W}+(?!{not_w})|{W}+"""


def test_shipped_classes_are_tiktokens():
    """nanogpt2/unicode_classes.py holds what tiktoken's regex says now (else: rerun the script it names)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_unicode_classes

    assert make_unicode_classes.probe_tiktoken() == T.shipped_classes(), "run: python scripts/make_unicode_classes.py"
    assert "python scripts/make_unicode_classes.py" in (ROOT / "nanogpt2" / "unicode_classes.py").read_text(encoding="utf-8")


def test_explicit_pattern_matches_exactly_the_shipped_code_points(py):
    """The python backend's exact pattern names no Unicode property of `regex`: its sets are built from the
    shipped ranges, and each matches exactly those code points, out of all 0x110000."""
    exact = T.explicit_pattern(T.GPT2_PATTERN)
    assert not regex.search(r"\\[pPsSwWdD]", exact)  # no \\p{..}, \\s, \\w, \\d left: only \\u and \\U escapes
    assert "\\p" in T.GPT2_PATTERN and py.pattern == T.GPT2_PATTERN  # (the official string stays as it is)
    every = T._every_code_point()
    classes = T.shipped_classes()
    expected = {key: {c for a, b in classes[key] for c in range(a, b + 1)} for key in classes}
    other = set(range(0x110000)) - expected["L"] - expected["N"] - expected["s"]
    for cls, want in [(r"\p{L}", expected["L"]), (r"\p{N}", expected["N"]), (r"\s", expected["s"]),
                      (r"\S", set(range(0x110000)) - expected["s"]), (r"[^\s\p{L}\p{N}]", other)]:
        got = set(map(ord, regex.findall(T.explicit_pattern(cls), every)))
        assert got == want, (cls, sorted(got ^ want)[:10])
    # GPT2_PATTERN's sets, as the python backend compiles them, are these ...
    other_ranges = T._complement(T._union(list(classes.values())))
    assert other == {c for a, b in other_ranges for c in range(a, b + 1)}
    for ranges in [classes["L"], classes["N"], other_ranges]:
        assert exact.count(T._code_point_set(ranges)) == 1
    # ... and tiktoken given those ranges instead of its \\p{...} gives its own ids
    explicit_tk = tiktoken.Encoding(name="explicit", pat_str=rust_pattern(classes), mergeable_ranks=T._bundled_ranks(), special_tokens={})
    text = "".join(c["text"] for c in torture_cases()) + "".join(f"{chr(c)}'s {chr(c)}1a{chr(c)}\n" for c in range(0, 0x110000, 97) if not 0xD800 <= c < 0xE000)
    assert explicit_tk.encode_ordinary(text) == get_tokenizer("gpt2", backend="tiktoken").encode_ordinary(text)


def test_regex_table_differences_are_every_code_point_where_regex_disagrees():
    every = T._every_code_point()
    differ = {c for a, b in T.regex_table_differences() for c in range(a, b + 1)}
    brute = set()
    for key, cls in [("L", r"\p{L}"), ("N", r"\p{N}"), ("s", r"\s")]:
        regex_says = set(map(ord, regex.findall(cls, every)))
        shipped = {c for a, b in T.shipped_classes()[key] for c in range(a, b + 1)}
        brute |= regex_says ^ shipped
    assert differ == brute
    if regex.__version__ == "2026.11.19":  # Unicode 17+ tables against tiktoken 0.14's Unicode 16
        assert len(differ) == 17_480 and {0x558, 0x208F, 0xA7DD, 0x3F7EF} <= differ


def test_ids_follow_the_shipped_classes_not_regex_tables(py, oracle):
    """Give the python backend classes that differ from regex's tables on purpose (a letter made
    punctuation, a CJK letter made a number, an ideographic space made punctuation, "_" and U+0558 made
    letters): its ids must be those of tiktoken running the same explicit classes, for texts with and
    without those code points (the fast path, with regex's tables, on the latter)."""
    L, N, W = (list(T.shipped_classes()[k]) for k in "LNs")
    moved = T._union([[(0x5F, 0x5F), (0x558, 0x558)], T._symmetric_difference(L, [(0xE9, 0xE9), (0x4E00, 0x4E00)])])
    classes = {"L": moved, "N": T._union([N, [(0x4E00, 0x4E00)]]), "s": T._symmetric_difference(W, [(0x3000, 0x3000)])}
    assert T._symmetric_difference(classes["L"], L) == [(0x5F, 0x5F), (0xE9, 0xE9), (0x558, 0x558), (0x4E00, 0x4E00)]
    tok = T.BPETokenizer(T._bundled_ranks(), classes=classes)
    want = tiktoken.Encoding(name="moved", pat_str=rust_pattern(classes), mergeable_ranks=T._bundled_ranks(), special_tokens={})
    plain = "plain text, no moved code point"
    texts = ["café's snake_case 12一3 一a\u3000\u3000x \u0558's", "résumé", "a_b", " \u3000 ", plain]
    texts += [c["text"] for c in torture_cases()]
    for s in texts * 2:  # (twice: the second time with a warm cache)
        assert tok.encode_ordinary(s) == want.encode_ordinary(s), repr(s)
    assert tok.encode_ordinary(texts[0]) != oracle.encode_ordinary(texts[0])  # (the classes did change the ids)
    assert tok.encode_ordinary(plain) == py.encode_ordinary(plain) == oracle.encode_ordinary(plain)


def test_examples_from_regex_unicode_17_match_tiktoken(py, oracle):
    """Code points that regex 2026.11.19 (Unicode 17+) calls letters or numbers and tiktoken 0.14 does not."""
    for c in ["\U0003f7ef", "\u0558", "\u208f", "\ua7dd", "\U000323b0", "\U00011de0"]:
        for s in [f"{c}'ll", f"x{c}y", f" {c}{c}1", f"ok {c}'s {c}\n", f"{c}" * 3]:
            assert py.encode_ordinary(s) == oracle.encode_ordinary(s), repr(s)
            assert T.explain(s).endswith(f"ids: {oracle.encode_ordinary(s)}")


def test_lone_surrogates_are_replaced_like_tiktoken(py, tk, oracle):
    for s in ["a\ud800b", "\udfff", "x \ud83d\ude00 y", "\ud83d", "ok \udc00\udc00 "]:
        assert py.encode_ordinary(s) == oracle.encode_ordinary(s) == tk.encode_ordinary(s), repr(s)


def test_long_pieces_match_tiktoken(py, oracle):
    rng = random.Random(7)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzé") for _ in range(3000))
    texts = ["a" * 2000, letters, " " + letters, "!" * 1500 + "?" * 700, " " * 3000, "\n" * 1000 + "x", "7" * 2500, "😀" * 400]
    for s in texts:
        assert py.encode_ordinary(s) == oracle.encode_ordinary(s), s[:20]
        assert py.decode(py.encode_ordinary(s)) == s


def test_heap_merge_equals_simple_merge():
    """The O(n log n) merge used for long pre-tokens gives exactly the simple loop's result."""
    ranks = T._bundled_ranks()
    rng = random.Random(3)
    alphabet = [b"a", b"b", b"e", b"t", b"h", b" ", b"\xc3", b"\xa9", b"!", b"0"]
    for n in list(range(0, 40)) + [300, 1000]:
        for _ in range(20 if n < 40 else 3):
            piece = b"".join(rng.choice(alphabet) for _ in range(n))
            assert T._bpe_merge_long(piece, ranks) == T.bpe_merge(piece, ranks, trace=[]), piece


@pytest.mark.slow
@pytest.mark.parametrize(
    "relpath, n_tokens",
    [("tinyshakespeare/input.txt", 338_025), ("wikitext-2-raw/wiki.valid.raw", 249_887), ("wikitext-2-raw/wiki.test.raw", 286_221)],
)
def test_real_corpus_matches_tiktoken(relpath, n_tokens, oracle):
    text = shared_data(relpath).read_text(encoding="utf-8")
    py = T.BPETokenizer(T._bundled_ranks())  # fresh: cold cache
    ids = py.encode_ordinary(text)
    assert len(ids) == n_tokens
    assert ids == oracle.encode_ordinary(text)
    assert py.encode_ordinary(text) == ids  # warm cache, same answer
    assert py.decode(ids) == text


def test_long_text_chunking_gives_the_same_ids(monkeypatch, oracle):
    """encode_ordinary cuts texts longer than ENCODE_CHUNK; the cuts must not change a single id."""
    text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")[:200_000]
    text += "".join(c["text"] for c in torture_cases()) * 3
    monkeypatch.setattr(T, "ENCODE_CHUNK", 997)
    py = T.BPETokenizer(T._bundled_ranks())
    assert len(list(py._chunks(text))) > 50
    assert "".join(py._chunks(text)) == text
    assert py.encode_ordinary(text) == oracle.encode_ordinary(text)


def test_cache_is_bounded(monkeypatch, oracle):
    monkeypatch.setattr(T, "CACHE_MAX_ENTRIES", 100)
    py = T.BPETokenizer(T._bundled_ranks())
    text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")[:50_000]
    for part in [text[i : i + 5000] for i in range(0, len(text), 5000)]:
        assert py.encode_ordinary(part) == oracle.encode_ordinary(part)
        assert len(py._cache) <= 100 + len(part)  # emptied after each call that passes the limit
    assert len(py._cache) < 2000


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "tiktoken"])
def test_decode_arbitrary_ids_never_raises(backend, oracle):
    tok = get_tokenizer("gpt2", backend=backend)
    rng = random.Random(5)
    # ids of single bytes 0x80..0xFF split UTF-8 characters: the worst case for decoding
    raw_byte_ids = [oracle.encode_single_token(bytes([b])) for b in range(0x80, 0x100)]
    for _ in range(2000):
        ids = [rng.randrange(tok.n_vocab) if rng.random() < 0.6 else rng.choice(raw_byte_ids) for _ in range(rng.randrange(0, 12))]
        text = tok.decode(ids)
        assert isinstance(text, str)
        assert text == oracle.decode(ids, errors="replace")
        assert tok.decode_bytes(ids) == oracle.decode_bytes(ids)
    assert tok.decode([oracle.encode_single_token(b"\xe6")]) == "\ufffd"
    assert tok.decode([]) == "" and tok.decode_bytes([]) == b""
    # numpy arrays and torch tensors are fine
    assert tok.decode(np.array([15496, 995])) == "Hello world"
    assert tok.decode(torch.tensor([15496, 995])) == "Hello world"


@pytest.mark.parametrize("backend", ["python", "tiktoken"])
def test_decode_out_of_vocabulary_is_a_clear_error(backend):
    tok = get_tokenizer("gpt2", backend=backend)
    for bad in [[50257], [-1], [1, 2, 10**9], [1.5]]:
        with pytest.raises(NanoGPT2Error, match=r"ids must be ints in \[0, 50257\)"):
            tok.decode(bad)
    with pytest.raises(NanoGPT2Error, match="sequence of token ids"):
        tok.decode(5)


# ---------------------------------------------------------------------------------------------------------
# Loading: bundled file, OpenAI's encoder.json + vocab.bpe, bad files
# ---------------------------------------------------------------------------------------------------------


def test_bundled_ranks_equal_tiktokens_reading():
    from tiktoken.load import load_tiktoken_bpe

    ranks = T.load_tiktoken_ranks()
    assert len(ranks) == 50256
    assert ranks == load_tiktoken_bpe(str(T.GPT2_RANKS_FILE))
    assert T.vocabulary_checksum(ranks, T.GPT2_SPECIAL_TOKENS) == GPT2_CHECKSUM


def test_encoder_json_vocab_bpe_give_the_same_tokenizer(py):
    d = shared_data("gpt2_bpe")
    ranks, special = T.load_encoder_json_vocab_bpe(d / "encoder.json", d / "vocab.bpe")
    assert ranks == T._bundled_ranks()
    assert special == {"<|endoftext|>": 50256}
    for backend in ["python", "tiktoken"]:
        tok = get_tokenizer("gpt2", backend=backend, encoder_json=d / "encoder.json", vocab_bpe=d / "vocab.bpe")
        same = get_tokenizer("gpt2", backend=backend, bpe_dir=d)
        assert tok.checksum == same.checksum == py.checksum
        text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")[:100_000] + "".join(c["text"] for c in torture_cases())
        assert tok.encode_ordinary(text) == same.encode_ordinary(text) == py.encode_ordinary(text)
        assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]


def write_encoder_json_vocab_bpe(folder: Path):
    """OpenAI's pair of files, written from the bundled ranks (so the loader is tested without ../shared).

    encoder.json maps each token's printable spelling to its id; vocab.bpe line i is the merge that makes
    token 256 + i: the last merge the BPE loop does on that token's own bytes (every GPT-2 token is the
    result of BPE on its bytes, its own merge coming last; the shared-data test checks the output is
    byte-identical to OpenAI's vocab.bpe)."""
    ranks = T._bundled_ranks()
    encoder = {T.token_to_str(tok): rank for tok, rank in ranks.items()}
    encoder["<|endoftext|>"] = 50256
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])[256:]:
        trace = []
        assert T.bpe_merge(tok, ranks, trace) == [tok]
        a, b = trace[-1]  # the parts before the final merge
        merges.append(f"{T.token_to_str(a)} {T.token_to_str(b)}")
    (folder / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return write_encoder_json_vocab_bpe(tmp_path_factory.mktemp("gpt2_bpe"))


def test_encoder_json_vocab_bpe_written_here_load_like_the_bundled_file(bpe_dir, py, oracle):
    ranks, special = T.load_encoder_json_vocab_bpe(bpe_dir / "encoder.json", bpe_dir / "vocab.bpe")
    assert ranks == T._bundled_ranks() and special == {"<|endoftext|>": 50256}
    text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")[:50_000] + "".join(c["text"] for c in torture_cases())
    for backend in ["python", "tiktoken"]:
        tok = get_tokenizer("gpt2", backend=backend, bpe_dir=bpe_dir)
        assert tok.checksum == py.checksum == GPT2_CHECKSUM
        assert tok.encode_ordinary(text) == oracle.encode_ordinary(text)
    # a pair that does not belong together is refused, naming both files
    lines = (bpe_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    bad = bpe_dir.parent / "swapped.bpe"
    bad.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(NanoGPT2Error, match=r"swapped.bpe does not match .*encoder.json: merge 0"):
        get_tokenizer("gpt2", backend="python", encoder_json=bpe_dir / "encoder.json", vocab_bpe=bad)


def test_vocab_bpe_written_here_is_openais(bpe_dir):
    d = shared_data("gpt2_bpe")
    ours, openai = ((f / "vocab.bpe").read_text(encoding="utf-8").split("\n") for f in (bpe_dir, d))
    assert len(ours) > 50_000 and ours[1:] == openai[1:]  # (line 0 is a "#version" comment)


def test_encoder_json_vocab_bpe_mismatch_is_an_error(tmp_path):
    d = shared_data("gpt2_bpe")
    lines = (d / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # swap two merges
    (tmp_path / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(NanoGPT2Error, match="does not match"):
        T.load_encoder_json_vocab_bpe(d / "encoder.json", tmp_path / "vocab.bpe")
    (tmp_path / "encoder.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(NanoGPT2Error, match="not a valid encoder.json"):
        T.load_encoder_json_vocab_bpe(tmp_path / "encoder.json", d / "vocab.bpe")
    with pytest.raises(NanoGPT2Error, match="both encoder_json= and vocab_bpe="):
        get_tokenizer("gpt2", encoder_json=d / "encoder.json")


def test_missing_rank_file_is_an_error(tmp_path):
    with pytest.raises(NanoGPT2Error, match="not found"):
        get_tokenizer("gpt2", ranks_file=tmp_path / "nope.tiktoken")
    with pytest.raises(NanoGPT2Error, match="not found"):
        get_tokenizer("gpt2", bpe_dir=tmp_path)


def test_corrupt_rank_file_is_an_error(tmp_path):
    good = T.GPT2_RANKS_FILE.read_bytes()
    cases = {
        "garbage.tiktoken": good[:5000] + b"\nthis is not base64 and a rank\n" + good[5000:],
        "badbase64.tiktoken": b"!!!! 0\n" + good,
        "truncated.tiktoken": good[:1000],  # the single bytes are incomplete
        "duplicate.tiktoken": good + good.splitlines(keepends=True)[0],
        "binary.tiktoken": bytes(range(256)) * 10,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NanoGPT2Error, match="corrupt|incomplete"):
            get_tokenizer("gpt2", backend="python", ranks_file=tmp_path / name)


def test_wrong_checksum_is_an_error(tmp_path, monkeypatch):
    bad = T.GPT2_RANKS_FILE.read_bytes() + b"\n"  # one more byte, still a valid file
    (tmp_path / "gpt2.tiktoken").write_bytes(bad)
    with pytest.raises(NanoGPT2Error, match="sha256"):
        get_tokenizer("gpt2", ranks_file=tmp_path / "gpt2.tiktoken", sha256=T.GPT2_RANKS_SHA256)
    # the bundled file is always checked: pretend the flipped copy is the bundled one
    monkeypatch.setattr(T, "GPT2_RANKS_FILE", (tmp_path / "gpt2.tiktoken").resolve())
    with pytest.raises(NanoGPT2Error, match="corrupt or was modified"):
        T.load_tiktoken_ranks(tmp_path / "gpt2.tiktoken")
    # an explicit, correct sha256 of the user's own file is accepted
    import hashlib

    tok = get_tokenizer("gpt2", backend="python", ranks_file=tmp_path / "gpt2.tiktoken", sha256=hashlib.sha256(bad).hexdigest())
    assert tok.n_vocab == 50257


@pytest.mark.parametrize("backend", ["python", "tiktoken"])
def test_non_str_input_is_an_error(backend):
    tok = get_tokenizer("gpt2", backend=backend)
    for bad in [b"bytes", None, 42, ["a", "b"]]:
        with pytest.raises(NanoGPT2Error, match="expects a str"):
            tok.encode(bad)
        with pytest.raises(NanoGPT2Error, match="expects a str"):
            tok.encode_ordinary(bad)
    with pytest.raises(NanoGPT2Error, match="decode bytes first"):
        tok.encode(b"bytes")
    with pytest.raises(NanoGPT2Error, match="expects a str"):
        tok.encode_batch(["ok", b"not ok"])


def test_get_tokenizer_bad_arguments():
    with pytest.raises(NanoGPT2Error, match="unknown tokenizer 'gpt3'"):
        get_tokenizer("gpt3")
    with pytest.raises(NanoGPT2Error, match="unknown tokenizer backend"):
        get_tokenizer("gpt2", backend="rust")
    with pytest.raises(NanoGPT2Error, match="unknown option"):
        get_tokenizer("gpt2", vocab_size=10)
    with pytest.raises(NanoGPT2Error, match="no tiktoken backend"):
        get_tokenizer("char", backend="tiktoken", chars="ab")


def test_no_network_ever(monkeypatch, tmp_path):
    """Both backends, auto included, are built from the bundled file: with every socket refused and an empty
    tiktoken cache they still work (tiktoken.get_encoding would download r50k_base here)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    for backend in ["auto", "tiktoken", "python"]:  # (ranks_file= skips the per-process cache: built afresh)
        tok = get_tokenizer("gpt2", backend=backend, ranks_file=T.GPT2_RANKS_FILE)
        assert tok.backend == ("tiktoken" if backend == "auto" else backend)
        assert tok.encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, 50256]
    with pytest.raises(OSError, match="network disabled"):  # (the guard itself works)
        socket.create_connection(("127.0.0.1", 9))
    assert not (tmp_path / "tiktoken-cache").exists()


def test_auto_falls_back_to_python_without_tiktoken(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` now raises ImportError
    tok = get_tokenizer("gpt2", backend="auto", ranks_file=T.GPT2_RANKS_FILE)
    assert tok.backend == "python" and tok.encode("Hello world") == [15496, 995]
    with pytest.raises(NanoGPT2Error, match="pip install tiktoken"):
        get_tokenizer("gpt2", backend="tiktoken", ranks_file=T.GPT2_RANKS_FILE)


# ---------------------------------------------------------------------------------------------------------
# Batch encoders
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_encode_batch_both_backends(oracle):
    text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")[:400_000]
    texts = text.splitlines(keepends=True) + [c["text"] for c in torture_cases()]
    want = [oracle.encode_ordinary(t) for t in texts]
    py = T.BPETokenizer(T._bundled_ranks())
    try:
        assert py.encode_batch(texts, num_workers=2) == want  # worker processes
        assert py._pool is not None and py._pool[0] == 2
        assert py.encode_batch(iter(texts), num_workers=2) == want  # again, on the same (warm) pool
        assert py.encode_batch(texts[:10]) == want[:10]  # small: in-process
        assert py.encode_batch([]) == []
        # a worker that dies (e.g. killed for memory) is one clear error, and the next call starts afresh
        os.kill(next(iter(py._pool[1]._processes)), signal.SIGKILL)
        with pytest.raises(NanoGPT2Error, match="worker process died"):
            py.encode_batch(texts, num_workers=2)
        assert py._pool is None
        assert py.encode_batch(texts, num_workers=2) == want
    finally:
        py.close()
    assert py._pool is None
    tk = get_tokenizer("gpt2", backend="tiktoken")
    assert tk.encode_batch(texts, num_workers=2) == want
    assert tk.encode_batch(texts, num_workers=1) == want
    with pytest.raises(NanoGPT2Error, match="num_workers"):
        tk.encode_batch(texts, num_workers=0)


# ---------------------------------------------------------------------------------------------------------
# Character level
# ---------------------------------------------------------------------------------------------------------


def test_char_tokenizer(tmp_path):
    text = SHAKESPEARE_ASSET.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.name == "char" and tok.n_vocab == 65 and tok.eot_token is None  # nanoGPT's shakespeare_char
    assert tok.chars == sorted(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and max(ids) == 64 and tok.decode(ids) == text
    assert tok.encode("hi") == [tok.chars.index("h"), tok.chars.index("i")]
    assert tok.decode_bytes(tok.encode("hi!")) == b"hi!"
    assert tok.encode_batch(["ab", "", "c"]) == [tok.encode("ab"), [], tok.encode("c")]
    # save / load (JSON) and every way of getting one by name
    tok.save(tmp_path / "vocab.json")
    json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    for other in [
        CharTokenizer.load(tmp_path / "vocab.json"),
        get_tokenizer("char", path=tmp_path / "vocab.json"),
        get_tokenizer("char", chars=sorted(set(text))),
        get_tokenizer("char", text=text),
    ]:
        assert other.chars == tok.chars and other.checksum == tok.checksum and other.encode(text[:1000]) == ids[:1000]
    assert CharTokenizer.from_text("abc").checksum != CharTokenizer.from_text("abd").checksum
    # unusual characters survive the JSON round trip
    weird = CharTokenizer.from_text("a\x00\n\r\u200d😀日\"\\")
    weird.save(tmp_path / "weird.json")
    assert CharTokenizer.load(tmp_path / "weird.json").chars == weird.chars


def test_char_tokenizer_errors(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(NanoGPT2Error, match=r"not in the character vocabulary, e.g. \['!', 'X'\]"):
        tok.encode("hello X!")
    with pytest.raises(NanoGPT2Error, match=r"ids must be ints in \[0, 8\)"):
        tok.decode([8])
    with pytest.raises(NanoGPT2Error, match=r"ids must be ints in \[0, 8\)"):
        tok.decode([-1])
    with pytest.raises(NanoGPT2Error, match="expects a str"):
        tok.encode(b"hello")
    with pytest.raises(NanoGPT2Error, match="must not repeat"):
        get_tokenizer("char", chars="hello")
    with pytest.raises(NanoGPT2Error, match="exactly one of"):
        get_tokenizer("char")
    with pytest.raises(NanoGPT2Error, match="not found"):
        CharTokenizer.load(tmp_path / "missing.json")
    with pytest.raises(NanoGPT2Error, match="cannot write"):
        tok.save(tmp_path / "no such folder" / "vocab.json")
    (tmp_path / "bad.json").write_text('{"chars": 5}', encoding="utf-8")
    with pytest.raises(NanoGPT2Error, match="not a character vocabulary"):
        CharTokenizer.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------------------
# Learner's view, command line
# ---------------------------------------------------------------------------------------------------------


def test_explain_shows_merges_and_ids():
    out = T.explain("Hello world")
    assert "merge 'l' + 'l' (rank 297)" in out
    assert "-> Ġworld  ids [995]" in out
    assert out.splitlines()[-1] == "ids: [15496, 995]"


def test_command_line(capsys):
    from nanogpt2.errors import run_cli

    T.main(["Hello", "world"])
    assert "ids: [15496, 995]" in capsys.readouterr().out
    T.main(["--decode", "15496", "995"])
    assert capsys.readouterr().out == "Hello world\n"
    with pytest.raises(SystemExit) as e:
        run_cli(T.main, ["--decode", "99999"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: cannot decode token id 99999")
    # and as a module, in a fresh process
    r = subprocess.run([sys.executable, "-m", "nanogpt2.tokenizer", "Hello world"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ids: [15496, 995]" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------------------
# Maintenance: regenerate the torture set's ids with tiktoken
# ---------------------------------------------------------------------------------------------------------

if __name__ == "__main__" and "--regenerate-torture" in sys.argv:
    doc = json.loads(TORTURE.read_text(encoding="utf-8"))
    enc = get_tokenizer("gpt2", backend="tiktoken")
    cases = [{"text": c["text"], "ids": enc.encode_ordinary(c["text"])} for c in doc["cases"]]
    lines = ",\n".join(" " + json.dumps(c) for c in cases)
    TORTURE.write_text('{"about": ' + json.dumps(doc["about"]) + ',\n"cases": [\n' + lines + "\n]}\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {TORTURE}")
