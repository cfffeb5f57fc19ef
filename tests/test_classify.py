"""
Text classification: nanogpt2.heads (GPTForSequenceClassification against transformers' GPT2ForSequenceClassification
and peft's SEQ_CLS adapters, computing their own outputs here) and nanogpt2.classify (IMDB / AG News / local files,
downloads from the loopback server, hold-out splits, the bucketed sampler, metrics, finetune.py --task classify with
its results tree, exact resume, `python -m nanogpt2.evaluate --task classify`, bad input as one `error:` line).
The slow test trains a 2-layer model from scratch on 2,000 real AG News rows (../shared) to well above chance.

    python -m pytest -q tests/test_classify.py            # add -m "not slow" to skip the real-data run
"""

import io
import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, ROOT, one_error_line, oracle, shared_data
from http_fixture import file_server  # noqa: F401  (a fixture)
from nanogpt2 import classify_data
from nanogpt2.classify import classification_metrics, confusion_matrix
from nanogpt2.classify_data import (CLASSIFY_DATASETS, BucketSampler, ClassifyData, Examples, encode, load_data,
                                    make_splits, pad_batch)
from nanogpt2.config import load_config
from nanogpt2.data import Remote
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.heads import (GPTForSequenceClassification, classification_loss, load_peft_classifier,
                            save_peft_classifier)
from nanogpt2.loader import load_model, model_spec
from nanogpt2.model import GPTConfig
from nanogpt2.peft import apply_adapters, apply_lora
from nanogpt2.safetensors_io import load_file, save_file
from nanogpt2.tokenizer import get_tokenizer

transformers = oracle("transformers")
transformers.logging.set_verbosity_error()

DATA = FIXTURES / "classify"
AG_TINY = DATA / "ag_news_tiny.csv"
TINY = str(ROOT / "configs" / "tiny.py")
PAD = 99  # the tiny HF models' eos, used as pad (GPT-2's habit)


@pytest.fixture(autouse=True)
def one_thread_and_a_cache(tmp_path_factory, monkeypatch):
    """Tiny models: one thread beats two busy ones on a shared CPU. Datasets go to a test cache."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# The head against transformers


def hf_classifier(folder, num_labels=3, seed=0, vocab=100):
    """A tiny transformers GPT2ForSequenceClassification, saved by transformers into `folder` (pad = eos = the
    vocabulary's last id)."""
    pad = vocab - 1
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab, n_positions=64, num_labels=num_labels,
                                  pad_token_id=pad, bos_token_id=pad, eos_token_id=pad)
    torch.manual_seed(seed)
    model = transformers.GPT2ForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)
    return model


