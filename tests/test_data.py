"""
Tests for nanogpt2/data.py: the registry, downloads from a real loopback HTTP server (tests/http_fixture.py,
never mocks), extraction, tokenization into memmaps and the cache (reuse, invalidation, killed builds), the
batch samplers, bad input, and real-data token counts (bundled Tiny Shakespeare; WikiText-2 valid/test from
../shared/data when present).

Run: python -m pytest -q tests/test_data.py
"""

import hashlib
import io
import json
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

import nanogpt2.data as data
from conftest import ROOT, shared_data
from http_fixture import file_server, unused_url  # noqa: F401  (file_server: a fixture)
from nanogpt2.data import DATASETS, DataWarning, Remote, get_split_text, prepare_dataset
from nanogpt2.download import DownloadError
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.samplers import RandomWindowSampler, check_length, eval_windows
from nanogpt2.tokenizer import get_tokenizer

SHAKESPEARE = ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt"
SHAKESPEARE_GPT2_TOKENS = 338_025


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Nothing in these tests may touch ~/.cache or the network: the cache lives in tmp_path."""
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "nanogpt2-cache"))
    monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", unused_url("").rstrip("/"))


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("gpt2", backend="tiktoken")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "data-cache"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def wiki_text(n_articles: int, seed: int) -> str:
    """Text laid out like WikiText raw: ' = Title = ' headings, ' \\n' blank lines, spaced punctuation."""
    lines = SHAKESPEARE.read_text(encoding="utf-8").split("\n")
    rng = np.random.default_rng(seed)
    out = []
    for a in range(n_articles):
        out += [" \n", f" = Article {seed}.{a} = \n", " \n"]
        for _ in range(int(rng.integers(3, 8))):
            i = int(rng.integers(0, len(lines) - 10))
            para = " ".join(line.strip() for line in lines[i:i + 6] if line.strip())
            out.append(" " + para.replace(",", " ,").replace(".", " .") + " \n")
    return "".join(out)


def wikitext_zip(texts: dict, crlf: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("wikitext-2-raw/", "")
        for fname, text in texts.items():
            z.writestr(f"wikitext-2-raw/{fname}", text.replace("\n", "\r\n") if crlf else text)
    return buf.getvalue()


@pytest.fixture
def wt_texts():
    return {"wiki.train.raw": wiki_text(12, 1), "wiki.valid.raw": wiki_text(3, 2), "wiki.test.raw": wiki_text(3, 3)}


def serve_wikitext(monkeypatch, srv, blob: bytes, path="/wikitext-2-raw-v1.zip"):
    """Point the registry's wikitext2 at the loopback server (same extraction rules, another URL)."""
    spec = DATASETS["wikitext2"]
    srv.files[path] = blob
    remote = Remote(spec.remote[0].filename, urls=(srv.url(path),), sha256=sha(blob), size=len(blob))
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(remote,), parquet=None, split_sha256={}))


# --- the registry and names -----------------------------------------------------------------------------------

