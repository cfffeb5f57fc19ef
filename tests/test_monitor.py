"""
The training monitor (nanogpt2/monitor.py, reported by nanogpt2/outputs.py): the gradient norm of each part of the
model (embeddings, each block, head, other) on the logged steps, whose squares add up to the global norm torch's
clip_grad_norm_ computes; the peak memory (CUDA allocated / reserved, else the process's peak RSS) and samples/s,
in the progress line, metrics.jsonl and TensorBoard; `log_grad_norms=false` turns the norms off; the plot at the
end has the loss, perplexity, lr and the gradient norms in one figure; bench.py monitor measures the cost.

    python -m pytest -q tests/test_monitor.py
"""

import json
import math
import re
import resource
from pathlib import Path

import pytest
import torch

from nanogpt2.config import load_config
from nanogpt2.heads import GPTForSequenceClassification
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.monitor import GradNormGroups, part_of, peak_memory
from nanogpt2.outputs import plot_run
from nanogpt2.peft import apply_adapters, apply_lora, apply_prefix
from nanogpt2.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=32, vocab_size=65, **kw))


def backward(model, forward=None):
    x = torch.randint(0, 65, (4, 24), generator=torch.Generator().manual_seed(1))  # (B, T)
    loss = (forward(x) if forward else model(x, torch.roll(x, -1, 1))[1])
    loss.backward()


# ----------------------------------------------------------------------------------------------------
# The parts and their norms


def test_parts_by_name_for_the_gpt_its_methods_and_the_classifier():
    assert part_of("transformer.wte.weight") == part_of("transformer.wpe.weight") == "embeddings"
    assert part_of("transformer.h.11.attn.c_attn.lora_A") == "block_11"
    assert part_of("transformer.h.0.mlp.adapter.up.weight") == "block_0"
    assert part_of("transformer.ln_f.weight") == part_of("lm_head.weight") == part_of("score.weight") == "head"
    assert part_of("prefix_encoder.embedding.weight") == "other"
    tied = GradNormGroups(tiny_gpt())
    assert list(tied.parts) == ["embeddings", "block_0", "block_1", "block_2", "head"]
    assert len(tied.parts["head"]) == 2  # ln_f weight and bias: the tied head's matrix is wte, in embeddings
    untied = GradNormGroups(tiny_gpt(tie_word_embeddings=False))
    assert len(untied.parts["head"]) == 3  # ln_f weight and bias, lm_head
    classifier = GradNormGroups(GPTForSequenceClassification.from_gpt(tiny_gpt(), num_labels=3))
    assert list(classifier.parts) == ["embeddings", "block_0", "block_1", "block_2", "head"]


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "prefix", "tied_off"])
def test_the_parts_norms_add_up_to_the_global_norm(method):
    model = tiny_gpt(tie_word_embeddings=method != "tied_off")
    if method == "lora":
        apply_lora(model, 2, 4.0, ["c_attn"])
    elif method == "adapter":
        apply_adapters(model, 4)
    elif method == "prefix":
        apply_prefix(model, 4)
    backward(model)
    groups = GradNormGroups(model)
    norms = groups.norms()
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.clip_grad_norm_(params, float("inf"))  # torch's global norm, what the trainer logs
    assert math.sqrt(sum(v.item() ** 2 for v in norms.values())) == pytest.approx(total.item(), rel=1e-5)
    for part, value in norms.items():  # each part by hand: the norm of its gradients laid end to end
        flat = torch.cat([p.grad.flatten() for p in groups.parts[part] if p.grad is not None])
        assert value.item() == pytest.approx(flat.norm().item(), rel=1e-5), part
    want = {"full": {"embeddings", "block_0", "block_1", "block_2", "head"}, "tied_off": None,
            "lora": {"block_0", "block_1", "block_2"}, "adapter": {"block_0", "block_1", "block_2", "head"},
            "prefix": {"other"}}[method]
    if want is not None:  # frozen parts have no gradient and are left out
        assert set(norms) == want


def test_peak_memory_is_the_rss_on_a_cpu_and_cudas_peaks_on_cuda(monkeypatch):
    got = peak_memory(torch.device("cpu"))
    assert set(got) == {"peak_rss_mib"}
    assert got["peak_rss_mib"] == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.05)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2 ** 20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 5 * 2 ** 20)
    assert peak_memory(torch.device("cuda", 0)) == {"peak_mem_allocated_mib": 3.0, "peak_mem_reserved_mib": 5.0}


# ----------------------------------------------------------------------------------------------------
# In a run


