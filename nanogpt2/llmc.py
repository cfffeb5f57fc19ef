"""
llm.c's files (karpathy/llm.c), read and written without llm.c's code: GPT-2 model files in and out, token shards
in. Every file opens with a header of 256 little-endian int32s; its first is a magic number naming the kind:

    20240326  a model file (train_gpt2.py's write_model; gpt2_124M.bin, gpt2_124M_bf16.bin): header[1] the version
              (3: every tensor float32, 5: bfloat16; both with the vocabulary padded), [2] block size, [3] vocab
              size, [4] layers, [5] heads, [6] width, [7] padded vocab size (a multiple of 128); then the tensors,
              back to back, in llm.c's order (`PARAMS` below: wte (Vp, C) with rows past the vocabulary zero,
              wpe, then each kind of block tensor for every layer in turn, then ln_f), in nn.Linear's (out, in)
              layout. The model is GPT-2's: biases, tanh GELU, LayerNorm epsilon 1e-5, a tied head.
    20240520  a token shard (dev/data/data_common.py's write_datafile; fineweb_train_000001.bin): header[1] = 1,
              [2] the token count; then that many uint16 GPT-2 ids
    20240327 / 20240328 / 20240522 / 20240801  llm.c's debug state, tokenizer, eval file (HellaSwag) and Llama-3
              shards: named in the refusal, not read

In:  `load_model_file(path)` -> (GPT, info): the header and the file size validated before a tensor is read; the
     padding rows dropped (the model is llm.c's PyTorch GPT, vocabulary 50,257, GPT-2's tokenizer).
     `open_shard_folder(path)` -> the shards of a folder as a dataset (nanogpt2/token_files.py): names holding
     `_train` in name order as train, `_val` as validation, memory-mapped, header counts checked against sizes.
Out: `write_model_file(model, path, dtype, vocab_size)` -> a file llm.c's C/CUDA trainer loads (float32 or bfloat16),
     a model with bias=False written with zero biases (the same function).

Docs: docs/conversion.md (llm.c), docs/data.md (llm.c shards). Tests: tests/test_llmc.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from nanogpt2.errors import NanoGPT2Error, write_error
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.token_files import MappedTokens, TokenFileDataset
from nanogpt2.tokenizer import get_tokenizer

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MODEL_MAGIC = 20240326
SHARD_MAGIC, SHARD_VERSION = 20240520, 1
VERSIONS = {3: torch.float32, 5: torch.bfloat16}  # model file version -> the dtype of every tensor
DTYPES = {"float32": 3, "bfloat16": 5}
OTHER_FILES = {20240327: "llm.c's debug state (train_gpt2.py's write_state)", 20240328: "llm.c's tokenizer file",
               20240522: "an llm.c eval file (HellaSwag / MMLU examples)",
               20240801: "an llm.c Llama-3 token shard (uint32 ids; nanogpt2 reads GPT-2's uint16 shards)"}
VOCAB_MULTIPLE = 128  # llm.c pads the vocabulary of its files to this
GPT2_VOCAB = 50257
# Block tensors in file order: each is written for layer 0 .. L-1 before the next one. Shapes in units of C.
BLOCK_PARAMS = (("ln_1.weight", (1,)), ("ln_1.bias", (1,)), ("attn.c_attn.weight", (3, 1)), ("attn.c_attn.bias", (3,)),
                ("attn.c_proj.weight", (1, 1)), ("attn.c_proj.bias", (1,)), ("ln_2.weight", (1,)), ("ln_2.bias", (1,)),
                ("mlp.c_fc.weight", (4, 1)), ("mlp.c_fc.bias", (4,)), ("mlp.c_proj.weight", (1, 4)),
                ("mlp.c_proj.bias", (1,)))
# What llm.c's model is: the GPTConfig fields it fixes (bias: any, written as zeros when absent).
LLMC_FIXED = {"activation": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "layer_norm_epsilon": (1e-5,),
              "n_inner": None, "tie_word_embeddings": (True,), "scale_attn_weights": (True,),
              "scale_attn_by_inverse_layer_idx": (False,)}


def params(n_layer: int, n_embd: int, block_size: int, padded_vocab: int) -> list:
    """[(our tensor name, shape)] of a model file, in the file's order."""
    C = n_embd
    out = [("transformer.wte.weight", (padded_vocab, C)), ("transformer.wpe.weight", (block_size, C))]
    for name, shape in BLOCK_PARAMS:
        out += [(f"transformer.h.{i}.{name}", tuple(k * C for k in shape)) for i in range(n_layer)]
    return out + [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,))]