def padded_batch():
    """Three rows: full, right-padded, left-padded (pad = eos)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, PAD, (3, 12), generator=g)  # (3, 12)
    mask = torch.ones_like(idx)
    idx[1, 7:], mask[1, 7:] = PAD, 0
    idx[2, :5], mask[2, :5] = PAD, 0
    return idx, mask


def test_logits_equal_transformers_for_right_and_left_padding_and_one_row(tmp_path):
    hf = hf_classifier(tmp_path / "hf")
    ours = GPTForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert (ours.num_labels, ours.pad_token_id, ours.labels) == (3, PAD, ["LABEL_0", "LABEL_1", "LABEL_2"])
    idx, mask = padded_batch()
    with torch.no_grad():
        want = hf(input_ids=idx, attention_mask=mask).logits  # (3, 3)
        torch.testing.assert_close(ours(idx, mask)[0], want, atol=1e-5, rtol=1e-5)
        one = idx[:1]  # no padding at all, no mask
        torch.testing.assert_close(ours(one)[0], hf(input_ids=one).logits, atol=1e-5, rtol=1e-5)
    # the rows are read at their last real token: right padding at 6, left padding at the end
    assert ours.last_token_index(idx, mask).tolist() == [11, 6, 11]


def test_loss_equals_transformers_with_smoothing_ignore_index_and_regression(tmp_path):
    hf = hf_classifier(tmp_path / "hf")
    ours = GPTForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    idx, mask = padded_batch()
    labels = torch.tensor([2, 0, -100])  # the last row ignored
    with torch.no_grad():
        out = hf(input_ids=idx, attention_mask=mask, labels=labels)
        logits, loss = ours(idx, mask, labels)
        torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)
        ours.label_smoothing = 0.1  # HF's model has no smoothing: compare with torch's on HF's logits
        want = F.cross_entropy(out.logits, labels, label_smoothing=0.1)
        torch.testing.assert_close(ours(idx, mask, labels)[1], want, atol=1e-6, rtol=1e-6)
        assert abs(want - out.loss) > 1e-3
    hf1 = hf_classifier(tmp_path / "reg", num_labels=1)  # regression: MSE on the one logit
    reg = GPTForSequenceClassification.from_pretrained(tmp_path / "reg").eval()
    y = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(reg(idx, mask, y)[1], hf1(input_ids=idx, attention_mask=mask, labels=y).loss)


def test_save_pretrained_is_a_transformers_folder_lora_merged(tmp_path):
    hf_classifier(tmp_path / "hf")
    ours = GPTForSequenceClassification.from_pretrained(tmp_path / "hf", labels=["neg", "neu", "pos"]).eval()
    apply_lora(ours, rank=4, alpha=8, targets=["c_attn", "c_fc"])
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ours.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == PAD
    assert config["num_labels"] == 3 and config["label2id"] == {"neg": 0, "neu": 1, "pos": 2}
    back = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert back.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    idx, mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=idx, attention_mask=mask).logits, ours(idx, mask)[0],
                                   atol=1e-5, rtol=1e-5)
    assert getattr(ours, "lora_config") and not any(l.merged for n, l in ours.named_modules() if hasattr(l, "merged"))
    fresh = GPTForSequenceClassification(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=100), 2)
    apply_adapters(fresh, 4)
    with pytest.raises(NanoGPT2Error, match="a plain HF GPT-2 folder cannot express"):
        fresh.save_pretrained(tmp_path / "adapters")


def test_peft_seq_cls_adapter_both_ways(tmp_path):
    peft = oracle("peft")
    hf = hf_classifier(tmp_path / "hf")
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])
    pm = peft.get_peft_model(hf, config)
    with torch.no_grad():  # B is zero at init; a trained head and B are what a real adapter holds
        for name, p in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "adapter")
    ours = GPTForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    wrapped = load_peft_classifier(ours, tmp_path / "adapter")
    assert len(wrapped) == 6  # 2 layers x c_attn, attn.c_proj, mlp.c_proj
    idx, mask = padded_batch()
    pm.eval()
    with torch.no_grad():
        want = pm(input_ids=idx, attention_mask=mask).logits
        torch.testing.assert_close(ours(idx, mask)[0], want, atol=1e-5, rtol=1e-5)
    save_peft_classifier(ours, tmp_path / "ours")  # and peft loads ours
    base = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "hf")
    back = peft.PeftModel.from_pretrained(base, tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=idx, attention_mask=mask).logits, want, atol=1e-5, rtol=1e-5)


def test_peft_classifier_folder_saving_other_modules_is_refused(tmp_path):
    """modules_to_save beyond the head (here the embeddings) is refused naming the field; a folder that says it
    saves the head but lacks its tensor is refused naming the tensor."""
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=16)
    model = GPTForSequenceClassification(cfg, 3, PAD)
    apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    folder = save_peft_classifier(model, tmp_path / "adapter")
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "modules_to_save": ["score", "wte"]}))
    with pytest.raises(NanoGPT2Error, match=r"modules_to_save=\['score', 'wte'\] is not supported"):
        load_peft_classifier(GPTForSequenceClassification(cfg, 3, PAD), folder)
    config_path.write_text(json.dumps(config))
    tensors = load_file(folder / "adapter_model.safetensors")
    del tensors["base_model.model.score.weight"]
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(NanoGPT2Error, match="score.weight is missing"):
        load_peft_classifier(GPTForSequenceClassification(cfg, 3, PAD), folder)


def test_num_labels_other_than_the_checkpoints_head_is_refused(tmp_path):
    hf_classifier(tmp_path / "hf")
    with pytest.raises(NanoGPT2Error, match=r"num_labels=4, but .* head for 3 labels"):
        GPTForSequenceClassification.from_pretrained(tmp_path / "hf", num_labels=4)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100,
                                                         n_positions=32)).save_pretrained(tmp_path / "lm")
    with pytest.raises(NanoGPT2Error, match="give num_labels"):
        GPTForSequenceClassification.from_pretrained(tmp_path / "lm")
    body = GPTForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=5, pad_token_id=0)
    assert body.score.weight.shape == (5, 16) and body.score.weight.abs().max() <= 0.04  # truncated at 2 std


def test_lora_and_adapters_on_the_classifier_rebuild_from_the_spec_without_importing_heads(tmp_path, monkeypatch):
    from nanogpt2 import checkpoint as ckpt_io
    from nanogpt2.loader import MODEL_KINDS

    torch.manual_seed(0)
    model = GPTForSequenceClassification(GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=16), 3,
                                         PAD, ["a", "b", "c"])
    apply_adapters(model, 4)
    apply_lora(model, rank=2, alpha=4, targets=["c_attn"])
    names = dict(model.named_parameters())
    assert "transformer.h.1.attn.sublayer.c_attn.lora_A" in names and "transformer.h.0.mlp.adapter.up.weight" in names
    assert "score.weight" in names and not names["score.weight"].requires_grad  # frozen by the methods; the task
    # unfreezes it (modules_to_save)
    spec = model_spec(model)
    assert spec["kind"] == "gpt_classifier" and spec["lora"]["rank"] == 2 and spec["adapters"]["adapter_size"] == 4
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt_io.save_checkpoint(tmp_path / "checkpoint_final.pt", {"model": model.state_dict(), "model_spec": spec,
                                                               "model_config": {}, "tokenizer": {"name": "gpt2"}})
    # As in a process that never imported nanogpt2.heads: the loader imports it when it meets the kind.
    monkeypatch.delitem(MODEL_KINDS, "gpt_classifier")
    monkeypatch.delitem(sys.modules, "nanogpt2.heads")
    monkeypatch.delattr(sys.modules["nanogpt2"], "heads")
    loaded, info = load_model(str(tmp_path))
    assert "nanogpt2.heads" in sys.modules and type(loaded).__name__ == "GPTForSequenceClassification"
    assert loaded.labels == ["a", "b", "c"] and info["spec"] == spec
    idx = torch.randint(0, PAD, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(idx)[0], model.eval()(idx)[0])


# ----------------------------------------------------------------------------------------------------
# Datasets


def imdb_tar(splits=("test",)) -> bytes:
    """A tar.gz of the release's layout from the fixture reviews, with files the reader must skip."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("aclImdb/README", b"readme")
        for split in splits:
            for p in sorted((DATA / "imdb" / "aclImdb" / "test").rglob("*.txt")):
                add(f"aclImdb/{split}/{p.parent.name}/{p.name}", p.read_bytes())
            add(f"aclImdb/{split}/labeledBow.feat", b"0 0:1")
        add("aclImdb/train/unsup/0_0.txt", b"unlabelled")
    return buf.getvalue()


