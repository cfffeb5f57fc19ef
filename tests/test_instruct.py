"""
Instruction tuning (nanogpt2/instruct.py) and the key-token weighted loss (nanogpt2/losses.py): Alpaca's templates,
prompt masking on every record of the Alpaca sample (the tokens checked against the text's own bytes), the seam
token, truncation, padding checked against transformers' GPT-2 loss with and without the attention mask, a zero
gradient for prompt-only batches, the weighted loss against hand-computed values, the seeded sampler, downloads
from a real loopback HTTP server, bad input as one error line, and tiny runs (exact resume, LoRA, answers; a
slow one that learns).

    python -m pytest -q tests/test_instruct.py            # add -m "not slow" to skip the learning run
"""

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, ROOT, one_error_line, oracle, shared_data
from http_fixture import file_server, unused_url  # noqa: F401  (file_server: a fixture)
from nanogpt2 import instruct
from nanogpt2.config import load_config
from nanogpt2.data import Remote
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.instruct import (FIXED_INSTRUCTIONS, InstructSampler, collate, encode_example,
                               encode_records, format_prompt, load_records, make_loss_fn, read_records)
from nanogpt2.losses import key_token_weighted_loss, masked_mean_loss, parse_key_tokens
from nanogpt2.model import GPT, GPTConfig, IGNORE_INDEX
from nanogpt2.tokenizer import get_tokenizer

SLICE = FIXTURES / "alpaca_tiny_50.json"  # the first 50 records of ../shared/data/alpaca/alpaca_tiny_100.json
TINY = str(ROOT / "configs" / "tiny.py")
TOK = get_tokenizer("gpt2")
EOS = TOK.eot_token


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "nanogpt2-cache"))


# ----------------------------------------------------------------------------------------------------
# Templates


def test_alpaca_templates_word_for_word_and_user_templates(tmp_path):
    # Stanford Alpaca's train.py PROMPT_DICT, typed out again here from the repository
    assert format_prompt({"instruction": "Add.", "input": "2 + 2"}) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2 + 2\n\n"
        "### Response:")
    assert format_prompt({"instruction": "Add.", "input": ""}) == format_prompt({"instruction": "Add."}) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd.\n\n### Response:")
    assert format_prompt({"instruction": "Say {input}.", "input": "x"}, "Q: {instruction} ({input}) A:") == \
        "Q: Say {input}. (x) A:"  # one pass: a record's own braces stay as they are
    (tmp_path / "t.txt").write_text("### Q:\n{instruction}\n{input}\n### A:")
    assert format_prompt({"instruction": "i", "input": "n"}, str(tmp_path / "t.txt")) == "### Q:\ni\nn\n### A:"
    (tmp_path / "t.json").write_text(json.dumps({"prompt_input": "{instruction}|{input}:",
                                                 "prompt_no_input": "{instruction}:"}))
    assert format_prompt({"instruction": "i", "input": ""}, str(tmp_path / "t.json")) == "i:"
    for bad, message in [("{instruction} {output}", "does not belong"), ("Q: {question}", "unknown placeholder"),
                         ("{input} only", "no {instruction}"), ("plain", "neither 'alpaca'")]:
        with pytest.raises(NanoGPT2Error, match=message):
            format_prompt({"instruction": "i"}, bad)
    with pytest.raises(NanoGPT2Error, match="has no {input} placeholder, but 1 records have an input"):
        encode_records([{"instruction": "i", "input": "n", "output": "o"}], TOK, template="Q: {instruction} A:")


# ----------------------------------------------------------------------------------------------------
# Encoding and prompt masking


def _check_encoding(record, ids, labels, max_length=None, train_on_input=False):
    """ids == tokenize(prompt + output) + eos (cut to max_length); labels -100 exactly on the tokens that lie
    wholly inside the prompt's bytes (checked by decoding), the ids elsewhere. Returns the masked count."""
    prompt = format_prompt(record)
    full = TOK.encode_ordinary(prompt + record["output"]) + [EOS]
    assert ids == (full[:max_length] if max_length else full)
    k = sum(1 for y in labels if y == IGNORE_INDEX)
    if train_on_input:
        assert labels == ids and k == 0
        return k
    assert labels == [IGNORE_INDEX] * k + ids[k:]
    prompt_bytes = prompt.encode("utf-8")
    assert prompt_bytes.startswith(TOK.decode_bytes(ids[:k]))  # the masked tokens are prompt text ...
    assert not prompt_bytes.startswith(TOK.decode_bytes(ids[:k + 1]))  # ... and the next one holds response text
    return k


