"""
Instruction tuning (Stanford Alpaca): prompt templates, prompt masking, the dataset, padded batches, and the
`instruct` task of finetune.py.

    python finetune.py configs/instruct_alpaca_lora.py           # LoRA r=4 alpha=8 on gpt2, 3 epochs of Alpaca
    python -m nanogpt2.instruct --show 5                          # look at the tokenized data before training
    python -m nanogpt2.instruct --show 3 --dataset my_data.jsonl --max_length 256
    python sample.py --init_from out-instruct-lora --template alpaca --instruction "Name three colors."

What is here, in reading order:
- templates: Stanford Alpaca's `PROMPT_DICT` word for word (one with an input, one without, chosen by
  `input != ""`), or the user's (`template=`: text with `{instruction}` and `{input}`, a file holding it, or a
  JSON file with Alpaca's two keys `prompt_input` / `prompt_no_input`); `format_prompt(record, template)`;
- records: `alpaca` by name (the Stanford Alpaca repository's `alpaca_data.json`, 52,002 records, downloaded
  once into the cache by nanogpt2.download) or any local JSON array / JSONL of objects with `instruction`,
  `output` and optionally `input` (other keys ignored); a bad record is an error naming its index;
- encoding: `encode_example(record, tokenizer, max_length, train_on_input) -> (input_ids, labels)`: the ids of
  tokenize(prompt + output) followed by <|endoftext|> (the target is output + eos, appended right after
  "### Response:" as Alpaca does), labels -100 on the prompt tokens, the ids elsewhere;
- the validation report (records, inputs, lengths in tokens, truncation) and the quality view (`--show N`);
- batches: right padding with eos (labels -100), dynamic padding to the longest row, a seeded sampler whose
  batch is a pure function of (seed, step, rank) (resume needs no sampler state but the step);
- the task: response-only loss, response-only validation loss and perplexity on a seeded held-out slice,
  and answers to a few fixed instructions (greedy and top-p) every `sample_interval` steps.

Prompt masking and the boundary token. Alpaca tokenizes the prompt alone and masks that many tokens of the
full text. With GPT-2's BPE the two tokenizations can differ at the seam: "### Response:" followed by a
response that starts with punctuation ('"Hello"') is one pre-token ':"' in the full text, so the full text has
a token holding the prompt's last character and the response's first. Here the prompt tokens are the tokens
of the full text that lie wholly inside the prompt's bytes (the usual case: exactly len(tokenize(prompt)) of
them); a token straddling the seam holds response text and carries loss. The report counts such records.

Truncation to `max_length` never cuts the whole response away: the response keeps at least a quarter of
max_length (or all of itself, if shorter); what does not fit is cut from the response's end, and only a
prompt too long to leave that room is cut, in the middle (its start, with the instruction, and its end, with
"### Response:", stay). Records cut either way are counted in the report.

References: Taori et al. 2023, Stanford Alpaca (`train.py`: PROMPT_DICT, preprocess, the collator); HF
transformers' GPT2LMHeadModel loss with labels -100 (the tests compare with it).
Docs: docs/instruct.md. Tests: python -m pytest -q tests/test_instruct.py
"""

import argparse
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nanogpt2.data import Remote, default_cache_root
from nanogpt2.errors import DataWarning, NanoGPT2Error, read_text, run_cli, write_error
from nanogpt2.lm_results import LMResults, eval_scores
from nanogpt2.losses import (course_key_token_loss, key_counts, key_token_weighted_loss, masked_mean_loss,
                             parse_key_tokens)
from nanogpt2.model import IGNORE_INDEX
from nanogpt2.task_metrics import TaskMetrics
from nanogpt2.tokenizer import get_tokenizer

DEFAULT_MAX_LENGTH = 512        # tokens per example when max_length=0 (Alpaca's model_max_length)
DEFAULT_VAL_FRACTION = 0.02     # held-out share of the records when val_fraction is none (Alpaca: 1,040 records)
TOP_P = 0.9                     # nucleus of the top-p answers every sample_interval
HELD_OUT = "held-out"           # the split the baseline and the results tree score (the response tokens)

# ----------------------------------------------------------------------------------------------------
# Templates

