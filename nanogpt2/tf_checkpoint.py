"""
A hand-written reader of TensorFlow's tensor-bundle V2 checkpoints (no `tensorflow` needed): what OpenAI's
original GPT-2 release ships as `model.ckpt.index` + `model.ckpt.data-00000-of-00001`. The twin of
safetensors_io.py; the GPT-2 names and shapes are mapped in convert.py.

A checkpoint `PREFIX` (e.g. `model.ckpt`) is:

    PREFIX.index                       a LevelDB-format table (an SSTable): sorted key -> value
    PREFIX.data-00000-of-0000N         N data shards: the tensors' raw bytes, back to back

The table (LevelDB `doc/table_format.md`; TF's copy is `tensorflow/tsl/lib/io/table*`):

    [data block]* [metaindex block] [index block] [footer: 48 bytes]
    footer   = metaindex BlockHandle, index BlockHandle (each: varint64 offset, varint64 size), zero padding
               to 40 bytes, then the magic 0xdb4775248b80fb57 as a fixed64 (little-endian)
    block    = entries, then restart offsets (uint32 each) and their count (uint32); then a 5-byte trailer:
               compression type (1 byte: 0 none, 1 snappy) and the masked crc32c of contents + type byte
    entry    = varint32 shared, varint32 non_shared, varint32 value_length, key[shared:] bytes, value bytes
               (a key is the previous key's first `shared` bytes plus its own `non_shared` bytes)
    the index block maps a separator key (>= every key of a data block) to that block's BlockHandle.

The keys are tensor names; the empty key holds a `BundleHeaderProto`, every other value a serialized
`BundleEntryProto` (TF `tensorflow/core/protobuf/tensor_bundle.proto`):

    BundleHeaderProto  num_shards = 1 (int32), endianness = 2 (0 little, 1 big), version = 3 (VersionDef:
                       producer = 1, min_consumer = 2, bad_consumers = 3)
    BundleEntryProto   dtype = 1 (DataType enum: 1 float32, 19 float16, ...), shape = 2 (TensorShapeProto:
                       repeated dim = 2 {size = 1, name = 2}), shard_id = 3, offset = 4, size = 5 (bytes in
                       the shard), crc32c = 6 (fixed32: the *masked* crc32c of those bytes), slices = 7
                       (partitioned variables; not supported)

The few protobuf fields are decoded by hand (varints, wire types 0/1/2/5). Every tensor's bytes are checked
against their crc32c (Castagnoli), implemented below: a table-driven byte loop for small inputs, and for
large ones slicing-by-4 run on many independent lanes at once with numpy, the lanes' CRCs then combined with
the CRC's linearity (a shift by n zero bytes is a 32x32 matrix over GF(2)), a few hundred MB/s on one core.
CRC masking (LevelDB / TF `crc32c::Mask`): rotate right by 15 bits, add 0xa282ead8.

Every problem a damaged or foreign checkpoint can have is a `TFCheckpointError` (a NanoGPT2Error) naming the
file and, when it concerns one, the tensor: a bad magic, a truncated index or data file, an entry pointing
past the end of its shard, a crc mismatch, a compressed block, an unsupported dtype.

    from nanogpt2.tf_checkpoint import load_checkpoint, read_index
    tensors = load_checkpoint("gpt2/124M")                    # a folder with `checkpoint`, or a PREFIX
    header, entries = read_index("gpt2/124M/model.ckpt")    # names, dtypes, shapes: no data read

Tested against checkpoints written by TensorFlow's own Saver: python -m pytest -q tests/test_tf_checkpoint.py
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt2.errors import NanoGPT2Error
from nanogpt2.progress import ProgressLine

__all__ = ["TFCheckpointError", "TensorEntry", "crc32c", "mask_crc", "unmask_crc", "checkpoint_prefix",
           "read_index", "load_checkpoint", "MAGIC"]


class TFCheckpointError(NanoGPT2Error):
    """A TensorFlow checkpoint that cannot be read: damaged, truncated, or of a kind this reader does not support."""


# ----------------------------------------------------------------------------------------------------
# crc32c (Castagnoli), table-driven

_POLY = 0x82F63B78  # the Castagnoli polynomial 0x1EDC6F41, bit-reflected
_MASK_DELTA = 0xA282EAD8
_SMALL = 1 << 12  # below this many bytes the plain byte loop is faster than numpy's per-call overhead


def _tables() -> np.ndarray:
    """(4, 256) uint32: T[0] the byte table; T[k][i] = T[0] applied k more times (slicing-by-4)."""
    t = np.zeros((4, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        t[0, i] = c
    for k in range(1, 4):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


_T = _tables()
_T0 = [int(x) for x in _T[0]]  # a Python list: faster than numpy scalars in the byte loop


def _bytes_loop(buf, state: int) -> int:
    """The CRC register after feeding `buf` byte by byte (no pre/post inversion here)."""
    for b in buf:
        state = (state >> 8) ^ _T0[(state ^ b) & 0xFF]
    return state


def _apply(mat: list, v: int) -> int:
    """A GF(2) 32x32 matrix (its 32 columns as ints) times the bit vector v."""
    out, j = 0, 0
    while v:
        if v & 1:
            out ^= mat[j]
        v >>= 1
        j += 1
    return out


def _compose(a: list, b: list) -> list:
    """The matrix a @ b (first b, then a)."""
    return [_apply(a, col) for col in b]


# _POW[k]: the register after 2**k zero bytes, as a matrix (the CRC is linear over GF(2) in its register)
_POW = [[_bytes_loop(b"\0", 1 << j) for j in range(32)]]
for _ in range(63):
    _POW.append(_compose(_POW[-1], _POW[-1]))


def _shift(state: int, nbytes: int) -> int:
    """The register `state` after `nbytes` zero bytes (O(log n) matrix products)."""
    return _apply(_matrix_for(nbytes), state)


def _matrix_for(nbytes: int) -> list:
    """The matrix of a shift by `nbytes` zero bytes."""
    mat = [1 << j for j in range(32)]
    k = 0
    while nbytes:
        if nbytes & 1:
            mat = _compose(_POW[k], mat)
        nbytes >>= 1
        k += 1
    return mat


def _byte_tables(mat: list) -> np.ndarray:
    """(4, 256) uint32 tables so that mat @ v = T[0][v & 255] ^ T[1][v >> 8 & 255] ^ ... (for whole arrays)."""
    out = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        t = np.zeros(1, dtype=np.uint32)
        for bit in range(8):
            t = np.concatenate([t, t ^ np.uint32(mat[8 * k + bit])])  # index bit `bit` set: add that column
        out[k] = t
    return out


def _apply_many(tables: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (tables[0][v & 0xFF] ^ tables[1][(v >> 8) & 0xFF] ^ tables[2][(v >> 16) & 0xFF]
            ^ tables[3][v >> 24])


def _register(buf: np.ndarray) -> int:
    """The CRC register, from 0, after `buf` (uint8). Large inputs: L lanes (contiguous stretches of W 4-byte
    words) advance together, one word each per step (slicing-by-4, every step a few numpy calls over L
    values); the lanes' registers are then combined, and the < 4L bytes left over follow."""
    n = buf.size
    if n < _SMALL:
        return _bytes_loop(buf.tobytes(), 0)
    lanes = 1 << min(14, (n // 256).bit_length() - 1)  # each lane >= 64 words; 16384 lanes: ~L2-cache sized steps
    words = n // (4 * lanes)
    bulk = 4 * lanes * words
    w = buf[:bulk].view("<u4").reshape(lanes, words)  # (L, W): lane j is row j; read column by column
    t0, t1, t2, t3 = _T
    s = np.zeros(lanes, dtype=np.uint32)  # (L,) the lanes' registers
    low = s.view(np.uint8).reshape(lanes, 4)  # (L, 4) their bytes, low byte first (a little-endian host)
    acc, tmp = np.empty_like(s), np.empty_like(s)
    for i in range(words):
        np.bitwise_xor(s, w[:, i], out=s)
        np.take(t3, low[:, 0], out=acc)
        np.take(t2, low[:, 1], out=tmp)
        acc ^= tmp
        np.take(t1, low[:, 2], out=tmp)
        acc ^= tmp
        np.take(t0, low[:, 3], out=tmp)
        np.bitwise_xor(acc, tmp, out=s)
    # combine neighbours: reg(A || B) = shift(reg(A), len(B)) ^ reg(B); the lane length doubles each round
    mat = _matrix_for(4 * words)
    while s.size > 1:
        s = _apply_many(_byte_tables(mat), s[0::2]) ^ s[1::2]  # (L / 2,)
        mat = _compose(mat, mat)
    tail = buf[bulk:]
    return _shift(int(s[0]), tail.size) ^ _register(tail)


def crc32c(data, crc: int = 0) -> int:
    """The CRC-32C of `data` (bytes-like or a uint8 array), continuing from `crc` (the CRC of what came
    before): crc32c(b, crc32c(a)) == crc32c(a + b). crc32c(b"123456789") == 0xE3069283."""
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1).view(np.uint8)
    state = crc ^ 0xFFFFFFFF
    if buf.size < _SMALL:
        return _bytes_loop(buf.tobytes(), state) ^ 0xFFFFFFFF
    return (_shift(state, buf.size) ^ _register(buf)) ^ 0xFFFFFFFF  # reg(S || buf) = shift(S, len) ^ reg(buf)


def mask_crc(crc: int) -> int:
    """LevelDB / TF's stored form of a CRC (a CRC of data that holds CRCs is then still meaningful)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------
# Varints and the few protobuf fields


class _Corrupt(Exception):
    """Internal: bytes that do not parse; the caller turns it into a TFCheckpointError naming the file."""


def _varint(buf: bytes, pos: int, limit: int | None = None) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at buf[pos] (at most 10 bytes: 64 bits)."""
    limit = len(buf) if limit is None else limit
    value = shift = 0
    for i in range(10):
        if pos + i >= limit:
            raise _Corrupt(f"a varint runs past the end (byte {pos})")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos + i + 1
        shift += 7
    raise _Corrupt(f"a varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes):
    """Yield (field number, value) of a serialized protobuf message: ints for varint and fixed fields, bytes
    for length-delimited ones (wire types 0, 1, 2, 5; groups, long deprecated, are refused)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise _Corrupt(f"field {field} runs past the end of its message")
            value, pos = int.from_bytes(buf[pos:pos + n], "little"), pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _Corrupt(f"field {field} ({n} bytes) runs past the end of its message")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise _Corrupt(f"field {field} has wire type {wire}, which no bundle message uses")
        yield field, value


def _int64(v: int) -> int:
    """A varint read as int64 (negative numbers are sent as 10-byte two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


# ----------------------------------------------------------------------------------------------------
# The LevelDB table: footer, blocks, entries

MAGIC = 0xDB4775248B80FB57  # the table's last 8 bytes, little-endian
_FOOTER = 48  # two BlockHandles (up to 20 bytes each) padded to 40, then the magic
_TRAILER = 5  # a block's compression type (1 byte) and masked crc32c (4 bytes)


def _block_handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    """(offset, size, position after) of a BlockHandle: two varint64s."""
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int, path: Path, what: str) -> bytes:
    """The contents of the block at `offset` (crc checked, compression refused)."""
    if offset + size + _TRAILER > len(table) - _FOOTER:
        raise TFCheckpointError(f"{path}: the {what} (bytes {offset}..{offset + size + _TRAILER}) runs past the end "
                                f"of the file ({len(table)} bytes): the index file is truncated or corrupt; copy or "
                                f"download the checkpoint again")
    contents = table[offset:offset + size]
    kind = table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    crc = crc32c(table[offset:offset + size + 1])  # the contents and the type byte
    if unmask_crc(stored) != crc:
        raise TFCheckpointError(f"{path}: the {what} at byte {offset} fails its crc32c check (stored "
                                f"0x{unmask_crc(stored):08x}, computed 0x{crc:08x}): the index file is corrupt; "
                                f"copy or download the checkpoint again")
    if kind != 0:
        name = {1: "snappy", 2: "zstd"}.get(kind, f"type {kind}")
        raise TFCheckpointError(f"{path}: the {what} is {name}-compressed; TensorFlow writes checkpoint indexes "
                                f"uncompressed and this reader does not decompress. Re-save the checkpoint with "
                                f"TensorFlow's Saver (tf.compat.v1.train.Saver) or convert it where it was made")
    return contents


def _block_entries(block: bytes):
    """Yield (key, value) of a block's entries (keys rebuilt from their shared prefixes)."""
    if len(block) < 4:
        raise _Corrupt("a block shorter than its restart count")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts  # where the entries stop and the restart offsets begin
    if end < 0:
        raise _Corrupt(f"a block claims {restarts} restart points, more than fit in its {len(block)} bytes")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, end)
        own, pos = _varint(block, pos, end)
        size, pos = _varint(block, pos, end)
        if shared > len(key) or pos + own + size > end:
            raise _Corrupt(f"an entry at byte {pos} of a block runs past the block's end")
        key = key[:shared] + bytes(block[pos:pos + own])
        yield key, bytes(block[pos + own:pos + own + size])
        pos += own + size


def read_table(path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table file, in key order."""
    path = Path(path)
    try:
        table = path.read_bytes()
    except FileNotFoundError:
        raise TFCheckpointError(f"{path}: no such file (a TensorFlow checkpoint index, *.index)") from None
    except OSError as e:
        raise TFCheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if len(table) < _FOOTER:
        raise TFCheckpointError(f"{path}: {len(table)} bytes is shorter than a table footer ({_FOOTER} bytes): the "
                                f"index file is empty or truncated; copy or download the checkpoint again")
    (magic,) = struct.unpack_from("<Q", table, len(table) - 8)
    if magic != MAGIC:
        raise TFCheckpointError(f"{path}: bad magic number 0x{magic:016x} (a TensorFlow checkpoint index ends with "
                                f"0x{MAGIC:016x}): this is not a tensor-bundle index, or it is truncated or corrupt")
    out = []
    try:
        footer = table[len(table) - _FOOTER:]
        _, _, pos = _block_handle(footer)  # the metaindex block: filters, which TF bundles do not have
        index_offset, index_size, _ = _block_handle(footer, pos)
        index = _read_block(table, index_offset, index_size, path, "index block")
        for _, handle in _block_entries(index):
            offset, size, _ = _block_handle(handle)
            out.extend(_block_entries(_read_block(table, offset, size, path, "data block")))
    except _Corrupt as e:
        raise TFCheckpointError(f"{path}: the index file is corrupt ({e}); copy or download the checkpoint "
                                f"again") from None
    return out


# ----------------------------------------------------------------------------------------------------
# The bundle: header and entries

# TF's DataType enum (tensorflow/core/framework/types.proto) -> torch, for the fixed-size types
DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
          9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 19: torch.float16}
_OTHER_DTYPES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


@dataclass
class TensorEntry:
    """One tensor of a bundle, as its BundleEntryProto describes it (masked crc32c as stored)."""
    name: str
    dtype_id: int
    shape: tuple
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None
    sliced: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.dtype_id)

    def dtype_name(self) -> str:
        t = self.dtype
        if t is not None:
            return str(t).removeprefix("torch.")
        return _OTHER_DTYPES.get(self.dtype_id, f"DataType {self.dtype_id}")


def _parse_shape(buf: bytes) -> tuple:
    dims = []
    for field, value in _fields(buf):
        if field == 2:  # dim {size = 1, name = 2}
            size = next((_int64(v) for f, v in _fields(value) if f == 1), 0)
            dims.append(size)
        elif field == 3 and value:
            raise _Corrupt("a shape of unknown rank")
    if any(d < 0 for d in dims):
        raise _Corrupt(f"a shape with an unknown dimension {dims}")
    return tuple(dims)


def _parse_entry(name: str, value: bytes) -> TensorEntry:
    e = TensorEntry(name, 0, ())
    for field, v in _fields(value):
        if field == 1:
            e.dtype_id = v
        elif field == 2:
            e.shape = _parse_shape(v)
        elif field == 3:
            e.shard_id = v
        elif field == 4:
            e.offset = _int64(v)
        elif field == 5:
            e.size = _int64(v)
        elif field == 6:
            e.crc32c = v
        elif field == 7:
            e.sliced = True
    return e


def _parse_header(value: bytes) -> dict:
    header = {"num_shards": 0, "endianness": 0, "version": {}}
    for field, v in _fields(value):
        if field == 1:
            header["num_shards"] = v
        elif field == 2:
            header["endianness"] = v
        elif field == 3:
            names = {1: "producer", 2: "min_consumer"}
            header["version"] = {names[f]: x for f, x in _fields(v) if f in names}
    return header


def _check_entry(e: TensorEntry, header: dict, path: Path) -> None:
    where = f"{path}: tensor {e.name!r}"
    if e.shard_id >= header["num_shards"]:
        raise TFCheckpointError(f"{where} is in data shard {e.shard_id}, but the checkpoint has "
                                f"{header['num_shards']} shard(s): the index file is corrupt")
    if e.offset < 0 or e.size < 0:
        raise TFCheckpointError(f"{where} has a negative offset or size: the index file is corrupt")
    if e.dtype is not None and not e.sliced:
        need = math.prod(e.shape) * torch.empty((), dtype=e.dtype).element_size()
        if e.size != need:
            raise TFCheckpointError(f"{where} ({e.dtype_name()}, shape {list(e.shape)}) needs {need} bytes but its "
                                    f"entry says {e.size}: the index file is corrupt")


def read_index(prefix) -> tuple[dict, dict[str, TensorEntry]]:
    """(header, {name: TensorEntry}) of the bundle `prefix` (reads PREFIX.index only). header: num_shards,
    endianness (0 little), version {producer, min_consumer}."""
    path = Path(str(prefix) + ".index")
    pairs = read_table(path)
    header, entries = None, {}
    try:
        for key, value in pairs:
            if key == b"":
                header = _parse_header(value)
            else:
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
    except (_Corrupt, UnicodeDecodeError) as e:
        raise TFCheckpointError(f"{path}: an entry is corrupt ({e}); copy or download the checkpoint again") from None
    if header is None:
        raise TFCheckpointError(f"{path}: no bundle header (the entry with the empty key): this table is not a "
                                f"TensorFlow checkpoint index")
    if header["endianness"] != 0:
        raise TFCheckpointError(f"{path}: the checkpoint was written on a big-endian machine; this reader reads "
                                f"little-endian bundles only: re-save it on a little-endian machine")
    if header["version"].get("min_consumer", 0) > 1:
        raise TFCheckpointError(f"{path}: the bundle needs a reader of version {header['version']['min_consumer']} "
                                f"or newer (this one reads version 1): it was written by a newer TensorFlow")
    for e in entries.values():
        _check_entry(e, header, path)
    return header, entries


# ----------------------------------------------------------------------------------------------------
# Finding a checkpoint, loading its tensors


def checkpoint_prefix(path) -> Path:
    """The bundle prefix of a folder (its `checkpoint` file's model_checkpoint_path, else its one *.index),
    of a PREFIX.index file, or of a PREFIX itself."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
            if m:
                prefix = path / re.sub(r"\\(.)", r"\1", m.group(1))  # unescaped; an absolute path stays absolute
                if Path(str(prefix) + ".index").is_file():
                    return prefix
                local = path / prefix.name  # a folder copied from elsewhere: its absolute path is stale
                if Path(str(local) + ".index").is_file():
                    return local
                raise TFCheckpointError(f"{state} names the checkpoint {prefix}, but {prefix}.index does not exist; "
                                        f"copy the whole checkpoint folder")
        found = sorted(path.glob("*.index"))
        if len(found) == 1:
            return found[0].with_suffix("")
        if not found:
            raise TFCheckpointError(f"{path} holds no TensorFlow checkpoint (no *.index file)")
        raise TFCheckpointError(f"{path} holds several checkpoints ({', '.join(p.name for p in found)}) and no "
                                f"`checkpoint` file saying which; pass one PREFIX (e.g. {found[-1].with_suffix('')})")
    if path.suffix == ".index":
        return path.with_suffix("")
    if Path(str(path) + ".index").is_file():
        return path
    raise TFCheckpointError(f"{path} is not a TensorFlow checkpoint: no folder, no {path}.index")


def shard_path(prefix, shard_id: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


def _read_tensor(f, e: TensorEntry, path: Path) -> torch.Tensor:
    """Read, crc-check and shape one tensor from the open data shard `f`."""
    buf = bytearray(e.size)  # writable: torch.frombuffer shares it without a warning
    f.seek(e.offset)
    if f.readinto(buf) != e.size:
        raise TFCheckpointError(f"{path}: tensor {e.name!r} is cut short: the data file is truncated; copy or "
                                f"download the checkpoint again")
    if e.crc32c is not None:
        crc = crc32c(buf)
        if mask_crc(crc) != e.crc32c:
            raise TFCheckpointError(f"{path}: tensor {e.name!r} fails its crc32c check (stored "
                                    f"0x{unmask_crc(e.crc32c):08x}, computed 0x{crc:08x}): the data file is "
                                    f"corrupt; copy or download the checkpoint again")
    if e.size == 0:
        return torch.empty(e.shape, dtype=e.dtype)
    return torch.frombuffer(buf, dtype=torch.uint8).view(e.dtype).reshape(e.shape)


def load_checkpoint(path, names=None, quiet: bool = True) -> dict[str, torch.Tensor]:
    """{name: tensor} of a TensorFlow checkpoint (a folder, a PREFIX or PREFIX.index), every tensor checked
    against its crc32c. `names`: only these (others are not read). `quiet=False`: a progress line on stderr."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise TFCheckpointError("tf_checkpoint needs a little-endian machine")
    prefix = checkpoint_prefix(path)
    header, entries = read_index(prefix)
    if names is not None:
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise TFCheckpointError(f"{prefix}.index has no tensor {unknown[0]!r}"
                                    + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        entries = {n: entries[n] for n in names}
    by_shard: dict[int, list] = {}
    for e in entries.values():
        if e.sliced:
            raise TFCheckpointError(f"{prefix}.index: tensor {e.name!r} is a partitioned variable (saved in slices), "
                                    f"which this reader does not support")
        if e.dtype is None:
            known = ", ".join(str(t).removeprefix("torch.") for t in DTYPES.values())
            raise TFCheckpointError(f"{prefix}.index: tensor {e.name!r} has dtype {e.dtype_name()}, which this "
                                    f"reader does not support (only fixed-size numbers: {known})")
        by_shard.setdefault(e.shard_id, []).append(e)
    total = sum(e.size for e in entries.values())
    progress, done = ProgressLine(f"reading {prefix.name}", quiet), 0
    out = {}
    try:
        for shard, group in sorted(by_shard.items()):
            data = shard_path(prefix, shard, header["num_shards"])
            _check_shard(data, group, prefix)
            with open(data, "rb") as f:
                for e in sorted(group, key=lambda e: e.offset):
                    out[e.name] = _read_tensor(f, e, data)
                    done += e.size
                    progress.update(done, total)
        if time.monotonic() - progress.t0 >= progress.interval:  # a line was (or could have been) drawn: finish it
            progress.update(done, total, final=True)
    finally:
        progress.close()
    return {n: out[n] for n in entries}  # index (name) order


def _check_shard(data: Path, group: list, prefix) -> None:
    """Every entry of `group` lies inside the data file (checked before reading any)."""
    try:
        size = os.stat(data).st_size
    except FileNotFoundError:
        raise TFCheckpointError(f"{data}: missing data file of the checkpoint {prefix} (tensor {group[0].name!r} is "
                                f"in it); copy the whole checkpoint folder") from None
    e = max(group, key=lambda e: e.offset + e.size)  # the entry reaching furthest
    if e.offset + e.size > size:
        raise TFCheckpointError(
            f"{data}: tensor {e.name!r} lies at bytes {e.offset}..{e.offset + e.size} but the file has only "
            f"{size} bytes: the data file is truncated (or the index belongs to another checkpoint); copy or "
            f"download the checkpoint again")
