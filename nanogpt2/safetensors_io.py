"""
A hand-written reader and writer for the safetensors format (no `safetensors` package needed).

Format (https://github.com/huggingface/safetensors#format):

    [8 bytes]  N, the header length, unsigned 64-bit little-endian
    [N bytes]  a UTF-8 JSON object:
               {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
                "__metadata__": {"<str>": "<str>"}}                      # optional
               padded with spaces so that the data starts at an 8-byte boundary
    [rest]     the tensors' raw little-endian bytes; `data_offsets` count from the first byte after the header

The reader checks everything a damaged or foreign file can get wrong (short file, header past the end,
bad JSON, unknown dtype, offsets past the end of the data, overlapping offsets, a byte count that does not
match the shape) and raises `SafetensorsError` naming the file. The writer mirrors the reference writer
(compact JSON, `__metadata__` first, tensors ordered by dtype alignment then name, space padding) and
replaces the destination atomically.

Usage:
    from nanogpt2.safetensors_io import load_file, save_file, read_header
    save_file({"w": torch.randn(2, 3)}, "x.safetensors", metadata={"format": "pt"})
    sd = load_file("x.safetensors")             # {"w": tensor of shape (2, 3)}
    header, data_start = read_header("x.safetensors")

Tested against the reference library: python -m pytest -q tests/test_safetensors_io.py
"""

import json
import math
import os
import secrets
import struct
import sys
from pathlib import Path

import torch

from .errors import NanoGPT2Error

__all__ = ["SafetensorsError", "load_file", "save_file", "read_header", "DTYPES"]


class SafetensorsError(NanoGPT2Error):
    """A safetensors file that cannot be read, or tensors that cannot be written."""


# ------------------------------------------------------------------------------------------------------------
# dtypes: the format's names <-> torch dtypes

_CANDIDATES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64",
}
# only the dtypes this torch build has (older builds lack uint16/32/64 and float8)
DTYPES: dict[str, torch.dtype] = {k: getattr(torch, v) for k, v in _CANDIDATES.items() if hasattr(torch, v)}
_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

# the reference writer's dtype order (its Rust `Dtype` enum); it writes tensors in descending order of this
_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
          "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
_MAX_HEADER = 100_000_000  # the reference refuses headers larger than this too
_ALIGN = 8


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_host():
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise SafetensorsError("safetensors_io needs a little-endian machine (the format stores little-endian bytes)")


# ------------------------------------------------------------------------------------------------------------
# reading

def _parse_header(path: Path, f, file_size: int) -> tuple[dict, int]:
    """Read and validate the header of the open file `f`; return (header, data_start)."""
    if file_size < 8:
        raise SafetensorsError(
            f"{path}: not a safetensors file: it is {file_size} bytes long, shorter than the 8-byte header "
            f"length (the file is empty or truncated; download or save it again)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER:
        raise SafetensorsError(
            f"{path}: header length {n} is larger than the {_MAX_HEADER}-byte limit: "
            f"this is not a safetensors file, or it is corrupt")
    if 8 + n > file_size:
        raise SafetensorsError(
            f"{path}: the header claims {n} bytes but the file has only {file_size - 8} after the length field: "
            f"the file is truncated or not a safetensors file (download or save it again)")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not valid UTF-8 JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is JSON but not an object; the file is corrupt")

    data_start = 8 + n
    data_len = file_size - data_start
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings, got {meta!r}")

    spans = []  # (begin, end, name)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise SafetensorsError(
                f"{path}: tensor {name!r}: entry must have dtype, shape and data_offsets, got {info!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            known = ", ".join(DTYPES)
            raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r} (supported: {known})")
        if not (isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SafetensorsError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * _itemsize(DTYPES[dtype])
        if end - begin != expected:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {expected} bytes but data_offsets "
                f"{offsets} span {end - begin}; the file is corrupt")
        if end > data_len:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ends at data byte {end} but the file holds only {data_len} bytes of "
                f"data: the file is truncated (download or save it again)")
        spans.append((begin, end, name))

    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise SafetensorsError(
                f"{path}: tensors {n0!r} (bytes {b0}-{e0}) and {n1!r} (bytes {b1}-{e1}) overlap; the file is corrupt")
    return header, data_start


