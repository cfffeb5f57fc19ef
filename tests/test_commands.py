"""
The commands users are given, run as written, in subprocesses: the quick start and the card's four commands
(`python train.py`, then `python -m nanogpt2.evaluate --init_from out-shakespeare`, `python sample.py --top_p
0.9`, `python finetune.py configs/finetune_lora.py --init_from out-shakespeare`, `python bench.py`), every
command of README.md's "The scripts" block, and the offline examples of docs/*.md in their order (the
fine-tuning tutorial of docs/finetuning.md line by line, docs/training.md, data.md, conversion.md,
sampling.md, distill.md). So a broken headline command fails the suite.

Each command is taken from the document itself (a test fails when the document and this list part), run in a
scratch folder holding links to the scripts and configs/, offline (every request goes to a proxy nobody
listens on) with its own data cache. Only run-length overrides are added (`--max_iters`, `--max_new_tokens`,
bench.py's `--steps` / `--repeats`). A command that needs the network (a GPT-2 download, WikiText-2) must then
end the way every user error does: exit status 2 and one `error:` line saying what to do.

    python -m pytest -q tests/test_commands.py            # the slow ones too: -m "slow or not slow"
"""

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, one_error_line
from http_fixture import unused_url

LINKED = ("train.py", "sample.py", "finetune.py", "bench.py", "configs")
TIMINGS = []  # (command, exit status, wall seconds, CPU seconds) of every command run, for the summary at the end

# ----------------------------------------------------------------------------------------------------
# Commands out of the documents, and running them


def doc_commands(path, after: str = None) -> list:
    """The shell commands (python / torchrun lines) of the code blocks of a Markdown file, continuation lines
    joined and trailing comments dropped; `after`: only the first code block after that line."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    if after is not None:
        lines = lines[lines.index(after):]
    commands, in_block, pending = [], False, ""
    for line in lines:
        if line.startswith("```"):
            if in_block and after is not None:
                break
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = pending + line.strip() if pending else line
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        line = re.sub(r"\s+#(\s.*)?$", "", line).strip()
        if line.startswith(("python ", "torchrun ")):
            commands.append(line)
    return commands


def offline_env(cache) -> dict:
    dead = unused_url("").rstrip("/")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOGPT2_CACHE": str(cache), "NANOGPT2_HF_ENDPOINT": dead,
           "NANOGPT2_OPENAI_ENDPOINT": dead, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead,
           "http_proxy": dead}
    for key in ("NO_PROXY", "no_proxy", "NANOGPT2_PEAK_FLOPS"):
        env.pop(key, None)
    return env


def workdir(tmp_path_factory, name):
    """A scratch folder where the documents' relative paths (train.py, configs/...) resolve."""
    where = tmp_path_factory.mktemp(name)
    for item in LINKED:
        (where / item).symlink_to(ROOT / item)
    return where


def run(where, command: str, *extra, timeout=900):
    """Run `command` (as a user types it) plus `extra` arguments in `where`; return the CompletedProcess."""
    words = shlex.split(command) + list(extra)
    argv = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[words[0]] + words[1:]
    t0, c0 = time.time(), _children_cpu()
    res = subprocess.run(argv, cwd=where, env=offline_env(where.parent / "nanogpt2-cache"), capture_output=True,
                         text=True, timeout=timeout)
    TIMINGS.append((command, res.returncode, time.time() - t0, _children_cpu() - c0))
    return res


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def offline(res, *words):
    """Refused for want of the network: status 2, one error line that names what to do."""
    line = one_error_line(res)
    assert "could not download" in line, line
    for w in words:
        assert w in line, line
    return line


def last_val_loss(run_folder):
    records = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in records if "val_loss" in r][-1]


@pytest.fixture(scope="module", autouse=True)
def timings_summary():
    yield
    if TIMINGS:
        print("\nexit   wall s  CPU s  command")
        for command, status, wall, cpu in TIMINGS:
            print(f"{status:>4} {wall:8.1f} {cpu:6.1f}  {command}")


