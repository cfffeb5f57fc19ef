"""
Reports of padded tasks (issue 30): classify and instruct runs count the real (non-pad) tokens the model ran on
for tokens/s, MFU and `tokens` (was: batch x block_size, MFU over 400 % seen), report samples/s and their metric
(train accuracy, val accuracy / macro-F1; the response loss) in the progress line, metrics.jsonl and TensorBoard
under one tag scheme (train/..., val/...), and no ppl for classification; early_stopping_patience stops a run after
that many evaluations without a better task metric; test_on=best tests (and saves) checkpoint_best.pt's weights.
The distillation plot shows the KD and CLM terms beside the validation loss.

    python -m pytest -q tests/test_padded_reports.py
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT
from nanogpt2.classify import ClassifyTask, evaluate_main
from nanogpt2.classify_data import BucketSampler
from nanogpt2.config import load_config
from nanogpt2.convert import save_pretrained
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.instruct import InstructSampler, collate, encode_records, read_records, split_records
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.outputs import plot_run
from nanogpt2.tokenizer import get_tokenizer

TINY = str(ROOT / "configs" / "tiny.py")
AG_TINY = FIXTURES / "classify" / "ag_news_tiny.csv"
ALPACA = FIXTURES / "alpaca_tiny_50.json"
CLASSIFY = ["--task=classify", "--dataset=ag_news", f"--data_path={AG_TINY}", "--init_from=scratch", "--block_size=48",
            "--n_embd=16", "--batch_size=8", "--gradient_accumulation_steps=1", "--method=full", "--log_interval=1",
            "--checkpoint_interval=0", "--learning_rate=1e-2"]


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def finetune(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, f"--out_dir={tmp_path / 'out'}",
                          f"--results_dir={tmp_path / 'results'}", *map(str, args)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def records(out) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_throughput(steps: list, real: list, rows: int, lm_tokens: int):
    """Each logged step (log_interval 1: a window of one step) against the real tokens of every step."""
    assert [r["tokens"] for r in steps] == np.cumsum(real).tolist()  # was step x batch x block_size
    assert all(n <= lm_tokens for n in real) and sum(real) < 0.8 * len(real) * lm_tokens  # the padding is not counted
    for r, n in zip(steps, real):
        assert r["tokens_per_sec"] / r["samples_per_sec"] == pytest.approx(n / rows, rel=1e-9)
    ratio = [r["mfu"] / r["tokens_per_sec"] for r in steps]  # MFU = FLOPs per token x real tokens/s / peak
    assert ratio == pytest.approx([ratio[0]] * len(ratio), rel=1e-9)


def test_a_classify_run_reports_real_tokens_its_accuracy_and_no_ppl(tmp_path):
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    res = finetune(tmp_path, *CLASSIFY, "--block_size=128", "--max_iters=6", "--eval_interval=3", "--tensorboard=true")
    assert "ppl" not in res.stdout  # the loss is over classes: no perplexity anywhere
    progress = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == 6 and all(re.match(r"step \d/6 \| loss \d\.\d{4} \| accuracy \d\.\d{4} \| lr ", line)
                                      and " samples/s | MFU " in line for line in progress)
    evals = [line for line in res.stdout.splitlines() if line.startswith("eval step")]
    assert len(evals) == 2 and all(re.search(r"\| val loss \d\.\d{4} \| val accuracy \d\.\d{4} \| val macro-F1 "
                                             r"\d\.\d{4}", line) for line in evals)
    recs = records(tmp_path / "out")
    steps = [r for r in recs if "loss" in r]
    assert not any("ppl" in r or "val_ppl" in r for r in recs)
    assert all(0 <= r["accuracy"] <= 1 for r in steps)
    # the real tokens: each step's rows (the sampler's, a function of seed and step) at their own lengths
    cfg = load_config([TINY, *CLASSIFY, "--block_size=128"], cls=FinetuneConfig)
    task = ClassifyTask(cfg)
    sampler = BucketSampler(task.enc["train"], 8, task.pad_id, seed=cfg.seed)
    real = [int(task.enc["train"].lengths[sampler.rows(k)].sum()) for k in range(6)]
    check_throughput(steps, real, rows=8, lm_tokens=8 * 128)
    # TensorBoard: one tag scheme, the task's metrics in it
    events = tb.EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/tokens_per_sec", "train/mfu", "val/loss", "val/accuracy",
            "val/macro_f1"} <= tags
    assert not tags & {"train/ppl", "val/ppl", "val_loss", "val_accuracy"}
    assert [e.value for e in events.Scalars("val/accuracy")] == pytest.approx(
        [r["val_accuracy"] for r in recs if "val_accuracy" in r], rel=1e-6)
    assert [e.value for e in events.Scalars("train/tokens_per_sec")] == pytest.approx(
        [r["tokens_per_sec"] for r in steps], rel=1e-6)


def test_early_stopping_after_patience_evaluations_without_a_better_accuracy(tmp_path):
    # learning_rate 0: the validation accuracy never improves on the first evaluation's
    res = finetune(tmp_path, *CLASSIFY, "--max_iters=20", "--eval_interval=2", "--learning_rate=0",
                   "--early_stopping_patience=2", "--warmup_iters=0")
    line = ("early stopping after step 6: 2 evaluations without a better val accuracy (early_stopping_patience=2; "
            "best ")
    assert sum(line in out for out in res.stdout.splitlines()) == 1
    assert "done: 6 steps" in res.stdout and "test on the best checkpoint (checkpoint_best.pt, step 2, " in res.stdout
    assert [r["step"] for r in records(tmp_path / "out") if "val_loss" in r] == [2, 4, 6]
    summary_md, = (tmp_path / "results").rglob("summary.md")  # a finished run: its results tree
    assert "early stopping after step 6" in summary_md.read_text()


def test_early_stopping_of_a_language_model_by_its_validation_loss(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), TINY, "--learning_rate=0", "--min_lr=0",
                          "--eval_interval=2", "--early_stopping_patience=1", "--max_iters=20", "--checkpoint_interval=0",
                          f"--out_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "early stopping after step 4: 1 evaluation without a better val loss (early_stopping_patience=1; " \
           "best " in res.stdout
    assert "done: 4 steps" in res.stdout
    assert torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)["step"] == 4


def test_test_on_best_scores_checkpoint_best_and_final_the_last_weights(tmp_path):
    scores = {}
    for test_on in ("best", "final"):
        out = tmp_path / test_on
        cfg = load_config([TINY, *CLASSIFY, f"--out_dir={out}", f"--results_dir={out}-results", "--max_iters=6",
                           "--eval_interval=3", f"--test_on={test_on}"], cls=FinetuneConfig)
        run(cfg)
        test_json, = (tmp_path / f"{test_on}-results").rglob("test/metrics/metrics.json")
        scores[test_on] = json.loads(test_json.read_text())
        summary_md, = (tmp_path / f"{test_on}-results").rglob("summary.md")
        scores[test_on + "_summary"] = summary_md.read_text()
    best_step = torch.load(tmp_path / "best" / "checkpoint_best.pt", weights_only=True)["step"]
    assert best_step == 3  # this run's best is not its last step, so the two differ
    for test_on, ckpt in (("best", "checkpoint_best.pt"), ("final", "checkpoint_final.pt")):
        again = evaluate_main(["--init_from", str(tmp_path / test_on / ckpt), "--device", "cpu", "--json"])
        assert again["confusion_matrix"] == scores[test_on]["confusion_matrix"], test_on
        assert again["loss"] == pytest.approx(scores[test_on]["loss"], abs=1e-6)
    assert "Tested, and saved in train/weights: the best checkpoint (checkpoint_best.pt, step 3, val accuracy" in \
        scores["best_summary"]
    assert "Tested, and saved in train/weights: the final weights (step 6)" in scores["final_summary"]
    weights, = (tmp_path / "best-results").rglob("train/weights")  # the results tree holds the tested weights
    hf = evaluate_main(["--init_from", str(weights), "--dataset", "ag_news", "--data_path", str(AG_TINY), "--device",
                        "cpu", "--json"])
    assert hf["confusion_matrix"] == scores["best"]["confusion_matrix"]


def test_instruct_real_tokens_are_the_unpadded_positions_the_model_runs_on():
    tok = get_tokenizer("gpt2")
    enc = encode_records(read_records(ALPACA), tok, 96)
    sampler = InstructSampler(enc, 8, tok.eot_token, seed=0)
    for _ in range(3):
        batch = sampler.next_batch()
        for mb in (batch, {k: v[:3] for k, v in batch.items()}):  # a step, and a micro-batch of it
            T = int(mb["lengths"].max())
            rows = [enc.example(i) for i in sampler.indices(sampler.step - 1)[:len(mb["lengths"])]]
            mask = collate(rows, tok.eot_token)["attention_mask"][:, :T - 1]  # the model's input: (B, T - 1)
            assert InstructSampler.real_tokens(mb) == int(mask.sum()) < mb["input_ids"].numel()


@pytest.fixture(scope="module")
def gpt2_vocab_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "base"
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=256, vocab_size=50257)), folder,
                    tokenizer=get_tokenizer("gpt2"), log=None)
    return folder


def test_an_instruct_run_reports_its_response_loss_and_real_tokens(tmp_path, gpt2_vocab_base):
    res = finetune(tmp_path, "--task=instruct", f"--dataset={ALPACA}", f"--init_from={gpt2_vocab_base}",
                   "--method=full", "--tokenizer=gpt2", "--block_size=256", "--max_length=256", "--batch_size=4",
                   "--gradient_accumulation_steps=2", "--max_iters=3", "--eval_interval=0", "--log_interval=1",
                   "--sample_interval=0", "--checkpoint_interval=0", "--baseline_eval=false", "--tensorboard=false")
    progress = [line for line in res.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == 3 and all(re.match(r"step \d/3 \| response loss \d+\.\d{4} \| ppl ", p) for p in progress)
    steps = [r for r in records(tmp_path / "out") if "loss" in r]
    cfg = load_config([TINY, "--task=instruct", f"--dataset={ALPACA}", "--max_length=256"], cls=FinetuneConfig)
    tok = get_tokenizer("gpt2")
    enc = encode_records(read_records(ALPACA), tok, 256)
    train_idx, _ = split_records(len(enc), cfg.val_fraction, cfg.seed)
    sampler = InstructSampler(enc.subset(train_idx), 8, tok.eot_token, seed=cfg.seed)
    real = []
    for _ in range(3):  # each step's two micro-batches of 4 rows, each trimmed to its own longest
        lengths = sampler.next_batch()["lengths"]
        real.append(sum(int(part.clamp(max=int(part.max()) - 1).sum()) for part in lengths.split(4)))
    check_throughput(steps, real, rows=8, lm_tokens=8 * 256)


def test_a_distillation_run_plots_its_terms(tmp_path):
    pytest.importorskip("matplotlib")
    text = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text()
    (tmp_path / "corpus").mkdir()
    for split, (begin, end) in dict(train=(0, 40_000), val=(40_000, 44_000)).items():
        (tmp_path / "corpus" / f"{split}.txt").write_text(text[begin:end])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    common = [TINY, f"--dataset={tmp_path / 'corpus'}", "--tokenizer=char", "--checkpoint_interval=0", "--eval_interval=3",
              "--max_iters=6", "--test_eval=false"]
    for script, args in (("train.py", ["--out_dir=teacher"]),
                         ("finetune.py", ["--task=distill", "--method=full", "--teacher=teacher", "--student_layers=0",
                                          "--out_dir=student", "--plot=true", "--results_dir=results"])):
        res = subprocess.run([sys.executable, str(ROOT / script), *common, *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "| kd_loss " in res.stdout and "| clm_loss " in res.stdout  # the progress line's terms
    assert (tmp_path / "student" / "training_curves.png").stat().st_size > 0
    # the run's plot is plot_run of its records with its terms: KD and CLM beside the val loss
    check_distill_figure([r for r in records(tmp_path / "student") if "loss" in r])


def check_distill_figure(recs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_run(plt, recs, terms=("kd_loss", "clm_loss"))
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"train (weighted sum)", "train kd_loss", "train clm_loss", "val"}
    assert list(lines["train clm_loss"].get_ydata()) == [r["clm_loss"] for r in recs]  # unweighted, in nats
    assert list(lines["val"].get_xdata()) == [r["step"] for r in recs if "val_loss" in r]
    assert loss_ax.get_yscale() == "log"  # one axis for all
    plt.close(fig)


def test_the_distillation_plot_shows_kd_and_clm_beside_the_val_loss():
    pytest.importorskip("matplotlib")
    recs = [{"step": s, "loss": 0.5 * (9.0 / s) + 0.5 * (4.0 - s / 10), "kd_loss": 9.0 / s, "clm_loss": 4.0 - s / 10,
             "lr": 1e-3, "grad_norm": 1.0, **({"val_loss": 4.1 - s / 10} if s % 5 == 0 else {})} for s in range(1, 11)]
    check_distill_figure(recs)


@pytest.mark.slow
def test_two_processes_count_the_real_tokens_of_both(tmp_path):
    """torchrun, 2 CPU processes (gloo) x 1 micro-step of 4 rows = 1 process x 2 of 4: the same rows each step
    (the sampler's union over ranks), so the same real tokens, summed over the processes."""
    from test_ddp import free_port

    args = [*CLASSIFY, "--block_size=128", "--batch_size=4", "--gradient_accumulation_steps=2", "--max_iters=4",
            "--eval_interval=0", "--baseline_eval=false", "--dropout=0.0", "--classifier_dropout=0.0"]
    (tmp_path / "single").mkdir()
    single = finetune(tmp_path / "single", *args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={free_port()}", str(ROOT / "finetune.py"), TINY, *args,
                          f"--out_dir={tmp_path / 'ddp' / 'out'}", f"--results_dir={tmp_path / 'ddp' / 'results'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es) on cpu" in ddp.stdout and single.returncode == 0
    a, b = ([r for r in records(tmp_path / run / "out") if "loss" in r] for run in ("single", "ddp"))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b] and a[-1]["tokens"] < 4 * 8 * 128
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5) and ra["accuracy"] == pytest.approx(rb["accuracy"])
