"""
`train_stride`: training windows every train_stride tokens (the small-LM recipe's GPTDatasetV1), shuffled per
epoch, resumable, DDP-sharded (nanogpt2.samplers.StridedWindowSampler), and the runs that use it: the epoch is
the sampler's, a resumed run draws the uninterrupted run's batches, train.py takes it from the command line.

    python -m pytest -q tests/test_train_stride.py
"""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import ROOT
from nanogpt2.config import load_config
from nanogpt2.errors import DataWarning, NanoGPT2Error
from nanogpt2.samplers import RandomWindowSampler, StridedWindowSampler, train_sampler
from nanogpt2.trainer import Trainer

TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path_factory.getbasetemp() / "nanogpt2-cache"))


def recipe_windows(ids, max_length: int, stride: int):
    """The recipe's dataset, written from its definition (GPTDatasetV1): input ids[i:i + max_length], target
    ids[i + 1:i + max_length + 1] for i in range(0, len(ids) - max_length, stride)."""
    return [(tuple(ids[i:i + max_length]), tuple(ids[i + 1:i + max_length + 1]))
            for i in range(0, len(ids) - max_length, stride)]


def rows_of(batch):
    x, y = batch
    return [(tuple(a), tuple(b)) for a, b in zip(x.tolist(), y.tolist())]


@pytest.mark.parametrize("n, block, stride, batch", [(200, 16, 4, 3), (200, 16, 16, 2), (201, 8, 5, 4), (64, 16, 1, 7)])
def test_one_epoch_visits_the_recipes_windows_once_each_dropping_the_last_partial_batch(n, block, stride, batch):
    ids = list(np.random.default_rng(0).integers(0, 50257, size=n))
    expected = recipe_windows(ids, block, stride)
    s = StridedWindowSampler(np.array(ids, dtype=np.uint16), block, batch, stride, seed=3)
    assert s.n_windows == len(expected) and s.steps_per_epoch == len(expected) // batch
    seen = [r for _ in range(s.steps_per_epoch) for r in rows_of(s.next_batch())]
    assert len(seen) == len(set(seen)) == s.steps_per_epoch * batch  # no window twice within the epoch
    assert set(seen) <= set(expected) and len(set(expected) - set(seen)) == len(expected) % batch
    x, y = train_sampler(np.array(ids, dtype=np.uint16), block, batch, stride, seed=3).next_batch()
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (batch, block)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_each_epoch_has_a_new_seeded_order_and_the_draw_is_a_pure_function_of_seed_and_step():
    ids = np.arange(400)
    a, b = StridedWindowSampler(ids, 16, 4, 8, seed=1), StridedWindowSampler(ids, 16, 4, 8, seed=1)
    epoch = a.steps_per_epoch
    first = [a.starts(k).tolist() for k in range(epoch)]
    second = [a.starts(k).tolist() for k in range(epoch, 2 * epoch)]
    assert first != second and sorted(sum(first, [])) != sum(first, [])  # reshuffled, and not in stream order
    assert sorted(sum(first, [])) == sorted(sum(second, []))  # 48 windows, 4 per call: each epoch holds them all
    assert [b.starts(k).tolist() for k in range(2 * epoch)] == first + second
    assert StridedWindowSampler(ids, 16, 4, 8, seed=2).starts(0).tolist() != first[0]


def test_ranks_take_their_slice_of_the_same_global_batch():
    ids = np.arange(500)
    whole = StridedWindowSampler(ids, 16, 6, 4, seed=5)
    ranks = [StridedWindowSampler(ids, 16, 3, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    assert whole.steps_per_epoch == ranks[0].steps_per_epoch
    for k in (0, 1, whole.steps_per_epoch + 2):
        assert np.concatenate([r.starts(k) for r in ranks]).tolist() == whole.starts(k).tolist()


def test_resume_continues_with_the_next_batch_and_warns_on_another_kind_or_stride():
    ids = np.arange(300)
    s = StridedWindowSampler(ids, 16, 4, 8, seed=9)
    for _ in range(5):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))  # as a checkpoint stores it
    resumed = StridedWindowSampler(ids, 16, 4, 8, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(resumed.next_batch(), s.next_batch()))
    with pytest.warns(DataWarning, match="train_stride 8 -> 4"):
        StridedWindowSampler(ids, 16, 4, 4, seed=9).load_state_dict(state)
    with pytest.warns(DataWarning, match="drew RandomWindowSampler batches"):
        StridedWindowSampler(ids, 16, 4, 8).load_state_dict(RandomWindowSampler(ids, 16, 4).state_dict())
    with pytest.warns(DataWarning, match=r"drew StridedWindowSampler batches \(train_stride=8\)"):
        RandomWindowSampler(ids, 16, 4).load_state_dict(state)


def test_too_few_windows_for_one_step_is_an_error_saying_what_to_lower():
    with pytest.raises(NanoGPT2Error, match="gives 5 training windows of block_size=16, fewer than one step's 8 rows"):
        StridedWindowSampler(np.arange(50), 16, 8, 8)
    with pytest.raises(NanoGPT2Error, match="train_stride must be an int >= 1"):
        StridedWindowSampler(np.arange(50), 16, 2, 0)
    with pytest.raises(NanoGPT2Error, match="train_stride must be >= 0"):
        load_config(["--train_stride=-1"])


# ----------------------------------------------------------------------------------------------------
# Runs


def stride_cfg(tmp_path, *overrides):
    return load_config([TINY, f"--out_dir={tmp_path / 'run'}", "--train_stride=64", "--eval_interval=0",
                        "--checkpoint_interval=3", "--test_eval=false", *overrides])


def losses(out) -> list:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [float.hex(r["loss"]) for r in recs if "loss" in r]


def test_a_run_takes_its_epoch_from_the_windows_and_resumes_exactly(tmp_path):
    t = Trainer(stride_cfg(tmp_path, "--max_iters=6"))
    assert isinstance(t.sampler, StridedWindowSampler) and t.sampler.stride == 64
    n_windows = (t.train_tokens - 32 - 1) // 64 + 1  # block_size 32
    assert t.sampler.n_windows == n_windows and t.steps_per_epoch == n_windows // 4  # 4 rows per step
    t.train()
    straight = losses(tmp_path / "run")
    stopped = Trainer(stride_cfg(tmp_path / "b", "--max_iters=6", "--log_interval=1"))

    def stop_at_3(trainer, event):
        if event == "step_end" and trainer.step == 3:
            trainer._stop_signal = "SIGTERM"

    stopped.hooks.append(stop_at_3)
    assert stopped.train()["stopped"] == "signal"
    Trainer(stride_cfg(tmp_path / "b", "--max_iters=6", "--resume_from=auto")).train()
    assert losses(tmp_path / "b" / "run") == straight  # bit for bit: the sampler continued at step 3


def test_train_py_max_epochs_with_train_stride(tmp_path):
    res = subprocess.run([sys.executable, "train.py", TINY, f"--out_dir={tmp_path / 'run'}", "--train_stride=16384",
                          "--max_iters=0", "--max_epochs=2", "--eval_interval=0", "--checkpoint_interval=0",
                          "--test_eval=false"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from nanogpt2.data import prepare_dataset

    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    n_windows = (len(prepare_dataset("shakespeare_char", quiet=True).tokens("train")) - 32 - 1) // 16384 + 1
    per_epoch = n_windows // 4  # batch_size 4, one micro-step
    assert f"{per_epoch} per epoch" in res.stdout
    assert max(r["step"] for r in recs) == 2 * per_epoch
    assert [r["epoch"] for r in recs if r["step"] == per_epoch] == [1]