def test_imdb_downloaded_once_and_read_from_the_tar(file_server, monkeypatch, tmp_path):
    file_server.files["/aclImdb_v1.tar.gz"] = imdb_tar(("train", "test"))
    spec = CLASSIFY_DATASETS["imdb"]
    remote = Remote(spec.remote[0].filename, urls=(file_server.url("/aclImdb_v1.tar.gz"),))
    monkeypatch.setitem(CLASSIFY_DATASETS, "imdb", replace(spec, remote=(remote,)))
    data = load_data("imdb", quiet=True)
    again = load_data("imdb", quiet=True)
    assert file_server.hits["/aclImdb_v1.tar.gz"] == 1  # cached
    assert data.label_names == ["negative", "positive"] and sorted(data.splits) == ["test", "train"]
    test = data.splits["test"]
    assert len(test) == 12 and test.labels.tolist() == [0] * 6 + [1] * 6  # unsup and .feat skipped
    first = DATA / "imdb" / "aclImdb" / "test" / "neg" / "10018_1.txt"
    assert test.texts[0] == first.read_text(encoding="utf-8") and again.splits["train"].texts == test.texts
    (tmp_path / "aclImdb_v1_test.tar.gz").write_bytes(imdb_tar())  # a local copy of the test split only
    local = load_data("imdb", data_path=str(tmp_path))
    assert list(local.splits) == ["test"] and local.splits["test"].texts == test.texts
    assert load_data("imdb", data_path=str(DATA / "imdb")).splits["test"].texts == test.texts  # unpacked


