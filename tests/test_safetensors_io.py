"""
Tests for nanogpt2/safetensors_io.py against the reference `safetensors` library (a test oracle only).

Run: python -m pytest -q tests/test_safetensors_io.py
"""

import json
import struct

import pytest
import torch

from conftest import FIXTURES, oracle
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.safetensors_io import SafetensorsError, load_file, read_header, save_file

st = oracle("safetensors.torch", reason="the reference `safetensors` package is the oracle here")


# --- helpers -------------------------------------------------------------------------------------------------

def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),                                   # (3, 5)
        "f16": torch.randn(4, 2, generator=g).half(),                            # (4, 2)
        "bf16": torch.randn(7, generator=g).to(torch.bfloat16),                  # (7,)
        "bf16_2d": torch.tensor([[1.5, -2.0, 3.0e38], [0.0, -0.0, 1e-30]]).to(torch.bfloat16),
        "i64": torch.tensor([[0, -1, 2**62], [7, -(2**63), 5]], dtype=torch.int64),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "u8": torch.tensor([0, 255, 17], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "scalar_f32": torch.tensor(3.25),                                         # 0-d
        "scalar_bf16": torch.tensor(-1.5, dtype=torch.bfloat16),                  # 0-d
        "scalar_i64": torch.tensor(-42, dtype=torch.int64),                       # 0-d
        "empty_f32": torch.empty(0, 4),                                            # (0, 4)
        "empty_bf16": torch.empty(3, 0, dtype=torch.bfloat16),                     # (3, 0)
        "empty_i64": torch.empty(0, dtype=torch.int64),                            # (0,)
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        # bitwise equality (NaN-safe, -0.0 vs 0.0 distinguished)
        assert torch.equal(a[k].reshape(-1).view(torch.uint8) if a[k].numel() else a[k].reshape(-1),
                           b[k].reshape(-1).view(torch.uint8) if b[k].numel() else b[k].reshape(-1)), k


def write_raw(path, header: dict | bytes, data: bytes, header_len: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)


# --- round trips against the reference -----------------------------------------------------------------------

def test_reference_writes_we_read(tmp_path):
    t = sample_tensors()
    p = tmp_path / "ref.safetensors"
    st.save_file(t, str(p), metadata={"format": "pt", "note": "héllo"})
    got = load_file(p)
    assert_same(t, got)
    header, data_start = read_header(p)
    assert header["__metadata__"] == {"format": "pt", "note": "héllo"}
    assert data_start == 8 + struct.unpack("<Q", p.read_bytes()[:8])[0]
    assert header["bf16"] == {"dtype": "BF16", "shape": [7], "data_offsets": header["bf16"]["data_offsets"]}


def test_we_write_reference_reads(tmp_path):
    t = sample_tensors()
    p = tmp_path / "ours.safetensors"
    save_file(t, p, metadata={"format": "pt", "step": "12"})
    assert_same(t, st.load_file(str(p)))
    from safetensors import safe_open
    with safe_open(str(p), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "step": "12"}
    assert_same(t, load_file(p))


def test_byte_identical_to_reference_writer(tmp_path):
    """Same layout rules as the reference (compact JSON, metadata first, alignment-then-name order, padding)."""
    t = sample_tensors()
    ours, ref = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    save_file(t, ours, metadata={"format": "pt"})
    st.save_file(t, str(ref), metadata={"format": "pt"})
    assert ours.read_bytes() == ref.read_bytes()


def test_header_padded_to_8_bytes(tmp_path):
    for name in ["a", "ab", "abc", "abcd", "abcde"]:
        p = tmp_path / f"{name}.safetensors"
        save_file({name: torch.ones(1)}, p)
        n = struct.unpack("<Q", p.read_bytes()[:8])[0]
        assert n % 8 == 0
        assert p.read_bytes()[8:8 + n].rstrip(b" ").endswith(b"}")


def test_no_tensors_and_no_metadata(tmp_path):
    p = tmp_path / "empty.safetensors"
    save_file({}, p)
    assert load_file(p) == {} and st.load_file(str(p)) == {}
    st.save_file({}, str(p), metadata={"format": "pt"})
    assert load_file(p) == {}
    assert read_header(p)[0] == {"__metadata__": {"format": "pt"}}


def test_real_fixture_matches_reference():
    p = FIXTURES / "openai-gpt2-tiny-hf" / "model.safetensors"
    assert_same(st.load_file(str(p)), load_file(p))


def test_non_contiguous_and_shared_tensors_are_copied(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t = {"w": base, "w_t": base.t(), "tied": base, "col": base[:, 1], "view": base[1:]}
    p = tmp_path / "shared.safetensors"
    save_file(t, p)
    for got in (load_file(p), st.load_file(str(p))):
        assert set(got) == set(t)
        for k in t:
            assert torch.equal(got[k], t[k]), k
    got = load_file(p)
    got["w"].add_(1)  # every name owns its memory
    assert torch.equal(got["tied"], base)


def test_loaded_tensors_are_writable_and_on_device(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"x": torch.zeros(2, 2)}, p)
    x = load_file(p, device="cpu")["x"]
    x += 1
    assert torch.equal(x, torch.ones(2, 2))
    assert load_file(p, device=torch.device("cpu"))["x"].device.type == "cpu"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "x.safetensors"
    save_file({"x": torch.ones(3)}, p)
    save_file({"x": torch.zeros(3)}, p)  # overwrite
    assert torch.equal(load_file(p)["x"], torch.zeros(3))
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.safetensors"]
    with pytest.raises(SafetensorsError, match="metadata must map str to str"):
        save_file({"x": torch.ones(3)}, p, metadata={"step": 3})
    assert torch.equal(load_file(p)["x"], torch.zeros(3))  # the old file is untouched
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.safetensors"]


def test_save_rejects_bad_input(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(SafetensorsError, match="not a torch.Tensor"):
        save_file({"x": [1, 2]}, p)
    with pytest.raises(SafetensorsError, match="reserved"):
        save_file({"__metadata__": torch.ones(1)}, p)
    assert not p.exists()


# --- damaged files --------------------------------------------------------------------------------------------

def test_truncated_file(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"a": torch.randn(100), "b": torch.randn(50)}, p)
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(SafetensorsError, match=r"model\.safetensors.*truncated"):
        load_file(p)
    with pytest.raises(SafetensorsError, match="truncated"):
        read_header(p)
    # and the reference agrees this file is broken
    with pytest.raises(Exception):
        st.load_file(str(p))


def test_shorter_than_length_field(tmp_path):
    p = tmp_path / "tiny.safetensors"
    for content in [b"", b"\x01\x02\x03"]:
        p.write_bytes(content)
        with pytest.raises(SafetensorsError, match=r"tiny\.safetensors.*shorter than the 8-byte"):
            load_file(p)


def test_header_length_past_end_of_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, header_len=10_000)
    with pytest.raises(SafetensorsError, match=r"bad\.safetensors: the header claims 10000 bytes"):
        load_file(p)
    p.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(SafetensorsError, match="larger than"):
        load_file(p)


