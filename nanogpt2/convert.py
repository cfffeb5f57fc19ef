"""
GPT-2 checkpoints between formats: GPT-2 by name or folder (`load_pretrained`), an HF folder out
(`save_pretrained`), and the converter CLI, which also writes nanoGPT's ckpt.pt and llm.c's model files. No
`transformers`, no `tensorflow`.

The formats each have a reader/writer module: HF folders nanogpt2/hf_checkpoint.py, OpenAI's TensorFlow release
nanogpt2/openai_checkpoint.py (the bundle format itself: nanogpt2/tf_checkpoint.py), nanogpt2 `.pt` checkpoints
nanogpt2/checkpoint.py, nanoGPT's ckpt.pt nanogpt2/nanogpt_format.py, llm.c's model files nanogpt2/llmc.py; this
module maps between them, reading any source through nanogpt2.loader.

    from nanogpt2.model import GPT
    model = GPT.from_pretrained("gpt2")               # downloads config.json + model.safetensors once
    model = GPT.from_pretrained("/path/to/hf/folder") # any HF GPT-2 folder, e.g. a fine-tuned one
    model = GPT.from_pretrained("124M")               # OpenAI's release (also 355M, 774M, 1558M), or its folder
    save_pretrained(model, "out/hf")                  # a folder transformers.GPT2LMHeadModel can load

    python -m nanogpt2.convert SRC DST [--to hf|nanogpt2|nanogpt|llmc] [--dtype bfloat16] [--overwrite]
                                          # any model source -> an HF folder, a .pt, nanoGPT's ckpt.pt, llm.c's .bin

A checkpoint is never loaded silently wrong: every field of HF's `GPT2Config` that changes the forward pass is
honoured or refused, every tensor's name and shape checked. Exports write only where nanogpt2/export_dir.py
allows (never into a run folder or over the source). The formats and the export rules:
docs/conversion.md. Tests: tests/test_model.py, test_tf_checkpoint.py, test_convert.py.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nanogpt2.download import file_sha256
from nanogpt2.errors import NanoGPT2Error, write_error
from nanogpt2.export_dir import CONVERTED_PT, HF_MODEL, ExportDir, check_export_file
from nanogpt2.hf_checkpoint import HF_REPOS, download_hf_model, gpt_hf_export, load_hf_folder
from nanogpt2.hf_tokenizer import write_tokenizer_files
from nanogpt2.openai_checkpoint import (OPENAI_SIZES, download_openai_model, is_openai_folder, load_openai_folder,
                                        openai_size)
from nanogpt2.safetensors_io import read_header, save_file

if TYPE_CHECKING:  # model.py imports this module lazily (GPT.from_pretrained): no import back at module level
    from nanogpt2.model import GPT

# ----------------------------------------------------------------------------------------------------
# Any GPT-2 by name or folder


def load_pretrained(name_or_dir, quiet: bool = False, **overrides) -> GPT:
    """GPT-2 by name (an HF name or an OpenAI size, downloaded once into the cache) or from a local folder
    (HF layout, or OpenAI's TensorFlow release)."""
    path = Path(name_or_dir)
    if path.is_dir():
        if is_openai_folder(path):
            return load_openai_folder(path, quiet=quiet, **overrides)
        return load_hf_folder(path, **overrides)
    if str(name_or_dir) in HF_REPOS:
        return load_hf_folder(download_hf_model(str(name_or_dir), quiet=quiet), **overrides)
    if openai_size(name_or_dir):
        return load_openai_folder(download_openai_model(str(name_or_dir), quiet=quiet), quiet=quiet, **overrides)
    raise NanoGPT2Error(f"{name_or_dir!r} is neither a folder nor a known model name ({', '.join(HF_REPOS)}, or "
                        f"OpenAI's sizes {', '.join(OPENAI_SIZES)})")


# ----------------------------------------------------------------------------------------------------
# Export: an HF folder


def _note(msg: str):
    print(f"note: {msg}", file=sys.stderr, flush=True)


def _refuse_unexportable(model, fmt: str = "a plain HF GPT-2 folder") -> None:
    """HF GPT-2 (and nanoGPT, llm.c) has no adapter layers, no learned prefix or prompt: such a model cannot become
    a plain HF folder (`fmt`). The refusal names what does hold it."""
    keep = ("keep it as a nanogpt2 .pt checkpoint, which sample.py --init_from and python -m nanogpt2.evaluate "
            "--init_from load (the run's checkpoint_final.pt, or python -m nanogpt2.convert SRC DST.pt)")
    works = {"adapter_config": ("Houlsby adapters", f"{keep}; share the adapters alone as the run's "
                                "out_dir/adapter/adapter_weights.pt (nanogpt2.peft.load_adapter_weights onto the "
                                "base). merge_and_export cannot merge adapters either"),
             "prefix_config": ("prefix tuning", f"{keep}, or write an HF peft prefix-tuning folder (finetune.py "
                               "--merge_and_export DIR, nanogpt2.peft.save_peft_adapter)"),
             "prompt_config": ("prompt tuning", f"{keep}, or write an HF peft prompt-tuning folder (finetune.py "
                               "--merge_and_export DIR, nanogpt2.peft.save_peft_adapter)")}
    for m in model.modules():
        for attr, (what, instead) in works.items():
            if getattr(m, attr, None) is not None:
                raise NanoGPT2Error(f"this model has {what} ({attr}={getattr(m, attr)!r}), which {fmt} cannot "
                                    f"express: {instead}")


def _merged_copy(model):
    """`model` itself, or with LoRA a deep copy with every LoRA update merged (the live model stays unmerged)."""
    from nanogpt2.peft import lora_layers, merge_lora

    if not lora_layers(model):
        return model
    merged = copy.deepcopy(model)
    merge_lora(merged)
    return merged


def save_pretrained(model, out_dir, tokenizer=None, log=_note, overwrite: bool = False, reserved: dict = None,
                    name: str = "DST") -> Path:
    """Write `model` as an HF folder transformers loads: config.json, model.safetensors, generation_config.json.

    - Where: the export-folder rule of nanogpt2/export_dir.py (an absent or empty folder, or an earlier HF
      export, replaced and said so through `log`; a run folder, `reserved` paths ({label: path}, e.g. the
      source) and foreign files are refused, `overwrite` replaces only these three files). Each file is written
      atomically, config.json last.
    - LoRA is merged first, on a copy (the HF folder is plain GPT-2; `model` stays unmerged).
    - Houlsby adapters (`adapter_config`), prefix and prompt tuning (`prefix_config`, `prompt_config`) are refused
      with a message naming what holds them: the .pt format (sample.py and evaluate load it), adapter_weights.pt for
      adapters, the peft prefix- / prompt-tuning folder (finetune.py --merge_and_export) for a prefix or a prompt.
    - GPT-2's tokenizer files go beside the weights (nanogpt2/hf_tokenizer.py; a character model: one line saying
      no HF tokenizer exists for it).
    - A vocabulary padded past the `tokenizer` (e.g. 50304 rows for 50257 ids) is kept as it is and said so
      through `log`: the rows past the tokenizer are never produced by it, and config.json's vocab_size counts them.

    Export hook, for models beside the plain GPT (e.g. GPTForSequenceClassification in nanogpt2/heads.py): a
    method `model.hf_export() -> {"config": dict, "tensors": dict, "generation_config": dict or None}` returns
    config.json (with its "architectures", e.g. ["GPT2ForSequenceClassification"]), the tensors under HF names,
    and generation_config.json (None: not written, as for models that do not generate). save_pretrained calls it
    on the merged copy after the refusals and writes the files; `gpt_hf_export(model)` gives the plain GPT-2
    parts to start from (it reads `model.config` and `model.state_dict()`: `transformer.*` names, other names
    such as `score.weight` pass through).
    """
    ExportDir.check(out_dir, HF_MODEL, overwrite, reserved, name)  # before the work: a refusal writes nothing
    _refuse_unexportable(model)
    export = _merged_copy(model)
    hook = getattr(export, "hf_export", None)
    parts = hook() if callable(hook) else gpt_hf_export(export)
    vocab = parts["config"].get("vocab_size")
    n_vocab = getattr(tokenizer, "n_vocab", None)
    if n_vocab is not None and vocab is not None and vocab > n_vocab and log is not None:
        log(f"the model's vocabulary has {vocab} rows but the tokenizer {n_vocab} ids: all {vocab} are exported "
            f"(config.json vocab_size={vocab}); the {vocab - n_vocab} rows past the tokenizer are padding it never "
            f"produces")
    plan = ExportDir.open(out_dir, HF_MODEL, overwrite, reserved, name)
    save_file(parts["tensors"], plan.target("model.safetensors"), metadata={"format": "pt"})
    if parts.get("generation_config") is not None:
        plan.write_json("generation_config.json", parts["generation_config"])
    write_tokenizer_files(plan.folder, tokenizer, parts["config"].get("n_positions", 1024), vocab, log,
                          write=lambda name, data: plan.write(name, lambda f: f.write(data)))
    plan.write_json("config.json", parts["config"])  # last: its presence makes the folder loadable
    return plan.finish(log)


# ----------------------------------------------------------------------------------------------------
# The command line: python -m nanogpt2.convert SRC DST [--to hf|nanogpt2|nanogpt|llmc] [--overwrite]


_BIG = 100_000_000  # bytes: a model this big takes seconds to write, so say what is happening


def _source(src: str) -> dict:
    """SRC as a path an export must not write over or into (a model name is no path)."""
    return {"SRC": src} if Path(src).exists() else {}


def _write_pt(model, info: dict, dst: Path, src: str, overwrite: bool = False, log=None) -> Path:
    """A nanogpt2 checkpoint that nanogpt2.loader reads back (weights, model spec, tokenizer, checksum), written
    under the export rule of nanogpt2/export_dir.py (a new file, or an earlier converted one replaced)."""
    from nanogpt2.checkpoint import save_checkpoint
    from nanogpt2.loader import model_spec

    mode = check_export_file(dst, CONVERTED_PT, overwrite, _source(src))
    spec = model_spec(model)
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "model_spec": spec,
             "model_config": spec.get("config") or {}, "tokenizer": info.get("tokenizer"),
             "run_config": info.get("config") or {}, "step": info.get("step") or 0, "converted_from": src}
    path = save_checkpoint(dst, state)
    if log is not None and mode != "new":
        log(f"--overwrite: replaced {dst}" if mode == "overwrite" else f"replaced the earlier converted checkpoint {dst}")
    return path


