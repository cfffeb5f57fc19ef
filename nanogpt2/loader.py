"""
One loader for every `init_from`, and the model spec that checkpoints record.

`init_from` is one of:
  scratch          a new, randomly initialised GPT of a given config (the run's settings; bench.py's preset)
  a GPT-2 name     gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (downloaded once, then cached)
  an HF folder     config.json + model.safetensors / pytorch_model.bin (sharded or not)
  an OpenAI size   124M, 355M, 774M, 1558M (117M, 345M: the old names): OpenAI's TensorFlow release, downloaded once
  an OpenAI folder hparams.json + model.ckpt.index / .data-* (+ encoder.json, vocab.bpe: then its tokenizer)
  a run folder     a train.py out_dir: its checkpoint of the highest step (damaged ones skipped, said so)
  a .pt file       one checkpoint
  nanoGPT          a ckpt.pt nanoGPT's train.py wrote, or its out_dir (+ meta.pkl: nanogpt2/nanogpt_format.py)
  llm.c            a model file llm.c wrote (gpt2_124M.bin, gpt2_124M_bf16.bin: nanogpt2/llmc.py)
train.py, sample.py, bench.py and `python -m nanogpt2.evaluate` all load through `load_model` here.

The model spec: a checkpoint records what model it holds as a small dict, `{"kind": "gpt", "config":
GPTConfig.to_dict()}`, and the loader rebuilds exactly that (`build_model(spec)`) before loading the weights.
A GPT with LoRA or Houlsby adapters applied (nanogpt2.peft) records `"lora": {rank, alpha, targets, ...}` /
`"adapters": {adapter_size, train_layernorms}` beside its config, and is rebuilt with them. It can grow: a module that wraps or extends the GPT (task heads) registers its kind with
`register_model_kind(kind, build)` and gives its models a `model_spec()` method returning
`{"kind": kind, ...}` (listed in `LAZY_KINDS`, its module is imported when a spec names the kind: the classifier of
nanogpt2.heads loads in a process that never imported it; an HF folder whose config.json names an architecture of
`HF_ARCHITECTURES`, e.g. GPT2ForSequenceClassification, loads through that module); checkpoints written before
specs existed hold only `model_config` and read as "gpt".

    from nanogpt2.loader import load_model, load_model_and_tokenizer
    model, info = load_model("out-shakespeare")          # info: path, tokenizer, step, spec, ...
    model, tok, description = load_model_and_tokenizer("gpt2", device="cuda")
"""

import difflib
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import torch.nn as nn

from nanogpt2 import checkpoint as ckpt_io
from nanogpt2 import llmc, nanogpt_format
from nanogpt2.base_ref import BaseTrace, complete
from nanogpt2.download import DownloadError
from nanogpt2.errors import NanoGPT2Error
from nanogpt2.model import GPT, GPTConfig
from nanogpt2.peft import apply_method_spec, collapse_prefix, method_spec
from nanogpt2.rundir import run_folders

# ----------------------------------------------------------------------------------------------------
# Model specs


MODEL_KINDS: dict = {}  # kind -> build(spec) -> nn.Module


def register_model_kind(kind: str, build: Callable[[dict], nn.Module]) -> None:
    """Teach the loader to rebuild models whose spec has this `kind`."""
    MODEL_KINDS[kind] = build


def _build_gpt(spec: dict) -> GPT:
    """A GPT, with the PEFT method of the spec applied (its weights come after)."""
    return apply_method_spec(GPT(GPTConfig(**spec["config"])), spec)


register_model_kind("gpt", _build_gpt)

# Kinds (and HF architectures) whose module imports this one: imported the first time a spec (an HF config.json)
# names them, so that a caller that never imported the module still loads its models, without an import cycle.
LAZY_KINDS = {"gpt_classifier": "nanogpt2.heads"}
HF_ARCHITECTURES = {"GPT2ForSequenceClassification": "nanogpt2.heads"}  # module with load_hf_folder(folder)


