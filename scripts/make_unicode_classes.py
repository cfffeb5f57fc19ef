r"""
Generate nanogpt2/unicode_classes.py: the letters (\p{L}), numbers (\p{N}) and whitespace (\s) of GPT-2's
pre-tokenizer as the code-point ranges tiktoken uses, so that the python tokenizer backend gives tiktoken's
ids whatever Unicode tables the installed `regex` release carries (see nanogpt2/tokenizer.py,
explicit_pattern). A development tool, not part of the package: it needs tiktoken.

How tiktoken is probed. tiktoken has no pre-tokenizer API, but it only encodes the text its pattern
matches. An Encoding whose pattern is `\p{L}` alone (or `\p{N}`, or `\s`) and whose vocabulary is the 256
single bytes (byte b = id b) turns the text of every code point (planes 0-16, no surrogates) into exactly the
UTF-8 bytes of the code points its Rust regex puts in that class: the class read off the same engine and
Unicode tables that the tiktoken backend runs GPT2_PATTERN with. (GPT2_PATTERN's other classes are built
from these: [^\s\p{L}\p{N}] and \S.)

Checks before anything is written; the script stops with the offending code points otherwise:
1. the classes are disjoint and hold the ASCII letters, digits and whitespace;
2. the python backend's sets (explicit_pattern), matched against every code point, give back exactly them;
3. the python backend built on them gives tiktoken's ids (GPT-2's ranks, GPT2_PATTERN) for every code
   point in contexts that show its class, like tests/test_tokenizer.py; a batch that differs is bisected
   down to its code points.

Run from the repository root (about 3 minutes on the project's shared 2-core machine, nearly all of it check 3):
    python scripts/make_unicode_classes.py            # probe, check, write nanogpt2/unicode_classes.py
    python scripts/make_unicode_classes.py --check    # probe, check, exit 1 if the committed file differs
"""

import argparse
import sys
import time
from pathlib import Path

import regex
import tiktoken

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nanogpt2 import tokenizer as T  # noqa: E402

OUTPUT = ROOT / "nanogpt2" / "unicode_classes.py"
COMMAND = "python scripts/make_unicode_classes.py"
CLASSES = {"L": ("LETTERS", r"\p{L}", "Letters"), "N": ("NUMBERS", r"\p{N}", "Numbers"), "s": ("WHITESPACE", r"\s", "Whitespace")}
# Contexts that make a code point's class visible in the ids (the first is the test's): "'s" after a
# letter, number or space is a contraction and joins punctuation otherwise; "a" and "1" join letters and
# numbers; a space before c joins c unless c is whitespace, when "\s+(?!\S)" keeps the run whole.
CONTEXTS = ["{c}'s {c}1a{c}\n", "x  {c}y{c}{c}'ll 7{c}!", "{c}.\t{c}  {c}"]
BATCH = 16384


# ---------------------------------------------------------------------------------------------------------
# Probing tiktoken
# ---------------------------------------------------------------------------------------------------------


def all_code_points() -> list:
    """Planes 0-16 without the surrogates (which no str that tiktoken accepts can hold)."""
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def probe_tiktoken() -> dict:
    """{"L" | "N" | "s": sorted (first, last) ranges} of the code points tiktoken's regex puts in each class."""
    text = "".join(map(chr, all_code_points()))
    single_bytes = {bytes([b]): b for b in range(256)}
    classes = {}
    for key, (_, pattern, _) in CLASSES.items():
        enc = tiktoken.Encoding(name=f"probe-{key}", pat_str=pattern, mergeable_ranks=single_bytes, special_tokens={})
        matched = bytes(enc.encode_ordinary(text)).decode("utf-8")  # the matched code points, in order
        classes[key] = to_ranges(map(ord, matched))
    return classes


def to_ranges(code_points) -> tuple:
    """Increasing code points -> ((first, last), ...) of the runs of consecutive ones."""
    ranges = []
    for c in code_points:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            if ranges and c <= ranges[-1][1]:
                raise SystemExit(f"error: tiktoken's matches are not increasing at U+{c:04X}; cannot read the class")
            ranges.append([c, c])
    return tuple((a, b) for a, b in ranges)


def expand(ranges) -> set:
    return {c for a, b in ranges for c in range(a, b + 1)}


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def check_classes(classes: dict) -> None:
    """1. disjoint, with the ASCII members every Unicode version agrees on."""
    sets = {k: expand(r) for k, r in classes.items()}
    for a, b in [("L", "N"), ("L", "s"), ("N", "s")]:
        if sets[a] & sets[b]:
            raise SystemExit(f"error: {a} and {b} overlap, e.g. U+{min(sets[a] & sets[b]):04X}")
    ascii_ = {"L": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "N": "0123456789", "s": "\t\n\v\f\r "}
    for k, chars in ascii_.items():
        got = {chr(c) for c in sets[k] if c < 0x80}
        if got != set(chars):
            raise SystemExit(f"error: tiktoken's {CLASSES[k][1]} holds the ASCII {sorted(got)!r}, expected {chars!r}")