def written_params(folder) -> int:
    """The parameters of an HF folder's model.safetensors as transformers counts them (a tied lm_head once)."""
    header, _ = read_header(Path(folder) / "model.safetensors")
    tied = json.loads((Path(folder) / "config.json").read_text()).get("tie_word_embeddings", True)
    return sum(math.prod(v["shape"]) for k, v in header.items()
               if k != "__metadata__" and not (tied and k == "lm_head.weight"))


FORMATS = {"hf": "an HF folder", "nanogpt2": "a nanogpt2 checkpoint", "nanogpt": "a nanoGPT out_dir (ckpt.pt)",
           "llmc": "an llm.c model file"}


def _check_destination(src: str, dst: Path, to: str, overwrite: bool) -> None:
    """The destination's form for `to`, then the export rule (nanogpt2/export_dir.py): before anything is loaded.
    nanoGPT's and llm.c's files are never replaced (another project's run may own them), --overwrite or not."""
    if to == "nanogpt":
        if dst.is_file() or dst.suffix in (".pt", ".bin"):
            raise NanoGPT2Error(f"--to nanogpt writes a folder (nanoGPT's out_dir: ckpt.pt, meta.pkl), but DST {dst} "
                                f"is a file name; give a folder")
        taken = [f for f in ("ckpt.pt", "meta.pkl") if (dst / f).exists()]
        if taken:
            raise NanoGPT2Error(f"{dst} already holds {' and '.join(taken)} (a nanoGPT run's own?); nanogpt2 does not "
                                f"overwrite them: give another DST folder or move them away")
        return
    if to == "llmc":
        if dst.exists() or dst.is_dir():
            raise NanoGPT2Error(f"{dst} exists; nanogpt2 does not overwrite it: give --to llmc a new file name "
                                f"(e.g. gpt2_124M.bin)")
        return
    if to == "nanogpt2":
        if dst.suffix != ".pt" or dst.is_dir():
            raise NanoGPT2Error(f"--to nanogpt2 writes one checkpoint file: give DST a .pt name (e.g. {dst.name}.pt), "
                                f"not {dst}")
        check_export_file(dst, CONVERTED_PT, overwrite, _source(src))
        return
    if dst.suffix == ".pt" or dst.is_file():
        raise NanoGPT2Error(f"--to hf writes a folder, but DST {dst} is a file name; give a folder, or --to nanogpt2")
    ExportDir.check(dst, HF_MODEL, overwrite, _source(src))