# Stanford Alpaca's train.py, word for word: the response follows "### Response:" directly.
PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
_PLACEHOLDER = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True)
class Template:
    """A prompt template: `with_input` for records whose input is not "", `no_input` for the others (one text
    may serve both). Placeholders {instruction} and {input} are replaced in one pass (so a record's text that
    itself holds "{input}" stays as it is); other text, braces included, is kept."""

    name: str
    with_input: str
    no_input: str

    def format(self, record: dict) -> str:
        fields = {"instruction": record["instruction"], "input": record.get("input") or ""}
        text = self.with_input if fields["input"] != "" else self.no_input
        return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], text)


ALPACA = Template("alpaca", PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"])


def _checked(name: str, with_input: str, no_input: str) -> Template:
    for text in {with_input, no_input}:
        names = set(_PLACEHOLDER.findall(text))
        if "output" in names:
            raise NanoGPT2Error(f"template {name}: {{output}} does not belong in the prompt (the response is appended "
                                f"right after it); remove it")
        if names - {"instruction", "input"}:
            raise NanoGPT2Error(f"template {name}: unknown placeholder(s) {sorted(names - {'instruction', 'input'})}; "
                                f"the placeholders are {{instruction}} and {{input}}")
        if "instruction" not in names:
            raise NanoGPT2Error(f"template {name} has no {{instruction}} placeholder; put {{instruction}} (and "
                                f"{{input}}) where the record's text goes")
    return Template(name, with_input, no_input)


@lru_cache(maxsize=16)
def resolve_template(spec="alpaca") -> Template:
    """`template=`: "alpaca", a file (a JSON object with Alpaca's keys prompt_input / prompt_no_input, or the text
    of one template for every record), or the template text itself (holding {instruction})."""
    if isinstance(spec, Template):
        return spec
    if spec == "alpaca":
        return ALPACA
    if "{instruction}" not in spec and Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        text = read_text(path, "template file")
        if path.suffix == ".json":
            try:
                d = json.loads(text)
                return _checked(str(path), d["prompt_input"], d["prompt_no_input"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise NanoGPT2Error(f"template file {path}: a .json template must be an object with the strings "
                                    f"prompt_input and prompt_no_input (Alpaca's PROMPT_DICT)") from None
        return _checked(str(path), text, text)
    if "{" not in spec:
        raise NanoGPT2Error(f"template={spec!r} is neither 'alpaca', an existing file, nor template text with "
                            f"{{instruction}}")
    return _checked("(text)", spec, spec)


def format_prompt(record: dict, template="alpaca") -> str:
    """The prompt of a record ({"instruction", "input"?}): Alpaca's template with or without input."""
    return resolve_template(template).format(record)


# ----------------------------------------------------------------------------------------------------
# Records: alpaca by name, or a local JSON array / JSONL

ALPACA_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
ALPACA_RECORDS = 52002
# The release's size and sha256 are not pinned here (not verified by us); the download checks the length the
# server announces, and the record count is compared with the release's after reading.
INSTRUCT_DATASETS = {"alpaca": Remote("alpaca_data.json", urls=(ALPACA_URL,))}


def check_records(data, where: str) -> list:
    """The records of `data` (a parsed list), with input "" where absent/null; every problem is one error naming
    up to five record indices (0-based) per kind, never a silent drop."""
    if not isinstance(data, list):
        raise NanoGPT2Error(f"{where} holds a JSON {type(data).__name__}, not a list of records; give a JSON array "
                            f"of {{\"instruction\", \"input\", \"output\"}} objects, or JSONL (one per line)")
    problems = {}
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            problems.setdefault(f"are not JSON objects (e.g. a {type(r).__name__})", []).append(i)
            continue
        for key in ("instruction", "output"):
            if key not in r:
                problems.setdefault(f"lack '{key}'", []).append(i)
            elif not isinstance(r[key], str):
                problems.setdefault(f"have a non-string '{key}' (e.g. {type(r[key]).__name__})", []).append(i)
        if r.get("input") is not None and not isinstance(r["input"], str):
            problems.setdefault(f"have a non-string 'input' (e.g. {type(r['input']).__name__})", []).append(i)
    if problems:
        what, idx = next(iter(problems.items()))
        shown = ", ".join(map(str, idx[:5])) + (", ..." if len(idx) > 5 else "")
        more = f" (and {len(problems) - 1} other kind(s) of problem)" if len(problems) > 1 else ""
        raise NanoGPT2Error(f"{where}: {len(idx)} record(s) {what}: record(s) {shown} (0-based){more}; every record "
                            f"needs the strings instruction and output (input is optional); fix or remove them")
    if not data:
        raise NanoGPT2Error(f"{where} holds no records")
    return [{"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]} for r in data]


def read_records(path) -> list:
    """Records from a JSON array or JSONL file (detected by the first character), validated."""
    path = Path(path).expanduser()
    text = read_text(path, "instruction data file")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise NanoGPT2Error(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); give a JSON "
                                f"array of instruction / input / output records, or JSONL (one record per line)") from None
        return check_records(data, str(path))
    data = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise NanoGPT2Error(f"{path} is not JSON: line {n} is not a JSON record ({e.msg}); give a JSON array of "
                                    f"instruction / input / output records, or JSONL (one record per line)") from None
    return check_records(data, str(path))


def _download(name: str, quiet: bool) -> Path:
    from nanogpt2.download import download

    remote = INSTRUCT_DATASETS[name]
    return download(remote.urls[0], default_cache_root() / "downloads" / remote.filename, sha256=remote.sha256,
                    size=remote.size, quiet=quiet, desc=f"{name} ({remote.filename})",
                    local_hint=f"If you have a copy of {remote.filename}, pass it with --data_path PATH (data_path= in "
                               f"a config file).")


def load_records(dataset: str, data_path: str = "", quiet: bool = False):
    """(records, where they came from) for `alpaca` (your copy at data_path, else the cached download) or a
    local .json / .jsonl file. A cached download that no longer parses is fetched once more."""
    if dataset in INSTRUCT_DATASETS:
        if data_path:
            return read_records(data_path), str(data_path)
        path = _download(dataset, quiet)
        try:
            records = read_records(path)
        except NanoGPT2Error:
            if not quiet:
                print(f"{dataset}: the cached {path} does not read as instruction records; downloading it again",
                      file=sys.stderr)
            path.unlink(missing_ok=True)
            try:
                records = read_records(_download(dataset, quiet))
            except NanoGPT2Error as e:
                url = INSTRUCT_DATASETS[dataset].urls[0]
                raise NanoGPT2Error(f"{url} served a file that is not instruction records ({e}); pass your copy of "
                                    f"{path.name} with --data_path PATH") from None
        if dataset == "alpaca" and len(records) != ALPACA_RECORDS and not quiet:
            print(f"note: {path} holds {len(records):,} records; the Stanford Alpaca release has {ALPACA_RECORDS:,}",
                  file=sys.stderr)
        return records, str(path)
    path = Path(dataset).expanduser()
    if path.suffix not in (".json", ".jsonl") or not path.is_file():
        raise NanoGPT2Error(f"task=instruct reads instruction data: dataset must be {' | '.join(INSTRUCT_DATASETS)} "
                            f"or an existing .json / .jsonl file of instruction / input / output records, not "
                            f"{dataset!r}")
    return read_records(path), str(path)


# ----------------------------------------------------------------------------------------------------
# Encoding: prompt + response ids, prompt masking, truncation


@dataclass
class EncodedRecords:
    """Tokenized examples back to back. Example i is tokens[offsets[i]:offsets[i + 1]]; its first n_prompt[i]
    tokens are the prompt, whose labels are -100 unless train_on_input. cut[i]: 0 whole, 1 response cut at its
    end, 2 prompt cut in the middle. full_prompt / full_response: lengths before truncation (the response with
    eos); merged: the prompt's tokens differ alone and in the full text (the seam, see the module docstring)."""

    tokens: np.ndarray       # (sum of lengths,) int32
    offsets: np.ndarray      # (n + 1,) int64
    n_prompt: np.ndarray     # (n,)
    cut: np.ndarray          # (n,) int8
    full_prompt: np.ndarray  # (n,)
    full_response: np.ndarray  # (n,)
    merged: np.ndarray       # (n,) bool
    train_on_input: bool

    def __len__(self) -> int:
        return len(self.n_prompt)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n,)

    def example(self, i: int):
        """(input_ids, labels) of example i as int64 arrays (labels -100 on the prompt unless train_on_input)."""
        ids = self.tokens[self.offsets[i]:self.offsets[i + 1]].astype(np.int64)  # (L,)
        labels = ids.copy()  # (L,)
        if not self.train_on_input:
            labels[:self.n_prompt[i]] = IGNORE_INDEX
        return ids, labels

    def subset(self, indices) -> "EncodedRecords":
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths()[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate([self.tokens[self.offsets[i]:self.offsets[i + 1]] for i in indices]) if len(indices) \
            else self.tokens[:0]
        return EncodedRecords(tokens, offsets, self.n_prompt[indices], self.cut[indices], self.full_prompt[indices],
                              self.full_response[indices], self.merged[indices], self.train_on_input)


def _prompt_tokens(prompt_ids: list, joint_ids: list, prompt_bytes: int, tokenizer) -> int:
    """How many leading tokens of the full text's ids lie wholly inside the prompt's `prompt_bytes` bytes."""
    if joint_ids[:len(prompt_ids)] == prompt_ids:  # the usual case: the prompt's own tokens, then the response's
        return len(prompt_ids)
    n, end = 0, 0
    for t in joint_ids:
        end += len(tokenizer.decode_bytes([t]))
        if end > prompt_bytes:
            break
        n += 1
    return n


def response_reserve(max_length: int) -> int:
    """Tokens of a cut example kept for the response at least (or the whole response, if shorter)."""
    return max(1, max_length // 4)


def _truncate(ids: list, n_prompt: int, max_length: int):
    """(ids, n_prompt, cut) fitting max_length: cut the response's end; only a prompt that leaves the response
    less than its reserve is cut, in the middle (head and tail halves kept)."""
    if len(ids) <= max_length:
        return ids, n_prompt, 0
    n_response = len(ids) - n_prompt
    keep_response = max(max_length - n_prompt, min(n_response, response_reserve(max_length)))
    if n_prompt + keep_response <= max_length:  # the prompt fits whole: cut the response's end
        return ids[:max_length], n_prompt, 1
    keep_prompt = max_length - keep_response
    tail = keep_prompt // 2
    prompt = ids[:keep_prompt - tail] + ids[n_prompt - tail:n_prompt]  # head + tail of the prompt
    return prompt + ids[n_prompt:n_prompt + keep_response], keep_prompt, 2


def template_tokens(template, tokenizer) -> int:
    """Tokens of the template's own text (empty instruction and input), the longer of its two forms."""
    t = resolve_template(template)
    return max(len(tokenizer.encode_ordinary(t.format({"instruction": "", "input": x}))) for x in ("", "x"))


def check_max_length(max_length: int, template, tokenizer) -> None:
    """A max_length that cannot hold the template's own text beside the response's reserve is refused."""
    need = template_tokens(template, tokenizer)
    least = next(n for n in range(need + 1, 4 * need + 8) if n - response_reserve(n) >= need)
    if max_length < least:
        raise NanoGPT2Error(f"max_length={max_length} is too short for the {resolve_template(template).name} template: "
                            f"its own text is {need} tokens and a cut example keeps a quarter of max_length for the "
                            f"response; use max_length >= {least} (default {DEFAULT_MAX_LENGTH})")


def encode_records(records: list, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, train_on_input: bool = False,
                   template="alpaca") -> EncodedRecords:
    """Every record's ids (tokenize(prompt + output) + eos, truncated to max_length) and its prompt length."""
    eos = tokenizer.eot_token
    if eos is None:
        raise NanoGPT2Error(f"instruction tuning ends each response with <|endoftext|>, which the "
                            f"{getattr(tokenizer, 'name', '?')} tokenizer lacks; use tokenizer=gpt2")
    check_max_length(max_length, template, tokenizer)
    tpl = resolve_template(template)
    if tpl.with_input == tpl.no_input and "{input}" not in tpl.no_input and any(r.get("input") for r in records):
        n_input = sum(bool(r.get("input")) for r in records)
        raise NanoGPT2Error(f"template {tpl.name} has no {{input}} placeholder, but {n_input} records have an input "
                            f"that would be dropped; add {{input}} to the template")
    prompts = [tpl.format(r) for r in records]
    prompt_ids = tokenizer.encode_batch(prompts)
    joint_ids = tokenizer.encode_batch([p + r["output"] for p, r in zip(prompts, records)])
    pieces, n = [], len(records)
    n_prompt, cut, full_prompt, full_response = (np.zeros(n, np.int64) for _ in range(4))
    merged = np.zeros(n, bool)
    for i, (prompt, p_ids, j_ids) in enumerate(zip(prompts, prompt_ids, joint_ids)):
        k = _prompt_tokens(p_ids, j_ids, len(prompt.encode("utf-8")), tokenizer)
        merged[i] = k != len(p_ids) or j_ids[:k] != p_ids
        full_prompt[i], full_response[i] = k, len(j_ids) + 1 - k
        ids, n_prompt[i], cut[i] = _truncate(j_ids + [eos], k, max_length)
        pieces.append(np.asarray(ids, dtype=np.int32))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return EncodedRecords(np.concatenate(pieces), offsets, n_prompt, cut.astype(np.int8), full_prompt, full_response,
                          merged, train_on_input)


def encode_example(record: dict, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, train_on_input: bool = False,
                   template="alpaca"):
    """(input_ids, labels), lists of ints, unpadded: tokenize(prompt + output) + [eos] (truncated to max_length,
    see the module docstring); labels -100 on the prompt tokens (none with train_on_input), the ids elsewhere."""
    enc = encode_records(check_records([record], "the record"), tokenizer, max_length, train_on_input, template)
    ids, labels = enc.example(0)
    return ids.tolist(), labels.tolist()


# ----------------------------------------------------------------------------------------------------
# The validation report and the quality view


def _stats(values) -> str:
    v = np.asarray(values)
    return (f"min {v.min():,} | median {int(np.median(v)):,} | mean {v.mean():,.1f} | p95 "
            f"{int(np.percentile(v, 95)):,} | max {v.max():,}")


def report(records: list, enc: EncodedRecords, where: str, max_length: int) -> str:
    """Counts and token-length statistics of the records, and what max_length cuts."""
    n = len(records)
    with_input = sum(bool(r["input"]) for r in records)
    cut_response, cut_prompt = int((enc.cut == 1).sum()), int((enc.cut == 2).sum())
    return "\n".join([
        f"instruction data: {n:,} records from {where}; {with_input:,} with an input ({100 * with_input / n:.1f}%)",
        f"  prompt tokens:   {_stats(enc.full_prompt)}",
        f"  response tokens: {_stats(enc.full_response)} (with <|endoftext|>)",
        f"  example tokens:  {_stats(enc.full_prompt + enc.full_response)}",
        f"  max_length {max_length}: {cut_response + cut_prompt:,} records truncated ({cut_response:,} responses cut at "
        f"the end, {cut_prompt:,} prompts cut in the middle); {int(enc.merged.sum()):,} with a token across the "
        f"prompt / response seam",
    ])


def _token_view(tokenizer, ids, labels) -> str:
    """The tokens of an example separated by '|', the ones that carry loss in [[ ]]."""
    out = []
    for t, y in zip(ids, labels):
        piece = tokenizer.decode([int(t)]).replace("\n", "\\n")
        out.append(f"[[{piece}]]" if y != IGNORE_INDEX else piece)
    return "|".join(out)


def show(records: list, enc: EncodedRecords, tokenizer, indices) -> str:
    """The quality view of some records: the original text, the token ids, the decoded text, and which tokens
    carry loss."""
    blocks = []
    for i in indices:
        r, (ids, labels) = records[i], enc.example(i)
        scored = labels != IGNORE_INDEX
        first = int(np.argmax(scored)) if scored.any() else len(ids)
        cut = {0: "no", 1: "response cut at its end", 2: "prompt cut in the middle"}[int(enc.cut[i])]
        blocks.append("\n".join([
            f"=== record {i} ===",
            f"instruction: {r['instruction']!r}", f"input: {r['input']!r}", f"output: {r['output']!r}",
            f"--- {len(ids)} token ids ({int((~scored).sum())} with label -100, {int(scored.sum())} carry loss; "
            f"truncated: {cut}):", str(ids.tolist()),
            "--- decoded, no loss:", tokenizer.decode(ids[:first].tolist()),
            "--- decoded, with loss:", tokenizer.decode(ids[first:].tolist()),
            "--- tokens, loss-carrying ones in [[ ]]:", _token_view(tokenizer, ids, labels),
        ]))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------------
# Batches


def collate(examples, pad_id: int) -> dict:
    """Right-pad (input_ids, labels) pairs to the longest: input_ids padded with `pad_id` (eos), labels with
    -100, attention_mask 1 on real tokens. Returns CPU int64 tensors (B, T)."""
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    for b, (ids, lab) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.as_tensor(ids)
        labels[b, :len(lab)] = torch.as_tensor(lab)
        attention_mask[b, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def device_batch(batch: dict, device) -> dict:
    """What the loss needs: input_ids and labels on the device; the rows' lengths stay on the CPU, so that
    trimming a micro-batch to its longest row needs no device sync."""
    move = (lambda t: t) if device is None else (lambda t: t.to(device, non_blocking=True))
    return {"input_ids": move(batch["input_ids"]), "labels": move(batch["labels"]),
            "lengths": batch["attention_mask"].sum(dim=1)}  # (B,) on the CPU


class InstructSampler:
    """Padded batches of examples, seeded, resumable, DDP-sharded.

    The examples are read in epochs, each a fresh permutation `np.random.default_rng([seed, epoch])`, back to
    back; call k takes global positions [k G, (k + 1) G), G = world_size * batch_size, and hands this rank its
    slice. A batch is a pure function of (seed, step, rank): the state is one counter, and the union over ranks
    of call k is the same for any world size with the same global batch. A batch may straddle two epochs.
    next_batch(device) -> {"input_ids": (B, T), "labels": (B, T), "lengths": (B,) CPU}, T the longest row."""

    def __init__(self, data: EncodedRecords, batch_size: int, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.data, self.batch_size, self.pad_id = data, batch_size, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step = 0
        self._perms = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}  # keep the previous one
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        """This rank's example indices at call `step`."""
        G, n = self.world_size * self.batch_size, len(self.data)
        positions = np.arange(step * G, (step + 1) * G)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return np.array([self._perm(int(p // n))[p % n] for p in positions], dtype=np.int64)

    def next_batch(self, device=None) -> dict:
        idx = self.indices(self.step)
        self.step += 1
        return device_batch(collate([self.data.example(i) for i in idx], self.pad_id), device)

    @staticmethod
    def real_tokens(batch: dict) -> int:
        """The non-pad tokens a (micro-)batch runs the model on: each row's tokens but its last (only a target),
        within the longest row (the loss trims the batch to it): what the trainer's tokens/s and MFU count."""
        lengths = batch["lengths"]  # (B,) on the CPU
        return int(lengths.clamp(max=int(lengths.max()) - 1).sum())

    def state_dict(self) -> dict:
        return {"kind": "InstructSampler", "seed": self.seed, "step": self.step, "n_examples": len(self.data),
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        try:
            seed, step = int(state["seed"]), int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise NanoGPT2Error(f"not an InstructSampler state: {state!r}") from None
        changes = []
        if state.get("n_examples") not in (None, len(self.data)):
            changes.append(f"{len(self.data):,} training examples, the saved run had {state['n_examples']:,}")
        if state.get("batch_size", 0) * state.get("world_size", 0) not in (0, self.batch_size * self.world_size):
            changes.append(f"global batch {state['batch_size'] * state['world_size']} -> "
                           f"{self.batch_size * self.world_size}")
        if changes:
            warnings.warn("resuming the instruction sampler with different data or batch (" + "; ".join(changes) +
                          "): the batches will not be those of an uninterrupted run", DataWarning, stacklevel=2)
        self.seed, self.step, self._perms = seed, step, {}


# ----------------------------------------------------------------------------------------------------
# Loss and evaluation


def _logits_and_targets(model, batch: dict):
    """The micro-batch trimmed to its longest row, through the model without an attention mask: with right
    padding a real token never attends to a later pad (causal), so the mask changes no scored logit (tested
    against transformers), and leaving it out keeps SDPA's causal fast path. Returns logits (B, T-1, V) and the
    targets (B, T-1): labels shifted left by one (position t predicts token t + 1)."""
    T = int(batch["lengths"].max())
    x = batch["input_ids"][:, :T - 1]  # (B, T-1)
    y = batch["labels"][:, 1:T]  # (B, T-1)
    logits, _ = model(x)  # (B, T-1, V)
    return logits, y


def make_loss_fn(key_ids=None, alpha: float = 0.0, formula: str = "normalised"):
    """The trainer's loss_fn: the mean over the micro-batch's scored targets (the response's tokens unless
    train_on_input), or the key-token weighted loss when alpha > 0 (nanogpt2.losses: ours, or with formula
    hf_course the course's, its key tokens counted among each example's real input ids, prompt included)."""
    def loss_fn(trainer, model, batch):
        logits, y = _logits_and_targets(model, batch)
        if alpha > 0 and formula == "hf_course":
            ids = batch["input_ids"]  # (B, L)
            real = torch.arange(ids.size(1), device=ids.device) < batch["lengths"].to(ids.device)[:, None]  # (B, L)
            return course_key_token_loss(logits, y, key_counts(ids, key_ids, real), alpha)
        if alpha > 0:
            return key_token_weighted_loss(logits, y, key_ids, alpha)
        return masked_mean_loss(logits, y)

    return loss_fn


def make_eval_fn(data: EncodedRecords, pad_id: int):
    """The trainer's eval_fn: the mean cross-entropy over every scored target of the held-out slice (token-
    weighted, all-reduced over processes), i.e. the response-only loss, and its perplexity. eval_iters batches
    of batch_size examples at most (0: the whole slice)."""
    @torch.no_grad()
    def eval_fn(trainer) -> dict:
        cfg, model = trainer.cfg, trainer.eval_model
        model.eval()
        total = torch.zeros(2, device=trainer.device, dtype=torch.float64)  # (sum of token losses, tokens)
        n_batches = math.ceil(len(data) / cfg.batch_size)
        if cfg.eval_iters:
            n_batches = min(n_batches, cfg.eval_iters)
        for b in range(trainer.dist.rank, n_batches, trainer.dist.world_size):
            rows = range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(data)))
            batch = device_batch(collate([data.example(i) for i in rows], pad_id), trainer.device)
            with trainer.autocast():
                logits, y = _logits_and_targets(model, batch)
                loss, n = masked_mean_loss(logits, y)
            total += torch.stack([loss.double() * n, n.double()])
        if trainer.dist.enabled:
            import torch.distributed as td

            td.all_reduce(total)
        loss_sum, count = total.tolist()
        val_loss = loss_sum / max(count, 1)
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)), "val_tokens": int(count)}

    return eval_fn


# ----------------------------------------------------------------------------------------------------
# Answers to fixed instructions during training

FIXED_INSTRUCTIONS = (
    {"instruction": "What is the capital of France?", "input": ""},
    {"instruction": "Name three primary colors.", "input": ""},
    {"instruction": "Rewrite the sentence in the past tense.", "input": "She walks to school every day."},
)


class Answers:
    """A trainer hook: every `sample_interval` steps (rank 0) the model answers FIXED_INSTRUCTIONS greedily and
    with top-p (TOP_P, sample_temperature, seeded by seed + step), printed and appended to out_dir/answers.txt."""

    def __init__(self, tokenizer, template):
        self.tokenizer, self.template = tokenizer, template

    def __call__(self, trainer, event: str):
        cfg = trainer.cfg
        if not (event == "step_end" and cfg.sample_interval and trainer.step % cfg.sample_interval == 0
                and trainer.dist.master):
            return
        text = self.answers(trainer)
        trainer.log(f"--- answers at step {trainer.step} ---\n{text}\n---")
        path = trainer.out_dir / "answers.txt"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"--- step {trainer.step} ---\n{text}\n")
        except OSError as e:
            raise write_error(e, f"the answers {path}", trainer.out_dir, "free some space, then --resume_from auto",
                              any_os_error=True) from None

    @torch.no_grad()
    def answers(self, trainer) -> str:
        from nanogpt2.generate import generate

        cfg, tok, model = trainer.cfg, self.tokenizer, trainer.raw_model
        out = []
        model.eval()
        try:
            for record in FIXED_INSTRUCTIONS:
                ids = tok.encode_ordinary(format_prompt(record, self.template))
                idx = torch.tensor([ids], dtype=torch.long, device=trainer.device)  # (1, T0)
                new = min(cfg.sample_tokens, model.config.block_size - len(ids))
                if new < 1:
                    out.append(f"{record['instruction']}\n  (the prompt fills the model's context of "
                               f"{model.config.block_size} tokens: no room to answer)")
                    continue
                gen = torch.Generator(device=trainer.device).manual_seed(cfg.seed + trainer.step)
                out.append(f"{record['instruction']}" + (f" [input: {record['input']}]" if record["input"] else ""))
                for label, kw in (("greedy", dict(greedy=True)),
                                  (f"top-p {TOP_P}", dict(top_p=TOP_P, temperature=cfg.sample_temperature))):
                    with trainer.autocast():
                        y = generate(model, idx, new, eos_token_id=tok.eot_token, generator=gen, **kw)  # (1, T0 + n)
                    answer = tok.decode([t for t in y[0, len(ids):].tolist() if t != tok.eot_token])
                    out.append(f"  {label}: {answer.strip()!r}")
        finally:
            model.train()
        return "\n".join(out)


# ----------------------------------------------------------------------------------------------------
# The task


def effective_max_length(cfg) -> int:
    """max_length (0: 512), no longer than block_size (the context the model is trained at)."""
    max_length = cfg.max_length or DEFAULT_MAX_LENGTH
    if max_length > cfg.block_size:
        raise NanoGPT2Error(f"max_length={max_length} is longer than block_size={cfg.block_size}, the context the model "
                            f"is trained at; lower max_length or raise block_size (GPT-2: up to 1024)")
    return max_length


def split_records(n: int, val_fraction, seed: int):
    """(train indices, held-out indices), sorted: a seeded share of the records (at least one) held out."""
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise NanoGPT2Error(f"val_fraction={fraction} leaves no training record of {n}; lower it")
    perm = np.random.default_rng([seed, n]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def instruct_tokenizer(cfg):
    if cfg.tokenizer == "char":
        raise NanoGPT2Error("task=instruct needs the gpt2 tokenizer (responses end with <|endoftext|>); "
                            "set tokenizer=gpt2")
    return get_tokenizer("gpt2")


def global_rows(cfg) -> int:
    """Examples per optimizer step over all processes (batch_size x the global micro-steps)."""
    if cfg.tokens_per_step:
        return cfg.tokens_per_step // cfg.block_size
    return cfg.batch_size * cfg.gradient_accumulation_steps


def task(cfg):
    """`instruct`: the records, split, encoded and reported; the sampler, response-only loss, evaluation and
    answers hook for the trainer."""
    from nanogpt2.finetuning import TaskParts, save_weights
    from nanogpt2.distributed import dist_from_env

    master = dist_from_env().master
    tok = instruct_tokenizer(cfg)
    max_length = effective_max_length(cfg)
    template = resolve_template(cfg.template)
    records, where = load_records(cfg.dataset, cfg.data_path, quiet=not master)
    enc = encode_records(records, tok, max_length, cfg.train_on_input, template)
    train_idx, val_idx = split_records(len(records), cfg.val_fraction, cfg.seed)
    train, val = enc.subset(train_idx), enc.subset(val_idx)
    if master:
        print(report(records, enc, where, max_length), flush=True)
        print(f"  split (seed {cfg.seed}): {len(train):,} training / {len(val):,} held-out records; loss on "
              f"{'every token' if cfg.train_on_input else 'the response tokens only'}", flush=True)
    key_ids = torch.tensor(parse_key_tokens(cfg.key_tokens, tok)) if cfg.key_token_alpha > 0 else None
    eval_fn = make_eval_fn(val, tok.eot_token)

    def make_sampler(trainer):
        return InstructSampler(train, trainer.rows_per_step, tok.eot_token, seed=cfg.seed, rank=trainer.dist.rank,
                               world_size=trainer.dist.world_size)

    def note(trainer):
        return (f"{where}: {len(train):,} training / {len(val):,} held-out records (seed {cfg.seed}); the loss, "
                f"and the held-out score, on {'every token' if cfg.train_on_input else 'the response tokens only'}")

    results = LMResults(cfg, "instruct", lambda trainer: eval_scores(trainer, HELD_OUT), save_weights, note,
                        val_name=HELD_OUT)
    metrics = TaskMetrics(loss_name="loss" if cfg.train_on_input else "response loss")  # best: the held-out one
    return TaskParts(tokenizer=tok, make_sampler=make_sampler, eval_fn=eval_fn,
                     loss_fn=make_loss_fn(key_ids, cfg.key_token_alpha, cfg.key_token_formula),
                     steps_per_epoch=math.ceil(len(train) / global_rows(cfg)),
                     hooks=[Answers(tok, template)], before_train=results.before_train, after_train=results.after_train,
                     metrics=metrics)


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.instruct --show N


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nanogpt2.instruct",
                                 description="Look at instruction data as the instruct task tokenizes it.")
    ap.add_argument("--show", type=int, default=5, metavar="N", help="records to show (default %(default)s)")
    ap.add_argument("--dataset", default="alpaca", help="alpaca, or a .json / .jsonl file of records")
    ap.add_argument("--data_path", default="", help="your copy of alpaca_data.json (no download)")
    ap.add_argument("--max_length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per example (default %(default)s)")
    ap.add_argument("--template", default="alpaca", help="alpaca, a template file, or template text with {instruction}")
    ap.add_argument("--train_on_input", action="store_true", help="show the loss on the prompt tokens too")
    ap.add_argument("--seed", type=int, default=0, help="which records are shown (default %(default)s)")
    args = ap.parse_args(argv)
    if args.show < 0:
        raise NanoGPT2Error(f"--show must be >= 0, not {args.show}")
    tok = get_tokenizer("gpt2")
    records, where = load_records(args.dataset, args.data_path)
    enc = encode_records(records, tok, args.max_length, args.train_on_input, args.template)
    print(report(records, enc, where, args.max_length))
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(records), size=min(args.show, len(records)), replace=False).tolist())
    if picked:
        print("\n" + show(records, enc, tok, picked))


if __name__ == "__main__":
    run_cli(main)
