"""
nanoGPT's files (karpathy/nanoGPT), read and written without nanoGPT's code and without ever unpickling:

    out-*/ckpt.pt       what nanoGPT's train.py saves: a torch.save dict of `model` (the state dict, keys prefixed
                        `_orig_mod.` when the model was torch.compile'd), `model_args` (n_layer, n_head, n_embd,
                        block_size, bias, vocab_size, dropout: nanoGPT's GPTConfig), `iter_num`, `best_val_loss`,
                        `optimizer`, `config` (the run's settings; informational, e.g. its `dataset`)
    data/<name>/meta.pkl  a character model's vocabulary (`vocab_size`, `stoi`, `itos`), from its prepare.py; a
                        pickle, so it is read by a restricted unpickler that admits dict, list, str and int only
    data/<name>/train.bin, val.bin  raw uint16 token ids, back to back (no header)

nanoGPT's model is this project's GPT with the exact GELU (`nn.GELU()`, activation "gelu"), LayerNorm epsilon
1e-5, a tied head and optional biases (`bias=False`): `model_args` maps onto GPTConfig one to one.

In:  `load_checkpoint_model(path, meta_pkl=None)` -> (GPT, info) for a ckpt.pt or its run folder (what
     nanogpt2.loader calls for such an init_from); the tokenizer is the meta.pkl found beside the checkpoint, in
     the data folder its `config['dataset']` names (data/<dataset>/ under the working folder or beside the run
     folder, as nanoGPT's sample.py looks), or `meta_pkl`; without one, GPT-2's BPE (for a vocabulary of at
     least 50,257 ids; nanoGPT pads it to 50304).
     `open_data_folder(path)` -> the train.bin / val.bin of a prepared data folder, memory-mapped as they are
     (nanogpt2/token_files.py; what nanogpt2.data.prepare_dataset returns for such a `dataset=`).
Out: `write_checkpoint(model, tokenizer, out_dir, dataset, ...)` -> out_dir/ckpt.pt (+ meta.pkl for a character
     model), what nanoGPT's `sample.py --init_from=resume --out_dir=DIR` loads (`convert --to nanogpt`).

Docs: docs/conversion.md (nanoGPT), docs/data.md (nanoGPT data folders). Tests: tests/test_nanogpt_format.py.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.token_files import MappedTokens, TokenFileDataset
from nanogpt2.tokenizer import CharTokenizer, get_tokenizer

CKPT_FILE = "ckpt.pt"
META_FILE = "meta.pkl"
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}  # a prepared data folder: raw uint16 ids, no header
GPT2_VOCAB = 50257  # a vocabulary at least this large, with no meta.pkl, is GPT-2's BPE (nanoGPT's sample.py too)
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")  # nanoGPT's GPTConfig
# What nanoGPT's GPT is, beyond model_args: the GPTConfig fields it fixes.
NANOGPT_FIXED = {"activation": "gelu", "layer_norm_epsilon": 1e-5, "n_inner": None, "tie_word_embeddings": True,
                 "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}
_MAX_META_BYTES = 64 << 20  # a vocabulary, not a data set: refuse to read more

# ----------------------------------------------------------------------------------------------------
# meta.pkl: a restricted unpickler (plain dict, list, str and int; no class, no function, no code)


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global: nothing but the built-in containers and scalars can come out of it
    (what they are is checked after), so reading a file never calls a function it names."""

    def find_class(self, module, name):
        raise NanoGPT2Error(f"it names the Python object {module}.{name}")

    def persistent_load(self, pid):
        raise NanoGPT2Error("it refers to a persistent object")


def _plain_type(obj, depth=0):
    """The first type in `obj` other than dict, list, str and int (bool counts as other), or None."""
    if depth > 20:
        return "nesting deeper than 20"
    if type(obj) in (str, int):
        return None
    if type(obj) is list:
        return next((t for t in (_plain_type(v, depth + 1) for v in obj) if t), None)
    if type(obj) is dict:
        return next((t for t in (_plain_type(v, depth + 1) for kv in obj.items() for v in kv) if t), None)
    return type(obj).__name__