@pytest.mark.parametrize("source", ["fixture: the first 50", "../shared: all 100"])
def test_every_alpaca_record_is_prompt_plus_output_plus_eos_with_the_prompt_masked(source):
    records = read_records(SLICE if source.startswith("fixture") else shared_data("alpaca/alpaca_tiny_100.json"))
    seams = 0
    for record in records:
        ids, labels = encode_example(record, TOK)
        k = _check_encoding(record, ids, labels)
        alone = TOK.encode_ordinary(format_prompt(record))
        if ids[:len(alone)] == alone:
            assert k == len(alone)  # Alpaca's rule: the prompt tokenized on its own, that many tokens masked
        else:  # the seam: '### Response:' + '- ...' is one pre-token ':-' in the full text
            seams += 1
            assert k == len(alone) - 1 and TOK.decode([ids[k]]).startswith(":") and labels[k] == ids[k]
    assert seams == {50: 2, 100: 7}[len(records)]  # records 42, 49 (and 77, 83, 86, 90, 94) start with '-'


@pytest.mark.parametrize("record, max_length", [
    ({"instruction": "Say nothing.", "input": "", "output": ""}, None),  # empty output: eos alone carries loss
    ({"instruction": "Echo the input.", "input": "", "output": "nothing to echo"}, None),  # empty input
    ({"instruction": "Translate to Japanese: cat", "input": "naïve café 🐈", "output": "猫 (ねこ) — ça va ✓"}, None),
    ({"instruction": "Quote it.", "input": "", "output": '"Hello," she said.'}, None),  # seam token ':"'
    ({"instruction": "Write at length.", "input": "", "output": "All work and no play. " * 200}, 128),
])
def test_edge_cases(record, max_length):
    ids, labels = encode_example(record, TOK, max_length=max_length or 512)
    k = _check_encoding(record, ids, labels, max_length)
    assert ids[-1] == EOS or max_length
    assert len(ids) - k >= 1  # something always carries loss
    ids2, labels2 = encode_example(record, TOK, max_length=max_length or 512, train_on_input=True)
    assert ids2 == ids
    _check_encoding(record, ids2, labels2, max_length, train_on_input=True)