def test_registry_lists_the_datasets():
    for name in ["shakespeare", "shakespeare_char", "wikitext2", "wikitext103", "tinystories"]:
        assert name in DATASETS and DATASETS[name].local and DATASETS[name].description
    wt2 = DATASETS["wikitext2"]
    assert wt2.remote[0].urls[0] == "https://wikitext.smerity.com/wikitext-2-raw-v1.zip"
    assert wt2.remote[0].size == 4_721_645 and len(wt2.remote[0].sha256) == 64
    assert wt2.splits == {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
    assert DATASETS["shakespeare"].bundled and not DATASETS["shakespeare"].remote[0].hf
    assert DATASETS["shakespeare_char"].tokenizer == "char"
    wt103 = DATASETS["wikitext103"]
    assert wt103.remote[0].urls[0] == "https://wikitext.smerity.com/wikitext-103-raw-v1.zip"
    assert wt103.splits == wt2.splits and wt103.archive_root == "wikitext-103-raw"
    for spec in (wt2, wt103):  # HF parquet: a second source for every split, used only with pyarrow
        assert set(spec.parquet) == set(spec.splits)
        assert all(r.hf[0][0] == "datasets/Salesforce/wikitext" for rs in spec.parquet.values() for r in rs)
    ts = DATASETS["tinystories"]
    assert ts.fmt == "eot_text" and set(ts.splits) == {"train", "val"}
    assert {r.filename for r in ts.remote} == set(ts.splits.values())
    # the bundled default corpus is karpathy/char-rnn's input.txt, byte for byte
    assert sha(SHAKESPEARE.read_bytes()) == DATASETS["shakespeare"].remote[0].sha256
    assert SHAKESPEARE.stat().st_size == DATASETS["shakespeare"].remote[0].size


def test_unknown_dataset_lists_known_names(cache):
    with pytest.raises(NanoGPT2Error) as e:
        prepare_dataset("wikitext3", cache_root=cache)
    for name in ["shakespeare", "wikitext2", "wikitext103", "tinystories"]:
        assert name in str(e.value)
    with pytest.raises(NanoGPT2Error, match="does not exist"):
        prepare_dataset("./no/such/corpus.txt", cache_root=cache)
    with pytest.raises(NanoGPT2Error, match="unknown split"):
        get_split_text("shakespeare", "dev")


# --- real data: token counts ----------------------------------------------------------------------------------

def test_tiny_shakespeare_gpt2_token_count(cache, tok):
    ds = prepare_dataset("shakespeare", cache_root=cache, quiet=True)
    train, val = ds.tokens("train"), ds.tokens("val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    assert len(train) + len(val) == SHAKESPEARE_GPT2_TOKENS == ds.meta["tokens"]
    assert len(val) == round(SHAKESPEARE_GPT2_TOKENS * 0.1)  # the dataset's default fraction, cut by tokens
    whole = tok.encode_ordinary(SHAKESPEARE.read_text(encoding="utf-8"))
    assert np.array_equal(np.concatenate([train, val]), whole)  # parallel chunked encoding == the whole text
    m = ds.meta
    assert m["tokenizer"]["name"] == "gpt2" and m["tokenizer"]["checksum"] == tok.checksum
    assert m["vocab_size"] == 50257 and m["dtype"] == "uint16" and m["complete"] is True
    assert m["source"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert m["splits"]["train"]["tokens"] == len(train) and m["split_method"] == "val_fraction"
    assert m["text_bytes"] == SHAKESPEARE.stat().st_size == sum(v["text_bytes"] for v in m["splits"].values())
    assert m["documents"] == 1 and m["document_separator"] == "<|endoftext|>"
    # another fraction: the same 338,025 tokens, cut elsewhere
    ds2 = prepare_dataset("shakespeare", cache_root=cache, val_fraction=0.005, quiet=True)
    assert len(ds2.tokens("val")) == round(SHAKESPEARE_GPT2_TOKENS * 0.005)
    assert len(ds2.tokens("train")) + len(ds2.tokens("val")) == SHAKESPEARE_GPT2_TOKENS


def test_small_pieces_encode_like_the_whole_text(cache, tok, monkeypatch):
    """Cut into ~2 KB pieces (hundreds of cut points) and batched, the ids are still those of the whole text."""
    monkeypatch.setattr(data, "_PIECE_CHARS", 2048)
    monkeypatch.setattr(data, "_BATCH_CHARS", 100_000)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    pieces = list(data._safe_pieces(iter([text[i:i + 7000] for i in range(0, len(text), 7000)])))
    assert "".join(pieces) == text and len(pieces) > 400
    ds = prepare_dataset("shakespeare", cache_root=cache, quiet=True, num_workers=2)
    assert ds.meta["tokens"] == SHAKESPEARE_GPT2_TOKENS
    assert np.array_equal(np.concatenate([ds.tokens("train"), ds.tokens("val")]), tok.encode_ordinary(text))


def test_wikitext2_valid_test_counts_from_shared_data(cache, tok):
    folder = shared_data("wikitext-2-raw")
    val = get_split_text("wikitext2", "val", data_path=folder)
    test = get_split_text("wikitext2", "test", data_path=folder)
    assert len(tok.encode_ordinary(val)) == 249_887
    assert len(tok.encode_ordinary(test)) == 286_221
    # the same file through the whole pipeline as a local text file: identical ids, same total
    ds = prepare_dataset(folder / "wiki.valid.raw", cache_root=cache, quiet=True)
    assert ds.meta["tokens"] == 249_887
    assert np.array_equal(np.concatenate([ds.tokens("train"), ds.tokens("val")]), tok.encode_ordinary(val))
    # the shared folder has no train split: preparing wikitext2 from it says so and what to do instead
    with pytest.raises(NanoGPT2Error, match=r"no wiki\.train\.raw.*found: wiki\.test\.raw, wiki\.valid\.raw"):
        prepare_dataset("wikitext2", data_path=folder, cache_root=cache, quiet=True)


# --- downloads, extraction, cache reuse -----------------------------------------------------------------------

def test_wikitext_zip_download_extract_tokenize_and_reuse(cache, tok, wt_texts, file_server, monkeypatch):
    file_server.reject_python_ua = True  # like the Smerity mirror: python-requests' agent gets 403
    blob = wikitext_zip(wt_texts)
    serve_wikitext(monkeypatch, file_server, blob)
    ds = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert ds.built and file_server.hits["/wikitext-2-raw-v1.zip"] == 1
    for split, fname in [("train", "wiki.train.raw"), ("val", "wiki.valid.raw"), ("test", "wiki.test.raw")]:
        assert np.array_equal(ds.tokens(split), tok.encode_ordinary(wt_texts[fname])), split
        assert ds.meta["splits"][split]["documents"] == 1
    assert ds.meta["split_method"] == "dataset" and ds.meta["source"]["sha256"] == sha(blob)
    assert (cache / "downloads" / "wikitext-2-raw-v1.zip").read_bytes() == blob
    assert ds.dir == cache / "wikitext2-gpt2"

    # second call: the cache is reused, no request at all
    again = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert not again.built and file_server.hits["/wikitext-2-raw-v1.zip"] == 1
    assert np.array_equal(again.tokens("val"), ds.tokens("val"))
    assert get_split_text("wikitext2", "test", cache_root=cache) == wt_texts["wiki.test.raw"]
    assert file_server.hits["/wikitext-2-raw-v1.zip"] == 1

    # lost token files: tokenized again from the downloaded zip, still no request
    (ds.dir / "train.bin").unlink()
    rebuilt = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert rebuilt.built and file_server.hits["/wikitext-2-raw-v1.zip"] == 1
    # the zip deleted to save space: the tokens made from it are still trusted
    (cache / "downloads" / "wikitext-2-raw-v1.zip").unlink()
    assert not prepare_dataset("wikitext2", cache_root=cache, quiet=True).built
    assert file_server.hits["/wikitext-2-raw-v1.zip"] == 1


def test_wikitext_crlf_copy_and_local_overrides(cache, tok, wt_texts, tmp_path, monkeypatch):
    """data_path= takes the zip (CRLF line ends normalized) or a folder; no network needed."""
    spec = DATASETS["wikitext2"]
    offline = Remote(spec.remote[0].filename, urls=(unused_url("/wikitext-2-raw-v1.zip"),))
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(offline,), parquet=None, split_sha256={
        "val": sha(wt_texts["wiki.valid.raw"].encode()), "test": sha(wt_texts["wiki.test.raw"].encode())}))
    zpath = tmp_path / "my-copy.zip"
    zpath.write_bytes(wikitext_zip(wt_texts, crlf=True))
    ds = prepare_dataset("wikitext2", data_path=zpath, cache_root=cache, quiet=True)
    assert np.array_equal(ds.tokens("val"), tok.encode_ordinary(wt_texts["wiki.valid.raw"]))
    assert ds.meta["source"]["kind"] == "local"

    folder = tmp_path / "extracted" / "wikitext-2-raw"
    folder.mkdir(parents=True)
    for fname, text in wt_texts.items():
        (folder / fname).write_text(text, encoding="utf-8")
    ds2 = prepare_dataset("wikitext2", data_path=folder.parent, cache_root=cache, quiet=True)  # rebuilt: new source
    assert ds2.built and np.array_equal(ds2.tokens("train"), tok.encode_ordinary(wt_texts["wiki.train.raw"]))
    assert get_split_text("wikitext2", "val", data_path=folder) == wt_texts["wiki.valid.raw"]

    # a copy whose text differs from the release is used, with a warning
    (folder / "wiki.valid.raw").write_text(wt_texts["wiki.valid.raw"] + " extra \n", encoding="utf-8")
    with pytest.warns(DataWarning, match="differs from the official release"):
        prepare_dataset("wikitext2", data_path=folder, cache_root=cache, quiet=True)


def test_offline_without_a_copy_names_the_url_and_data_path(cache, monkeypatch):
    spec = DATASETS["wikitext2"]
    url = unused_url("/wikitext-2-raw-v1.zip")
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(Remote(spec.remote[0].filename, urls=(url,)),),
                                                        parquet=None))
    with pytest.raises(DownloadError) as e:
        prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    msg = str(e.value)
    assert url in msg and "--data_path PATH" in msg and "wiki.train.raw" in msg
    assert "prepare_dataset(" not in msg  # the command-line fix, not the Python API
    assert not (cache / "wikitext2-gpt2").exists()