def read_meta(path) -> dict:
    """The dict of a nanoGPT meta.pkl, read by the restricted unpickler: only dict, list, str and int are
    admitted; anything else (a class, a function, a float, bytes, ...) is refused in one line, unexecuted."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_META_BYTES:
            raise NanoGPT2Error(f"{path} is {size:,} bytes, too large for a nanoGPT meta.pkl (a vocabulary)")
        data = path.read_bytes()
    except OSError as e:
        raise NanoGPT2Error(f"cannot read {path}: {e.strerror or e}") from None
    try:
        obj = _PlainUnpickler(io.BytesIO(data)).load()
    except NanoGPT2Error as e:
        raise NanoGPT2Error(f"{path} is refused: {e}; a nanoGPT meta.pkl holds only dicts, lists, strings and "
                            f"integers (nanogpt2 never runs code from a pickle)") from None
    except Exception as e:  # a truncated or foreign file raises many kinds of exception
        raise NanoGPT2Error(f"{path} is not a readable pickle ({type(e).__name__}: {str(e)[:120]}); give the "
                            f"meta.pkl that nanoGPT's prepare.py wrote") from None
    bad = _plain_type(obj)
    if bad is not None or type(obj) is not dict:
        raise NanoGPT2Error(f"{path} is refused: it holds a {bad or type(obj).__name__}, and a nanoGPT meta.pkl "
                            f"holds only dicts, lists, strings and integers")
    return obj


def tokenizer_from_meta(meta: dict, source) -> CharTokenizer:
    """The character tokenizer of a meta.pkl dict: id i is `itos[i]`, for i < vocab_size (checked against stoi)."""
    itos, stoi = meta.get("itos"), meta.get("stoi")
    if not isinstance(itos, dict) or not isinstance(stoi, dict):
        raise NanoGPT2Error(f"{source} has no 'itos' / 'stoi' dicts: it is not the meta.pkl of a nanoGPT character "
                            f"data set (a BPE data set has none: its ids are GPT-2's)")
    n = meta.get("vocab_size", len(itos))
    chars = [itos.get(i) for i in range(n)] if isinstance(n, int) and n > 0 else None
    if chars is None or len(itos) != n or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise NanoGPT2Error(f"{source}: itos must map each id 0..vocab_size-1 ({n!r}) to one character; this "
                            f"meta.pkl is not of nanoGPT's character format")
    if any(stoi.get(c) != i for i, c in enumerate(chars)) or len(stoi) != n:
        raise NanoGPT2Error(f"{source}: stoi is not the inverse of itos; the file is damaged or edited")
    return CharTokenizer(chars)


def read_meta_tokenizer(path) -> CharTokenizer:
    """The character tokenizer of a nanoGPT meta.pkl file."""
    return tokenizer_from_meta(read_meta(path), path)


def write_meta(tokenizer: CharTokenizer, path) -> Path:
    """A meta.pkl of nanoGPT's character format (vocab_size, itos, stoi) for a character tokenizer. Written
    with pickle (writing runs nothing); only plain dicts, str and int go in."""
    chars = list(tokenizer.chars)
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    path = Path(path)
    path.write_bytes(pickle.dumps(meta))
    return path


# ----------------------------------------------------------------------------------------------------
# ckpt.pt in


def _torch_load(path: Path, mmap: bool):
    """torch.load(weights_only=True) of a nanoGPT file (memory-mapped: the optimizer moments are never read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def checkpoint_file(path):
    """The nanoGPT ckpt.pt that `path` names (the file, or a run folder holding ckpt.pt and no nanogpt2
    checkpoint), else None. A file is nanoGPT's when its dict has `model` and `model_args` (read memory-mapped:
    cheap)."""
    p = Path(path)
    if p.is_dir():
        f = p / CKPT_FILE
        return f if f.is_file() and not ckpt_io.list_checkpoints(p) else None
    if not p.is_file():
        return None
    try:
        state = _torch_load(p, mmap=True)
    except Exception:  # not a zip-format torch file: another reader says what it is
        return None
    return p if isinstance(state, dict) and "model_args" in state and "model" in state else None


def read_checkpoint(path) -> dict:
    """A nanoGPT ckpt.pt as a dict (weights_only, memory-mapped); a nanoGPT file written by nanogpt2 carries a
    checksum, verified here."""
    path = Path(path)
    try:
        state = _torch_load(path, mmap=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise NanoGPT2Error(f"{path} cannot be read as a nanoGPT checkpoint ({first}); it is truncated, damaged, or "
                            f"holds Python objects that nanogpt2 never unpickles") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) \
            or not isinstance(state.get("model_args"), dict):
        raise NanoGPT2Error(f"{path} is not a nanoGPT checkpoint (no 'model' / 'model_args' entries)")
    if ckpt_io.CHECKSUM in state and state[ckpt_io.CHECKSUM] != ckpt_io.checksum(state):
        raise NanoGPT2Error(f"{path} is damaged: its contents do not match the checksum nanogpt2 stored in it; "
                            f"convert the model again")
    return state


def config_from_model_args(model_args: dict, source) -> GPTConfig:
    """The GPTConfig of nanoGPT's `model_args` (its defaults for a key left out: nanoGPT's GPTConfig)."""
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise NanoGPT2Error(f"{source}: model_args {unknown} are not nanoGPT's ({', '.join(MODEL_ARGS)}): a fork's "
                            f"model, which nanogpt2 cannot rebuild")
    args = {"block_size": 1024, "vocab_size": 50304, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0,
            "bias": True, **model_args}
    for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
        if isinstance(args[k], bool) or not isinstance(args[k], int) or args[k] < 1:
            raise NanoGPT2Error(f"{source}: model_args {k}={args[k]!r} must be a positive integer")
    if not isinstance(args["bias"], bool) or not isinstance(args["dropout"], (int, float)):
        raise NanoGPT2Error(f"{source}: model_args bias={args['bias']!r} / dropout={args['dropout']!r} must be a "
                            f"bool / a number")
    try:
        return GPTConfig(**{**args, "dropout": float(args["dropout"])}, **NANOGPT_FIXED)
    except ValueError as e:
        raise NanoGPT2Error(f"{source}: {e}") from None


def find_meta(ckpt_path: Path, dataset, meta_pkl=None) -> tuple:
    """(the meta.pkl of a checkpoint or None, [the places looked]): `meta_pkl` when given (it must exist), else
    beside the checkpoint, else data/<dataset>/meta.pkl under the working folder and beside the run folder."""
    if meta_pkl:
        p = Path(meta_pkl).expanduser()
        if not p.is_file():
            raise NanoGPT2Error(f"meta_pkl {p} does not exist; give the meta.pkl of the model's data folder "
                                f"(nanoGPT's data/<dataset>/meta.pkl)")
        return p, [p]
    places = [ckpt_path.parent / META_FILE]
    if isinstance(dataset, str) and dataset and not Path(dataset).is_absolute():
        places += [Path("data") / dataset / META_FILE, ckpt_path.parent.parent / "data" / dataset / META_FILE]
    return next((p for p in places if p.is_file()), None), places


def _tokenizer_info(path: Path, state: dict, config: GPTConfig, meta_pkl) -> tuple:
    """({"name": "char", "chars": ...} from the checkpoint's meta.pkl, its path), or ({"name": "gpt2"}, None) for
    a GPT-2-sized vocabulary without one."""
    run = state.get("config") if isinstance(state.get("config"), dict) else {}
    meta, places = find_meta(path, run.get("dataset"), meta_pkl)
    if meta is None:
        if config.vocab_size >= GPT2_VOCAB:
            return {"name": "gpt2"}, None
        raise NanoGPT2Error(f"{path} is a nanoGPT model of a {config.vocab_size}-token vocabulary, but no meta.pkl "
                            f"says what its ids are (looked in {', '.join(map(str, places))}): put nanoGPT's "
                            f"data/<dataset>/meta.pkl beside the checkpoint, or pass meta_pkl=PATH")
    tok = read_meta_tokenizer(meta)
    if tok.n_vocab > config.vocab_size:
        raise NanoGPT2Error(f"{meta} holds {tok.n_vocab} characters but {path} only {config.vocab_size} token ids: "
                            f"it is the meta.pkl of another data set; pass the right one with meta_pkl=PATH")
    return {"name": "char", "chars": "".join(tok.chars)}, meta


def _number(v):
    """A plain float/int of a stored scalar (nanoGPT saves best_val_loss as a 0-d tensor), else None."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_checkpoint_model(path_or_dir, meta_pkl=None) -> tuple:
    """(GPT, info) from a nanoGPT ckpt.pt or run folder: model_args -> the config, `_orig_mod.` stripped, the
    weights checked by name and shape. info: path, tokenizer, config (the file's `config`, informational), step
    (iter_num), best_val_loss, description."""
    path = checkpoint_file(path_or_dir) or Path(path_or_dir)
    state = read_checkpoint(path)
    config = config_from_model_args(state["model_args"], path)
    model = GPT(config)
    weights = {k: v for k, v in ckpt_io.strip_prefixes(state["model"]).items()
               if not k.endswith(".attn.bias")}  # the causal mask buffer of nanoGPT's non-flash attention
    with ckpt_io.rebuilding(path, "the model"):
        model.load_state_dict(weights)
    tokenizer, meta = _tokenizer_info(path, state, config, meta_pkl)
    step, best = _number(state.get("iter_num")), _number(state.get("best_val_loss"))
    notes = [f"iter {step}"] + ([f"best val loss {best:.4f}"] if isinstance(best, float) else []) \
        + ([f"vocabulary of {meta}"] if meta is not None else [])
    info = {"path": str(path), "tokenizer": tokenizer, "config": state.get("config") or {}, "step": step,
            "best_val_loss": best, "format": "nanogpt",
            "description": f"{path} (nanoGPT checkpoint, {', '.join(notes)})"}
    return model, info


# ----------------------------------------------------------------------------------------------------
# Prepared data folders: train.bin / val.bin


def open_data_folder(path):
    """The train.bin / val.bin of a nanoGPT-prepared data folder, memory-mapped as they are (a TokenFileDataset),
    or None when `path` is not such a folder. The ids are uint16; their tokenizer is the folder's meta.pkl
    (characters) when it has one, else GPT-2's BPE; every id is checked against it."""
    p = Path(path)
    if not (p.is_dir() and all((p / f).is_file() for f in SPLIT_FILES.values())):
        return None
    tok = read_meta_tokenizer(p / META_FILE) if (p / META_FILE).is_file() else get_tokenizer("gpt2")
    splits = {}
    for split, name in SPLIT_FILES.items():
        f = p / name
        size = f.stat().st_size
        if size % 2:
            raise NanoGPT2Error(f"{f} is {size:,} bytes, an odd number, so not uint16 token ids (nanoGPT's prepare.py "
                                f"writes 2 bytes per id): it is truncated or of another format")
        splits[split] = MappedTokens([(f, 0, size // 2)], np.uint16, tok.n_vocab)
    return TokenFileDataset(p, "nanoGPT data folder", splits, tok)


# ----------------------------------------------------------------------------------------------------
# ckpt.pt out


def check_exportable(config: GPTConfig, log=None) -> None:
    """Refuse, naming the field, a GPT that nanoGPT's model cannot express; GPT-2's tanh GELU (nanoGPT's is the
    exact one, at most 5e-4 away) is said through `log`: nanoGPT's logits then differ slightly."""
    bad = [f"{k}={getattr(config, k)!r} (nanoGPT: {v!r})" for k, v in NANOGPT_FIXED.items()
           if k not in ("activation", "n_inner") and getattr(config, k) != v]
    if config.n_inner not in (None, 4 * config.n_embd):
        bad.append(f"n_inner={config.n_inner} (nanoGPT: 4 * n_embd = {4 * config.n_embd})")
    if config.activation not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        bad.append(f"activation={config.activation!r} (nanoGPT: GELU)")
    if bad:
        raise NanoGPT2Error(f"nanoGPT's GPT cannot express this model: {', '.join(bad)}; keep it as a nanogpt2 "
                            f"checkpoint (or an HF folder)")
    if config.activation != "gelu" and log is not None:
        log(f"the model's GELU is the tanh approximation ({config.activation}), nanoGPT's the exact one (nn.GELU): "
            f"nanoGPT computes slightly different logits (GPT-2 loaded by nanoGPT's from_pretrained does the same)")


def write_checkpoint(model: GPT, tokenizer, out_dir, dataset: str = "", step=None, best_val_loss=None,
                     source: str = "", log=None) -> Path:
    """out_dir/ckpt.pt as nanoGPT's train.py saves it (model, model_args, iter_num, best_val_loss, config with
    the dataset name; no optimizer), and out_dir/meta.pkl for a character tokenizer: what nanoGPT's
    `sample.py --init_from=resume --out_dir=out_dir` loads. Neither file may exist yet. Written atomically (and
    checksummed) by nanogpt2.checkpoint.save_checkpoint: nanoGPT ignores the extra entry, nanogpt2 verifies it."""
    out_dir = Path(out_dir)
    for name in (CKPT_FILE, META_FILE):
        if (out_dir / name).exists():
            raise NanoGPT2Error(f"{out_dir / name} exists (a nanoGPT run's own?); nanogpt2 does not overwrite it: "
                                f"give another DST folder or move it away")
    cfg = model.config
    check_exportable(cfg, log)
    config = {**({"dataset": dataset} if dataset else {}), "converted_from": source}  # nanoGPT's: informational
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "model_args": {k: getattr(cfg, k) for k in MODEL_ARGS}, "iter_num": int(step or 0),
             "best_val_loss": float(best_val_loss) if best_val_loss is not None else 1e9,  # nanoGPT's "none yet"
             "config": config}
    path = ckpt_io.save_checkpoint(out_dir / CKPT_FILE, state)
    if getattr(tokenizer, "name", None) == "char":
        write_meta(tokenizer, out_dir / META_FILE)
        if log is not None:
            log(f"nanoGPT's sample.py reads a character vocabulary from data/{dataset or '<dataset>'}/meta.pkl: copy "
                f"{out_dir / META_FILE} there")
    return path