# ----------------------------------------------------------------------------------------------------
# Headers


def read_header(path) -> np.ndarray | None:
    """The 256 int32 header of a file, or None when it is shorter than a header."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise NanoGPT2Error(f"cannot read {path}: {e.strerror or e}") from None
    return np.frombuffer(raw, dtype="<i4") if len(raw) == HEADER_BYTES else None


def magic(path):
    """The magic number of an llm.c file (any kind this module knows), else None."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size < HEADER_BYTES:
        return None
    m = int(read_header(p)[0])
    return m if m in (MODEL_MAGIC, SHARD_MAGIC, *OTHER_FILES) else None


# ----------------------------------------------------------------------------------------------------
# Model files in


def _model_header(path: Path, header: np.ndarray) -> tuple:
    """(GPTConfig, padded vocab, torch dtype) of a model file's header, validated with the file's size."""
    if int(header[0]) != MODEL_MAGIC:
        what = OTHER_FILES.get(int(header[0])) or ("an llm.c token shard" if int(header[0]) == SHARD_MAGIC else None)
        raise NanoGPT2Error(f"{path} is {what}, not a model file; give a model file (gpt2_124M.bin) as init_from"
                            if what else f"{path} is not an llm.c model file (magic {int(header[0])})")
    version = int(header[1])
    if version not in VERSIONS:
        raise NanoGPT2Error(f"{path}: llm.c model file version {version} is not supported (3: float32, 5: bfloat16, "
                            f"as llm.c's train_gpt2.py writes them); re-export it with a current llm.c")
    block, vocab, n_layer, n_head, n_embd, padded = (int(v) for v in header[2:8])
    if min(block, vocab, n_layer, n_head, n_embd) < 1 or padded < vocab or n_embd % n_head:
        raise NanoGPT2Error(f"{path}: the header is damaged (block size {block}, vocab {vocab} padded to {padded}, "
                            f"{n_layer} layers, {n_head} heads, width {n_embd})")
    dtype = VERSIONS[version]
    n_params = sum(int(np.prod(s)) for _, s in params(n_layer, n_embd, block, padded))
    want, size = HEADER_BYTES + n_params * dtype.itemsize, path.stat().st_size
    if size != want:
        raise NanoGPT2Error(f"{path} is damaged: {size:,} bytes, but its header ({n_layer} layers, width {n_embd}, "
                            f"vocab {padded}, block {block}, {dtype}) needs {want:,}; copy or export it again")
    config = GPTConfig(block_size=block, vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=n_embd, bias=True)
    return config, padded, dtype


def read_model_file(path) -> tuple:
    """(GPTConfig, state dict of float32 tensors under our names, "float32" or "bfloat16") of an llm.c model file;
    the vocabulary's padding rows are dropped (bfloat16 files widened exactly to float32)."""
    path = Path(path)
    header = read_header(path)
    if header is None:
        raise NanoGPT2Error(f"{path} is shorter than an llm.c header ({HEADER_BYTES} bytes): not a model file")
    config, padded, dtype = _model_header(path, header)
    raw = np.memmap(path, dtype=np.int16 if dtype == torch.bfloat16 else np.float32, mode="r", offset=HEADER_BYTES)
    state, at = {}, 0
    for name, shape in params(config.n_layer, config.n_embd, config.block_size, padded):
        n = int(np.prod(shape))
        t = torch.from_numpy(np.array(raw[at:at + n]))  # a copy: the map closes with the file
        state[name] = (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).float().view(shape)
        at += n
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:config.vocab_size]
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
    return config, state, str(dtype).removeprefix("torch.")


def load_model_file(path) -> tuple:
    """(GPT, info) from an llm.c model file; info: path, tokenizer (GPT-2's), format, dtype, description."""
    config, state, dtype = read_model_file(path)
    if config.vocab_size != GPT2_VOCAB:
        raise NanoGPT2Error(f"{path} has a vocabulary of {config.vocab_size} ids; llm.c model files record no "
                            f"tokenizer, and nanogpt2 reads those of GPT-2's {GPT2_VOCAB:,}")
    model = GPT(config)
    model.load_state_dict(state)
    info = {"path": str(path), "tokenizer": {"name": "gpt2"}, "format": "llmc", "dtype": dtype,
            "description": f"{path} (llm.c model file, {dtype})"}
    return model, info


# ----------------------------------------------------------------------------------------------------
# Model files out