def test_a_prompt_too_long_is_cut_in_the_middle_and_the_response_keeps_its_reserve():
    record = {"instruction": "Summarize. " * 300, "input": "the text", "output": "A short summary of it."}
    ids, labels = encode_example(record, TOK, max_length=128)
    prompt, response = TOK.encode_ordinary(format_prompt(record)), TOK.encode_ordinary(record["output"]) + [EOS]
    k = labels.count(IGNORE_INDEX)
    assert len(ids) == 128 and ids[k:] == response and labels[k:] == response  # the whole (short) response
    assert ids[:k // 2 + k % 2] == prompt[:k // 2 + k % 2] and ids[k - k // 2:k] == prompt[-(k // 2):]
    assert TOK.decode(ids[:k]).endswith("\n\n### Response:")
    enc = encode_records([record, {"instruction": "x", "input": "", "output": "y " * 600}], TOK, 128)
    assert enc.cut.tolist() == [2, 1] and (enc.lengths() == 128).all()
    long_response = {"instruction": "Summarize. " * 300, "input": "", "output": "word " * 300}
    ids, labels = encode_example(long_response, TOK, max_length=128)
    assert len(ids) == 128 and 128 - labels.count(IGNORE_INDEX) == 128 // 4  # a quarter of max_length


# ----------------------------------------------------------------------------------------------------
# Padding, the loss, gradients


def _batch(records, **kw):
    return collate([encode_example(r, TOK, **kw) for r in records], EOS)


def test_right_padding_and_the_response_loss_match_transformers_with_and_without_the_mask(tmp_path):
    transformers = oracle("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=50257, n_positions=256, n_embd=32, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    records = [r for r in read_records(SLICE) if len(encode_example(r, TOK)[0]) < 256][:5]
    batch = _batch(records)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1 and batch["input_ids"].shape[1] == lengths.max()  # padded to the longest
    for b, r in enumerate(records):
        ids, labels = encode_example(r, TOK)
        assert batch["input_ids"][b].tolist() == ids + [EOS] * (lengths.max() - len(ids))
        assert batch["labels"][b].tolist() == labels + [IGNORE_INDEX] * (lengths.max() - len(ids))
    with torch.no_grad():
        masked = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        plain = hf(input_ids=batch["input_ids"], labels=batch["labels"])
        real = batch["attention_mask"].bool()
        assert torch.allclose(masked.logits[real], plain.logits[real], atol=1e-5, rtol=0)  # pads never reach real tokens
        assert abs(masked.loss.item() - plain.loss.item()) < 1e-6
        loss, n = make_loss_fn()(None, ours, instruct.device_batch(batch, None))
    assert n == (batch["labels"] != IGNORE_INDEX).sum() and abs(loss.item() - masked.loss.item()) < 1e-5


def test_prompt_tokens_are_never_part_of_the_objective():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=256))
    records = read_records(SLICE)[:3]
    examples = [encode_example(r, TOK) for r in records]

    def grads(batch):
        model.zero_grad(set_to_none=False)
        loss, n = make_loss_fn()(None, model, instruct.device_batch(batch, None))
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    prompt_only = collate([(ids[:labels.count(IGNORE_INDEX)], labels[:labels.count(IGNORE_INDEX)])
                           for ids, labels in examples], EOS)
    loss, g = grads(prompt_only)
    assert loss == 0.0 and torch.count_nonzero(g) == 0  # no target: no loss, no gradient (not NaN)
    with_input = collate([(ids[:labels.count(IGNORE_INDEX)],) * 2 for ids, labels in examples], EOS)
    assert torch.count_nonzero(grads(with_input)[1]) > 0  # the same tokens carry loss with train_on_input

    hidden = []

    def keep(module, inputs, out):  # the final hidden states (B, T-1, C), with their gradient
        out.retain_grad()
        hidden.append(out)

    handle = model.transformer.ln_f.register_forward_hook(keep)
    batch = collate(examples, EOS)
    grads(batch)
    handle.remove()
    y = batch["labels"][:, 1:batch["attention_mask"].sum(1).max()]  # position t predicts label t + 1
    g = hidden[0].grad.abs().sum(-1)  # (B, T-1)
    assert torch.count_nonzero(g[y == IGNORE_INDEX]) == 0 and torch.count_nonzero(g[y != IGNORE_INDEX]) > 0


def test_key_token_weighted_loss_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]], [[2.0, -1.0, 0.0], [0.3, 0.3, 0.3]]])  # (2, 2, 3)
    targets = torch.tensor([[1, 2], [0, IGNORE_INDEX]])

    def ce(row, y):
        return math.log(sum(math.exp(v) for v in row)) - row[y]

    mean0 = (ce([1.0, 2.0, 0.5], 1) + ce([0.1, 0.2, 3.0], 2)) / 2
    mean1 = ce([2.0, -1.0, 0.0], 0)
    loss, n = key_token_weighted_loss(logits, targets, torch.tensor([2]), alpha=0.5)  # sample 0 holds one key token
    assert n == 3 and loss.item() == pytest.approx((1.5 * mean0 + 1.0 * mean1) / 2.5, rel=1e-6)
    loss0, _ = key_token_weighted_loss(logits, targets, torch.tensor([2]), alpha=0.0)
    assert loss0.item() == pytest.approx((mean0 + mean1) / 2, rel=1e-6)  # alpha 0: each sample counts equally

    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))  # equal lengths (lm windows)
    plain = F.cross_entropy(logits.view(-1, 7), targets.view(-1))
    weighted, _ = key_token_weighted_loss(logits, targets, torch.tensor([3]), 0.0)
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-6)
    assert masked_mean_loss(logits, targets)[0].item() == pytest.approx(plain.item(), rel=1e-6)


def test_key_tokens_as_ids_strings_or_a_json_list():
    yes, no = TOK.encode_ordinary("yes"), TOK.encode_ordinary("no")
    assert parse_key_tokens("50256, yes,no", TOK) == sorted([50256, *yes, *no])
    assert parse_key_tokens('[" yes", 13]', TOK) == sorted([TOK.encode_ordinary(" yes")[0], 13])
    for spec, message in [("photosynthesis", "is 2 tokens"), ("99999", "outside the tokenizer's vocabulary"),
                          ("a,,b", "empty entry"), ("[1, 2", "not a JSON list"), ("[1.5]", "token ids and non-empty")]:
        with pytest.raises(NanoGPT2Error, match=message):
            parse_key_tokens(spec, TOK)
    with pytest.raises(NanoGPT2Error, match="go together"):
        FinetuneConfig(key_tokens="yes").validate()
    with pytest.raises(NanoGPT2Error, match="not a JSON list"):
        FinetuneConfig(key_tokens='[" yes"', key_token_alpha=1.0).validate()


