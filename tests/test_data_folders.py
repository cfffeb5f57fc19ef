"""
A folder of text files with split names (WikiText's wiki.{train,valid,test}.raw, train.txt / val.txt, any
*train* / *valid* | *val* / *test* name) is split by those names; a folder whose files name no split is one
corpus, with one notice line; a folder with some split names but not train and val is refused in one line;
the wikitext2 --data_path error names CLI flags and files that exist (nanogpt2/data.py _split_by_name).

    python -m pytest -q tests/test_data_folders.py
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED_DATA, one_error_line
from nanogpt2.data import prepare_dataset
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.tokenizer import get_tokenizer

TOK = get_tokenizer("gpt2", backend="tiktoken")
WIKI = {"wiki.train.raw": " = Valkyria = \n\n The game began development in 2010 . \n" * 40,
        "wiki.valid.raw": " = Robert Boulter = \n\n Robert Boulter is an English actor . \n",
        "wiki.test.raw": " = Homarus gammarus = \n\n Homarus gammarus is a lobster . \n"}


def folder_of(tmp_path, files: dict, name="corpus"):
    d = tmp_path / name
    d.mkdir()
    for fname, text in files.items():
        (d / fname).write_text(text, encoding="utf-8")
    return d


def run_script(script, *args, tmp_path):
    env = {**os.environ, "NANOGPT2_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_wikitext_named_files_are_their_splits(tmp_path):
    # was: all three joined into one corpus, the test set trained on, val cut from the end
    ds = prepare_dataset(folder_of(tmp_path, WIKI), cache_root=tmp_path / "c", quiet=True)
    assert ds.meta["split_method"] == "dataset"
    for split, fname in (("train", "wiki.train.raw"), ("val", "wiki.valid.raw"), ("test", "wiki.test.raw")):
        assert ds.tokens(split).tolist() == TOK.encode_ordinary(WIKI[fname]), split


@pytest.mark.parametrize("names", [("my_train_set.txt", "my_val_set.txt"), ("training.md", "validation.jsonl")])
def test_other_split_names(tmp_path, names):
    texts = {names[0]: "Training text here. " * 50, names[1]: "Held out text."}
    if names[1].endswith(".jsonl"):
        texts[names[1]] = '{"text": "Held out text."}\n'
    ds = prepare_dataset(folder_of(tmp_path, texts), cache_root=tmp_path / "c", quiet=True)
    assert ds.tokens("val").tolist() == TOK.encode_ordinary("Held out text.")
    assert ds.tokens("train").tolist() == TOK.encode_ordinary(texts[names[0]])


def test_a_folder_without_split_names_is_one_corpus_with_one_notice(tmp_path, capfd):
    d = folder_of(tmp_path, {"chapter1.txt": "It was a dark night. " * 30, "latest.txt": "Nothing after. " * 30,
                             "interval.txt": "A pause between. " * 30})
    ds = prepare_dataset(d, cache_root=tmp_path / "c", val_fraction=0.1)
    assert ds.meta["split_method"] != "dataset" and ds.meta["documents"] == 3
    err = capfd.readouterr().err
    notices = [line for line in err.splitlines() if line.startswith("notice: ")]
    assert notices == [f"notice: {d}: its 3 files name no split (*train*, *valid*, *test*): used as one corpus, "
                       "the validation split cut by val_fraction"], err


def test_split_names_without_train_or_mixed_with_others_are_refused(tmp_path):
    no_train = folder_of(tmp_path, {"wiki.valid.raw": WIKI["wiki.valid.raw"], "wiki.test.raw": WIKI["wiki.test.raw"]})
    with pytest.raises(NanoGPT2Error, match=r"has wiki\.test\.raw \(test\), wiki\.valid\.raw \(val\) but no \*train\* "
                                            r"file: add a train file .*or pass one file as --dataset"):
        prepare_dataset(no_train, cache_root=tmp_path / "c", quiet=True)
    mixed = folder_of(tmp_path, {"train.txt": "a " * 50, "val.txt": "b", "notes.txt": "c"}, name="mixed")
    with pytest.raises(NanoGPT2Error, match=r"mixes split files with others .*move notes\.txt out"):
        prepare_dataset(mixed, cache_root=tmp_path / "c", quiet=True)


WT2 = SHARED_DATA / "wikitext-2-raw"
needs_wt2 = pytest.mark.skipif(not (WT2 / "wiki.valid.raw").is_file(), reason=f"{WT2} (real WikiText-2) is absent")


@needs_wt2
def test_shared_wikitext_folder_through_train_py(tmp_path):
    # the shared copy holds wiki.valid.raw and wiki.test.raw only: never joined into a training set
    res = run_script("train.py", str(ROOT / "configs" / "tiny.py"), f"--dataset={WT2}", "--tokenizer=gpt2",
                     "--out_dir=o", tmp_path=tmp_path)
    line = one_error_line(res)
    assert f"{WT2} has wiki.test.raw (test), wiki.valid.raw (val) but no *train* file" in line
    assert not (tmp_path / "o" / "checkpoint_final.pt").exists()
    # the registry name with that folder: the flags to use and a file that is there, no Python call
    res = run_script("train.py", str(ROOT / "configs" / "tiny.py"), "--dataset=wikitext2", f"--data_path={WT2}",
                     "--tokenizer=gpt2", "--out_dir=o", tmp_path=tmp_path)
    line = one_error_line(res)
    assert "no wiki.train.raw (found: wiki.test.raw, wiki.valid.raw). --data_path for wikitext2 takes" in line
    assert f"--dataset {WT2 / 'wiki.test.raw'}" in line and "prepare_dataset" not in line


@needs_wt2
def test_real_wikitext_files_split_by_name(tmp_path):
    d = tmp_path / "wt"
    d.mkdir()
    (d / "wiki.train.raw").symlink_to(WT2 / "wiki.valid.raw")  # the real files, under the names of a full copy
    (d / "wiki.valid.raw").symlink_to(WT2 / "wiki.test.raw")
    ds = prepare_dataset(d, cache_root=tmp_path / "c", quiet=True)
    assert (len(ds.tokens("train")), len(ds.tokens("val"))) == (249_887, 286_221)  # the files' own token counts
    assert np.array_equal(ds.tokens("val")[:50], TOK.encode_ordinary((WT2 / "wiki.test.raw").read_text())[:50])
