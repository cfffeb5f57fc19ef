"""
Knowledge distillation: a smaller GPT-2 (the student) learns a larger one's (the teacher's) softened next-token
distribution plus the usual language-modelling loss — how DistilGPT2 (6 layers) was made from GPT-2 small (12).

    python finetune.py configs/distill_gpt2.py           # gpt2 -> 6 layers from blocks 0,2,4,7,9,11, WikiText-2
    python finetune.py configs/distill_shakespeare.py    # a 4-layer train.py run -> 2 layers, on the CPU
    python finetune.py --task distill --method full --teacher gpt2 --student_layers 0,2,4,7,9,11
    python finetune.py --task distill --method full --student_init scratch --n_layer 4 --n_head 8 --n_embd 512

The student (`init_student_from_teacher`): a GPT with the teacher's width and heads whose blocks are copies of
the teacher's blocks `layers` (default: half the teacher's depth, evenly spaced, first and last included; for
12 layers [0, 2, 4, 7, 9, 11], DistilGPT2's choice), with the teacher's token and position embeddings, final
LayerNorm and (tied) head; or, with student_init=scratch, a new GPT of the model settings n_layer, n_head,
n_embd and the teacher's vocabulary.

The loss (`kd_loss`), averaged over the scored positions (targets != -100):

    alpha_ce * T^2 * KL(softmax(teacher / T) || softmax(student / T))     the KD term (logged as kd_loss)
  + alpha_clm * cross_entropy(student, targets)                          the LM term (clm_loss)
  + alpha_cos * (1 - cosine(h_student, h_teacher))                       final hidden states (cos_loss; off by default)

T^2 keeps the KD gradients' scale independent of T (Hinton et al.). The teacher runs in eval mode under
no_grad, on the student's device and under the same autocast (the trainer's, around the loss_fn); none of its
activations are kept for backward. It is not a submodule of the student: not in the optimizer, the
checkpoints or the model spec, and its weights never change. The student saves as a plain GPT checkpoint
(`sample.py`, `python -m nanogpt2.evaluate`, `merge_and_export` to an HF folder take it like any other).

`task(cfg)` is finetune.py's `--task distill` (registered in nanogpt2.finetuning.TASKS): the teacher from
`teacher` (anything `init_from` takes), the student as the run's model, the dataset's own LM data (train.py's
sampler and validation), the loss above with its terms logged separately, and at the end the student and the
teacher side by side: validation (and test) perplexity, parameters, decode speed.

References: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (soft targets, T^2);
Sanh et al. 2019, "DistilBERT, a distilled version of BERT" (loss = CE of the soft targets + MLM + cosine);
Hugging Face transformers `examples/research_projects/distillation` (`distiller.py`: KLDivLoss(batchmean) over
the non-padded positions, CosineEmbeddingLoss on the last hidden states; `scripts/extract.py`: DistilGPT2's
student from GPT-2 blocks 0, 2, 4, 7, 9, 11).
"""

import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from nanogpt2.checkpoint import tokenizer_from_info
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.finetuning import FinetuneConfig, TaskParts
from nanogpt2.generate import generate
from nanogpt2.model import GPT, GPTConfig, IGNORE_INDEX
from nanogpt2.peft import lora_layers, merge_lora

STUDENT_INITS = ("teacher", "scratch")

# ----------------------------------------------------------------------------------------------------
# The student