def _write_foreign(model, info: dict, dst: Path, to: str, dtype: str, src: str, log) -> Path:
    """`model` (LoRA merged on a copy) as another project's file: nanoGPT's out_dir/ckpt.pt or an llm.c model."""
    from nanogpt2 import llmc, nanogpt_format
    from nanogpt2.checkpoint import tokenizer_from_info
    from nanogpt2.model import GPT

    if not isinstance(model, GPT):
        raise NanoGPT2Error(f"--to {to} writes a GPT language model, and {src} holds a {type(model).__name__}")
    tok_info = info.get("tokenizer") or {"name": "gpt2"}
    tokenizer = tokenizer_from_info(tok_info)
    export = _merged_copy(model)
    if to == "llmc":
        if tok_info.get("name") != "gpt2" or tok_info.get("bpe_dir"):
            raise NanoGPT2Error(f"llm.c model files are GPT-2's vocabulary, and {src} reads {tok_info.get('name')!r} "
                                f"tokens; keep it as a nanogpt2 checkpoint or --to nanogpt")
        return llmc.write_model_file(export, dst, dtype, vocab_size=tokenizer.n_vocab)
    dataset = str((info.get("config") or {}).get("dataset") or "")
    dst.mkdir(parents=True, exist_ok=True)
    return nanogpt_format.write_checkpoint(export, tokenizer, dst, dataset=Path(dataset).name if dataset else "",
                                           step=info.get("step"), best_val_loss=info.get("best_val_loss"),
                                           source=src, log=log)