def model_spec(model: nn.Module) -> dict:
    """What a checkpoint records about `model` so that `build_model` can rebuild it (before its weights): for a
    GPT its config and its PEFT method (`method_spec`: `"lora"`, `"adapters"`, `"prefix"` or `"prompt"`)."""
    own = getattr(model, "model_spec", None)
    if callable(own):
        return own()
    if isinstance(model, GPT):
        return {"kind": "gpt", "config": model.config.to_dict(), **method_spec(model)}
    raise NanoGPT2Error(f"cannot describe a {type(model).__name__} for a checkpoint: give it a model_spec() method "
                        f"and register its kind with nanogpt2.loader.register_model_kind")


def spec_of(state: dict) -> dict:
    """The model spec of a loaded checkpoint (one written before specs existed holds only model_config)."""
    spec = state.get("model_spec")
    if spec is None:
        spec = {"kind": "gpt", "config": state["model_config"]}
    return spec


def build_model(spec: dict) -> nn.Module:
    """A freshly initialised model of the kind and shape the spec describes."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in MODEL_KINDS and kind in LAZY_KINDS:
        importlib.import_module(LAZY_KINDS[kind])  # registers the kind
    if kind not in MODEL_KINDS:
        raise NanoGPT2Error(f"unknown model kind {kind!r} in a checkpoint's model spec (known: {', '.join(MODEL_KINDS)}); "
                            f"was it written by a newer nanogpt2 or with a module that is not imported?")
    return MODEL_KINDS[kind](spec)


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of `model` (and its config) to p: a run's own setting, not the checkpoint's."""
    for mod in model.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = p
    if hasattr(getattr(model, "config", None), "dropout"):
        model.config.dropout = p


# ----------------------------------------------------------------------------------------------------
# Loading by init_from


def _warn(msg: str):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(
        (path / f).exists() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                      "pytorch_model.bin.index.json"))


def is_checkpoint(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and bool(ckpt_io.list_checkpoints(path)))


def load_checkpoint_model(path_or_dir, which: str = "auto", log=_warn):
    """(model, info) from a checkpoint file or a run folder: the spec's model with the saved weights, on the CPU.

    info: path, tokenizer, config (the run config dict), spec, model_config, step, epoch, best_val_loss, verified
    (False for a checkpoint written before checksums)."""
    p = Path(path_or_dir)
    if p.is_dir() and which in ("auto", "latest"):
        path, ckpt, skipped = ckpt_io.load_latest(p)
        for bad, why in skipped:
            log(f"skipping {bad.name}: {why}")
        if skipped:
            log(f"using {path.name} (step {ckpt.get('step')}) instead")
    else:
        path = ckpt_io.find_checkpoint(path_or_dir, which)
        ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
    weights = checkpoint_weights(ckpt, path)
    with ckpt_io.rebuilding(path, "the model"):
        spec = spec_of(ckpt)
        model = build_model(spec)
        model.load_state_dict(weights)
    info = {
        "path": str(path),
        "tokenizer": ckpt.get("tokenizer", {"name": "gpt2"}),
        "config": ckpt.get("run_config", {}),
        "spec": spec,
        "model_config": spec.get("config"),
        "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"),
        "best_val_loss": ckpt.get("best_val_loss"),
        "verified": ckpt_io.CHECKSUM in ckpt,
    }
    return model, info


def checkpoint_weights(state: dict, path) -> dict:
    """A checkpoint's whole state_dict: its `model` entry, with the base's tensors filled in where a PEFT run's
    checkpoint refers to its base instead of holding it (nanogpt2/base_ref.py: missing or changed base files are
    one NanoGPT2Error)."""
    return complete(state, path, lambda where: load_model(where, log=lambda msg: None)[0])


def hf_architecture(folder: Path):
    """The config.json architecture of an HF folder that another module loads (HF_ARCHITECTURES), else None."""
    try:
        names = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None  # load_hf_folder says what is wrong with it
    return next((n for n in names if n in HF_ARCHITECTURES), None)


def _load_hf(folder: Path, load_gpt):
    arch = hf_architecture(folder)
    if arch is None:
        return load_gpt(folder)
    return importlib.import_module(HF_ARCHITECTURES[arch]).load_hf_folder(folder)