# ----------------------------------------------------------------------------------------------------
# The sampler


def test_sampler_batches_are_a_pure_function_of_seed_step_and_rank():
    enc = encode_records(read_records(SLICE), TOK, 256)
    n = len(enc)
    one = InstructSampler(enc, 4, EOS, seed=3)
    two = [InstructSampler(enc, 2, EOS, seed=3, rank=r, world_size=2) for r in (0, 1)]
    order = np.concatenate([one.indices(k) for k in range(2 * math.ceil(n / 4))])
    for k in range(2 * math.ceil(n / 4)):
        assert np.array_equal(np.concatenate([s.indices(k) for s in two]), one.indices(k))
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:2 * n]) == list(range(n))  # every record once an epoch
    assert not np.array_equal(order[:n], order[n:2 * n])  # a fresh order each epoch
    for _ in range(5):
        one.next_batch()
    resumed = InstructSampler(enc, 4, EOS, seed=0)
    resumed.load_state_dict(copy.deepcopy(one.state_dict()))
    a, b = one.next_batch(), resumed.next_batch()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert a["lengths"].device.type == "cpu" and a["input_ids"].shape == (4, int(a["lengths"].max()))


# ----------------------------------------------------------------------------------------------------
# Data: alpaca by name through a loopback server, local files, bad input


def serve_alpaca(monkeypatch, srv, blob: bytes, **remote):
    srv.files["/tatsu-lab/alpaca_data.json"] = blob
    url = srv.url("/tatsu-lab/alpaca_data.json")
    monkeypatch.setitem(instruct.INSTRUCT_DATASETS, "alpaca", Remote("alpaca_data.json", urls=(url,), **remote))
    return url


def test_alpaca_downloads_once_then_reads_the_cache(file_server, monkeypatch, tmp_path):
    blob = SLICE.read_bytes()
    serve_alpaca(monkeypatch, file_server, blob)
    records, where = load_records("alpaca", quiet=True)
    assert records == read_records(SLICE) and file_server.hits["/tatsu-lab/alpaca_data.json"] == 1
    assert load_records("alpaca", quiet=True)[0] == records and file_server.hits["/tatsu-lab/alpaca_data.json"] == 1
    (tmp_path / "nanogpt2-cache" / "data" / "downloads" / "alpaca_data.json").write_text('[{"instruction": "cut sh')
    assert load_records("alpaca", quiet=True)[0] == records  # a cached file that no longer parses: fetched again
    assert file_server.hits["/tatsu-lab/alpaca_data.json"] == 2
    assert load_records("alpaca", str(SLICE), quiet=True)[0] == records  # data_path: no request
    assert file_server.hits["/tatsu-lab/alpaca_data.json"] == 2


def test_alpaca_corrupt_download_and_offline_name_the_url_and_data_path(file_server, monkeypatch):
    import hashlib

    blob = SLICE.read_bytes()
    url = serve_alpaca(monkeypatch, file_server, blob[:-10] + b"corrupted!", sha256=hashlib.sha256(blob).hexdigest())
    # (the same URL serves garbage below)
    with pytest.raises(NanoGPT2Error, match="sha256 mismatch") as e:
        load_records("alpaca", quiet=True)
    assert url in str(e.value) and "--data_path" in str(e.value)
    serve_alpaca(monkeypatch, file_server, b"<html>rate limited</html>")  # no checksum known: parsed, refused
    with pytest.raises(NanoGPT2Error, match="served a file that is not instruction records") as e:
        load_records("alpaca", quiet=True)
    assert url in str(e.value) and "--data_path" in str(e.value)
    offline = unused_url("/alpaca_data.json")
    monkeypatch.setitem(instruct.INSTRUCT_DATASETS, "alpaca", Remote("alpaca_data.json", urls=(offline,)))
    with pytest.raises(NanoGPT2Error, match="unreachable") as e:
        load_records("alpaca", quiet=True)
    assert offline in str(e.value) and "--data_path" in str(e.value)