def test_ag_news_csvs_labels_text_and_download(file_server, monkeypatch):
    rows = AG_TINY.read_bytes()
    file_server.files.update({"/ag/train.csv": rows, "/ag/test.csv": rows})
    spec = CLASSIFY_DATASETS["ag_news"]
    remote = tuple(Remote(r.filename, urls=(file_server.url("/ag/" + Path(r.filename).name),)) for r in spec.remote)
    monkeypatch.setitem(CLASSIFY_DATASETS, "ag_news", replace(spec, remote=remote))
    data = load_data("ag_news", quiet=True)
    assert sorted(data.splits) == ["test", "train"] and data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    ex = data.splits["test"]
    import csv

    first = next(csv.reader(io.StringIO(rows.decode())))
    assert ex.labels[0] == int(first[0]) - 1 and ex.texts[0] == f"{first[1]} {first[2]}".replace("\\", " ")
    assert np.bincount(ex.labels).tolist() == [20] * 4
    one = load_data("ag_news", data_path=str(AG_TINY))  # one file: no split by its name
    assert list(one.splits) == ["all"] and one.splits["all"].texts == ex.texts


def test_the_real_ag_news_test_file_holds_7600_rows_1900_a_class():
    data = load_data("ag_news", data_path=str(shared_data("ag_news/test.csv")))
    ex = data.splits["test"]
    assert len(ex) == 7600 and np.bincount(ex.labels).tolist() == [1900] * 4
    assert ex.texts[0].startswith("Fears for T N pension after talks Unions representing workers")  # title + " " + ...


@pytest.mark.slow
def test_the_real_imdb_test_tar_holds_25000_reviews():
    data = load_data("imdb", data_path=str(shared_data("imdb/aclImdb_v1_test.tar.gz")))
    assert list(data.splits) == ["test"] and np.bincount(data.splits["test"].labels).tolist() == [12500, 12500]
    fixture = DATA / "imdb" / "aclImdb" / "test" / "pos" / "10020_8.txt"
    assert fixture.read_text(encoding="utf-8") in data.splits["test"].texts


def test_local_csv_and_jsonl_label_names_or_ints(tmp_path):
    (tmp_path / "named.csv").write_text("id,text,label\n1,good film,pos\n2,bad film,neg\n3,\"fine, fine\",pos\n")
    data = load_data(str(tmp_path / "named.csv"))
    assert data.label_names == ["neg", "pos"] and data.splits["all"].labels.tolist() == [1, 0, 1]
    assert data.splits["all"].texts[2] == "fine, fine"
    folder = tmp_path / "split"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "a", "label": 2}\n\n{"text": "b", "label": 0}\n')
    (folder / "test.jsonl").write_text('{"text": "c", "label": 1}\n')
    data = load_data(str(folder))
    assert data.label_names == ["0", "1", "2"] and data.splits["train"].labels.tolist() == [2, 0]
    assert data.splits["test"].texts == ["c"]