def load_foreign(path: Path, meta_pkl=None):
    """(model, info) of another project's model file that `path` names (nanoGPT's ckpt.pt or out_dir, an llm.c
    model file), else None."""
    if nanogpt_format.checkpoint_file(path) is not None:
        model, info = nanogpt_format.load_checkpoint_model(path, meta_pkl=meta_pkl)
    elif llmc.magic(path) is not None:
        model, info = llmc.load_model_file(path)
    else:
        return None
    info["spec"] = model_spec(model)
    return model, info


def load_model(init_from: str, device="cpu", dropout=None, log=_warn, config: GPTConfig = None, meta_pkl=None):
    """(model on `device`, info) for any init_from (see the module docstring); "scratch" needs the `config` of the
    new, randomly initialised GPT (seed torch first). `dropout`: set every dropout to it (a run's own setting);
    None keeps the loaded model's. `meta_pkl`: the vocabulary of a nanoGPT character model, where it is not
    found beside the checkpoint. info holds at least path (or the name), tokenizer ({"name": ...} or None for a
    new model), spec and description."""
    from nanogpt2.hf_checkpoint import HF_REPOS, download_hf_model, load_hf_folder
    from nanogpt2.openai_checkpoint import (OPENAI_SIZES, download_openai_model, is_openai_folder, load_openai_folder,
                                            openai_size, openai_tokenizer_info)

    path = Path(init_from)
    hf_folder = openai_folder = None
    foreign = None if init_from == "scratch" else load_foreign(path, meta_pkl)
    if init_from == "scratch":
        if config is None:
            raise NanoGPT2Error("init_from=scratch needs a model config (n_layer, n_head, n_embd, ...)")
        model = GPT(config)
        info = {"path": "scratch", "tokenizer": None, "spec": model_spec(model),
                "description": f"GPT from scratch ({config.n_layer} layers, {config.n_embd} wide)"}
    elif foreign is not None:
        model, info = foreign
    elif is_checkpoint(path):  # a run folder that an HF export was written into is still the run
        model, info = load_checkpoint_model(path, log=log)
        info["description"] = f"{info['path']} (step {info.get('step')})"
        if is_hf_folder(path):
            log(f"{path} holds a train.py run and an HF export written into it: reading the run "
                f"({Path(info['path']).name}); export it to a folder of its own to keep both apart")
    elif is_hf_folder(path):
        hf_folder = path
    elif is_openai_folder(path):
        openai_folder = path
    elif init_from in HF_REPOS:  # the name wins over a folder of that name holding no model
        hf_folder = download_hf_model(init_from)
    elif openai_size(init_from):
        openai_folder = download_openai_model(init_from)
    elif path.is_dir():
        if (path / "config.json").exists() and (path / "metrics.jsonl").exists():
            raise NanoGPT2Error(f"{path} is a train.py run folder with no checkpoint yet; train it longer, or pick "
                                f"a checkpoint_*.pt of another run")
        hf_folder = path  # HF layout expected: load_hf_folder says what is missing
    if hf_folder is not None:
        model = _load_hf(hf_folder, load_hf_folder)
        info = {"path": init_from, "tokenizer": {"name": "gpt2"}, "spec": model_spec(model),
                "description": f"{init_from} (Hugging Face {hf_architecture(hf_folder) or 'GPT-2'} weights)"}
    elif openai_folder is not None:
        model = load_openai_folder(openai_folder, quiet=False)
        info = {"path": init_from, "tokenizer": openai_tokenizer_info(openai_folder), "spec": model_spec(model),
                "description": f"{init_from} (OpenAI's TensorFlow GPT-2 weights)"}
    elif foreign is None and init_from != "scratch" and not is_checkpoint(path):
        close = difflib.get_close_matches(init_from, ["scratch", "resume", *HF_REPOS, *OPENAI_SIZES], n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise NanoGPT2Error(f"init_from {init_from!r} is not a GPT-2 name ({', '.join(HF_REPOS)}), an OpenAI size "
                            f"({', '.join(OPENAI_SIZES)}), an HF folder, an OpenAI TensorFlow folder, a train.py run "
                            f"folder or a checkpoint file (nanogpt2's, nanoGPT's or llm.c's){hint}")
    if meta_pkl and info.get("format") != "nanogpt":
        log(f"meta_pkl={meta_pkl} is ignored: {init_from} is not a nanoGPT checkpoint")
    if dropout is not None:
        set_dropout(model, dropout)
    return model.to(device), info


def load_for_inference(init_from: str, device="cpu", meta_pkl=None):
    """(model in eval mode on `device`, its tokenizer, load_model's info) for sample.py and evaluation. A prefix
    trained through its reparameterisation MLP is collapsed to its table (the same outputs, no MLP per step).
    `meta_pkl`: as for load_model."""
    try:
        model, info = load_model(init_from, device=device, meta_pkl=meta_pkl)
    except DownloadError as e:  # a GPT-2 name, offline: name what loads without a download
        raise DownloadError(f"{e} {offline_alternative()}") from None
    if (getattr(model, "prefix_config", None) or {}).get("projection_hidden") is not None:
        collapse_prefix(model)
    tok = ckpt_io.tokenizer_from_info(info["tokenizer"], path=info["path"] if "step" in info else None)
    return model.eval(), tok, info


def offline_alternative(where=".") -> str:
    """What to pass instead of a model that cannot be downloaded: the run folders in `where` (a train.py out_dir
    loads offline), or how to make one."""
    runs = run_folders(where)
    if runs:
        return f"Offline, a run folder here loads without a download: {' or '.join(f'--init_from {p.name}' for p in runs[:3])}."
    return ("Offline, train a model first (python train.py writes out-shakespeare, on a CPU too) and pass "
            "--init_from out-shakespeare.")


def load_model_and_tokenizer(init_from: str, device="cpu", meta_pkl=None):
    """(model in eval mode on `device`, its tokenizer, a description): `load_for_inference` without the info."""
    model, tok, info = load_for_inference(init_from, device, meta_pkl)
    return model, tok, info["description"]


# ----------------------------------------------------------------------------------------------------
# The model a training run starts from (train.py, finetune.py: nanogpt2.trainer)


def architecture(spec: dict) -> dict:
    """A model spec without what a resume may change: dropout and the attention kernel (attn_impl); a GPT's
    config completed with today's defaults (a checkpoint written before a field existed)."""
    config = dict(spec.get("config") or {})
    if spec.get("kind") == "gpt":
        config = GPTConfig(**config).to_dict()
    config = {k: v for k, v in config.items() if k not in ("dropout", "attn_impl")}
    return {**spec, "config": config}


def build_run_model(cfg, tokenizer, **kwargs) -> nn.Module:
    """The model of `build_traced_run_model`, without its base."""
    return build_traced_run_model(cfg, tokenizer, **kwargs)[0]


def build_traced_run_model(cfg, tokenizer, *, model: nn.Module = None, resume_state: dict = None,
                           prepare: Callable[[nn.Module], nn.Module] = None,
                           log: Callable[[str], None] = print) -> tuple:
    """(model, its BaseRef or None). The model a run trains (`cfg`: its RunConfig): the `model` given (checked
    against the checkpoint on resume), else the resume checkpoint's spec rebuilt (its weights are loaded by the
    trainer with the rest of the state), else a new one from cfg.init_from ("scratch": the run's n_layer, n_head,
    ... and the tokenizer's vocabulary) with `prepare` applied (finetune.py's PEFT method) and its context cropped
    to cfg.block_size. The BaseRef (nanogpt2/base_ref.py) says which tensors of a model built from init_from are
    that base's, unchanged, and where the base is (None: the model was given, rebuilt from a checkpoint's spec,
    or new from scratch)."""
    if resume_state is not None:
        path = resume_state["_path"]
        with ckpt_io.rebuilding(path, "the model"):
            spec = spec_of(resume_state)
            if model is None:
                return build_model(spec), None
        if architecture(model_spec(model)) != architecture(spec):
            raise NanoGPT2Error(f"{path} holds another model than the one this run was given "
                                f"({architecture(spec)} vs {architecture(model_spec(model))}); resume with the "
                                f"same model, or start a new run in another out_dir")
        return model, None
    if model is not None:
        return model, None
    info = None
    if cfg.init_from in ("scratch", "resume"):
        fresh = _scratch_model(cfg, tokenizer, log)
    else:
        fresh, info = _init_model(cfg, tokenizer, log)
    trace = BaseTrace(fresh)
    model = prepare(fresh) if prepare is not None else fresh
    trace.wrapped(model)
    fit_context(model, cfg.block_size)
    base = trace.reference(cfg.init_from, info, model) if info is not None else None
    return model, base


def model_context(init_from: str) -> Optional[int]:
    """The context (positions for real tokens) of the model `init_from` names, found without a download: a run
    folder's or checkpoint's model, an HF folder's config.json, an OpenAI folder's hparams.json; None for a name
    or size (GPT-2's 1024, downloaded later), scratch, and what the loader will refuse anyway."""
    from nanogpt2.openai_checkpoint import is_openai_folder

    path = Path(init_from)
    try:
        if init_from == "scratch" or not path.exists():
            return None
        if is_checkpoint(path) and not is_hf_folder(path):
            model, _ = load_checkpoint_model(path, log=lambda msg: None)  # the run's own load says what it skips
            return getattr(model, "context_length", None)
        if is_hf_folder(path):
            hf = json.loads((path / "config.json").read_text())
            return int(hf.get("n_positions", hf.get("n_ctx", 1024)))
        if is_openai_folder(path):
            return int(json.loads((path / "hparams.json").read_text())["n_ctx"])
    except (NanoGPT2Error, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # loading it for the run says what is wrong
    return None


def fit_context(model: nn.Module, block_size: int) -> None:
    """Crop the positional table to the run's windows (nanoGPT's model surgery: GPT-2's 1024 -> block_size),
    keeping the positions a method spends on itself (a prefix: context_length = block_size - P)."""
    context = getattr(model, "context_length", None)
    if context is None:
        return
    if block_size > context:
        spent = model.config.block_size - context
        raise NanoGPT2Error(f"block_size={block_size} exceeds the model's context of {context} tokens"
                            + (f" ({model.config.block_size} positions, {spent} of them taken by the prefix)" if spent else "")
                            + f"; lower block_size to {context}")
    if block_size < context:
        model.crop_block_size(model.config.block_size - (context - block_size))


def _init_model(cfg, tokenizer, log) -> tuple:
    """(the GPT of init_from (a GPT-2 name, an HF folder, a checkpoint), checked against the run's tokenizer,
    load_model's info)."""
    m, info = load_model(cfg.init_from, dropout=cfg.dropout, log=lambda msg: log(f"warning: {msg}"),
                         meta_pkl=getattr(cfg, "meta_pkl", "") or None)
    mine = ckpt_io.tokenizer_info(tokenizer) if tokenizer is not None else None
    if mine is not None and info["tokenizer"] != mine:
        own = (info.get("config") or {}).get("dataset")  # a run folder's: data in its tokenizer
        fix = (f"fine-tune it on data in its tokenizer (--dataset {own}, its own)" if own
               else "use the same tokenizer (tokenizer=gpt2 for GPT-2 weights)")
        raise NanoGPT2Error(f"init_from={cfg.init_from} was trained with tokenizer {info['tokenizer'].get('name')!r} "
                            f"(another vocabulary than this run's {mine['name']!r}, dataset {cfg.dataset}); {fix}")
    if not isinstance(m, GPT):
        raise NanoGPT2Error(f"init_from={cfg.init_from} holds a {type(m).__name__} ({info['spec'].get('kind')}); "
                            f"train.py starts from a GPT: resume that run with --resume_from instead")
    n_vocab = getattr(tokenizer, "n_vocab", None)
    if n_vocab is not None and m.config.vocab_size < n_vocab:  # token ids past its table would crash the embedding
        raise NanoGPT2Error(f"init_from={cfg.init_from} has a vocabulary of {m.config.vocab_size:,} tokens, smaller "
                            f"than this run's {tokenizer.name} tokenizer ({n_vocab:,}): start from a model of that "
                            f"vocabulary, or use the model's own tokenizer and data")
    log(f"model: {info['description']}, {m.param_counts()['total'] / 1e6:.2f}M parameters")
    return m, info


def _scratch_model(cfg, tokenizer, log) -> GPT:
    """A new GPT of the run's shape settings; its vocabulary the tokenizer's unless vocab_size is set."""
    n_vocab = tokenizer.n_vocab if tokenizer is not None else None
    vocab = cfg.vocab_size or n_vocab
    if vocab is None:
        raise NanoGPT2Error("vocab_size is not set and there is no tokenizer to take it from")
    if n_vocab is not None and vocab < n_vocab:
        raise NanoGPT2Error(f"vocab_size={vocab} is smaller than the tokenizer's {n_vocab} tokens")
    m, _ = load_model("scratch", config=GPTConfig(block_size=cfg.block_size, vocab_size=vocab, n_layer=cfg.n_layer,
                                                  n_head=cfg.n_head, n_embd=cfg.n_embd, n_inner=cfg.n_inner,
                                                  dropout=cfg.dropout, bias=cfg.bias))
    log(f"model: GPT from scratch, {m.param_counts()['total'] / 1e6:.2f}M parameters")
    return m


def check_resume_fits(cfg, state: dict, tokenizer, log: Callable[[str], None]) -> None:
    """Refuse a resume the checkpoint's model cannot run (another tokenizer, a longer context, a smaller
    vocabulary); warn about the model settings of `cfg` that the checkpoint's architecture overrides."""
    path = state["_path"]
    with ckpt_io.rebuilding(path, "the model"):
        spec = spec_of(state)
    saved = state.get("tokenizer")
    mine = ckpt_io.tokenizer_info(tokenizer) if tokenizer is not None else None
    if isinstance(saved, dict) and mine is not None and saved != mine:
        def desc(info):
            chars = info.get("chars")
            return f"{info.get('name')!r}" + (f" ({len(chars)} characters)" if isinstance(chars, str) else "")
        raise NanoGPT2Error(f"{path} was trained with the tokenizer {desc(saved)}, but this run's data "
                            f"(dataset={cfg.dataset}) uses {desc(mine)}: the token ids would mean other things; "
                            f"resume with the checkpoint's dataset and tokenizer settings, or start a new run")
    if spec.get("kind") != "gpt":  # another registered kind: its own module checks its shape
        return
    with ckpt_io.rebuilding(path, "the model"):
        mconf = GPTConfig(**(spec.get("config") or {}))
        ctx, vocab = int(mconf.block_size), int(mconf.vocab_size)
    if cfg.block_size > ctx:
        raise NanoGPT2Error(f"block_size={cfg.block_size} is longer than the context of {path} ({ctx} positions): "
                            f"resume with --block_size={ctx} or less, or start a new run")
    n_vocab = getattr(tokenizer, "n_vocab", None)
    if n_vocab is not None and vocab < n_vocab:
        raise NanoGPT2Error(f"{path} has a vocabulary of {vocab} tokens, fewer than this run's tokenizer "
                            f"({n_vocab}); resume with the checkpoint's dataset and tokenizer settings")
    old = state.get("run_config") if isinstance(state.get("run_config"), dict) else {}
    shape = ("n_layer", "n_head", "n_embd", "n_inner", "vocab_size", "bias", "dropout")
    ignored = [f"{k}={getattr(cfg, k)!r} (checkpoint: {old[k]!r})" for k in shape
               if k in old and old[k] != getattr(cfg, k)]
    if ignored:
        log(f"warning: resuming keeps the model of {path}; ignoring {', '.join(ignored)} "
            f"(to train another model, start a new run in another out_dir)")
