"""
Tests for nanogpt2/tf_checkpoint.py, the hand-written reader of TensorFlow tensor bundles, and for loading OpenAI's
original GPT-2 release layout (GPT.from_pretrained, nanogpt2.loader.load_model, size names downloaded from a
loopback server). No TensorFlow needed.

References: tests/fixtures/openai-gpt2-tiny, written by TensorFlow's own Saver (tf.compat.v1.train.Saver), and its
transformers twin tests/fixtures/openai-gpt2-tiny-hf (same weights, plus logits.npy for input_ids.npy). The damaged
copies are made in tmp_path. A few cases TF's fixture cannot show (float16, two data shards, a compressed block)
use bundles written by `write_bundle` below, a plain-Python writer that follows tensor_bundle.proto and LevelDB's
table_format.md with its own bitwise crc32c (independent of the reader's table-driven one).

Run: python -m pytest -q tests/test_tf_checkpoint.py
"""

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from conftest import FIXTURES, oracle, shared_data
from http_fixture import serve, unused_url
from nanogpt2 import tf_checkpoint as tfc
from nanogpt2.openai_checkpoint import openai_tokenizer_info
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.loader import load_model, load_model_and_tokenizer
from nanogpt2.model import GPT
from nanogpt2.tf_checkpoint import TFCheckpointError, crc32c, load_checkpoint, mask_crc, read_index

TF_DIR = FIXTURES / "openai-gpt2-tiny"
HF_DIR = FIXTURES / "openai-gpt2-tiny-hf"
DATA = "model.ckpt.data-00000-of-00001"


# ----------------------------------------------------------------------------------------------------
# Independent helpers: a bitwise crc32c, varints, a minimal bundle writer