def test_stratified_holdout_is_seeded_disjoint_and_keeps_the_proportions():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    data = ClassifyData("toy", ["a", "b", "c"], {"test": Examples([str(i) for i in range(1000)], labels)}, "x")
    splits, note = make_splits(data, 0.1, 0.2, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [720, 80, 200]
    assert np.bincount(splits["test"].labels).tolist() == [100, 60, 40]
    assert np.bincount(splits["val"].labels).tolist() == [40, 24, 16]
    seen = [t for s in splits.values() for t in s.texts]
    assert len(set(seen)) == 1000 and "not the official splits" in note and "train 720 / val 80 / test 200" in note
    assert make_splits(data, 0.1, 0.2, seed=3)[0]["test"].texts == splits["test"].texts
    assert make_splits(data, 0.1, 0.2, seed=4)[0]["test"].texts != splits["test"].texts
    small, note = make_splits(data, 0.1, 0.2, max_examples=100, seed=3)
    assert sum(map(len, small.values())) == 100 and "a stratified sample of 100 of 1,000" in note
    rows = data.splits["test"]
    both = ClassifyData("toy", ["a", "b", "c"], {"train": rows, "test": rows.take([0, 999])}, "x")
    splits, note = make_splits(both, 0.1, 0.2, seed=3)  # test kept as it is; val from train
    assert len(splits["test"]) == 2 and len(splits["val"]) == 100 and "no val split" in note


# ----------------------------------------------------------------------------------------------------
# Batches and metrics


def test_bucket_sampler_is_a_function_of_seed_step_and_rank():
    lengths = np.random.default_rng(0).integers(1, 40, 203)
    enc = classify_data.Encoded([np.full(n, i % 50, dtype=np.int32) for i, n in enumerate(lengths)], lengths,
                           np.arange(203) % 3, 0)
    one = BucketSampler(enc, 8, pad_id=50256, seed=5)
    two = [BucketSampler(enc, 4, pad_id=50256, seed=5, rank=r, world_size=2) for r in range(2)]
    assert one.steps_per_epoch == 25  # 203 // 8: the rest waits for another epoch
    for step in range(60):  # across epochs
        assert np.array_equal(one.rows(step), np.concatenate([s.rows(step) for s in two]))
    epoch = np.concatenate([one.rows(s) for s in range(25)])
    assert len(set(epoch.tolist())) == 200  # each row at most once per epoch
    assert not np.array_equal(one.rows(0), one.rows(25))  # reshuffled
    one.load_state_dict({"step": 30})
    batch = one.next_batch()
    rows = one.rows(30)
    assert one.state_dict()["step"] == 31 and batch["labels"].tolist() == enc.labels[rows].tolist()
    T = int(lengths[rows].max())
    assert batch["idx"].shape == (8, T) and batch["attention_mask"].sum(1).tolist() == lengths[rows].tolist()
    assert (batch["idx"][batch["attention_mask"] == 0] == 50256).all()  # right padding with eos
    spread = [np.ptp(lengths[one.rows(s)]) for s in range(25)]
    assert np.mean(spread) < 0.5 * np.ptp(lengths)  # rows of a step have similar lengths


def test_encode_truncates_and_pads():
    tok = get_tokenizer("gpt2")
    enc = encode(Examples(["one two three four five", "six"], np.array([1, 0])), tok, max_length=3)
    assert enc.lengths.tolist() == [3, 1] and enc.truncated == 1
    assert enc.ids[0].tolist() == tok.encode_ordinary("one two three four five")[:3]
    batch = pad_batch(enc, [1, 0], pad_id=tok.eot_token)
    assert batch["idx"][0].tolist() == [*tok.encode_ordinary("six"), 50256, 50256]


def test_metrics_match_a_hand_count():
    labels, preds = [0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 2, 2, 2, 2, 0]
    cm = confusion_matrix(labels, preds, 4)
    assert cm[:3, :3].tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]] and cm[3].sum() == cm[:, 3].sum() == 0
    m = classification_metrics(cm, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["c"]["recall"] == 0.75
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1c = 2 * 0.75 * 0.75 / 1.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + f1c + 0) / 4)


# ----------------------------------------------------------------------------------------------------
# finetune.py --task classify


def cls_cfg(tmp_path, *overrides):
    """A tiny run: a new 2-layer model on the 80 AG News rows of the fixture (held out 64 / 8 / 8)."""
    return load_config([TINY, "--task=classify", "--dataset=ag_news", f"--data_path={AG_TINY}", "--init_from=scratch",
                        f"--out_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'results'}", "--block_size=48",
                        "--n_embd=16", "--batch_size=8", "--max_iters=6", "--eval_interval=3", "--checkpoint_interval=0",
                        "--method=full", "--learning_rate=1e-2", "--log_interval=1", "--gradient_accumulation_steps=1",
                        *overrides], cls=FinetuneConfig)


STAGE_FILES = ["metrics/metrics.json", "analysis/report.md", "analysis/confusion_matrix.png"]