def test_offline_train_py_names_data_path_in_one_line(tmp_path):
    """train.py offline (the registry's URL pointed at a closed port): one `error:` line that names the
    command-line fix, --data_path, and no traceback."""
    url = unused_url("/wikitext-2-raw-v1.zip")
    prelude = ("from dataclasses import replace\nfrom nanogpt2.data import DATASETS, Remote\n"
               "s = DATASETS['wikitext2']\n"
               f"DATASETS['wikitext2'] = replace(s, remote=(Remote(s.remote[0].filename, urls=({url!r},)),), parquet=None)\n"
               f"import runpy, sys\nsys.argv = ['train.py'] + sys.argv[1:]\n"
               f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n")
    env = {**__import__("os").environ, "NANOGPT2_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", prelude, str(ROOT / "configs" / "tiny.py"), "--dataset=wikitext2",
                        f"--out_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not download dataset 'wikitext2'"), r.stderr
    assert "--data_path PATH" in lines[0] and url in lines[0] and "prepare_dataset(" not in lines[0]


def test_next_mirror_when_the_first_serves_a_corrupt_zip(cache, tok, wt_texts, file_server, monkeypatch):
    """A mirror whose bytes fail the sha256 check is skipped; the next mirror's verified zip is used."""
    blob = wikitext_zip(wt_texts)
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 0xFF
    file_server.files["/smerity/wikitext-2-raw-v1.zip"] = bytes(corrupt)
    file_server.files["/mirror/wikitext-2-raw-v1.zip"] = blob
    spec = DATASETS["wikitext2"]
    remote = Remote(spec.remote[0].filename, urls=(file_server.url("/smerity/wikitext-2-raw-v1.zip"),
                                                   file_server.url("/mirror/wikitext-2-raw-v1.zip")),
                    sha256=sha(blob), size=len(blob))
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(remote,), parquet=None, split_sha256={}))
    ds = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert file_server.hits["/smerity/wikitext-2-raw-v1.zip"] >= 1 and file_server.hits["/mirror/wikitext-2-raw-v1.zip"] == 1
    assert (cache / "downloads" / "wikitext-2-raw-v1.zip").read_bytes() == blob
    assert ds.meta["source"]["sha256"] == sha(blob)
    assert np.array_equal(ds.tokens("test"), tok.encode_ordinary(wt_texts["wiki.test.raw"]))


def test_a_new_registry_file_invalidates_the_download_and_the_tokens(cache, tok, wt_texts, file_server, monkeypatch):
    """The registry's expected sha256 changes (a corrected release): the old zip and tokens are not reused."""
    serve_wikitext(monkeypatch, file_server, wikitext_zip(wt_texts))
    old = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert old.built and file_server.hits["/wikitext-2-raw-v1.zip"] == 1
    new_texts = {**wt_texts, "wiki.valid.raw": wiki_text(4, 9)}
    new_blob = wikitext_zip(new_texts)
    serve_wikitext(monkeypatch, file_server, new_blob)
    ds = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert ds.built and file_server.hits["/wikitext-2-raw-v1.zip"] == 2
    assert ds.meta["source"]["sha256"] == sha(new_blob)
    assert np.array_equal(ds.tokens("val"), tok.encode_ordinary(new_texts["wiki.valid.raw"]))
    assert not prepare_dataset("wikitext2", cache_root=cache, quiet=True).built  # and now it is reused