def check_compiled_sets(classes: dict) -> None:
    """2. each class, spelled out by explicit_pattern and compiled by `regex`, matches exactly its code points."""
    text = "".join(map(chr, all_code_points()))
    for key, (_, pattern, _) in CLASSES.items():
        got = set(map(ord, regex.findall(T.explicit_pattern(pattern, classes), text)))
        want = expand(classes[key])
        if got != want:
            bad = sorted(got ^ want)
            raise SystemExit(f"error: the compiled set for {pattern} differs at {len(bad)} code points, e.g. {fmt(bad[:10])}")


def check_ids(classes: dict) -> None:
    """3. python backend on these classes == tiktoken, for every code point in every context."""
    ranks = T._bundled_ranks()
    py, tk = T.BPETokenizer(ranks, classes=classes), T.TiktokenTokenizer(ranks)
    cps = all_code_points()
    bad = []
    for context in CONTEXTS:
        for k in range(0, len(cps), BATCH):
            bad += differing(cps[k : k + BATCH], context, py, tk)
    if bad:
        raise SystemExit(f"error: the python backend differs from tiktoken at {len(bad)} code points / batches: {bad[:20]}")


def differing(cps, context, py, tk) -> list:
    """The code points of `cps` whose contexts give other ids than tiktoken (bisecting a differing batch)."""
    text = "".join(context.format(c=chr(c)) for c in cps)
    if py.encode_ordinary(text) == tk.encode_ordinary(text):
        return []
    if len(cps) == 1:
        return [f"U+{cps[0]:04X} in {context!r}"]
    half = len(cps) // 2
    found = differing(cps[:half], context, py, tk) + differing(cps[half:], context, py, tk)
    return found or [f"U+{cps[0]:04X}..U+{cps[-1]:04X} together in {context!r}"]  # (only the batch as a whole)


def fmt(cps) -> str:
    return ", ".join(f"U+{c:04X}" for c in cps)


# ---------------------------------------------------------------------------------------------------------
# Writing nanogpt2/unicode_classes.py
# ---------------------------------------------------------------------------------------------------------


def render(classes: dict) -> str:
    version = tiktoken.__version__
    out = [
        'r"""',
        f"GPT-2's pre-tokenizer classes as tiktoken {version} sees them: letters (\\p{{L}}), numbers (\\p{{N}}),",
        "whitespace (\\s). Every other code point is \"anything else\" ([^\\s\\p{L}\\p{N}]).",
        "",
        f"GENERATED FILE, do not edit. Made by `{COMMAND}`, which probes tiktoken {version}'s",
        "Rust regex for every code point and checks the result (see the script). nanogpt2/tokenizer.py spells",
        "GPT2_PATTERN's classes out with these (explicit_pattern), so the python backend does not depend on the",
        "Unicode tables of the installed `regex` release. Each class: (first, last) code-point ranges, inclusive,",
        "sorted, disjoint.",
        '"""',
        "",
        f'TIKTOKEN_VERSION = "{version}"',
    ]
    for key, (name, pattern, title) in CLASSES.items():
        ranges = classes[key]
        n = sum(b - a + 1 for a, b in ranges)
        out += ["", "# " + "-" * 105, f"# {title} ({pattern}): {n:,} code points in {len(ranges)} ranges", "# " + "-" * 105, ""]
        out.append(f"{name} = (")
        for i in range(0, len(ranges), 5):
            out.append("    " + " ".join(f"(0x{a:04X}, 0x{b:04X})," for a, b in ranges[i : i + 5]))
        out.append(")")
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Probe tiktoken's letter / number / whitespace classes and write nanogpt2/unicode_classes.py.")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed file differs")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    classes = probe_tiktoken()
    check_classes(classes)
    check_compiled_sets(classes)
    check_ids(classes)
    text = render(classes)
    counts = ", ".join(f"{CLASSES[k][0]} {sum(b - a + 1 for a, b in r):,} ({len(r)} ranges)" for k, r in classes.items())
    print(f"tiktoken {tiktoken.__version__}: {counts}; checked in {time.perf_counter() - t0:.0f} s")
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT.relative_to(ROOT)} is {'up to date' if same else 'OUT OF DATE: run ' + COMMAND}")
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