def test_invalid_json(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, b'{"a": {"dtype": "F32", ', b"")
    with pytest.raises(SafetensorsError, match=r"bad\.safetensors: the header is not valid UTF-8 JSON"):
        load_file(p)
    write_raw(p, b"[1, 2]    ", b"")
    with pytest.raises(SafetensorsError, match="not an object"):
        load_file(p)


def test_unknown_dtype(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(SafetensorsError, match=r"tensor 'a' has unknown dtype 'F128'"):
        load_file(p)


def test_size_mismatch(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 24)
    with pytest.raises(SafetensorsError, match=r"tensor 'a' \(F32, shape \[2, 3\]\) needs 24 bytes .* span 20"):
        load_file(p)


def test_overlapping_offsets(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(SafetensorsError, match="'a' .* and 'b' .* overlap"):
        load_file(p)


def test_bad_offsets_and_shapes(tmp_path):
    p = tmp_path / "bad.safetensors"
    write_raw(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, b"\0" * 8)
    with pytest.raises(SafetensorsError, match="invalid data_offsets"):
        load_file(p)
    write_raw(p, {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(SafetensorsError, match="invalid shape"):
        load_file(p)
    write_raw(p, {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)
    with pytest.raises(SafetensorsError, match="must have dtype, shape and data_offsets"):
        load_file(p)
    write_raw(p, {"__metadata__": {"step": 3}}, b"")
    with pytest.raises(SafetensorsError, match="__metadata__ must map strings to strings"):
        load_file(p)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(NanoGPT2Error, match="no such file"):
        load_file(tmp_path / "nope.safetensors")
    with pytest.raises(NanoGPT2Error, match="is a directory"):
        read_header(tmp_path)


def test_other_dtypes_round_trip_with_reference(tmp_path):
    from nanogpt2.safetensors_io import DTYPES
    t = {}
    for name, dtype in DTYPES.items():
        x = torch.arange(-3, 3, dtype=torch.float32).reshape(2, 3)   # (2, 3)
        t[name] = (x > 0) if dtype == torch.bool else (x.abs() if not dtype.is_signed and dtype != torch.bool
                                                        else x).to(dtype)
    ref, ours = tmp_path / "ref.safetensors", tmp_path / "ours.safetensors"
    st.save_file(t, str(ref))
    save_file(t, ours)
    assert_same(t, load_file(ref))
    assert_same(t, st.load_file(str(ours)))
    assert ours.read_bytes() == ref.read_bytes()