def convert(src: str, dst, to: str | None = None, log=_note, dtype: str | None = None, meta_pkl=None,
            overwrite: bool = False) -> dict:
    """Load `src` (anything nanogpt2.loader.load_model takes) and write it to `dst`: an HF folder (to="hf", the
    default), a nanogpt2 .pt (to="nanogpt2", or a dst ending in .pt), nanoGPT's out_dir (to="nanogpt": ckpt.pt,
    meta.pkl) or an llm.c model file (to="llmc", or a dst ending in .bin; `dtype` "float32" (default) or
    "bfloat16"), under the export rule of nanogpt2/export_dir.py (`overwrite`: --overwrite). Returns {path, file,
    sha256, params, format, architecture}."""
    from nanogpt2.checkpoint import tokenizer_from_info
    from nanogpt2.loader import load_model

    dst = Path(dst)
    to = to or {".pt": "nanogpt2", ".bin": "llmc"}.get(dst.suffix, "hf")
    if to not in FORMATS:
        raise NanoGPT2Error(f"--to must be one of {', '.join(FORMATS)}, not {to!r}")
    if dtype is not None and to != "llmc":
        raise NanoGPT2Error(f"--dtype picks the tensors of an llm.c file (--to llmc); --to {to} keeps float32")
    if src == "scratch":
        raise NanoGPT2Error("SRC 'scratch' has no weights to convert; give a model name, folder or checkpoint")
    _check_destination(src, dst, to, overwrite)
    model, info = load_model(src, log=log, meta_pkl=meta_pkl)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # a tied head once
    if to != "nanogpt2":
        _refuse_unexportable(model, FORMATS[to])  # before the line below: a refusal is the only line
    if params * 4 >= _BIG:
        print(f"writing {dst} ({params * 4 / 1e6:,.0f} MB) ...", file=sys.stderr, flush=True)
    if to == "nanogpt2":
        if (info.get("tokenizer") or {}).get("bpe_dir"):
            log(f"the tokenizer is read from {info['tokenizer']['bpe_dir']} (its encoder.json + vocab.bpe are not "
                f"GPT-2's): the checkpoint refers to that folder, keep it there")
        written = _write_pt(model, info, dst, src, overwrite, log)
        architecture = info["spec"].get("kind", "gpt")
    elif to in ("nanogpt", "llmc"):
        written = _write_foreign(model, info, dst, to, dtype or "float32", src, log)
        architecture = "GPT"
    else:
        tok_info = info.get("tokenizer") or {}
        tokenizer = tokenizer_from_info(tok_info) if tok_info else None
        try:
            save_pretrained(model, dst, tokenizer=tokenizer, log=log, overwrite=overwrite, reserved=_source(src))
        except OSError as e:  # a full disk, an unwritable folder (save_checkpoint says so itself)
            raise write_error(e, f"the HF folder {dst}", dst.parent if dst.parent.exists() else Path("."),
                              fix="free some space or choose another DST", any_os_error=True) from None
        written = dst / "model.safetensors"
        architecture = json.loads((dst / "config.json").read_text())["architectures"][0]
        params = written_params(dst)  # what was written: LoRA merged away, a tied head once
    return {"path": str(dst), "file": str(written), "sha256": file_sha256(written), "params": params,
            "format": to, "architecture": architecture,
            "description": info.get("description", src)}


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m nanogpt2.convert",
        description="Convert a GPT-2 checkpoint between formats: OpenAI's TensorFlow release, Hugging Face folders, "
                    "nanogpt2 checkpoints. See docs/conversion.md.",
        epilog="examples:\n  python -m nanogpt2.convert 124M out/gpt2-hf            # OpenAI's release -> HF folder\n"
               "  python -m nanogpt2.convert out-shakespeare out/hf       # a train.py run -> HF folder\n"
               "  python -m nanogpt2.convert path/to/hf-folder model.pt   # HF folder -> nanogpt2 checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC", help=f"a GPT-2 name ({', '.join(HF_REPOS)}), an OpenAI size "
                    f"({', '.join(OPENAI_SIZES)}; 117M, 345M), an HF folder, an OpenAI TensorFlow folder, a train.py "
                    f"run folder or a checkpoint .pt")
    ap.add_argument("dst", metavar="DST", help="an HF folder to write, a .pt checkpoint file, a nanoGPT out_dir "
                    "(--to nanogpt) or an llm.c .bin file")
    ap.add_argument("--to", choices=list(FORMATS), default=None,
                    help="output format (default: nanogpt2 when DST ends in .pt, llmc when it ends in .bin, else hf)")
    ap.add_argument("--dtype", choices=list(("float32", "bfloat16")), default=None,
                    help="the tensors of an llm.c file (--to llmc; default float32)")
    ap.add_argument("--meta_pkl", default=None, help="the meta.pkl of a nanoGPT character SRC (default: beside its "
                    "ckpt.pt, or data/<dataset>/meta.pkl)")
    ap.add_argument("--overwrite", action="store_true",
                    help="DST holds other files: replace only the files this export writes (config.json, "
                         "model.safetensors, generation_config.json; or the .pt), keep the rest, and say which; "
                         "never a train.py run folder or checkpoint")
    args = ap.parse_args(argv)
    res = convert(args.src, args.dst, args.to, dtype=args.dtype, meta_pkl=args.meta_pkl, overwrite=args.overwrite)
    what = f"HF {res['architecture']} folder" if res["format"] == "hf" else FORMATS[res["format"]]
    print(f"converted {res['description']} -> {res['path']} ({what})")
    print(f"parameters: {res['params']:,}")
    print(f"sha256: {res['sha256']}  {res['file']}")
    return res


if __name__ == "__main__":
    from nanogpt2.errors import run_cli

    run_cli(main)
