"""
nanogpt2.runtime: one meaning of device/dtype "auto" and one autocast, used by every script.

    python -m pytest -q tests/test_runtime.py
"""

import re

import pytest
import torch

from conftest import ROOT
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.runtime import autocast, resolve_device, resolve_dtype


def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # one GPU per torchrun process
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(NanoGPT2Error, match="has 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec, message", [("gpu", "is not a device"), ("meta", "not supported"), ("", "is not a device")])
def test_bad_device_names_are_clear_errors(spec, message):
    with pytest.raises(NanoGPT2Error, match=message):
        resolve_device(spec)


def test_missing_accelerators_are_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(NanoGPT2Error, match="no usable CUDA device; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(NanoGPT2Error, match="MPS is not available"):
        resolve_device("mps")


def test_auto_dtype(monkeypatch):
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "mps") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("bf16", "cpu") == "bfloat16" and resolve_dtype("fp16", "cpu") == "float16"
    with pytest.raises(NanoGPT2Error, match="not supported on mps"):
        resolve_dtype("bfloat16", "mps")
    with pytest.raises(NanoGPT2Error, match="is not one of auto"):
        resolve_dtype("float64", "cpu")


def test_autocast_is_off_for_float32_and_on_otherwise():
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", torch.float16):
        assert torch.get_autocast_dtype("cpu") == torch.float16


def test_no_other_module_or_script_owns_device_or_dtype_policy():
    """The runtime module is the one place that maps dtype names and opens autocast (switching it off around a
    computation that spells out its dtypes, as the chunked LM-head loss does, is not a policy)."""
    owners = []
    for path in [*ROOT.joinpath("nanogpt2").rglob("*.py"), ROOT / "train.py", ROOT / "sample.py", ROOT / "bench.py"]:
        if path.name == "runtime.py":
            continue
        text = path.read_text()
        if re.search(r"torch\.autocast\((?![^)]*enabled=False)|\"bfloat16\": torch\.bfloat16|def resolve_device|def resolve_dtype", text):
            owners.append(path.relative_to(ROOT).as_posix())
    assert owners == []


def test_under_torchrun_auto_never_picks_mps_and_ranks_must_have_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=0) == torch.device("cpu")  # gloo cannot all-reduce MPS tensors
    with pytest.raises(NanoGPT2Error, match="cannot run under torchrun"):
        resolve_device("mps", local_rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(NanoGPT2Error, match="--nproc_per_node=2"):
        resolve_device("auto", local_rank=2)