# ----------------------------------------------------------------------------------------------------
# The quick start, the card's commands, README.md's "The scripts"

TRAIN = "python train.py"
CARD = ["python -m nanogpt2.evaluate --init_from out-shakespeare", "python sample.py --top_p 0.9",
        "python finetune.py configs/finetune_lora.py --init_from out-shakespeare", "python bench.py"]


OFFLINE_WIKITEXT = ("dataset 'wikitext2'", "--data_path")
README = {  # README.md's "The scripts", every command -> (added arguments, what must happen: ok, or the words of
            # the one error line of a command that needs the network; torchrun and bench.py have tests of their own)
    "python train.py configs/wikitext2.py": ((), OFFLINE_WIKITEXT),
    "python train.py configs/wikitext2.py --batch_size=4 --max_iters 2000": ((), OFFLINE_WIKITEXT),
    "torchrun --nproc_per_node=8 train.py configs/wikitext2.py": ((), "torchrun"),
    "python train.py configs/wikitext2_finetune.py": ((), OFFLINE_WIKITEXT),
    "python train.py configs/wikitext2.py --resume_from auto": ((), OFFLINE_WIKITEXT),
    "python finetune.py configs/finetune_lora.py": ((), OFFLINE_WIKITEXT),
    "python sample.py --init_from out-shakespeare --top_p 0.9": (("--max_new_tokens", "20", "--num_samples", "1"), "ok"),
    'python sample.py --init_from gpt2 --start "Hello" --stream --top_p 0.9': ((), ("model 'gpt2'", "--init_from")),
    # a nanoGPT checkout beside the run (nanogpt_checkout: its char run folder, an openwebtext train.bin / val.bin)
    "python sample.py --init_from nanoGPT/out-shakespeare-char --greedy": (("--max_new_tokens", "20"), "ok"),
    "python train.py --dataset nanoGPT/data/openwebtext --init_from gpt2 --out_dir out-owt": ((), ("model 'gpt2'",)),
    "python -m nanogpt2.convert out-shakespeare out-nanogpt --to nanogpt": ((), "ok"),
    "python -m nanogpt2.convert 124M out/gpt2-hf": ((), ("124M",)),
    "python -m nanogpt2.evaluate --init_from out-shakespeare": ((), "ok"),
    "python -m nanogpt2.evaluate --init_from gpt2 --dataset wikitext2 --split test": ((), ("model 'gpt2'",)),
    "python -m nanogpt2.data wikitext2": ((), OFFLINE_WIKITEXT),
    'python -m nanogpt2.tokenizer "some text"': ((), "ok"),
    "python bench.py": ((), "the card's"),
}