def test_classify_run_writes_the_results_tree_and_evaluate_scores_it(tmp_path, capsys):
    summary = run(cls_cfg(tmp_path, "--max_iters=0", "--max_epochs=2", "--test_on=final"))  # 8 steps an epoch
    assert summary["stopped"] == "done" and summary["step"] == 16
    root, = (tmp_path / "results" / "scratch").iterdir()
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    want = {f"{stage}/{f}" for stage in ("baseline", "test") for f in STAGE_FILES}
    want |= {"train/metrics/metrics.json", "train/analysis/curves.png", "summary.md", "train/weights/config.json",
             "train/weights/model.safetensors"}
    assert want <= files, sorted(want - files)
    test = json.loads((root / "test" / "metrics" / "metrics.json").read_text())
    history = json.loads((root / "train" / "metrics" / "metrics.json").read_text())
    assert test["examples"] == 8 and [r["step"] for r in history["val"]] == [3, 6, 8, 9, 12, 15, 16]
    assert history["val"][-1]["accuracy"] is not None and len(history["train"]) == 16
    summary_md = (root / "summary.md").read_text()
    assert "| fine-tuned | 8 |" in summary_md and "seeded stratified hold-out" in summary_md
    from nanogpt2.evaluate_cli import main as evaluate

    capsys.readouterr()
    again = evaluate(["--task", "classify", "--init_from", str(tmp_path / "out"), "--device", "cpu"])
    assert again["confusion_matrix"] == test["confusion_matrix"]  # the run's own hold-out, found from its config
    assert "not the official splits" in capsys.readouterr().out
    hf = evaluate(["--task", "classify", "--init_from", str(root / "train" / "weights"), "--dataset", "ag_news",
                   "--data_path", str(AG_TINY), "--device", "cpu", "--json"])
    assert hf["accuracy"] == test["accuracy"] and hf["loss"] == pytest.approx(test["loss"], abs=1e-5)
    model, _ = load_model(str(tmp_path / "out"))
    assert isinstance(model, GPTForSequenceClassification)
    assert model.labels == ["World", "Sports", "Business", "Sci/Tech"]


@pytest.mark.parametrize("method, extra, trained", [
    ("lora", ("--lora_rank=2",), lambda n: "lora_" in n or n == "score.weight"),
    ("adapter", ("--adapter_size=4", "--adapter_train_layernorms=false"),
     lambda n: ".adapter." in n or n == "score.weight"),
    ("full", ("--head_only_steps=2",), lambda n: True),
])
def test_methods_train_the_head_too(tmp_path, method, extra, trained):
    seen = {}

    def snap(trainer, event):
        if event in ("train_start", "step_end"):
            seen.setdefault(event, []).append({n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()})

    run(cls_cfg(tmp_path, f"--method={method}", "--max_iters=4", "--eval_interval=0", "--baseline_eval=false", *extra),
        hooks=[snap])
    start, steps = seen["train_start"][0], seen["step_end"]
    moved = {n for n in start if not torch.equal(start[n], steps[-1][n])}
    assert "score.weight" in moved and all(trained(n) for n in moved), sorted(moved)
    if method == "full":  # head only for two steps, then everything
        assert {n for n in start if not torch.equal(start[n], steps[1][n])} == {"score.weight"}
        assert len(moved) > 10
    root, = (tmp_path / "results" / "scratch").iterdir()
    assert not (root / "baseline").exists()
    weights, _ = load_model(str(root / "train" / "weights"))  # HF folder, or a checkpoint with adapters
    final = dict(weights.named_parameters())
    if method == "lora":
        peft = oracle("peft")
        cfg = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
        assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
        assert peft.PeftConfig.from_pretrained(tmp_path / "out" / "adapter").task_type == "SEQ_CLS"
    else:
        assert torch.equal(final["score.weight"], steps[-1]["score.weight"])