def test_offline_error_mentions_the_parquet_source_by_pyarrow(cache, monkeypatch):
    """With the zip unreachable: without pyarrow the message says how to enable the parquet copy; with it, the
    parquet URLs are tried too and named."""
    spec = DATASETS["wikitext2"]
    url = unused_url("/wikitext-2-raw-v1.zip")
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(Remote(spec.remote[0].filename, urls=(url,)),)))
    with pytest.raises(DownloadError) as e:
        prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    msg = str(e.value)
    assert url in msg and "--data_path PATH" in msg
    if data._have_pyarrow():
        assert "wikitext-2-raw-v1/train-00000-of-00001.parquet" in msg and "pip install pyarrow" not in msg
    else:
        assert "pip install pyarrow" in msg and ".parquet" not in msg
    assert not (cache / "wikitext2-gpt2").exists()


def test_tinystories_layout_download(cache, tok, file_server, monkeypatch):
    """One file per split, stories separated by <|endoftext|>: each story a document, joined by the EOT token."""
    stories = [f"Once upon a time there was a {w}. It was happy.\nThe end." for w in ["cat", "dog", "fox", "owl"]]
    train_txt = "\n<|endoftext|>\n".join(stories[:3]) + "\n<|endoftext|>\n"
    valid_txt = stories[3] + "\n<|endoftext|>\n\n"
    file_server.files["/ts/train.txt"] = train_txt.encode()
    file_server.files["/ts/valid.txt"] = valid_txt.encode()
    spec = DATASETS["tinystories"]
    monkeypatch.setitem(DATASETS, "tinystories", replace(spec, remote=(
        Remote(spec.splits["train"], urls=(file_server.url("/ts/train.txt"),)),
        Remote(spec.splits["val"], urls=(file_server.url("/ts/valid.txt"),)))))
    ds = prepare_dataset("tinystories", cache_root=cache, quiet=True)
    eot = tok.eot_token
    want = tok.encode_ordinary(stories[0]) + [eot] + tok.encode_ordinary(stories[1]) + [eot] + \
        tok.encode_ordinary(stories[2])
    assert ds.tokens("train").tolist() == want
    assert ds.tokens("val").tolist() == tok.encode_ordinary(stories[3])
    assert ds.meta["splits"]["train"]["documents"] == 3 and ds.meta["documents"] == 4
    assert "test" not in ds.splits


def test_parquet_fallback_when_the_zip_is_unavailable(cache, tok, wt_texts, file_server, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", file_server.base_url)
    spec = DATASETS["wikitext2"]
    parquet = {}
    for split, fname in spec.splits.items():
        rows = [("" if line == " \n" else line) for line in wt_texts[fname].splitlines(keepends=True)]  # as HF's
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": rows}), buf)
        r = spec.parquet[split][0]
        file_server.files["/" + r.hf[0][0] + "/resolve/main/" + r.hf[0][1]] = buf.getvalue()
        parquet[split] = (replace(r, sha256=None, size=None),)
    dead = Remote(spec.remote[0].filename, urls=(file_server.url("/gone.zip"),))  # 404
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(dead,), parquet=parquet, split_sha256={
        "val": sha(wt_texts["wiki.valid.raw"].encode())}))
    ds = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    for split, fname in spec.splits.items():
        assert np.array_equal(ds.tokens(split), tok.encode_ordinary(wt_texts[fname])), split
    assert get_split_text("wikitext2", "test", cache_root=cache) == wt_texts["wiki.test.raw"]


# --- the cache: invalidation and killed builds ----------------------------------------------------------------

def test_changed_source_tokenizer_or_fraction_invalidates(cache, tok, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 300, encoding="utf-8")
    ds = prepare_dataset(f, cache_root=cache, quiet=True)
    n0 = ds.meta["tokens"]
    assert not prepare_dataset(f, cache_root=cache, quiet=True).built

    f.write_text("A different text entirely, with other words. " * 500, encoding="utf-8")  # changed source
    ds = prepare_dataset(f, cache_root=cache, quiet=True)
    assert ds.built and ds.meta["tokens"] != n0
    assert ds.meta["tokens"] == len(tok.encode_ordinary(f.read_text(encoding="utf-8")))

    meta = json.loads((ds.dir / "meta.json").read_text())
    meta["tokenizer"]["checksum"] = "0" * 64  # as if made by another vocabulary
    (ds.dir / "meta.json").write_text(json.dumps(meta))
    assert prepare_dataset(f, cache_root=cache, quiet=True).built

    assert prepare_dataset(f, cache_root=cache, val_fraction=0.2, quiet=True).built
    char = prepare_dataset(f, tokenizer="char", cache_root=cache, quiet=True)  # another tokenizer: its own folder
    assert char.dir != ds.dir and char.tokenizer().decode(char.tokens("train")[:5]) == "A dif"


def test_token_ids_outside_the_vocabulary_rebuild_the_cache(cache, capsys):
    """A train.bin of the right size holding an id the vocabulary lacks (60,000 in a 65-character vocabulary) is
    a damaged cache: found when the cache is opened and rebuilt, instead of an IndexError in the first step."""
    good = prepare_dataset("shakespeare_char", cache_root=cache, quiet=True)
    expected = np.array(good.tokens("train"))
    ids = np.array(expected)
    ids[1234] = 60_000
    ids.tofile(good.dir / "train.bin")  # same size, so the size check alone passes it
    ds = prepare_dataset("shakespeare_char", cache_root=cache)
    err = capsys.readouterr().err
    assert ds.built and "rebuilding the token cache (train.bin holds token id 60000, outside the vocabulary of 65" in err
    assert np.array_equal(ds.tokens("train"), expected) and int(ds.tokens("train").max()) < 65
    assert not prepare_dataset("shakespeare_char", cache_root=cache, quiet=True).built  # and trusted again