def default_layers(n_teacher: int, n_student: int = None) -> list:
    """`n_student` teacher blocks (default: half the depth, at least 1), evenly spaced with the first and the last:
    12 -> [0, 2, 4, 7, 9, 11] (DistilGPT2's choice), 4 -> [0, 3]."""
    n = n_student or max(1, n_teacher // 2)
    if n == 1:
        return [0]
    return [math.floor(i * (n_teacher - 1) / (n - 1) + 0.5) for i in range(n)]


def parse_layers(text: str):
    """`student_layers` as a list of ints ('' -> None: the default choice)."""
    if not text.strip():
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise NanoGPT2Error(f"student_layers must be comma-separated teacher block indices, e.g. 0,2,4,7,9,11, "
                            f"not {text!r}") from None


def check_layers(layers: list, n_teacher: int) -> None:
    """The student's blocks must be distinct teacher blocks in increasing order."""
    shown = ",".join(str(i) for i in layers)
    if not layers:
        raise NanoGPT2Error("student_layers is empty: name at least one teacher block, e.g. 0")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise NanoGPT2Error(f"student_layers={shown} must be increasing teacher block indices (each once), e.g. "
                            f"{','.join(str(i) for i in sorted(set(layers)))}")
    if layers[0] < 0 or layers[-1] >= n_teacher:
        bad = layers[0] if layers[0] < 0 else layers[-1]
        raise NanoGPT2Error(f"student_layers={shown} names block {bad}, but the teacher has {n_teacher} blocks "
                            f"(0-{n_teacher - 1}); e.g. {','.join(map(str, default_layers(n_teacher)))}")


def init_student_from_teacher(teacher: GPT, layers=None, **overrides) -> GPT:
    """A student GPT of len(layers) blocks, block i a copy of the teacher's block layers[i]; embeddings, positions,
    final LayerNorm and head copied; n_embd, n_head and every other config field the teacher's (`overrides`: e.g.
    dropout). The copies are the student's own tensors: training it leaves the teacher alone."""
    n_teacher = teacher.config.n_layer
    layers = default_layers(n_teacher) if layers is None else [int(i) for i in layers]
    check_layers(layers, n_teacher)
    if getattr(teacher, "adapter_config", None) is not None:
        raise NanoGPT2Error("the teacher has Houlsby adapters, which a plain GPT student cannot copy; distill from "
                            "it with student_init=scratch")
    if any(not layer.merged for layer in lora_layers(teacher).values()):
        raise NanoGPT2Error("the teacher's LoRA layers are not merged: nanogpt2.peft.merge_lora(teacher) first")
    student = GPT(GPTConfig(**{**teacher.config.to_dict(), "n_layer": len(layers), **overrides}))
    source = teacher.state_dict()

    def teacher_name(name: str) -> str:  # transformer.h.{i}.* -> transformer.h.{layers[i]}.*
        if name.startswith("transformer.h."):
            i, rest = name[len("transformer.h."):].split(".", 1)
            return f"transformer.h.{layers[int(i)]}.{rest}"
        return name

    with torch.no_grad():
        student.load_state_dict({name: source[teacher_name(name)] for name in student.state_dict()})  # copies
    return student


# ----------------------------------------------------------------------------------------------------
# The loss


def kd_loss(student_logits, teacher_logits, targets, temperature: float = 2.0, alpha_ce: float = 0.5,
            alpha_clm: float = 0.5, alpha_cos: float = 0.0, student_hidden=None, teacher_hidden=None,
            return_terms: bool = False):
    """alpha_ce * T^2 * KL(softmax(t/T) || softmax(s/T)) + alpha_clm * CE(s, targets) [+ alpha_cos * (1 - cos(h_s,
    h_t))], each a mean over the positions whose target is not IGNORE_INDEX (HF's distiller: KLDivLoss batchmean
    over the selected positions). logits (B, T, V), targets (B, T), hidden (B, T, C); computed in float32 whatever
    the autocast. With return_terms: (loss, {"kd": T^2 * KL, "clm": CE[, "cos": 1 - cos]}), the terms unweighted."""
    scored = targets != IGNORE_INDEX  # (B, T)
    n = scored.sum().clamp(min=1)
    s = student_logits[scored].float()  # (N, V)
    t = teacher_logits[scored].float()  # (N, V)
    T = float(temperature)
    kl = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), log_target=True, reduction="sum")
    terms = {
        "kd": T * T * kl / n,
        "clm": F.cross_entropy(s, targets[scored], reduction="sum") / n,
    }
    loss = alpha_ce * terms["kd"] + alpha_clm * terms["clm"]
    if alpha_cos:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("alpha_cos > 0 needs the student's and the teacher's final hidden states")
        if student_hidden.size(-1) != teacher_hidden.size(-1):
            raise NanoGPT2Error(f"alpha_cos compares hidden states: the student is {student_hidden.size(-1)} wide, "
                                f"the teacher {teacher_hidden.size(-1)}; use the same n_embd or alpha_cos=0")
        cos = F.cosine_similarity(student_hidden[scored].float(), teacher_hidden[scored].float(), dim=-1)  # (N,)
        terms["cos"] = (1.0 - cos).sum() / n
        loss = loss + alpha_cos * terms["cos"]
    return (loss, terms) if return_terms else loss