def crc_bitwise(data: bytes) -> int:
    """CRC-32C bit by bit, straight from the definition (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc_bitwise(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int):
    value = shift = 0
    while True:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


def field(num: int, wire: int, payload) -> bytes:
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + struct.pack("<I", payload)
    return key + varint(len(payload)) + payload


def table_block(entries, kind: int = 0) -> bytes:
    """A LevelDB block (no prefix sharing, one restart point) and its trailer."""
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<II", 0, 1)
    return body + bytes([kind]) + struct.pack("<I", masked(body + bytes([kind])))


def write_bundle(prefix, tensors: dict, num_shards: int = 1, kind: int = 0):
    """A tensor bundle of `tensors` ({name: (numpy array, TF DataType id)}), spread round-robin over shards."""
    shards = [bytearray() for _ in range(num_shards)]
    entries = [(b"", field(1, 0, num_shards) + field(3, 2, field(1, 0, 1)))]
    for i, (name, (arr, dtype_id)) in enumerate(sorted(tensors.items())):
        raw, shard = arr.tobytes(), i % num_shards
        shape = b"".join(field(2, 2, field(1, 0, d)) for d in arr.shape)
        value = (field(1, 0, dtype_id) + field(2, 2, shape) + (field(3, 0, shard) if shard else b"")
                 + (field(4, 0, len(shards[shard])) if shards[shard] else b"") + field(5, 0, len(raw))
                 + field(6, 5, masked(raw)))
        entries.append((name.encode(), value))
        shards[shard] += raw
    data = table_block(entries, kind)
    meta = table_block([])
    index = table_block([(b"\xff", varint(0) + varint(len(data) - 5))])
    handles = varint(len(data)) + varint(len(meta) - 5) + varint(len(data) + len(meta)) + varint(len(index) - 5)
    footer = handles.ljust(40, b"\0") + struct.pack("<Q", tfc.MAGIC)
    (prefix.parent / f"{prefix.name}.index").write_bytes(data + meta + index + footer)
    for s, raw in enumerate(shards):
        (prefix.parent / f"{prefix.name}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(raw))


def hf_name(tf_name: str) -> str:
    """OpenAI's name -> transformers' name, written out independently of convert.py."""
    parts = tf_name.split("/")[1:]  # drop "model"
    if parts in (["wte"], ["wpe"]):
        return f"transformer.{parts[0]}.weight"
    if parts[0].startswith("h"):
        parts[0] = "h." + parts[0][1:]
    parts[-1] = {"g": "weight", "b": "bias", "w": "weight"}[parts[-1]]
    return "transformer." + ".".join(parts)


@pytest.fixture
def tf_copy(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(TF_DIR, folder)
    return folder


def reference_logits(model):
    ids = torch.from_numpy(np.load(HF_DIR / "input_ids.npy")).long()
    with torch.no_grad():
        return np.abs(model.eval()(ids)[0].numpy() - np.load(HF_DIR / "logits.npy")).max()


# ----------------------------------------------------------------------------------------------------
# crc32c


def test_crc32c_known_values_and_the_bitwise_definition():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
    assert crc32c(bytes(range(32))) == 0x46DD794E
    rng = np.random.default_rng(0)
    for n in (1, 7, 4095, 4096, 4099, 20_011):  # both sides of the byte-loop / lanes switch
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == crc_bitwise(data), n


def test_crc32c_lanes_agree_with_the_byte_loop_on_large_inputs():
    data = np.random.default_rng(1).integers(0, 256, 3_000_007, dtype=np.uint8)
    whole = crc32c(data)
    assert whole == tfc._bytes_loop(data.tobytes(), 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert crc32c(data[1_234_567:], crc32c(data[:1_234_567])) == whole  # continuing, like zlib.crc32
    assert crc32c(bytearray(data.tobytes())) == whole
    assert tfc.unmask_crc(mask_crc(whole)) == whole


# ----------------------------------------------------------------------------------------------------
# Reading TensorFlow's own checkpoint


def test_index_of_the_tensorflow_fixture():
    header, entries = read_index(TF_DIR / "model.ckpt")
    assert header["num_shards"] == 1 and header["endianness"] == 0
    assert len(entries) == 28  # 2 + 12 per layer + 2 (OpenAI's 124M: 2 + 12 * 12 + 2 = 148)
    e = entries["model/h1/mlp/c_fc/w"]
    assert e.shape == (1, 16, 64) and e.dtype == torch.float32 and e.size == 16 * 64 * 4
    assert entries["model/wte"].shape == (96, 16) and entries["model/wpe"].shape == (32, 16)
    spans = sorted((e.offset, e.offset + e.size) for e in entries.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # back to back
    assert spans[-1][1] == (TF_DIR / DATA).stat().st_size


def test_every_tensor_equals_the_hf_folder():
    hf = oracle("safetensors.torch").load_file(str(HF_DIR / "model.safetensors"))
    tensors = load_checkpoint(TF_DIR)
    assert len(tensors) == len(hf) == 28
    for name, t in tensors.items():
        ref = hf[hf_name(name)]
        assert torch.equal(t[0] if name.endswith("/w") else t, ref), name  # w: [1, in, out] vs Conv1D (in, out)
    assert list(load_checkpoint(TF_DIR / "model.ckpt.index", names=["model/wpe"])) == ["model/wpe"]


def test_from_pretrained_openai_folder_gives_the_reference_logits():
    model = GPT.from_pretrained(TF_DIR)
    assert model.config.vocab_size == 96 and model.config.block_size == 32 and model.config.tie_word_embeddings
    for impl in ("sdpa", "reference"):
        model.set_attn_impl(impl)
        assert reference_logits(model) <= 1e-5
    hf = GPT.from_pretrained(HF_DIR)
    for (n, a), (_, b) in zip(model.state_dict().items(), hf.state_dict().items()):
        assert torch.equal(a, b), n


def tiny_bpe(folder):
    """A small, consistent encoder.json + vocab.bpe: the 256 bytes, one merge ("h" + "e"), <|endoftext|>."""
    from nanogpt2.tokenizer import token_to_str

    encoder = {token_to_str(bytes([b])): b for b in range(256)}
    encoder["he"], encoder["<|endoftext|>"] = 256, 257
    (folder / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "vocab.bpe").write_text("#version: 0.2\nh e\n", encoding="utf-8")


def test_loader_takes_an_openai_folder_with_its_own_tokenizer(tf_copy):
    model, info = load_model(str(TF_DIR))
    assert info["tokenizer"] == {"name": "gpt2"} and "OpenAI" in info["description"]  # no encoder.json here
    assert reference_logits(model) <= 1e-5
    tiny_bpe(tf_copy)
    model, tok, _ = load_model_and_tokenizer(str(tf_copy))
    assert tok.n_vocab == 258 and tok.encode("hehe") == [256, 256] and tok.decode([256, 104]) == "heh"
    assert reference_logits(model) <= 1e-5


def test_openais_own_encoder_json_and_vocab_bpe_are_gpt2s_tokenizer(tf_copy):
    bpe = shared_data("gpt2_bpe")  # OpenAI's files (tiktoken's pinned hashes)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(bpe / name, tf_copy / name)
    assert openai_tokenizer_info(tf_copy) == {"name": "gpt2"}  # by sha256
    lines = (tf_copy / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    (tf_copy / "vocab.bpe").write_text("\n".join(lines[1:]), encoding="utf-8")  # no "#version" line: other bytes
    assert openai_tokenizer_info(tf_copy) == {"name": "gpt2"}  # by the vocabulary's checksum
    _, info = load_model(str(tf_copy))
    assert info["tokenizer"] == {"name": "gpt2"}  # so train.py's tokenizer check accepts it
    tiny_bpe(tf_copy)
    assert openai_tokenizer_info(tf_copy) == {"name": "gpt2", "bpe_dir": str(tf_copy.resolve())}


# ----------------------------------------------------------------------------------------------------
# Damaged copies: one error naming the tensor (where there is one) and the file


def test_truncated_data_file(tf_copy):
    data = tf_copy / DATA
    data.write_bytes(data.read_bytes()[:30_000])
    with pytest.raises(TFCheckpointError, match=rf"{DATA}: tensor 'model/wte' lies at bytes 28416..34560 but the "
                                                rf"file has only 30000 bytes: the data file is truncated"):
        load_checkpoint(tf_copy)
    with pytest.raises(NanoGPT2Error, match="model/wte"):
        GPT.from_pretrained(tf_copy)


def test_flipped_byte_fails_the_crc(tf_copy):
    data = tf_copy / DATA
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0x01  # inside model/h0/attn/c_attn/w (bytes 192..3264)
    data.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=rf"{DATA}: tensor 'model/h0/attn/c_attn/w' fails its crc32c "
                                                rf"check .*the data file is corrupt"):
        load_checkpoint(tf_copy)
    assert load_checkpoint(tf_copy, names=["model/wte"])["model/wte"].shape == (96, 16)  # the others still read


def rewrite_data_block(index_path, change):
    """Apply change(bytearray of the data block) to the index's one data block and fix its crc (a consistent
    index that says something else, e.g. one copied from another checkpoint)."""
    raw = bytearray(index_path.read_bytes())
    footer = raw[-48:]
    _, pos = read_varint(footer, 0)
    _, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, _ = read_varint(footer, pos)
    handle = bytes(raw[index_offset:index_offset + index_size])
    shared, p = read_varint(handle, 0)
    own, p = read_varint(handle, p)
    _, p = read_varint(handle, p)
    offset, p = read_varint(handle, p + own)
    size, _ = read_varint(handle, p)
    block = bytearray(raw[offset:offset + size])
    change(block)
    raw[offset:offset + size] = block
    raw[offset + size + 1:offset + size + 5] = struct.pack("<I", masked(bytes(block) + bytes([raw[offset + size]])))
    index_path.write_bytes(bytes(raw))


def test_index_offset_past_the_end_of_the_data(tf_copy):
    def move_wpe(block):
        at = block.index(b"wpe")
        old = varint(26_368)  # model/wpe's offset (field 4)
        at = block.index(b"\x20" + old, at)
        block[at + 1:at + 1 + len(old)] = varint(40_000)  # the same length: 3 bytes
    rewrite_data_block(tf_copy / "model.ckpt.index", move_wpe)
    assert read_index(tf_copy / "model.ckpt")[1]["model/wpe"].offset == 40_000
    with pytest.raises(TFCheckpointError, match=rf"{DATA}: tensor 'model/wpe' lies at bytes 40000..42048 but the "
                                                rf"file has only 34560 bytes"):
        load_checkpoint(tf_copy)


def test_wrong_magic(tf_copy):
    index = tf_copy / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[-1] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"model.ckpt.index: bad magic number 0x244775248b80fb57 \(a TensorFlow "
                                                r"checkpoint index ends with 0xdb4775248b80fb57\)"):
        load_checkpoint(tf_copy)
    index.write_bytes(b"not a checkpoint")
    with pytest.raises(TFCheckpointError, match=r"model.ckpt.index: 16 bytes is shorter than a table footer"):
        read_index(tf_copy / "model.ckpt")


def test_damaged_index_block_fails_its_crc(tf_copy):
    index = tf_copy / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[raw.index(b"ln_f")] ^= 0x20  # a tensor name, inside the data block
    index.write_bytes(bytes(raw))
    with pytest.raises(TFCheckpointError, match=r"model.ckpt.index: the data block at byte 0 fails its crc32c check"):
        load_checkpoint(tf_copy)


def test_wrong_size_in_an_entry(tf_copy):
    def grow_wte(block):
        at = block.index(b"\x28" + varint(6144), block.index(b"te\x08"))  # model/wte's size (field 5)
        block[at + 1:at + 3] = varint(6148)
    rewrite_data_block(tf_copy / "model.ckpt.index", grow_wte)
    with pytest.raises(TFCheckpointError, match=r"tensor 'model/wte' \(float32, shape \[96, 16\]\) needs 6144 bytes"):
        read_index(tf_copy / "model.ckpt")


def test_missing_pieces_of_the_folder(tf_copy):
    (tf_copy / DATA).unlink()
    with pytest.raises(TFCheckpointError, match=rf"{DATA}: missing data file of the checkpoint"):
        load_checkpoint(tf_copy)
    (tf_copy / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt"\n')
    assert tfc.checkpoint_prefix(tf_copy) == tf_copy / "model.ckpt"  # a moved folder: the local copy is used
    (tf_copy / "model.ckpt.index").unlink()
    with pytest.raises(TFCheckpointError, match=r"names the checkpoint /elsewhere/model.ckpt"):
        load_checkpoint(tf_copy)
    (tf_copy / "checkpoint").unlink()
    with pytest.raises(NanoGPT2Error, match=r"holds no TensorFlow checkpoint \(no \*.index file\)"):
        GPT.from_pretrained(tf_copy)


def test_hparams_that_do_not_fit(tf_copy):
    hparams = tf_copy / "hparams.json"
    good = json.loads(hparams.read_text())
    for change, message in [({"n_head": 5}, r"hparams.json: n_embd \(16\) must be divisible by n_head \(5\)"),
                            ({"n_ctx": "32"}, r"hparams.json: n_ctx='32' must be a positive integer"),
                            ({"n_layer": 3}, r"model.ckpt does not match .*missing tensors \['transformer.h.2."),
                            ({"n_vocab": 97}, r"tensor wte.weight has shape \(96, 16\), expected \(97, 16\)")]:
        hparams.write_text(json.dumps({**good, **change}))
        with pytest.raises(NanoGPT2Error, match=message):
            GPT.from_pretrained(tf_copy)
    hparams.write_text("{")
    with pytest.raises(NanoGPT2Error, match=r"cannot read .*hparams.json"):
        GPT.from_pretrained(tf_copy)


# ----------------------------------------------------------------------------------------------------
# Bundles the fixture does not show: float16, shards, compression, other dtypes


def test_float16_in_two_shards_loads_as_a_gpt(tmp_path):
    tensors = load_checkpoint(TF_DIR)
    half = {n: (t.numpy().astype(np.float16), 19) for n, t in tensors.items()}
    shutil.copy(TF_DIR / "hparams.json", tmp_path / "hparams.json")
    write_bundle(tmp_path / "model.ckpt", half, num_shards=2)
    header, entries = read_index(tmp_path / "model.ckpt")
    assert header["num_shards"] == 2 and {e.shard_id for e in entries.values()} == {0, 1}
    loaded = load_checkpoint(tmp_path)
    for n, (arr, _) in half.items():
        assert loaded[n].dtype == torch.float16 and np.array_equal(loaded[n].numpy(), arr), n
    model = GPT.from_pretrained(tmp_path)  # float16 weights, a float32 model
    wte = model.transformer.wte.weight
    assert wte.dtype == torch.float32 and torch.equal(wte, torch.from_numpy(half["model/wte"][0].astype(np.float32)))
    assert 1e-5 < reference_logits(model) < 0.01  # float16 rounding, nothing worse


def test_compressed_block_and_unsupported_dtypes_are_refused(tmp_path):
    write_bundle(tmp_path / "z", {"a": (np.ones(3, np.float32), 1)}, kind=1)
    with pytest.raises(TFCheckpointError, match=r"z.index: the data block is snappy-compressed; TensorFlow writes"):
        read_index(tmp_path / "z")
    write_bundle(tmp_path / "s", {"a": (np.ones(3, np.float32), 1), "b": (np.zeros(2, np.uint8), 7)})
    assert torch.equal(load_checkpoint(tmp_path / "s", names=["a"])["a"], torch.ones(3))
    with pytest.raises(TFCheckpointError, match=r"s.index: tensor 'b' has dtype string, which this reader does not"):
        load_checkpoint(tmp_path / "s")
    with pytest.raises(TFCheckpointError, match=r"has no tensor 'c'"):
        load_checkpoint(tmp_path / "s", names=["c"])


# ----------------------------------------------------------------------------------------------------
# Size names: OpenAI's URLs, served by a loopback server


def served_release(folder_files: dict, size: str) -> dict:
    return {f"/models/{size}/{name}": data for name, data in folder_files.items()}


def test_size_name_downloads_once_through_the_openai_endpoint(tmp_path, monkeypatch):
    files = {p.name: p.read_bytes() for p in TF_DIR.iterdir() if p.name != "model.ckpt.meta"}
    tiny_bpe(tmp_path)
    files.update({n: (tmp_path / n).read_bytes() for n in ("encoder.json", "vocab.bpe")})
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    with serve(served_release(files, "124M")) as srv:
        monkeypatch.setenv("NANOGPT2_OPENAI_ENDPOINT", srv.base_url + "/")
        model = GPT.from_pretrained("117M")  # the old name of the same release
        assert reference_logits(model) <= 1e-5
        assert sorted(srv.hits) == sorted(f"/models/124M/{n}" for n in files) and set(srv.hits.values()) == {1}
        model, tok, description = load_model_and_tokenizer("124M")  # from the cache: no request
        assert sum(srv.hits.values()) == len(files) and tok.encode("he") == [256] and "124M" in description
    assert (tmp_path / "cache" / "models" / "openai-124M" / DATA).is_file()


def test_size_name_offline_names_the_url_and_the_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "cache"))
    base = unused_url("").rstrip("/")
    monkeypatch.setenv("NANOGPT2_OPENAI_ENDPOINT", base)
    with pytest.raises(NanoGPT2Error, match=rf"{base}/models/355M/checkpoint is unreachable .*into a folder DIR and "
                                            rf"pass DIR instead of '355M'"):
        load_model("345M")