def check_exportable(config: GPTConfig) -> None:
    """Refuse, naming the field, a GPT that llm.c's model cannot express."""
    bad = []
    for field, allowed in LLMC_FIXED.items():
        v = getattr(config, field)
        if field == "n_inner":
            if v not in (None, 4 * config.n_embd):
                bad.append(f"n_inner={v} (llm.c: 4 * n_embd = {4 * config.n_embd})")
        elif v not in allowed:
            bad.append(f"{field}={v!r} (llm.c: {allowed[0]!r})")
    if bad:
        raise NanoGPT2Error(f"llm.c's GPT-2 cannot express this model: {', '.join(bad)}; keep it as a nanogpt2 "
                            f"checkpoint or an HF folder")


def _file_tensors(model: GPT, padded: int) -> list:
    """[(name, tensor)] of the file in order: wte padded with zero rows to `padded`, absent biases as zeros."""
    cfg, state = model.config, model.state_dict()
    out = []
    for name, shape in params(cfg.n_layer, cfg.n_embd, cfg.block_size, padded):
        t = state.get(name)
        if t is None and name.endswith(".bias"):
            t = torch.zeros(shape)  # bias=False: a zero bias is the same function
        t = t.detach().float().cpu()
        if name == "transformer.wte.weight":
            t = torch.cat([t, t.new_zeros(padded - t.shape[0], t.shape[1])])  # (Vp, C)
        out.append((name, t.reshape(shape)))
    return out


def write_model_file(model: GPT, path, dtype: str = "float32", vocab_size: int | None = None) -> Path:
    """Write `model` as an llm.c model file (version 3 float32 or 5 bfloat16) at `path`, a new file: written
    beside it under a temporary name and renamed into place. `vocab_size`: the header's vocabulary (the
    tokenizer's, e.g. 50257 for a model padded to 50304 here); None: the model's."""
    if dtype not in DTYPES:
        raise NanoGPT2Error(f"llm.c model files hold float32 or bfloat16 tensors, not {dtype!r}")
    cfg = model.config
    check_exportable(cfg)
    vocab = min(vocab_size or cfg.vocab_size, cfg.vocab_size)
    padded = -(-cfg.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, DTYPES[dtype], cfg.block_size, vocab, cfg.n_layer, cfg.n_head, cfg.n_embd, padded]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            for _, t in _file_tensors(model, padded):
                t = t.to(torch.bfloat16).view(torch.int16) if dtype == "bfloat16" else t
                f.write(t.contiguous().numpy().tobytes())
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(e, f"the llm.c model file {path}", path.parent, any_os_error=True,
                          fix="free some space or choose another DST") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------
# Token shards


def shard_tokens(path: Path) -> int:
    """The token count of a GPT-2 token shard, its header checked against the file's size."""
    header = read_header(path)
    if header is None or int(header[0]) != SHARD_MAGIC:
        raise NanoGPT2Error(f"{path} is not an llm.c token shard")
    version, n = int(header[1]), int(header[2])
    if version != SHARD_VERSION:
        raise NanoGPT2Error(f"{path}: llm.c shard version {version} is not supported (1: GPT-2 uint16 ids)")
    size = path.stat().st_size
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise NanoGPT2Error(f"{path} is damaged: its header says {n:,} tokens ({HEADER_BYTES + 2 * max(n, 0):,} "
                            f"bytes) but the file has {size:,} bytes; write the shard again")
    return n


def open_shard_folder(path):
    """A folder of llm.c GPT-2 token shards as a dataset (train: the names holding `_train`, in name order; val:
    `_val`), memory-mapped as they are; None when `path` holds no shard."""
    p = Path(path)
    files = sorted(f for f in p.glob("*.bin") if f.is_file()) if p.is_dir() else []
    kinds = {f: magic(f) for f in files}
    llama = [f for f, m in kinds.items() if m == 20240801]
    shards = [f for f, m in kinds.items() if m == SHARD_MAGIC]
    if not shards:
        if llama:
            raise NanoGPT2Error(f"{llama[0]} is {OTHER_FILES[20240801]}")
        return None
    tok = get_tokenizer("gpt2")
    splits = {}
    for split in ("train", "val"):
        mine = [f for f in shards if re.search(rf"_{split}", f.name)]
        if not mine:
            raise NanoGPT2Error(f"{p} holds llm.c token shards but none with '_{split}' in its name (e.g. "
                                f"fineweb_{split}_000001.bin): name the {split} shards so")
        splits[split] = MappedTokens([(f, HEADER_BYTES, shard_tokens(f)) for f in mine], np.uint16, tok.n_vocab)
    return TokenFileDataset(p, "llm.c token shards", splits, tok)