def run_cfg(tmp_path, *extra):
    return load_config([TINY, f"--out_dir={tmp_path / 'run'}", "--max_iters=12", "--log_interval=5", "--eval_interval=6",
                        "--checkpoint_interval=0", "--test_eval=false", "--gradient_accumulation_steps=2", *extra])


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_logged_steps_carry_the_norms_memory_and_samples_per_second(tmp_path, capsys):
    Trainer(run_cfg(tmp_path)).train()
    recs = records(tmp_path)
    logged = [r for r in recs if "grad_norms" in r]
    assert [r["step"] for r in logged] == [1, 5, 10, 12]  # the progress line's steps (not the evaluation at 6)
    for r in logged:
        assert list(r["grad_norms"]) == ["embeddings", "block_0", "block_1", "head"]
        assert math.sqrt(sum(v ** 2 for v in r["grad_norms"].values())) == pytest.approx(r["grad_norm"], rel=1e-5)
    for r in recs:  # every record written: the memory so far, never less than before
        assert r["samples_per_sec"] == pytest.approx(r["tokens_per_sec"] / 32, rel=1e-9)  # rows of 32 tokens
        assert r["peak_rss_mib"] > 50
    assert [r["peak_rss_mib"] for r in recs] == sorted(r["peak_rss_mib"] for r in recs)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 4
    for line, r in zip(lines, logged):
        assert f"| {r['samples_per_sec']:,.2f} samples/s | MFU " in line
        assert re.search(rf"\| RSS {r['peak_rss_mib']:,.0f} MiB \| elapsed ", line), line


def test_log_grad_norms_false_leaves_them_out(tmp_path):
    Trainer(run_cfg(tmp_path, "--log_grad_norms=false")).train()
    recs = records(tmp_path)
    assert len(recs) == 5 and not any("grad_norms" in r for r in recs) and all("grad_norm" in r for r in recs)


def test_tensorboard_holds_the_norms_memory_and_samples(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(run_cfg(tmp_path, "--tensorboard=true")).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    recs = [r for r in records(tmp_path) if "grad_norms" in r]
    for part in ("embeddings", "block_0", "block_1", "head"):
        got = [(e.step, e.value) for e in events.Scalars(f"grad_norms/{part}")]
        assert got == [(r["step"], pytest.approx(r["grad_norms"][part], rel=1e-6)) for r in recs]
    assert [e.step for e in events.Scalars("memory/peak_rss_mib")] == [1, 5, 6, 10, 12]
    assert [e.value for e in events.Scalars("train/samples_per_sec")] == pytest.approx(
        [r["samples_per_sec"] for r in records(tmp_path)], rel=1e-6)


def test_the_plot_is_one_figure_of_loss_ppl_lr_and_the_norms(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Trainer(run_cfg(tmp_path, "--plot=true", "--n_layer=3")).train()
    png = (tmp_path / "run" / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [r for r in records(tmp_path) if "loss" in r]
    fig = plot_run(plt, recs)
    loss_ax, ppl_ax, lr_ax, norm_ax = fig.axes[:4]
    assert [ax.get_title() for ax in fig.axes[:4]] == ["loss", "perplexity", "learning rate",
                                                       "gradient norm (before clipping)"]
    assert fig.axes[4].get_ylabel() == "block"  # the blocks' colour bar
    assert [text.get_text() for text in loss_ax.get_legend().get_texts()] == ["train", "val"]
    lines = norm_ax.get_lines()
    assert len(lines) == 1 + 5  # global, embeddings, 3 blocks, head
    assert list(lines[0].get_ydata()) == [r["grad_norm"] for r in recs]
    assert [text.get_text() for text in norm_ax.get_legend().get_texts()] == ["global", "embeddings", "head"]
    assert list(lr_ax.get_lines()[0].get_ydata()) == [r["lr"] for r in recs]
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# The cost


def test_bench_monitor_reports_its_share_of_a_step():
    import bench

    report = bench.main(["monitor", "--device", "cpu", "--n_layer", "2", "--n_head", "2", "--n_embd", "64",
                         "--vocab_size", "256", "--block_size", "64", "--batch_size", "2", "--steps", "1",
                         "--warmup", "1", "--repeats", "1", "--log_interval", "10"])
    res = report["results"]["monitor"]
    assert res["parts"] == 4 and res["log_interval"] == 10
    assert res["cost_per_step"]["value"] == pytest.approx(
        100 * res["monitor_ms"]["value"] / 10 / res["step_ms"]["value"], rel=1e-9)
    assert 0 < res["cost_per_step"]["value"] < 100