def nanogpt_checkout(where) -> None:
    """What README's nanoGPT commands name: nanoGPT's own char run folder (tests/fixtures, written by nanoGPT) and a
    data folder of its train.bin / val.bin (uint16 GPT-2 ids, nanoGPT's prepare.py layout)."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "nanogpt-char-run", where / "nanoGPT" / "out-shakespeare-char")
    data = where / "nanoGPT" / "data" / "openwebtext"
    data.mkdir(parents=True)
    ids = np.random.default_rng(0).integers(0, 50257, size=30_000, dtype=np.uint16)
    ids[:27_000].tofile(data / "train.bin")
    ids[27_000:].tofile(data / "val.bin")


def test_the_readme_scripts_block_is_this_list():
    assert doc_commands("README.md", after="## The scripts") == list(README)


@pytest.mark.slow
def test_the_quick_start_then_the_card_and_every_readme_script_in_one_folder(tmp_path_factory):
    """As a new user: `python train.py` (the quick start), the card's commands in that folder, then each command
    of README's scripts block, then the docs' examples on that run (conversion.md, sampling.md). One test, so that
    the run is trained once (also under pytest-xdist)."""
    where = workdir(tmp_path_factory, "card")
    assert "pip install -e . && python train.py" in (ROOT / "README.md").read_text(encoding="utf-8")
    res = ok(run(where, TRAIN, "--max_iters", "20"))
    assert "saved out-shakespeare/checkpoint_final.pt" in res.stdout
    val_loss = last_val_loss(where / "out-shakespeare")

    res = ok(run(where, CARD[0]))  # evaluate: the run's own validation split, the number train.py printed
    assert "shakespeare_char val (the run's own data)" in res.stdout and f"loss {val_loss:.4f} " in res.stdout
    offline(run(where, CARD[1]), "Offline, a run folder here loads without a download: --init_from out-shakespeare")
    res = run(where, CARD[2], "--max_iters", "4")  # finetune: block_size capped, then WikiText-2 is needed
    assert "block_size=1024 is longer than the context of out-shakespeare (64 tokens): using block_size=64" in res.stdout
    offline(res, *OFFLINE_WIKITEXT)

    nanogpt_checkout(where)
    for command, (extra, want) in README.items():
        if want in ("torchrun", "the card's"):
            continue  # below, each in a test of its own
        res = run(where, command, *extra)
        if want == "ok":
            ok(res)
        else:
            offline(res, *want)
    assert not (where / "out" / "gpt2-hf").exists()  # a refused conversion writes nothing
    assert (where / "out-nanogpt" / "ckpt.pt").is_file()  # --to nanogpt: nanoGPT's checkpoint file

    convert, = in_doc("docs/conversion.md", "python -m nanogpt2.convert out-shakespeare out/hf")
    assert "sha256:" in ok(run(where, convert)).stdout and (where / "out" / "hf" / "model.safetensors").is_file()
    samples, prompted, scored = in_doc(
        "docs/sampling.md", "python sample.py --init_from out-shakespeare --num_samples 3 --temperature 0.8 --top_k 200",
        "python sample.py --init_from out-shakespeare/checkpoint_best.pt --start FILE:prompt.txt --top_p 0.9 --seed 7",
        "python -m nanogpt2.evaluate --init_from out-shakespeare --json")
    assert ok(run(where, samples, "--max_new_tokens", "16")).stdout.count("---------------") == 3
    (where / "prompt.txt").write_text("ROMEO:\n", encoding="utf-8")
    assert ok(run(where, prompted, "--max_new_tokens", "16")).stdout.startswith("ROMEO:\n")
    assert json.loads(ok(run(where, scored)).stdout.splitlines()[-1])["loss"] == pytest.approx(val_loss, abs=1e-5)


@pytest.mark.slow
def test_the_card_bench_runs_every_benchmark_and_sums_up(tmp_path_factory):
    res = ok(run(workdir(tmp_path_factory, "bench"), CARD[3], "--steps", "1", "--warmup", "0", "--repeats", "1",
                 "--attn_block_time", "0.02"))
    assert "note: running every benchmark (attention, train, classify, generate, tokenizer, finetune, instruct, " \
           "distill, monitor) sized for a CPU" in res.stdout
    summary = res.stdout[res.stdout.index("== summary"):].splitlines()
    for name in ("attention", "train", "classify", "generate", "tokenizer", "finetune", "instruct", "distill",
                 "monitor"):
        assert any(line.startswith(name + " ") for line in summary), summary


@pytest.mark.slow
def test_the_readme_torchrun_command_stops_every_process_with_the_download_error(tmp_path_factory):
    """Eight processes (gloo on a CPU); the first cannot download WikiText-2, the others stop with it, none hangs,
    and the failure is said once (one voice: nanogpt2.distributed), with no traceback of ours. torchrun itself
    exits 1 and reports its children's failure."""
    res = run(workdir(tmp_path_factory, "torchrun"), "torchrun --nproc_per_node=8 train.py configs/wikitext2.py",
              timeout=600)
    assert res.returncode != 0
    assert res.stderr.count("error: could not download dataset 'wikitext2'") == 1
    assert not re.search(r'File ".*nanogpt2/', res.stderr) and "train.py\", line" not in res.stderr