def test_prompt_tuning_trains_the_prompt_and_the_head_and_its_weights_load_back(tmp_path, capsys):
    """--method prompt on a classifier: the prompt (initialised from a text) and the head train, nothing else; the
    weights are a nanogpt2 checkpoint (HF GPT-2 cannot hold a prompt) that the loader and evaluate read. The base
    is a GPT-2 folder of 48 positions: the run's 44-token rows and the 4 virtual tokens fill them."""
    from nanogpt2.convert import save_pretrained
    from nanogpt2.evaluate_cli import main as evaluate
    from nanogpt2.model import GPT
    from nanogpt2.peft import PromptTuned

    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=48)), tmp_path / "gpt")
    seen = {}

    def snap(trainer, event):
        if event in ("train_start", "train_end"):
            seen[event] = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}

    run(cls_cfg(tmp_path, f"--init_from={tmp_path / 'gpt'}", "--block_size=44", "--method=prompt",
                "--prompt_length=4", "--prompt_init_text=News:", "--max_iters=4", "--eval_interval=0",
                "--baseline_eval=false"), hooks=[snap])
    start, end = seen["train_start"], seen["train_end"]
    wte = start["transformer.wte.weight"]
    news = get_tokenizer("gpt2").encode("News:")
    assert torch.equal(start["prompt_encoder.embedding.weight"], wte[(news * 4)[:4]])
    assert {n for n in start if not torch.equal(start[n], end[n])} == {"prompt_encoder.embedding.weight", "score.weight"}
    root, = (tmp_path / "results" / "gpt").iterdir()
    model, info = load_model(str(root / "train" / "weights"))
    assert isinstance(model, PromptTuned) and isinstance(model, GPTForSequenceClassification)
    assert info["spec"]["prompt"] == {"prompt_length": 4} and model.context_length == 44
    assert all(torch.equal(p, end[n]) for n, p in model.named_parameters())
    capsys.readouterr()
    res = evaluate(["--task", "classify", "--init_from", str(tmp_path / "out"), "--device", "cpu", "--json"])
    test = json.loads((root / "test" / "metrics" / "metrics.json").read_text())
    assert res["accuracy"] == test["accuracy"] and res["loss"] == pytest.approx(test["loss"], abs=1e-5)


def test_an_hf_classifier_as_init_from_keeps_its_head_and_takes_the_datas_names(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=48, num_labels=4, pad_token_id=50256)
    torch.manual_seed(0)
    transformers.GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "hf")
    seen = {}

    def start(trainer, event):
        if event == "train_start":
            seen["model"] = trainer.raw_model
            seen["head"] = trainer.raw_model.score.weight.detach().clone()

    run(cls_cfg(tmp_path, f"--init_from={tmp_path / 'hf'}", "--max_iters=2", "--eval_interval=0"), hooks=[start])
    hf_head = GPTForSequenceClassification.from_pretrained(tmp_path / "hf").score.weight
    assert torch.equal(seen["head"], hf_head)  # the checkpoint's head, not a fresh one
    assert seen["model"].labels == ["World", "Sports", "Business", "Sci/Tech"]
    root, = (tmp_path / "results" / "hf").iterdir()
    back = transformers.GPT2ForSequenceClassification.from_pretrained(root / "train" / "weights")
    assert back.config.id2label[1] == "Sports"
    small = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, num_labels=4, pad_token_id=0)
    transformers.GPT2ForSequenceClassification(small).save_pretrained(tmp_path / "small")
    with pytest.raises(NanoGPT2Error, match="vocabulary of 100 tokens"):
        run(cls_cfg(tmp_path / "x", f"--init_from={tmp_path / 'small'}"))


def test_classify_resume_reproduces_an_uninterrupted_run(tmp_path):
    def losses(out):
        return [json.dumps(r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]

    args = ("--max_iters=0", "--max_epochs=1", "--dropout=0.1", "--eval_interval=0")
    run(cls_cfg(tmp_path / "whole", *args))

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    assert run(cls_cfg(tmp_path / "cut", *args), hooks=[stop_at_3])["stopped"] == "signal"
    run(cls_cfg(tmp_path / "cut", *args, "--resume_from=auto"))
    assert losses(tmp_path / "cut" / "out") == losses(tmp_path / "whole" / "out")
    root, = (tmp_path / "cut" / "results" / "scratch").iterdir()  # one results folder: the resumed run kept it
    assert (root / "baseline").is_dir() and (root / "summary.md").exists()


def local_file(tmp_path, name, text) -> list:
    (tmp_path / name).write_text(text)
    return [f"--dataset={tmp_path / name}", "--data_path="]


def finetune_cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, "--task=classify", "--dataset=ag_news",
                           f"--data_path={AG_TINY}", "--init_from=scratch", "--block_size=32", "--max_iters=2",
                           f"--out_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'res'}", *args],
                          capture_output=True, text=True, cwd=tmp_path)