def read_header(path) -> tuple[dict, int]:
    """Return `(header, data_start)`: the validated JSON header (with `__metadata__` when the file has one)
    and the absolute file offset where the tensor data begins (tensor `data_offsets` count from there)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _parse_header(path, f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SafetensorsError(f"{path}: is a directory, expected a .safetensors file") from None


def load_file(path, device="cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file, in file order, onto `device`. Each tensor owns its memory."""
    _check_host()
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise SafetensorsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SafetensorsError(f"{path}: is a directory, expected a .safetensors file") from None
    with f:
        header, data_start = _parse_header(path, f, os.fstat(f.fileno()).st_size)
        entries = sorted((info["data_offsets"][0], name, info)
                         for name, info in header.items() if name != "__metadata__")
        out = {}
        for begin, name, info in entries:
            dtype, shape = DTYPES[info["dtype"]], info["shape"]
            nbytes = info["data_offsets"][1] - begin
            if nbytes == 0:
                t = torch.empty(shape, dtype=dtype)
            else:
                buf = bytearray(nbytes)  # writable, so torch.frombuffer shares it without a warning
                f.seek(data_start + begin)
                if f.readinto(buf) != nbytes:  # the file shrank since the header was checked
                    raise SafetensorsError(f"{path}: tensor {name!r} is cut short: the file is truncated")
                t = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
            out[name] = t if str(device) == "cpu" else t.to(device)
    # the header lists names in any order; return them in header order, like the reference
    return {name: out[name] for name in header if name != "__metadata__"}


# ------------------------------------------------------------------------------------------------------------
# writing

def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (name -> tensor, any device) to `path` as safetensors, atomically.

    Non-contiguous tensors and tensors that share memory (e.g. tied weights) are written as independent
    contiguous copies, so every name loads back as its own tensor (the reference writer refuses shared
    tensors instead). `metadata` must map str to str; it is stored under `__metadata__`.
    """
    _check_host()
    path = Path(path)
    if not isinstance(tensors, dict):
        raise SafetensorsError(
            f"save_file({path}): tensors must be a dict of name -> torch.Tensor, got {type(tensors).__name__}")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise SafetensorsError(
            f"save_file({path}): metadata must map str to str (convert values with str()), got {metadata!r}")
    items = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise SafetensorsError(f"save_file({path}): tensor names must be strings, got {name!r}")
        if name == "__metadata__":
            raise SafetensorsError(f"save_file({path}): '__metadata__' is reserved; pass metadata=... instead")
        if not isinstance(t, torch.Tensor):
            raise SafetensorsError(f"save_file({path}): {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.layout != torch.strided:
            raise SafetensorsError(f"save_file({path}): {name!r} is a {t.layout} tensor; convert it with .to_dense()")
        if t.dtype not in _NAMES:
            raise SafetensorsError(f"save_file({path}): {name!r} has dtype {t.dtype}, which safetensors cannot store")
        items.append((name, t))
    # like the reference: by dtype (wide types first, so every tensor starts aligned), then by name
    items.sort(key=lambda kv: (-_ORDER.index(_NAMES[kv[1].dtype]), kv[0]))

    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)

    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name beside the target (same filesystem, so os.replace is atomic); plain open()
    # so the file gets the usual umask permissions, unlike tempfile.mkstemp's 0600
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, t in items:
                if t.numel():
                    flat = t.detach().to("cpu").contiguous().reshape(-1)   # (numel,)
                    f.write(flat.view(torch.uint8).numpy().data)            # raw bytes, no extra copy
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