# ----------------------------------------------------------------------------------------------------
# The offline examples of docs/*.md, in order


def in_doc(path, *commands):
    have = doc_commands(path)
    for c in commands:
        assert c in have, f"{path} no longer has: {c}"
    return commands


@pytest.mark.slow
def test_finetuning_tutorial_line_by_line(tmp_path_factory):
    """docs/finetuning.md: train a base, LoRA on it, sample from it, evaluate it (its own validation split: the
    loss the run reported)."""
    base, lora, sample, evaluate = in_doc(
        "docs/finetuning.md",
        "python train.py configs/tiny.py --dataset shakespeare --tokenizer gpt2 --block_size 64 --max_iters 200 "
        "--out_dir base",
        "python finetune.py configs/tiny.py --init_from base --dataset shakespeare --tokenizer gpt2 --block_size 64 "
        "--method lora --lora_rank 4 --lora_alpha 8 --max_iters 100 --out_dir ft-lora",
        "python sample.py --init_from ft-lora",
        "python -m nanogpt2.evaluate --init_from ft-lora --dataset shakespeare")
    where = workdir(tmp_path_factory, "tutorial")
    ok(run(where, base, "--max_iters", "10"))
    res = ok(run(where, lora, "--max_iters", "6"))
    assert "trainable params:" in res.stdout
    res = ok(run(where, sample, "--max_new_tokens", "16", "--num_samples", "1"))
    assert res.stdout.count("---------------") == 1
    res = ok(run(where, evaluate))
    assert "shakespeare val (the run's own data)" in res.stdout
    assert f"loss {last_val_loss(where / 'ft-lora'):.4f} " in res.stdout


@pytest.mark.slow
def test_training_md_examples(tmp_path_factory):
    helps, short = in_doc("docs/training.md", "python train.py --help", "python train.py configs/shakespeare.py --max_iters=500")
    where = workdir(tmp_path_factory, "training")
    assert "max_iters" in ok(run(where, helps)).stdout
    ok(run(where, short, "--max_iters=10"))
    assert (where / "out-shakespeare" / "checkpoint_final.pt").is_file()


def test_data_md_examples(tmp_path_factory):
    prepare, local, listing = in_doc("docs/data.md", "python -m nanogpt2.data shakespeare",
                                     "python -m nanogpt2.data ./corpus.jsonl --tokenizer char --val_fraction 0.01",
                                     "python -m nanogpt2.data --list")
    where = workdir(tmp_path_factory, "data")
    assert "338,025" in ok(run(where, prepare)).stdout  # Tiny Shakespeare in GPT-2 tokens
    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    with open(where / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i in range(0, 20_000, 2_000):
            f.write(json.dumps({"text": text[i:i + 2_000]}) + "\n")
    ok(run(where, local))
    assert "wikitext2" in ok(run(where, listing)).stdout


@pytest.mark.slow
def test_distill_md_shakespeare_runs_in_order(tmp_path_factory):
    """docs/distill.md's CPU comparison: the teacher, the distilled student, and the three other students."""
    teacher, *students = in_doc(
        "docs/distill.md",
        "python train.py configs/shakespeare.py --sample_interval 0",
        "python finetune.py configs/distill_shakespeare.py",
        "python finetune.py configs/distill_shakespeare.py --alpha_ce 0 --alpha_clm 1 --out_dir init-only",
        "python finetune.py configs/distill_shakespeare.py --student_init scratch --out_dir kd-scratch",
        "python finetune.py configs/distill_shakespeare.py --task lm --init_from scratch --out_dir out-shakespeare-2l")
    where = workdir(tmp_path_factory, "distill")
    ok(run(where, teacher, "--max_iters", "10"))
    for command in students:
        ok(run(where, command, "--max_iters", "4"))
    for out in ("out-distill-shakespeare", "init-only", "kd-scratch", "out-shakespeare-2l"):
        assert (where / out / "checkpoint_final.pt").is_file(), out
