"""
Knowledge distillation (nanogpt2/distill.py, finetune.py --task distill) on tiny CPU models: the student built
from teacher blocks (exact copies; logits equal to transformers' GPT-2 with the same blocks assembled by hand),
kd_loss against a direct computation (HF distiller's KLDivLoss batchmean form) and in float16 autocast, a
distillation run (teacher bit-identical and gradient-free, KD and CLM terms logged, the comparison at the end, the
student loading back as a plain GPT and exporting to an HF folder, exact resume), bad settings as one clear line,
and the real effect: a 2-layer student distilled from a 4-layer Tiny Shakespeare teacher beats the same shape
trained from scratch for the same steps (slow).

    python -m pytest -q tests/test_distill.py
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, one_error_line, oracle
from nanogpt2.config import load_config
from nanogpt2.distill import default_layers, init_student_from_teacher, kd_loss
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, run
from nanogpt2.loader import load_model
from nanogpt2.model import GPT, GPTConfig, IGNORE_INDEX

TINY = str(ROOT / "configs" / "tiny.py")
TEXT = (ROOT / "nanogpt2" / "assets" / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, the more so on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOGPT2_CACHE", str(tmp_path_factory.mktemp("nanogpt2-cache")))
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder dataset with train / val / test splits (characters of Tiny Shakespeare), so that the final
    comparison has a test split to score."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text(TEXT[:60000])
    (folder / "val.txt").write_text(TEXT[60000:64000])
    (folder / "test.txt").write_text(TEXT[64000:66000])
    return str(folder)


def cfg_of(out, *overrides):
    return load_config([TINY, f"--out_dir={out}", "--checkpoint_interval=0", "--test_stride=16",
                        f"--results_dir={out}-results", *overrides], cls=FinetuneConfig)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, cache, corpus):
    """A 4-layer teacher, a train.py-style run folder (20 steps) on the corpus."""
    out = tmp_path_factory.mktemp("teacher")
    run(cfg_of(out, f"--dataset={corpus}", "--tokenizer=char", "--task=lm", "--method=full", "--init_from=scratch",
               "--n_layer=4", "--max_iters=20", "--eval_interval=0", "--learning_rate=1e-2", "--test_eval=false"))
    return str(out)


def distill_cfg(out, teacher, corpus, *overrides):
    return cfg_of(out, f"--dataset={corpus}", "--tokenizer=char", "--task=distill", "--method=full",
                  f"--teacher={teacher}", "--max_iters=6", "--eval_interval=3", "--learning_rate=3e-3", *overrides)


# ----------------------------------------------------------------------------------------------------
# The student


def tiny_gpt(n_layer=4, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=32, block_size=32, vocab_size=65, **kw)).eval()


def test_default_layers_are_distilgpt2s_for_12_and_evenly_spaced_otherwise():
    assert default_layers(12) == [0, 2, 4, 7, 9, 11]
    assert default_layers(4) == [0, 3] and default_layers(24) == [0, 2, 4, 6, 8, 10, 13, 15, 17, 19, 21, 23]
    assert default_layers(1) == [0] and default_layers(12, 3) == [0, 6, 11]
    student = init_student_from_teacher(GPT(GPTConfig(n_layer=12, n_head=2, n_embd=16, block_size=8, vocab_size=11)))
    assert student.config.n_layer == 6


def test_student_blocks_are_the_teachers_and_its_logits_match_a_hand_assembled_transformers_model(tmp_path):
    transformers = oracle("transformers")
    from nanogpt2.convert import save_pretrained

    teacher, layers = tiny_gpt(), [0, 2, 3]
    student = init_student_from_teacher(teacher, layers, dropout=0.1).eval()
    assert student.config.n_layer == 3 and student.config.dropout == 0.1
    assert (student.config.n_embd, student.config.n_head) == (teacher.config.n_embd, teacher.config.n_head)
    t_weights = teacher.state_dict()
    for i, layer in enumerate(layers):
        block = student.transformer.h[i].state_dict()
        assert block.keys() == teacher.transformer.h[layer].state_dict().keys()
        assert all(torch.equal(v, t_weights[f"transformer.h.{layer}.{k}"]) for k, v in block.items())
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"):
        assert torch.equal(student.state_dict()[name], t_weights[name])
    assert student.lm_head.weight is student.transformer.wte.weight  # still tied
    assert all(p.data_ptr() != q.data_ptr() for p in student.parameters() for q in teacher.parameters())  # own copies

    # The reference: the teacher in transformers, its blocks `layers` put in a shallower GPT2LMHeadModel by hand
    save_pretrained(teacher, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    hf.transformer.h = nn.ModuleList([hf.transformer.h[layer] for layer in layers])
    hf.config.n_layer = len(layers)
    x = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        ref = hf(x, use_cache=False).logits  # (2, 32, 65)
        ours = student(x)[0]  # (2, 32, 65)
        # and by hand in nanogpt2: the teacher's own modules, its blocks `layers` in turn
        h = teacher.transformer.wte(x) + teacher.transformer.wpe(torch.arange(32))  # (2, 32, 32)
        for layer in layers:
            h = teacher.transformer.h[layer](h)
        by_hand = teacher.lm_head(teacher.transformer.ln_f(h))  # (2, 32, 65)
    assert torch.equal(ours, by_hand)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers, message", [
    ([0, 4], "names block 4, but the teacher has 4 blocks (0-3)"),
    ([-1, 2], "names block -1"),
    ([2, 1], "must be increasing"),
    ([1, 1], "must be increasing"),
    ([], "empty"),
])
def test_bad_student_layers(layers, message):
    with pytest.raises(NanoGPT2Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        init_student_from_teacher(tiny_gpt(), layers)


# ----------------------------------------------------------------------------------------------------
# The loss


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(2, 5, 11) * 4
    targets = torch.randint(0, 11, (2, 5))
    assert kd_loss(logits, logits.clone(), targets, alpha_clm=0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits, targets, alpha_ce=1.0, alpha_clm=0.0, temperature=5.0).abs().item() < 1e-6


def test_kd_loss_equals_a_direct_computation():
    torch.manual_seed(1)
    s, t = torch.randn(3, 7, 13) * 3, torch.randn(3, 7, 13) * 3  # (B, T, V)
    hs, ht = torch.randn(3, 7, 8), torch.randn(3, 7, 8)  # (B, T, C)
    y = torch.randint(0, 13, (3, 7))
    y[0, :4] = IGNORE_INDEX  # e.g. padding: left out of every term
    T, a_ce, a_clm, a_cos = 2.5, 0.3, 0.6, 0.2
    loss, terms = kd_loss(s, t, y, T, a_ce, a_clm, a_cos, hs, ht, return_terms=True)

    # HF's distiller: the selected positions, KLDivLoss(batchmean) of the softened distributions times T^2, ...
    keep = y != IGNORE_INDEX
    s_sel, t_sel = s[keep], t[keep]  # (N, V)
    kd = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_sel / T, -1), F.softmax(t_sel / T, -1)) * T ** 2
    clm = F.cross_entropy(s.view(-1, 13), y.view(-1), ignore_index=IGNORE_INDEX)
    cos = nn.CosineEmbeddingLoss()(hs[keep], ht[keep], torch.ones(int(keep.sum())))
    # ... and KL written out: sum_v p (log p - log q), mean over the scored positions
    p, q = F.softmax(t_sel / T, -1), F.softmax(s_sel / T, -1)
    assert kd.item() == pytest.approx((T ** 2 * (p * (p.log() - q.log())).sum(-1).mean()).item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert terms["clm"].item() == pytest.approx(clm.item(), rel=1e-5)
    assert terms["cos"].item() == pytest.approx(cos.item(), rel=1e-5)
    assert loss.item() == pytest.approx((a_ce * kd + a_clm * clm + a_cos * cos).item(), rel=1e-5)
    assert kd_loss(s, t, y, T, a_ce, a_clm).item() == pytest.approx((a_ce * kd + a_clm * clm).item(), rel=1e-5)


def test_kd_loss_gradient_is_finite_in_float16_autocast():
    from nanogpt2.runtime import autocast

    torch.manual_seed(0)
    student, teacher = tiny_gpt(2), tiny_gpt(4)
    with torch.no_grad():
        # a confident teacher, logits in the thousands (the head is tied: the embeddings grow too, ln_1 normalises them)
        teacher.lm_head.weight.mul_(3000)
    x = torch.randint(0, 65, (2, 32))
    with autocast(torch.device("cpu"), "float16"):
        with torch.no_grad():
            t_hidden = teacher.body(x)  # (2, 32, 32)
            t_logits = teacher.lm_head(t_hidden)  # (2, 32, 65)
        s_logits = student(x)[0]  # (2, 32, 65)
        assert s_logits.dtype == t_logits.dtype == torch.float16
        assert t_logits.abs().max() > 1000
        loss = kd_loss(s_logits, t_logits, x, 2.0, 0.5, 0.5, 0.5, student.body(x), t_hidden)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


# ----------------------------------------------------------------------------------------------------
# A distillation run


class Watch:
    """A hook: the student's weights at the end of each step, the teacher's weights and gradients at the end."""

    def __init__(self):
        self.final, self.teacher, self.optimized = None, None, None

    def __call__(self, trainer, event):
        if event == "step_end":
            self.final = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters()}
        elif event == "train_end":
            self.teacher = trainer.loss_fn.teacher
            self.optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


def test_distill_run_keeps_the_teacher_logs_both_terms_and_the_student_loads_back(tmp_path, teacher_run, corpus):
    transformers = oracle("transformers")
    out, watch = tmp_path / "student", Watch()
    summary = run(distill_cfg(out, teacher_run, corpus, f"--merge_and_export={tmp_path / 'hf'}"), hooks=[watch])
    assert summary["stopped"] == "done"

    # the teacher: bit-identical to its checkpoint, no gradients, not in the optimizer
    reference, _ = load_model(teacher_run)
    ref = reference.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in watch.teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in watch.teacher.parameters())
    assert not {id(p) for p in watch.teacher.parameters()} & watch.optimized

    # both terms in every step record; the total is their weighted sum
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 6 and all({"kd_loss", "clm_loss"} <= r.keys() and "cos_loss" not in r for r in steps)
    assert all(r["loss"] == pytest.approx(0.5 * r["kd_loss"] + 0.5 * r["clm_loss"], rel=1e-5) for r in steps)

    # the comparison: student beside teacher, the student's test figure the run's own final test evaluation
    report = summary["distill"]
    assert report == json.loads((out / "distill.json").read_text())
    s, t = report["student"], report["teacher"]
    assert (s["blocks"], t["blocks"]) == (2, 4) and s["parameters"] < t["parameters"]
    assert s["test_loss"] == pytest.approx(summary["test"]["test_loss"], rel=1e-6)
    assert all(math.isfinite(r[k]) for r in (s, t) for k in ("val_ppl", "test_ppl", "decode_tokens_per_sec"))
    assert report["student/teacher"]["parameters"] == pytest.approx(s["parameters"] / t["parameters"])

    # the student: a plain GPT checkpoint (no teacher inside) that the loader, evaluate and transformers take
    student, info = load_model(str(out))
    assert type(student) is GPT and info["spec"] == {"kind": "gpt", "config": student.config.to_dict()}
    assert student.state_dict().keys() == GPT(student.config).state_dict().keys()
    assert all(torch.equal(p, watch.final[n]) for n, p in student.named_parameters())
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, student.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, student.eval()(x)[0], rtol=1e-5, atol=1e-5)
    from nanogpt2.evaluate import main as evaluate

    res = evaluate(["--init_from", str(out), "--dataset", str(corpus) + "/test.txt", "--split", "all",
                    "--stride", "16", "--device", "cpu", "--json"])
    assert res["tokens"] == len(TEXT[64000:66000]) - 1 and math.isfinite(res["ppl"])


def test_distill_resume_is_exact_and_scratch_students_take_the_model_settings(tmp_path, teacher_run, corpus):
    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    args = ("--eval_interval=0", "--test_eval=false", "--student_layers=1,3", "--alpha_cos=0.5", "--temperature=3")
    run(distill_cfg(tmp_path / "whole", teacher_run, corpus, *args))
    assert run(distill_cfg(tmp_path / "cut", teacher_run, corpus, *args), hooks=[stop_at_3])["stopped"] == "signal"
    run(distill_cfg(tmp_path / "cut", teacher_run, corpus, *args, "--resume_from=auto"))

    def records(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert [(r["loss"], r["kd_loss"], r["cos_loss"]) for r in records("cut")] == \
           [(r["loss"], r["kd_loss"], r["cos_loss"]) for r in records("whole")]

    watch = Watch()
    run(distill_cfg(tmp_path / "scratch", teacher_run, corpus, "--student_init=scratch", "--n_layer=1", "--n_embd=16",
                    "--max_iters=2", "--eval_interval=0", "--test_eval=false"), hooks=[watch])
    student, _ = load_model(str(tmp_path / "scratch"))
    assert (student.config.n_layer, student.config.n_embd) == (1, 16)
    assert student.config.vocab_size == watch.teacher.config.vocab_size == 60  # the corpus's characters


@pytest.mark.parametrize("args, message", [
    (["--student_layers=0,4"], "names block 4, but the teacher has 4 blocks (0-3)"),
    (["--student_layers=3,1"], "must be increasing"),
    (["--student_layers=a"], "comma-separated teacher block indices"),
    (["--dataset=shakespeare", "--tokenizer=gpt2"], "reads 'char' tokens"),
    (["--teacher=gpt2"], "teacher=gpt2 reads 'gpt2' tokens (a 50257-token vocabulary), but dataset="),  # no download
    (["--student_init=scratch", "--vocab_size=100"], "the teacher's vocabulary has"),
    (["--student_init=scratch", "--n_embd=16", "--alpha_cos=1"], "alpha_cos compares final hidden states"),
    (["--temperature=0"], "temperature must be a positive number"),
    (["--alpha_ce=0", "--alpha_clm=0"], "not all 0"),
    (["--block_size=64"], "exceeds the teacher's context (32)"),
    (["--student_init=clone"], "student_init must be one of teacher, scratch"),
])
def test_bad_distill_settings_are_refused_before_anything_is_written(tmp_path, teacher_run, corpus, args, message):
    with pytest.raises(NanoGPT2Error) as e:
        run(distill_cfg(tmp_path / "out", teacher_run, corpus, *args))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_finetune_py_bad_teacher_vocabulary_is_one_error_line(tmp_path, teacher_run):
    res = subprocess.run([sys.executable, str(ROOT / "finetune.py"), TINY, "--task=distill", "--method=full",
                          f"--teacher={teacher_run}", "--dataset=shakespeare", f"--out_dir={tmp_path / 'out'}"],
                         capture_output=True, text=True, cwd=tmp_path)
    line = one_error_line(res)
    assert "reads 'char' tokens (a 60-token vocabulary), but dataset=shakespeare is tokenized with 'gpt2'" in line


# ----------------------------------------------------------------------------------------------------
# The real effect


@pytest.mark.slow
def test_distilled_student_beats_the_same_shape_trained_from_scratch(tmp_path, cache):
    """A 4-layer teacher trained 300 steps on Tiny Shakespeare (characters); a 2-layer student from its blocks 0, 3
    distilled for 100 steps reaches a lower validation loss than the same 2-layer shape trained from scratch for
    the same 100 steps on the same (seeded) batches. The numbers are in docs/distill.md (about 2.60 vs 3.02)."""
    common = ["--dataset=shakespeare_char", "--method=full", "--block_size=32", "--batch_size=16", "--n_embd=32",
              "--n_head=4", "--seed=1337", "--warmup_iters=10", "--eval_interval=0", "--eval_iters=20",
              "--log_interval=1000", "--save_best=false", "--test_eval=false"]
    run(cfg_of(tmp_path / "teacher", *common, "--task=lm", "--init_from=scratch", "--n_layer=4", "--max_iters=300",
               "--learning_rate=1e-2", "--min_lr=1e-3"))
    student = [*common, "--max_iters=100", "--learning_rate=3e-3", "--min_lr=3e-4"]
    distilled = run(cfg_of(tmp_path / "distilled", *student, "--task=distill", f"--teacher={tmp_path / 'teacher'}"))
    scratch = run(cfg_of(tmp_path / "scratch", *student, "--task=lm", "--init_from=scratch", "--n_layer=2"))
    side_by_side = distilled["distill"]  # the same validation windows for student and teacher
    print(f"\nvalidation loss: distilled student (2 layers) {distilled['best_val_loss']:.4f} | the same shape from "
          f"scratch {scratch['best_val_loss']:.4f} | side by side: student {side_by_side['student']['val_loss']:.4f}, "
          f"teacher (4 layers) {side_by_side['teacher']['val_loss']:.4f}")
    assert distilled["distill"]["student"]["blocks"] == 2 and distilled["distill"]["teacher"]["blocks"] == 4
    assert distilled["best_val_loss"] < scratch["best_val_loss"] - 0.1