def test_a_label_outside_num_labels_or_another_head_size_is_one_error_line(tmp_path):
    five = local_file(tmp_path, "d.csv", "text,label\n" + "".join(f"t{i},{i % 5}\n" for i in range(40)))
    assert "label 4 ('4') of the" in one_error_line(finetune_cli(tmp_path, *five, "--num_labels=4"))
    hf_classifier(tmp_path / "hf", vocab=50257)
    line = one_error_line(finetune_cli(tmp_path, f"--init_from={tmp_path / 'hf'}", "--num_labels=4"))
    assert "num_labels=4, but the model's classification head has 3 labels" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()  # refused before anything is written


@pytest.mark.parametrize("name, text, message", [
    ("d.csv", "text,class\nfine,1\n", "not label: a classification CSV needs"),
    ("d.jsonl", '{"text": "a", "label": 0}\n\n{"text": " ", "label": 1}\n', "line 3: empty text"),
    ("d.csv", "text,label\na,1\n", "the val split is empty"),
    ("d.txt", "a\n", "a .csv or .jsonl file"),
])
def test_bad_files_are_refused_before_training(tmp_path, name, text, message):
    """(The scripts print a NanoGPT2Error as one `error:` line, as the test above shows end to end.)"""
    with pytest.raises(NanoGPT2Error, match=message):
        run(cls_cfg(tmp_path, *local_file(tmp_path, name, text)))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# The real effect


@pytest.mark.slow
def test_a_small_model_learns_ag_news_from_2000_rows(tmp_path):
    """2,000 rows of the real AG News test set (a stratified hold-out: 1,620 train / 180 val / 200 test), a 2-layer
    model from scratch, 3 epochs: well above the 25 % of one class, and above the untrained baseline."""
    csv_path = shared_data("ag_news/test.csv")
    cfg = load_config([TINY, "--task=classify", "--dataset=ag_news", f"--data_path={csv_path}", "--max_examples=2000",
                       "--init_from=scratch", f"--out_dir={tmp_path / 'out'}", f"--results_dir={tmp_path / 'results'}",
                       "--block_size=64", "--n_layer=2", "--n_head=4", "--n_embd=64", "--dropout=0.1", "--max_iters=0",
                       "--max_epochs=3", "--batch_size=16", "--learning_rate=2e-3", "--min_lr=1e-4", "--warmup_iters=20",
                       "--lr_schedule=linear", "--weight_decay=0.01", "--method=full", "--eval_interval=0",
                       "--eval_iters=0", "--log_interval=50", "--checkpoint_interval=0"], cls=FinetuneConfig)
    run(cfg)
    root, = (tmp_path / "results" / "scratch").iterdir()
    base, test = (json.loads((root / s / "metrics" / "metrics.json").read_text()) for s in ("baseline", "test"))
    assert test["examples"] == 200 and test["accuracy"] >= 0.65 and test["macro_f1"] >= 0.6
    assert test["accuracy"] > base["accuracy"] + 0.3


def test_bench_classify_times_ours_and_transformers_on_the_same_batch(tmp_path):
    import bench  # (python -m pytest puts the project root on sys.path, as tests/test_bench.py relies on)

    tiny = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--vocab_size", "128", "--block_size", "32"]
    report = bench.main(["classify", "--vs", "hf", "--device", "cpu", *tiny, "--batch_size", "4", "--steps", "1",
                         "--warmup", "1", "--repeats", "2", "--json", str(tmp_path / "b.json")])
    res = report["results"]["classify"]
    assert res["ours"]["examples_per_sec"]["value"] > 0 and res["hf"]["examples_per_sec"]["value"] > 0
    assert res["ours"]["first_loss"]["value"] == pytest.approx(res["hf"]["first_loss"]["value"], abs=1e-5)
    assert res["ratio_paired"]["value"] > 0 and json.loads((tmp_path / "b.json").read_text())["results"]["classify"]