class DistillLoss:
    """The trainer's loss_fn for a micro-batch (x, y): the teacher's logits (and final hidden states) in eval mode
    under no_grad, on the batch's device, then `kd_loss` of the student's; the terms are returned for the log.
    The trainer calls it under its autocast, so the teacher runs under the student's."""

    def __init__(self, teacher: GPT, student: GPT, cfg: FinetuneConfig):
        self.teacher, self.cfg = teacher, cfg
        self.student_hidden = {}
        if cfg.alpha_cos:  # the student's final hidden states, caught as they leave ln_f (under DDP/compile too)
            student.transformer.ln_f.register_forward_hook(
                lambda module, inputs, output: self.student_hidden.__setitem__("h", output))

    def __call__(self, trainer, model, batch):
        x, y = batch  # (B, T) each
        cfg = self.cfg
        with torch.no_grad():  # nothing of the teacher's forward is kept for backward
            teacher = teacher_on(self.teacher, x.device)
            t_hidden = teacher.body(x)  # (B, T, C)
            t_logits = teacher.lm_head(t_hidden)  # (B, T, V)
        s_logits, _ = model(x)  # (B, T, V)
        loss, terms = kd_loss(s_logits, t_logits, y, cfg.temperature, cfg.alpha_ce, cfg.alpha_clm, cfg.alpha_cos,
                              self.student_hidden.pop("h", None), t_hidden, return_terms=True)
        return loss, (y != IGNORE_INDEX).sum(), {f"{name}_loss": value for name, value in terms.items()}


def teacher_on(teacher: GPT, device) -> GPT:
    """The teacher on `device`, in eval mode (moved once)."""
    if teacher.lm_head.weight.device != torch.device(device):
        teacher.to(device)
    return teacher.eval()


# ----------------------------------------------------------------------------------------------------
# Student vs teacher, at the end of a run


def decode_speeds(models: dict, prompt, new_tokens: int, device, autocast, rounds: int = 3) -> dict:
    """Greedy KV-cache decoding tokens/s of each model (nanogpt2.generate, batch 1), measured side by side: one
    warm-up each, then `rounds` rounds taking the models in turn; each model's best round."""
    best = {name: float("inf") for name in models}
    for r in range(rounds + 1):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast():
                generate(model, prompt, new_tokens if r else 2, greedy=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:  # round 0 warms up
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: new_tokens / seconds for name, seconds in best.items()}


def _perplexity(model, tokens, trainer, block: int, stride: int, n_bytes=None) -> dict:
    from nanogpt2.evaluate import evaluate_perplexity
    from nanogpt2.runtime import DTYPES

    return evaluate_perplexity(model, np.asarray(tokens, dtype=np.int64), block_size=block, stride=stride,
                               batch_size=trainer.cfg.batch_size, device=trainer.device, n_bytes=n_bytes,
                               dtype=None if trainer.dtype == "float32" else DTYPES[trainer.dtype])