def test_damaged_cache_without_its_source_is_refused_with_one_line(cache, wt_texts, file_server, monkeypatch):
    """Damaged tokens whose download was deleted, offline: refused (DownloadError naming --data_path), and the
    cache is left as it was rather than used."""
    serve_wikitext(monkeypatch, file_server, wikitext_zip(wt_texts))
    ds = prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    (cache / "downloads" / "wikitext-2-raw-v1.zip").unlink()
    val = np.array(ds.tokens("val"))
    val[0] = 60_000
    val.tofile(ds.dir / "val.bin")
    spec = DATASETS["wikitext2"]
    offline = Remote(spec.remote[0].filename, urls=(unused_url("/wikitext-2-raw-v1.zip"),))
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, remote=(offline,)))
    with pytest.raises(DownloadError, match="--data_path PATH"):
        prepare_dataset("wikitext2", cache_root=cache, quiet=True)
    assert np.array_equal(np.fromfile(ds.dir / "val.bin", dtype=ds.dtype), val)  # nothing deleted or rewritten


def test_train_py_rebuilds_a_cache_with_out_of_vocabulary_ids(tmp_path):
    """End to end: the damaged cache that used to end train.py with an IndexError traceback is rebuilt, and the
    run trains."""
    env = {**__import__("os").environ, "NANOGPT2_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(ROOT)}
    ds = prepare_dataset("shakespeare_char", cache_root=tmp_path / "c" / "data", quiet=True)
    ids = np.array(ds.tokens("train"))
    ids[::1000] = 60_000
    ids.tofile(ds.dir / "train.bin")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / "tiny.py"), "--max_iters=2",
                        "--eval_interval=0", "--test_eval=false", f"--out_dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "rebuilding the token cache (train.bin holds token id 60000" in r.stderr
    assert "done: 2 steps" in r.stdout and (tmp_path / "run" / "checkpoint_final.pt").exists()


def test_half_written_caches_are_never_trusted(cache, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("Some words for the cache. " * 400, encoding="utf-8")
    good = prepare_dataset(f, cache_root=cache, quiet=True)
    n = good.meta["tokens"]
    meta_path = good.dir / "meta.json"
    meta = json.loads(meta_path.read_text())

    with open(good.dir / "train.bin", "r+b") as fh:  # a truncated token file
        fh.truncate(10)
    assert prepare_dataset(f, cache_root=cache, quiet=True).built
    meta_path.write_text(json.dumps({**meta, "complete": False}))  # not marked complete
    assert prepare_dataset(f, cache_root=cache, quiet=True).built
    meta_path.write_text(json.dumps(meta)[:200])  # a meta.json cut short
    ds = prepare_dataset(f, cache_root=cache, quiet=True)
    assert ds.built and ds.meta["tokens"] == n


class _FailingTokenizer:
    """GPT-2, except that encode_batch fails on its `fail_on`-th call (a build killed mid-way)."""

    def __init__(self, fail_on):
        self.base = get_tokenizer("gpt2", backend="tiktoken")
        self.name, self.n_vocab, self.eot_token, self.checksum = "gpt2", 50257, 50256, self.base.checksum
        self.calls, self.fail_on = 0, fail_on

    def encode_ordinary(self, text):
        return self.base.encode_ordinary(text)

    def decode_bytes(self, ids):
        return self.base.decode_bytes(ids)

    def encode_batch(self, texts, num_workers=None):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt("killed")
        return self.base.encode_batch(texts, num_workers)


def test_interrupted_tokenization_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(data, "_PIECE_CHARS", 4096)
    monkeypatch.setattr(data, "_BATCH_CHARS", 50_000)
    bad = _FailingTokenizer(fail_on=4)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("shakespeare", tokenizer=bad, cache_root=cache, quiet=True)
    assert bad.calls == 4
    assert sorted(p.name for p in cache.iterdir()) == []  # no folder, no temp files, no lock left
    ds = prepare_dataset("shakespeare", cache_root=cache, quiet=True)
    assert ds.built and ds.meta["tokens"] == SHAKESPEARE_GPT2_TOKENS


def test_killed_process_leaves_no_trusted_cache(cache, tmp_path):
    """A process killed mid-tokenization (os._exit: no cleanup runs) leaves only a temp folder, never used."""
    script = f"""
import os, sys
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import nanogpt2.data as data
from test_data import _FailingTokenizer
data._PIECE_CHARS, data._BATCH_CHARS = 4096, 50_000
class Dying(_FailingTokenizer):
    def encode_batch(self, texts, num_workers=None):
        self.calls += 1
        if self.calls == 4:
            os._exit(9)
        return self.base.encode_batch(texts, num_workers)
data.prepare_dataset("shakespeare", tokenizer=Dying(0), cache_root={str(cache)!r}, quiet=True)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    left = [p.name for p in cache.iterdir()]
    assert "shakespeare-gpt2" not in left and any(n.startswith(".tmp-shakespeare-gpt2.") for n in left), left
    tmp = next(p for p in cache.iterdir() if p.name.startswith(".tmp-"))
    assert (tmp / "all.bin").stat().st_size > 0 and not (tmp / "meta.json").exists()
    ds = prepare_dataset("shakespeare", cache_root=cache, quiet=True)
    assert ds.built and ds.meta["tokens"] == SHAKESPEARE_GPT2_TOKENS
    assert not any(p.name.startswith(".tmp-") for p in cache.iterdir())  # the leftovers were cleaned


def test_concurrent_prepares_build_once(cache, tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("Concurrent ranks share one cache. " * 2000, encoding="utf-8")
    results, errors = [], []

    def run():
        try:
            results.append(prepare_dataset(f, cache_root=cache, quiet=True))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(r.built for r in results) == [False, False, True]
    assert len({r.meta["tokens"] for r in results}) == 1


# --- local inputs ---------------------------------------------------------------------------------------------

def test_local_folder_and_jsonl_documents(cache, tok, tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First document.", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Second document!", encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")  # skipped: no empty documents
    (folder / ".hidden.txt").write_text("never read", encoding="utf-8")
    (folder / "notes.bin").write_bytes(b"\x00\x01")
    ds = prepare_dataset(folder, cache_root=cache, val_fraction=0.0, quiet=True)
    eot = tok.eot_token
    assert ds.tokens("train").tolist() == tok.encode_ordinary("First document.") + [eot] + \
        tok.encode_ordinary("Second document!")
    assert ds.meta["documents"] == 2 and len(ds.tokens("val")) == 0

    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"text": "Hello there."}\n\n{"text": ""}\n{"text": "General Kenobi.", "id": 2}\n', encoding="utf-8")
    ds = prepare_dataset(jl, cache_root=cache, val_fraction=0.0, quiet=True)
    assert ds.tokens("train").tolist() == tok.encode_ordinary("Hello there.") + [eot] + \
        tok.encode_ordinary("General Kenobi.")
    jl.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(NanoGPT2Error, match=r"line 2: no string field \"text\""):
        prepare_dataset(jl, cache_root=cache, quiet=True)

    own = tmp_path / "own_splits"
    own.mkdir()
    (own / "train.txt").write_text("Training text here. " * 50, encoding="utf-8")
    (own / "valid.txt").write_text("Held out text.", encoding="utf-8")
    ds = prepare_dataset(own, cache_root=cache, quiet=True)
    assert ds.meta["split_method"] == "dataset"
    assert ds.tokens("val").tolist() == tok.encode_ordinary("Held out text.")


def test_char_tokenizer_dataset(cache):
    ds = prepare_dataset("shakespeare_char", cache_root=cache, quiet=True)
    t = ds.tokenizer()
    assert t.n_vocab == 65 and ds.meta["tokenizer"]["name"] == "char" and ds.meta["vocab_size"] == 65
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert len(ds.tokens("train")) + len(ds.tokens("val")) == len(text)
    assert t.decode(ds.tokens("val")) == text[-len(ds.tokens("val")):]
    with pytest.warns(DataWarning, match="always uses the 'char' tokenizer"):
        again = prepare_dataset("shakespeare_char", tokenizer="gpt2", cache_root=cache, quiet=True)
    assert not again.built and again.dir == ds.dir


def test_vocab_of_65536_or_more_is_stored_as_uint32(cache, tmp_path):
    """A char vocabulary of 70,000 symbols does not fit uint16: ids are stored as uint32, none truncated."""
    wide = [chr(c) for c in range(0x4E00, 0x4E00 + 72_100) if not 0xD800 <= c < 0xE000][:70_000]
    text = "".join(wide) + "\n" + "".join(reversed(wide))
    f = tmp_path / "wide.txt"
    f.write_text(text, encoding="utf-8")
    ds = prepare_dataset(f, tokenizer="char", cache_root=cache, val_fraction=0.25, quiet=True)
    train, val = ds.tokens("train"), ds.tokens("val")
    assert ds.meta["vocab_size"] == 70_001 and ds.meta["dtype"] == "uint32" and train.dtype == np.uint32
    assert (ds.dir / "train.bin").stat().st_size == 4 * len(train)
    assert int(np.concatenate([train, val]).max()) == 70_000  # > 65535: would wrap around in uint16
    assert ds.tokenizer().decode(np.concatenate([train, val]).tolist()) == text
    small = prepare_dataset(f, tokenizer="gpt2", cache_root=cache, quiet=True)  # same text, GPT-2: uint16
    assert small.meta["dtype"] == "uint16" and small.tokens("train").dtype == np.uint16


def test_streamed_reading_in_tiny_blocks(cache, tok, tmp_path, wt_texts, monkeypatch):
    """Files are decoded block by block: multi-byte characters, invalid bytes, CRLF pairs and <|endoftext|>
    split across block boundaries give exactly the whole-file result (3-byte blocks: every kind of split)."""
    monkeypatch.setattr(data, "_READ_BLOCK", 3)
    # UTF-8 text with 2-, 3- and 4-byte characters and 5 lone latin-1 bytes (each one invalid)
    good = "na\u00efve \u2014 caf\u00e9 \U0001F600 \u4e2d\u6587 text.\n"
    raw = (good.encode() + b"x\xe9 ") * 5
    f = tmp_path / "mixed.txt"
    f.write_bytes(raw)
    with pytest.warns(DataWarning, match=r"5 byte\(s\) were not valid UTF-8") as w:
        ds = prepare_dataset(f, cache_root=cache, val_fraction=0.0, quiet=True)
    assert len([x for x in w if issubclass(x.category, DataWarning)]) == 1  # one warning per file, with the total
    assert ds.tokens("train").tolist() == tok.encode_ordinary(raw.decode("utf-8", errors="replace"))
    assert ds.meta["replaced_bytes"] == 5

    # WikiText with CRLF line ends (a "\r" at the end of a block, its "\n" in the next)
    spec = DATASETS["wikitext2"]
    monkeypatch.setitem(DATASETS, "wikitext2", replace(spec, parquet=None, split_sha256={}))
    zpath = tmp_path / "crlf.zip"
    zpath.write_bytes(wikitext_zip(wt_texts, crlf=True))
    ds = prepare_dataset("wikitext2", data_path=zpath, cache_root=cache, quiet=True)
    assert np.array_equal(ds.tokens("val"), tok.encode_ordinary(wt_texts["wiki.valid.raw"]))
    assert "\r" not in get_split_text("wikitext2", "test", data_path=zpath)

    # TinyStories-like: stories separated by <|endoftext|>, the separator cut by block boundaries
    stories = [f"Story {i}: a {w} went home." for i, w in enumerate(["cat", "dog", "hen", "fox", "owl"])]
    folder = tmp_path / "ts"
    folder.mkdir()
    ts = DATASETS["tinystories"]
    (folder / ts.splits["train"]).write_text("<|endoftext|>".join(stories[:4]), encoding="utf-8")
    (folder / ts.splits["val"]).write_text(stories[4] + "\n<|endoftext|>", encoding="utf-8")
    ds = prepare_dataset("tinystories", data_path=folder, cache_root=cache, quiet=True)
    eot = [tok.eot_token]
    assert ds.tokens("train").tolist() == sum((tok.encode_ordinary(t) + eot for t in stories[:4]), [])[:-1]
    assert ds.meta["splits"]["train"]["documents"] == 4 and ds.meta["splits"]["val"]["documents"] == 1


# --- bad input ------------------------------------------------------------------------------------------------

def test_empty_file(cache, tmp_path):
    f = tmp_path / "empty.txt"
    f.write_bytes(b"")
    with pytest.raises(NanoGPT2Error, match="empty"):
        prepare_dataset(f, cache_root=cache, quiet=True)
    assert not any(p.name.startswith(("local-", ".tmp-")) for p in cache.iterdir())
    with pytest.raises(NanoGPT2Error, match="empty"):
        prepare_dataset(f, tokenizer="char", cache_root=cache, quiet=True)


def test_file_shorter_than_a_window(cache, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("Only a few words in this file, far fewer than a window.", encoding="utf-8")
    ds = prepare_dataset(f, cache_root=cache, quiet=True)
    n = len(ds.tokens("train"))
    with pytest.raises(NanoGPT2Error) as e:
        RandomWindowSampler(ds.tokens("train"), block_size=64, batch_size=2)
    msg = str(e.value)
    assert f"has {n} tokens" in msg and "block_size + 1 = 65" in msg and "lower block_size" in msg
    assert "train" in msg
    with pytest.raises(NanoGPT2Error, match="needs"):
        check_length(ds.tokens("val"), 8, "the val split")
    with pytest.raises(NanoGPT2Error):
        list(eval_windows(ds.tokens("train"), 64, 2))
    RandomWindowSampler(ds.tokens("train"), block_size=n - 1, batch_size=2).next_batch()  # exactly enough


def test_invalid_utf8_is_replaced_with_a_count(cache, tok, tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Caf\u00e9 au lait, na\u00efve.\n".encode("latin-1") * 3 + b"ok \xff\xfe done\n")
    with pytest.warns(DataWarning, match=r"8 byte\(s\) were not valid UTF-8"):
        ds = prepare_dataset(f, cache_root=cache, val_fraction=0.0, quiet=True)
    text = f.read_bytes().decode("utf-8", errors="replace")
    assert ds.tokens("train").tolist() == tok.encode_ordinary(text)
    assert ds.meta["replaced_bytes"] == 8 and "\ufffd" in text


# --- batches --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ramp():
    """Token i has value i: a window's first value is its start, so windows are easy to check."""
    return np.arange(100_000, dtype=np.uint32)


def test_sampler_windows_are_shifted_pairs(ramp):
    s = RandomWindowSampler(ramp, block_size=32, batch_size=5, seed=1)
    x, y = s.next_batch()
    assert x.shape == y.shape == (5, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x, x[:, :1] + torch.arange(32))  # contiguous windows
    assert int(x.min()) >= 0 and int(y.max()) <= len(ramp) - 1
    # a window may end at the very last token
    tiny = RandomWindowSampler(np.arange(33), block_size=32, batch_size=4, seed=0)
    x, y = tiny.next_batch()
    assert (x[:, 0] == 0).all() and (y[:, -1] == 32).all()


def test_sampler_same_seed_same_batches(ramp):
    a = RandomWindowSampler(ramp, 16, 4, seed=123)
    b = RandomWindowSampler(ramp, 16, 4, seed=123)
    c = RandomWindowSampler(ramp, 16, 4, seed=124)
    for _ in range(5):
        xa, ya = a.next_batch()
        xb, yb = b.next_batch()
        xc, _ = c.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
    assert not torch.equal(RandomWindowSampler(ramp, 16, 4, 123).next_batch()[0], a.next_batch()[0])


def test_sampler_resume_gives_the_uninterrupted_sequence(ramp):
    full = RandomWindowSampler(ramp, 16, 4, seed=7)
    expected = [full.next_batch() for _ in range(8)]
    first = RandomWindowSampler(ramp, 16, 4, seed=7)
    for _ in range(3):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # plain data: fits a checkpoint
    resumed = RandomWindowSampler(ramp, 16, 4, seed=0)  # a fresh sampler; the state carries the seed
    resumed.load_state_dict(state)
    for k in range(3, 8):
        x, y = resumed.next_batch()
        assert torch.equal(x, expected[k][0]) and torch.equal(y, expected[k][1]), k
    with pytest.warns(DataWarning, match="not be those of an uninterrupted run"):
        RandomWindowSampler(ramp[:50_000], 16, 4).load_state_dict(state)
    with pytest.raises(NanoGPT2Error):
        resumed.load_state_dict({"step": 1})


def test_sampler_ddp_ranks_draw_different_windows(ramp):
    r0 = RandomWindowSampler(ramp, 16, 4, seed=3, rank=0, world_size=2)
    r1 = RandomWindowSampler(ramp, 16, 4, seed=3, rank=1, world_size=2)
    single = RandomWindowSampler(ramp, 16, 8, seed=3)  # the same global batch on one process
    for _ in range(4):
        x0, _ = r0.next_batch()
        x1, _ = r1.next_batch()
        xs, _ = single.next_batch()
        assert set(x0[:, 0].tolist()).isdisjoint(x1[:, 0].tolist())
        assert torch.equal(torch.cat([x0, x1]), xs)  # the union over ranks does not depend on the world size
    quads = [RandomWindowSampler(ramp, 16, 2, seed=3, rank=r, world_size=4) for r in range(4)]
    single = RandomWindowSampler(ramp, 16, 8, seed=3)
    for _ in range(3):
        assert torch.equal(torch.cat([q.next_batch()[0] for q in quads]), single.next_batch()[0])
    # a checkpoint saved by one rank resumes every rank, even with another world size (same global batch)
    state = quads[0].state_dict()
    for r in range(2):
        fresh = RandomWindowSampler(ramp, 16, 4, seed=3, rank=r, world_size=2)
        fresh.load_state_dict(state)
        assert torch.equal(fresh.next_batch()[0], torch.cat([q.next_batch()[0] for q in quads[2 * r:2 * r + 2]]))
    with pytest.raises(NanoGPT2Error, match="rank"):
        RandomWindowSampler(ramp, 16, 4, rank=2, world_size=2)


def test_sampler_reads_prepared_memmap(cache):
    ds = prepare_dataset("shakespeare", cache_root=cache, quiet=True)
    tr = ds.tokens("train")
    s = RandomWindowSampler(tr, block_size=64, batch_size=3, seed=5)
    x, y = s.next_batch(device="cpu")
    start = s.starts(0)[0]
    assert x[0].tolist() == tr[start:start + 64].tolist() and y[0].tolist() == tr[start + 1:start + 65].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory, non-blocking copy)")
def test_sampler_cuda(ramp):
    x, y = RandomWindowSampler(ramp, 16, 4, seed=1).next_batch(device="cuda")
    assert x.is_cuda and torch.equal(y.cpu(), x.cpu() + 1)


def test_eval_windows_sequential():
    n, T = 1000, 64
    toks = np.arange(n, dtype=np.uint16)
    batches = list(eval_windows(toks, T, batch_size=4))
    xs = torch.cat([x for x, _ in batches])
    assert xs.shape == ((n - 1) // T, T) and xs[:, 0].tolist() == list(range(0, (n - 1) // T * T, T))
    assert all(torch.equal(y, x + 1) for x, y in batches)
    assert [len(x) for x, _ in batches] == [4, 4, 4, 3]
    assert len(list(eval_windows(toks, T, 4, max_batches=2))) == 2
    # DDP: batches alternate between ranks
    r0 = [x for x, _ in eval_windows(toks, T, 4, rank=0, world_size=2)]
    r1 = [x for x, _ in eval_windows(toks, T, 4, rank=1, world_size=2)]
    assert torch.equal(torch.cat([r0[0], r1[0], r0[1], r1[1]]), xs)



# --- command line ---------------------------------------------------------------------------------------------

def test_cli_prints_statistics(cache, capsys):
    data.main(["shakespeare", "--cache_root", str(cache)])
    out, err = capsys.readouterr()
    assert "338,025" in out and "bytes/token" in out and "train" in out and "val" in out
    assert "tokenizing shakespeare: 1.1 MB / 1.1 MB (100%)" in err and "MB/s, 338,025 tokens" in err  # the progress line
    data.main(["shakespeare", "--cache_root", str(cache), "--quiet"])
    out, err = capsys.readouterr()
    assert "reused" in out and err == ""
    data.main(["--list"])
    out, _ = capsys.readouterr()
    assert "wikitext103" in out and "data_path=" in out


def test_cli_as_a_module_one_line_errors_and_warnings(tmp_path):
    """`python -m nanogpt2.data`: statistics on stdout; a bad name is one `error:` line and exit status 2;
    invalid UTF-8 is one `warning:` line with the count."""
    env = {**__import__("os").environ, "NANOGPT2_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(ROOT)}
    f = tmp_path / "latin1.txt"
    f.write_bytes("Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, a dessert of some renown. ".encode("latin-1") * 20)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nanogpt2.data", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)

    r = cli(str(f), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == ["warning: " + str(f) + ": 80 byte(s) were not valid UTF-8 and were "
                                             "replaced with U+FFFD; check the file's encoding (convert it to "
                                             "UTF-8, e.g. `iconv -f latin1 -t utf-8`) if that is unexpected"]
    text = f.read_bytes().decode("utf-8", errors="replace")
    n = len(get_tokenizer("gpt2", backend="tiktoken").encode_ordinary(text))
    assert f"{n:,}" in r.stdout and "80 invalid UTF-8 bytes" in r.stdout
    assert f"{len(text.encode()) / n:.2f}" in r.stdout  # bytes per token of the whole text
    r = cli("wikitext3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: unknown dataset 'wikitext3'") 
    assert all(name in r.stderr for name in DATASETS)  # the known names