def test_jsonl_extra_keys_and_bad_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b", "id": 7}\n\n{"instruction": "c", "input": null, "output": "d"}\n')
    assert read_records(path) == [{"instruction": "a", "input": "", "output": "b"},
                                  {"instruction": "c", "input": "", "output": "d"}]
    for text, message in [
        ('[{"instruction": "a"}, {"instruction": "b", "output": "c"}, {"instruction": "d"}]',
         r"2 record\(s\) lack 'output': record\(s\) 0, 2 \(0-based\)"),
        ('[{"instruction": "a", "output": 42}]', "non-string 'output' \\(e.g. int\\)"),
        ('[{"instruction": ["a"], "output": "b"}]', "non-string 'instruction'"),
        ('["just a string"]', "are not JSON objects"),
        ('{"instruction": "a",\n "output": "b"}', "line 1 is not a JSON record"),
        ("[]", "holds no records"),
    ]:
        path.write_text(text)
        with pytest.raises(NanoGPT2Error, match=message):
            read_records(path)
    with pytest.raises(NanoGPT2Error, match="dataset must be alpaca or an existing .json / .jsonl"):
        load_records("shakespeare")


def test_bad_input_is_one_error_line(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[{oops")
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, "--task=instruct", f"--dataset={data}",
                          "--init_from=scratch", "--block_size=512", f"--out_dir={tmp_path / 'out'}"],
                         capture_output=True, text=True, cwd=ROOT)
    line = one_error_line(res)
    assert f"{data} is not valid JSON (Expecting property name enclosed in double quotes at line 1" in line
    with pytest.raises(NanoGPT2Error, match="max_length=40 is too short for the alpaca template: its own text is 44 "
                                            "tokens .* use max_length >= 58"):
        encode_records(read_records(SLICE), TOK, max_length=40)
    cfg = FinetuneConfig(task="instruct", dataset=str(SLICE), block_size=256, max_length=512)
    with pytest.raises(NanoGPT2Error, match="max_length=512 is longer than block_size=256"):
        instruct.task(cfg)


def test_quality_view_shows_text_ids_decoded_text_and_loss_tokens(capsys):
    instruct.main(["--show", "2", "--dataset", str(SLICE), "--seed", "1"])
    out = capsys.readouterr().out
    assert "instruction data: 50 records" in out and "17 with an input" in out and "0 records truncated" in out
    assert out.count("=== record ") == 2 and "--- decoded, with loss:" in out
    first = int(out.split("=== record ")[1].split(" ")[0])
    ids, labels = encode_example(read_records(SLICE)[first], TOK)
    assert str(ids) in out and f"{labels.count(IGNORE_INDEX)} with label -100" in out
    assert "| Response|:|[[" in out or "| Response|[[:" in out  # where the loss starts, marked


# ----------------------------------------------------------------------------------------------------
# Runs of a tiny model (GPT-2's tokens renumbered to the ones the data uses: a small, fast vocabulary)


class CompactGPT2:
    """GPT-2's BPE restricted to the ids `texts` use, renumbered 0..K-1: the same tokens and seams as gpt2, with a
    vocabulary small enough for a tiny model to train in seconds on a CPU."""

    name = "gpt2-compact"

    def __init__(self, records):
        texts = [format_prompt(r) + r["output"] for r in records] + [format_prompt(r) for r in records]
        texts += [format_prompt(r) for r in FIXED_INSTRUCTIONS]
        texts += [format_prompt({"instruction": "", "input": x}) for x in ("", "x")]  # the template's own tokens
        self.base_ids = sorted({t for text in texts for t in TOK.encode_ordinary(text)} | {EOS})
        self.index = {t: i for i, t in enumerate(self.base_ids)}
        self.n_vocab, self.eot_token = len(self.base_ids), self.index[EOS]

    def encode_ordinary(self, text):
        return [self.index[t] for t in TOK.encode_ordinary(text)]

    def encode_batch(self, texts, num_workers=None):
        return [self.encode_ordinary(t) for t in texts]

    def decode_bytes(self, ids):
        return TOK.decode_bytes([self.base_ids[i] for i in ids])

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# The tiny runs here were written for train.py's schedule defaults, not finetune.py's recipe (3 epochs of two
# micro-batches, warmup over 10 % of the run).
TRAIN_PY_SCHEDULE = ("--max_epochs=0", "--gradient_accumulation_steps=1", "--warmup_ratio=0")


def instruct_cfg(tmp_path, data, monkeypatch, *overrides):
    monkeypatch.setattr(instruct, "instruct_tokenizer", lambda cfg: CompactGPT2(read_records(data)))
    return load_config([TINY, "--task=instruct", f"--dataset={data}", f"--out_dir={tmp_path}", "--init_from=scratch",
                        f"--results_dir={tmp_path}-results",
                        "--block_size=256", "--max_length=256", "--checkpoint_interval=0", "--eval_iters=0",
                        "--val_fraction=0.2", *TRAIN_PY_SCHEDULE, *overrides], cls=FinetuneConfig)


def _losses(out):
    return [float.hex(r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_lora_run_resumes_exactly_and_answers_the_fixed_instructions(tmp_path, monkeypatch):
    args = ("--method=lora", "--lora_rank=4", "--lora_alpha=8", "--max_iters=4", "--eval_interval=2",
            "--sample_interval=4", "--sample_tokens=2", "--learning_rate=1e-2")
    whole = run(instruct_cfg(tmp_path / "whole", SLICE, monkeypatch, *args))
    assert whole["stopped"] == "done" and math.isfinite(whole["best_val_loss"])
    answers = (tmp_path / "whole" / "answers.txt").read_text()
    assert answers.startswith("--- step 4 ---") and all(r["instruction"] in answers for r in FIXED_INSTRUCTIONS)
    assert answers.count("greedy: ") == 3 and answers.count("top-p 0.9: ") == 3

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(instruct_cfg(tmp_path / "cut", SLICE, monkeypatch, *args), hooks=[stop_at_3])["stopped"] == "signal"
    run(instruct_cfg(tmp_path / "cut", SLICE, monkeypatch, *args, "--resume_from=auto"))
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "whole")


def test_prompt_tuning_instruct_run_trains_the_prompt_only_and_answers(tmp_path, monkeypatch):
    """--task instruct --method prompt from a base run of 260 positions: 4 virtual tokens and 256-token rows; only
    the prompt trains, the answers file is written, the run folder rebuilds with its prompt."""
    from nanogpt2.loader import load_model

    run(instruct_cfg(tmp_path / "base", SLICE, monkeypatch, "--method=full", "--block_size=260", "--max_iters=1",
                     "--eval_interval=0", "--sample_interval=0"))
    seen = {}

    def snap(trainer, event):
        if event in ("train_start", "train_end"):
            seen[event] = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}

    args = ("--method=prompt", "--prompt_length=4", "--prompt_init_text=### Response:", f"--init_from={tmp_path / 'base'}",
            "--max_iters=3", "--eval_interval=3", "--sample_interval=3", "--sample_tokens=2", "--learning_rate=1e-2")
    summary = run(instruct_cfg(tmp_path / "p", SLICE, monkeypatch, *args), hooks=[snap])
    assert summary["stopped"] == "done" and math.isfinite(summary["best_val_loss"])
    start, end = seen["train_start"], seen["train_end"]
    assert {n for n in start if not torch.equal(start[n], end[n])} == {"prompt_encoder.embedding.weight"}
    assert (tmp_path / "p" / "answers.txt").read_text().count("greedy: ") == 3
    model, info = load_model(str(tmp_path / "p"))
    assert info["spec"]["prompt"] == {"prompt_length": 4} and model.context_length == 256


def test_lm_task_with_key_tokens_uses_the_weighted_loss(tmp_path):
    seen = {}

    def first_batch(trainer, event):
        if event == "train_start":  # the batch step 1 draws, and the weights before it
            seen["batch"] = copy.deepcopy(trainer.sampler).next_batch()
            seen["model"] = copy.deepcopy(trainer.raw_model)
            seen["tok"] = trainer.tokenizer

    cfg = load_config([TINY, f"--out_dir={tmp_path}", "--init_from=scratch", "--max_iters=1", "--checkpoint_interval=0",
                       "--test_eval=false", "--method=full", "--key_tokens=e,t", "--key_token_alpha=2",
                       "--gradient_accumulation_steps=1", f"--results_dir={tmp_path}-results"], cls=FinetuneConfig)
    run(cfg, hooks=[first_batch])
    x, y = seen["batch"]
    key_ids = torch.tensor(seen["tok"].encode("et"))
    with torch.no_grad():
        expected, _ = key_token_weighted_loss(seen["model"](x)[0], y, key_ids, 2.0)
        plain = seen["model"](x, y)[1]
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert logged == pytest.approx(expected.item(), rel=1e-5) and abs(logged - plain.item()) > 1e-4


@pytest.mark.slow
def test_a_tiny_model_learns_to_answer_on_the_100_records(tmp_path, monkeypatch):
    """80 records train a 2-layer model for 60 steps (6 epochs, responses cut at 128 tokens); the response loss of
    the 20 held-out records falls (from 7.84 to about 7.2 nats on the reference machine: a tiny model learns the
    frequent response tokens, then overfits 80 records)."""
    data = shared_data("alpaca/alpaca_tiny_100.json")
    seen = {}

    def baseline(trainer, event):
        if event == "train_start":
            seen["before"] = trainer.eval_fn(trainer)["val_loss"]
            trainer.raw_model.train()

    cfg = instruct_cfg(tmp_path, data, monkeypatch, "--method=full", "--max_iters=60", "--eval_interval=30",
                       "--batch_size=8", "--n_embd=48", "--block_size=128", "--max_length=128", "--learning_rate=3e-3",
                       "--min_lr=3e-4", "--warmup_iters=10")
    summary = run(cfg, hooks=[baseline])
    assert summary["best_val_loss"] < seen["before"] - 0.5, (seen, summary["best_val_loss"])
    assert summary["last"]["val_loss"] < seen["before"] - 0.4, (seen, summary["last"])


# ----------------------------------------------------------------------------------------------------
# Configs, sample.py, bench.py


def test_the_alpaca_configs_hold_the_users_recipe():
    full = load_config([str(ROOT / "configs" / "instruct_alpaca_full.py")], cls=FinetuneConfig)
    lora = load_config([str(ROOT / "configs" / "instruct_alpaca_lora.py")], cls=FinetuneConfig)
    for cfg in (full, lora):
        assert (cfg.task, cfg.dataset, cfg.max_epochs, cfg.batch_size, cfg.max_length) == ("instruct", "alpaca", 3, 8, 512)
        assert cfg.warmup_ratio > 0 and cfg.lr_schedule in ("cosine", "linear") and not cfg.train_on_input
    assert (full.method, full.learning_rate) == ("full", 1e-5)
    assert (lora.method, lora.lora_rank, lora.lora_alpha, lora.learning_rate) == ("lora", 4, 8.0, 3e-4)


def test_sample_formats_the_instruction_prompt(tmp_path, capsys):
    import runpy

    from nanogpt2.convert import save_pretrained

    sample = runpy.run_path(str(ROOT / "sample.py"))
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=128)), tmp_path / "m")
    common = ["--init_from", str(tmp_path / "m"), "--greedy", "--max_new_tokens", "3", "--num_samples", "1",
              "--device", "cpu"]
    for extra, record in [([], {"instruction": "Name three colors."}),
                          (["--input", "red, green"], {"instruction": "Name three colors.", "input": "red, green"})]:
        sample["main"]([*common, "--instruction", "Name three colors.", *extra])
        assert capsys.readouterr().out.startswith(format_prompt(record))
    for args, message in [(["--input", "x"], "add --instruction"), (["--start", "hi", "--instruction", "x"], "drop --start"),
                          (["--instruction", "x", "--template", "Q: {question}"], "unknown placeholder")]:
        with pytest.raises(NanoGPT2Error, match=message):
            sample["main"]([*common, *args])


def test_bench_instruct_compares_the_padding_choices(tmp_path):
    import runpy

    bench = runpy.run_path(str(ROOT / "bench.py"))
    report = bench["main"](["instruct", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--vocab_size", "128",
                            "--block_size", "64", "--batch_size", "4", "--steps", "1", "--warmup", "0", "--repeats", "1",
                            "--device", "cpu", "--json", str(tmp_path / "b.json")])
    res = report["results"]["instruct"]
    assert res["loss_difference_mask"]["value"] < 1e-5 and res["loss_difference_static"]["value"] < 1e-5
    assert all(res[v]["ms_per_iter"]["value"] > 0 for v in ("no mask", "with mask", "static padding"))
    assert json.loads((tmp_path / "b.json").read_text())["results"]["instruct"]["longest"] == max(res["lengths"])