def compare(trainer, teacher: GPT) -> dict:
    """{"student": {...}, "teacher": {...}, "student/teacher": {...}}: blocks, parameters, validation loss / perplexity
    (the first eval_iters batches of disjoint windows, as the run's validation; the whole split with eval_iters=0),
    test perplexity (strided, as the final test evaluation) when the dataset has a test split, and decode tokens/s."""
    cfg, student = trainer.cfg, trainer.raw_model
    models = {"student": student.eval(), "teacher": teacher_on(teacher, trainer.device)}
    block = min(cfg.block_size, student.config.block_size)
    val = trainer.val_data[: cfg.eval_iters * cfg.batch_size * block + 1] if cfg.eval_iters else trainer.val_data
    rows = {name: {"blocks": m.config.n_layer, "parameters": m.param_counts()["total"]} for name, m in models.items()}
    splits = trainer.dataset.meta.get("splits", {})
    for name, model in models.items():
        res = _perplexity(model, val, trainer, block, block)
        rows[name].update(val_loss=res["loss"], val_ppl=res["ppl"])
        if cfg.test_eval and "test" in splits:
            res = _perplexity(model, trainer.dataset.tokens("test"), trainer, block, min(cfg.test_stride, block),
                              splits["test"].get("text_bytes"))
            rows[name].update(test_loss=res["loss"], test_ppl=res["ppl"])
    prompt_len = min(8, block // 2)
    prompt = torch.as_tensor(np.asarray(trainer.val_data[:prompt_len], dtype=np.int64), device=trainer.device)[None]  # (1, P)
    speeds = decode_speeds(models, prompt, min(64, block - prompt_len), trainer.device, trainer.autocast)
    for name, tps in speeds.items():
        rows[name]["decode_tokens_per_sec"] = tps
    student.train()
    ratio = {key: rows["student"][key] / rows["teacher"][key] for key in ("blocks", "parameters", "decode_tokens_per_sec")}
    return {**rows, "student/teacher": ratio}


def format_comparison(report: dict) -> str:
    """The comparison as a small table (student, teacher, student/teacher)."""
    s, t, r = report["student"], report["teacher"], report["student/teacher"]
    lines = [f"{'':24}{'student':>14}{'teacher':>14}{'student/teacher':>18}"]
    for key, fmt in (("blocks", "{:,}"), ("parameters", "{:,}"), ("val_loss", "{:.4f}"), ("val_ppl", "{:.2f}"),
                     ("test_loss", "{:.4f}"), ("test_ppl", "{:.2f}"), ("decode_tokens_per_sec", "{:,.0f}")):
        if key in s:
            ratio = f"{r[key]:.2f}x" if key in r else ""
            lines.append(f"{key:24}{fmt.format(s[key]):>14}{fmt.format(t[key]):>14}{ratio:>18}")
    return "\n".join(lines)


def report_after_training(teacher: GPT):
    """TaskParts.after_train: the comparison logged, written to out_dir/distill.json and put in the summary
    (rank 0; the process group is gone by then, so it runs on one process)."""
    def after_train(trainer, summary):
        if not trainer.dist.master:
            return
        try:
            report = compare(trainer, teacher)
        except NanoGPT2Error as e:  # the run itself succeeded: its checkpoints and metrics stand
            trainer.log(f"warning: no student / teacher comparison: {e}")
            return
        trainer.log("distillation: the student beside its teacher\n" + format_comparison(report))
        (trainer.out_dir / "distill.json").write_text(json.dumps(report, indent=1) + "\n")
        summary["distill"] = report

    return after_train


# ----------------------------------------------------------------------------------------------------
# finetune.py --task distill


def check_settings(cfg: FinetuneConfig) -> None:
    """The distillation settings that need no teacher, checked before it is loaded."""
    if not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
        raise NanoGPT2Error(f"temperature must be a positive number, not {cfg.temperature}")
    alphas = {key: getattr(cfg, key) for key in ("alpha_ce", "alpha_clm", "alpha_cos")}
    if any(not (math.isfinite(a) and a >= 0) for a in alphas.values()) or not any(alphas.values()):
        raise NanoGPT2Error(f"alpha_ce, alpha_clm, alpha_cos must be >= 0 and not all 0, not "
                            f"{', '.join(f'{k}={v}' for k, v in alphas.items())}")
    if cfg.teacher in ("", "scratch", "resume"):
        raise NanoGPT2Error(f"teacher={cfg.teacher!r}: the teacher must be a trained model: a GPT-2 name, an HF "
                            f"folder, a train.py run folder or a checkpoint")
    from nanogpt2.hf_checkpoint import HF_REPOS

    if cfg.teacher in HF_REPOS:  # a GPT-2 name: its tokenizer is known before the download
        check_vocabulary(cfg, "gpt2", 50257)
    if cfg.student_init == "scratch" and cfg.student_layers.strip():
        raise NanoGPT2Error("student_layers picks teacher blocks for student_init=teacher; a scratch student takes "
                            "n_layer, n_head, n_embd instead: drop student_layers or use student_init=teacher")
    parse_layers(cfg.student_layers)


def _data_tokenizer(cfg: FinetuneConfig) -> str:
    """The tokenizer the run's data is made with (nanogpt2.data's rule: the dataset's own, else `tokenizer`, else gpt2)."""
    from nanogpt2.data import DATASETS

    spec = DATASETS.get(cfg.dataset)
    return (spec.tokenizer if spec is not None else None) or (cfg.tokenizer if cfg.tokenizer != "auto" else "gpt2")


def check_vocabulary(cfg: FinetuneConfig, teacher_tokenizer: str, vocab_size: int) -> None:
    """The teacher must read the tokens the run's data is made of."""
    data_tokenizer = _data_tokenizer(cfg)
    if teacher_tokenizer != data_tokenizer:
        raise NanoGPT2Error(f"teacher={cfg.teacher} reads {teacher_tokenizer!r} tokens (a {vocab_size}-token vocabulary), "
                            f"but dataset={cfg.dataset} is tokenized with {data_tokenizer!r}: distill on data of the "
                            f"teacher's tokenizer, or pick a teacher of this vocabulary")


def load_teacher(cfg: FinetuneConfig):
    """(teacher GPT in eval mode with requires_grad off, its tokenizer, description), checked against the run."""
    from nanogpt2.loader import load_model

    teacher, info = load_model(cfg.teacher)
    if not isinstance(teacher, GPT):
        raise NanoGPT2Error(f"teacher={cfg.teacher} holds a {type(teacher).__name__} ({info['spec'].get('kind')}), "
                            f"not a GPT language model")
    tok_info = info.get("tokenizer") or {"name": "gpt2"}
    check_vocabulary(cfg, tok_info.get("name"), teacher.config.vocab_size)
    if cfg.block_size > teacher.config.block_size:
        raise NanoGPT2Error(f"block_size={cfg.block_size} exceeds the teacher's context ({teacher.config.block_size}); "
                            f"use --block_size {teacher.config.block_size} or less")
    merge_lora(teacher)  # a LoRA fine-tuning run as teacher: its merged weights (it is never saved)
    teacher.requires_grad_(False)
    return teacher.eval(), tokenizer_from_info(tok_info, path=info["path"] if "step" in info else None), info["description"]


def build_student(cfg: FinetuneConfig, teacher: GPT) -> GPT:
    """The student: teacher blocks (student_init=teacher), or a new GPT of the model settings with the teacher's
    vocabulary (scratch, seeded with cfg.seed); its context cropped to block_size, dropout the run's."""
    vocab = teacher.config.vocab_size
    if cfg.vocab_size is not None and cfg.vocab_size != vocab:
        raise NanoGPT2Error(f"vocab_size={cfg.vocab_size}, but the teacher's vocabulary has {vocab} tokens: the student "
                            f"must share it (KD compares the two distributions token by token); drop vocab_size")
    width = teacher.config.n_embd if cfg.student_init == "teacher" else cfg.n_embd
    if cfg.alpha_cos and width != teacher.config.n_embd:
        raise NanoGPT2Error(f"alpha_cos compares final hidden states, but the student is {width} wide and the teacher "
                            f"{teacher.config.n_embd}: use n_embd={teacher.config.n_embd} or alpha_cos=0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.student_init == "teacher":
            student = init_student_from_teacher(teacher, parse_layers(cfg.student_layers), dropout=cfg.dropout)
            student.crop_block_size(cfg.block_size)
        else:
            config = {**teacher.config.to_dict(), "block_size": cfg.block_size, "n_layer": cfg.n_layer,
                      "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_inner": cfg.n_inner, "dropout": cfg.dropout, "bias": cfg.bias}
            student = GPT(GPTConfig(**config))
    return student


class Announce:
    """A trainer hook: at train_start, the teacher onto the run's device and one line saying what distils into what."""

    def __init__(self, teacher: GPT, description: str, layers):
        self.teacher, self.description, self.layers = teacher, description, layers

    def __call__(self, trainer, event: str):
        if event != "train_start":
            return
        cfg, student = trainer.cfg, trainer.raw_model
        teacher_on(self.teacher, trainer.device)
        origin = f"teacher blocks {self.layers}" if cfg.student_init == "teacher" else "scratch"
        trainer.log(f"distill: teacher {self.description} ({self.teacher.config.n_layer} blocks, "
                    f"{self.teacher.param_counts()['total']:,} parameters) -> student of {student.config.n_layer} "
                    f"blocks from {origin} ({student.param_counts()['total']:,} parameters); T={cfg.temperature}, "
                    f"alpha_ce={cfg.alpha_ce}, alpha_clm={cfg.alpha_clm}, alpha_cos={cfg.alpha_cos}")
        if cfg.method in ("lora", "adapter"):
            trainer.log(f"note: method={cfg.method} trains only the student's {cfg.method} weights; DistilGPT2's "
                        f"recipe trains them all (--method full)")


def task(cfg: FinetuneConfig) -> TaskParts:
    """`distill`: the student (the run's model) learns the teacher on the dataset's LM data (train.py's sampler
    and validation); at the end, student and teacher side by side."""
    check_settings(cfg)
    teacher, tokenizer, description = load_teacher(cfg)
    student = build_student(cfg, teacher)
    layers = parse_layers(cfg.student_layers) or default_layers(teacher.config.n_layer)
    return TaskParts(model=student, tokenizer=tokenizer, loss_fn=DistillLoss(teacher, student, cfg),
                     hooks=[Announce(teacher, description, layers)], after_train=report_after_training(teacher))
