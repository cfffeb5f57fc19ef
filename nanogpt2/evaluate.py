"""
Perplexity with a sliding window, the way Hugging Face's perplexity guide computes it.

A text longer than the context is cut into windows of `block_size` tokens that start every `stride`
tokens; each window scores only the tokens that no earlier window scored, so every token is predicted
once, with between block_size - stride and block_size - 1 tokens of context. stride = block_size gives
disjoint windows (fast, less context: the first token of each window is not scored); a smaller stride
gives more context per prediction (slower, lower perplexity). The windows, the scored tokens and hence the
numbers are those of the guide's loop (huggingface.co/docs/transformers/perplexity), so they compare with
published GPT-2 figures; the negative log-likelihoods are summed token by token (the guide's weighting
of each window's mean by "valid tokens - 1" miscounts overlapping windows by one token; see
docs/sampling.md). Bits per byte = loss / ln 2 * tokens / bytes, the tokenizer-independent figure.

    from nanogpt2.evaluate import evaluate_perplexity
    res = evaluate_perplexity(model, token_ids, stride=512)   # {"loss", "ppl", "tokens", ...}
    python -m nanogpt2.evaluate --init_from gpt2 --dataset wikitext2 --split test --stride 512
    python -m nanogpt2.evaluate --task classify --init_from RUN --dataset ag_news   # accuracy (nanogpt2.evaluate_cli
                                                                                    # dispatches to nanogpt2.classify)

References: HF transformers docs, "Perplexity of fixed-length models"; Gao et al. 2020 (The Pile),
bits per byte.
"""

import argparse
import json
import math
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch

from nanogpt2.errors import NanoGPT2Error, run_cli
from nanogpt2.model import GPT, IGNORE_INDEX
from nanogpt2.config import RunConfig, settings_of
from nanogpt2.loader import load_for_inference
from nanogpt2.runtime import DTYPES, autocast, resolve_device, resolve_dtype
from nanogpt2.samplers import eval_windows, stride_windows

# ----------------------------------------------------------------------------------------------------
# Perplexity


@torch.inference_mode()
def evaluate_perplexity(
    model,
    token_ids,
    block_size: Optional[int] = None,
    stride: int = 512,
    batch_size: int = 1,
    device=None,
    dtype=None,
    n_bytes: Optional[int] = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> dict:
    """Strided perplexity of `model` on one long sequence of token ids (1-D tensor, list or np array).

    block_size: window length (default and maximum: the model's context_length); stride: step between window
    starts (clamped to block_size); batch_size: windows per forward pass; dtype: None/"float32", or
    "bfloat16"/"float16" for autocast (the softmax is always fp32); n_bytes: UTF-8 bytes of the text
    the ids came from, for bits per byte. Sharded (DDP): process `rank` of `world_size` scores every
    world_size-th batch of windows and `all_reduce` (an in-place sum over the processes, e.g.
    torch.distributed.all_reduce; called once, on `device`) combines the sums, so every process returns the
    whole result.
    Returns {"loss" (mean NLL per scored token, nats), "ppl", "tokens" (scored), "tokens_total", "windows",
    "block_size", "stride", and "bits_per_byte" when n_bytes is given}.
    """
    context = model.context_length  # block_size, less any positions the model keeps for itself (a prefix)
    block = context if block_size is None else int(block_size)
    if block > context:
        raise NanoGPT2Error(f"block_size {block} is longer than the model's context ({context} tokens)")
    stride = min(int(stride), block)
    if batch_size < 1:
        raise NanoGPT2Error(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size or (world_size > 1 and all_reduce is None):
        raise ValueError(f"sharded evaluation needs 0 <= rank < world_size and an all_reduce (rank {rank}, world_size {world_size})")
    device = torch.device(next(model.parameters()).device if device is None else device)
    ids = _token_ids(token_ids, model.config.vocab_size)
    n = ids.numel()
    windows = stride_windows(n, block, stride)

    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64)
    scored, done = 0, 0
    t0 = shown = time.time()
    tty = sys.stderr.isatty()
    try:
        for batch_number, group in enumerate(_window_groups(windows, batch_size)):
            done += len(group)
            if batch_number % world_size != rank:  # another process's batch
                continue
            x, y = _window_batch(ids, group, device)  # (G, L), (G, L)
            n_scored = int((y != IGNORE_INDEX).sum())  # >= 1: every window scores at least its last token
            with autocast(device, dtype):
                # the mean over the scored targets, in chunks: no (G, L, V) logits (GPT-2: 206 MB per window)
                _, loss = model(x, y, return_logits=False)
            nll_sum += loss.double().cpu() * n_scored
            scored += n_scored
            # on a terminal one line redrawn with \r; in a log (not a tty) a line every 10 s and the last
            if progress and (tty or done == len(windows) or time.time() - shown >= 10):
                shown = time.time()
                line = f"{done}/{len(windows)} windows, running ppl {math.exp(nll_sum.item() / scored):.3f}"
                print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    finally:
        model.train(was_training)
    if progress and tty:
        print(file=sys.stderr)
    if all_reduce is not None:
        totals = torch.tensor([nll_sum.item(), float(scored)], dtype=torch.float64, device=device)  # (2,)
        all_reduce(totals)
        nll_sum, scored = totals[0].cpu(), int(totals[1].item())

    loss = nll_sum.item() / scored
    res = {"loss": loss, "ppl": math.exp(loss), "tokens": scored, "tokens_total": n, "windows": len(windows),
           "block_size": block, "stride": stride, "seconds": time.time() - t0}
    if n_bytes is not None:
        res["bytes"] = int(n_bytes)
        res["bits_per_byte"] = loss / math.log(2) * n / n_bytes
    return res


def _token_ids(token_ids, vocab_size: int) -> torch.Tensor:
    """The ids as a 1-D int64 tensor, checked: at least 2, all inside the vocabulary."""
    # a read-only memmap is copied to int64 here (torch cannot wrap a non-writable array)
    ids = (token_ids if torch.is_tensor(token_ids) else torch.from_numpy(np.array(token_ids, dtype=np.int64))).long().reshape(-1)
    if ids.numel() < 2:
        raise NanoGPT2Error(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise NanoGPT2Error(f"token ids outside [0, {vocab_size}): were they made with the model's tokenizer?")
    return ids


def _window_groups(windows: list, batch_size: int):
    """The windows in batches of up to batch_size: windows of equal length go through the model together (only
    the last window can be shorter)."""
    i = 0
    while i < len(windows):
        L = windows[i][1] - windows[i][0]
        group = [windows[i]]
        while len(group) < batch_size and i + len(group) < len(windows):
            w = windows[i + len(group)]
            if w[1] - w[0] != L:
                break
            group.append(w)
        yield group
        i += len(group)


def _window_batch(ids: torch.Tensor, group: list, device) -> tuple:
    """Inputs (G, L) and next-token targets (G, L) of a group of (begin, end, first scored) windows; targets
    IGNORE_INDEX except the tokens each window scores (first..end-1)."""
    L = group[0][1] - group[0][0]
    x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)  # (G, L)
    y = torch.full((len(group), L), IGNORE_INDEX, dtype=torch.long)  # (G, L) next-token targets
    for r, (b, e, first) in enumerate(group):
        # logits at position p predict token b + p + 1; score tokens first..e-1
        y[r, first - b - 1:e - b - 1] = ids[first:e]
    return x, y.to(device)


def evaluate_text(model, tokenizer, text: str, **kwargs) -> dict:
    """evaluate_perplexity on a text: tokenized with `tokenizer.encode_ordinary`, bits per byte included."""
    ids = tokenizer.encode_ordinary(text)
    return evaluate_perplexity(model, np.asarray(ids, dtype=np.int64), n_bytes=len(text.encode("utf-8")), **kwargs)


def evaluate_dataset(model, tokenizer, dataset: str = "wikitext2", split: str = "test", data_path=None,
                     max_tokens: Optional[int] = None, **kwargs) -> dict:
    """Strided perplexity on a dataset split by name (e.g. the training loop's final test evaluation).

    A split the dataset's text has of its own is `nanogpt2.data.get_split_text(dataset, split, data_path)`
    (documents joined by "\\n\\n", as the guide joins wikitext's rows); the train / val split of a text without
    split files (Tiny Shakespeare, a local file) is the cut by val_fraction that train.py makes, the tokens of
    `prepare_dataset(dataset, tokenizer).tokens(split)`. `max_tokens` keeps only the first that many tokens
    (quick checks; bits per byte then counts the bytes of those tokens)."""
    from nanogpt2.data import get_split_text, own_splits, prepare_dataset, split_name

    if max_tokens is not None and max_tokens < 2:
        raise NanoGPT2Error(f"max_tokens must be >= 2 (perplexity needs two tokens) or None, not {max_tokens}")
    s, have = split_name(split), own_splits(dataset)
    if s in have or "all" not in have:  # a split of its own (or none: get_split_text says which there are)
        text = get_split_text(dataset, split, data_path=data_path)
        ids, n_bytes = tokenizer.encode_ordinary(text), len(text.encode("utf-8"))
    elif s in ("train", "val"):
        ds = prepare_dataset(dataset, tokenizer=tokenizer, data_path=data_path)
        ids, n_bytes = ds.tokens(s), ds.meta["splits"][s].get("text_bytes")
    else:
        raise NanoGPT2Error(f"{dataset} has no {s} split: its text is one stream that train.py cuts into train and val "
                            f"by val_fraction; score split val (--split val)")
    if max_tokens is not None and max_tokens < len(ids):
        ids = ids[:max_tokens]
        n_bytes = len(tokenizer.decode_bytes(list(map(int, ids))))
    res = evaluate_perplexity(model, np.asarray(ids, dtype=np.int64), n_bytes=n_bytes, **kwargs)
    res.update(dataset=dataset, split=split)
    return res


# ----------------------------------------------------------------------------------------------------
# A training run's evaluations (nanogpt2.trainer: `eval_fn` and the final test)


def loss_only(model) -> dict:
    """The forward keyword that skips the logits, for a GPT (another model given to the Trainer may not take it)."""
    return {"return_logits": False} if isinstance(model, GPT) else {}


@torch.no_grad()
def windows_loss(model, tokens, block_size: int, batch_size: int, max_batches: Optional[int] = None, device=None,
                 dtype=None, *, rank: int = 0, world_size: int = 1,
                 all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, forward_kwargs=None) -> dict:
    """The mean loss over the windows a run's validation scores (nanogpt2.samplers.eval_windows): non-overlapping
    windows of block_size + 1 tokens in batches of batch_size, the first `max_batches` batches (None: all), each
    target scored once; process `rank` takes every world_size-th batch and `all_reduce` (an in-place sum) combines
    the sums. Token-weighted. Returns {"loss", "ppl", "tokens" (scored), "windows"}."""
    device = torch.device(next(model.parameters()).device if device is None else device)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)  # (sum of token losses, tokens)
    windows, t0 = 0, time.time()
    # The first max_batches batches of the split (built on the CPU); this process takes every world_size-th.
    try:
        for i, (x, y) in enumerate(eval_windows(tokens, block_size, batch_size, max_batches=max_batches)):
            windows += len(x)
            if i % world_size != rank:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # (B, T), (B, T)
            with autocast(device, dtype):
                _, loss = model(x, y, **(forward_kwargs or {}))  # the loss alone: no (B, T, vocab) logits
            n = (y != IGNORE_INDEX).sum()
            total += torch.stack([loss.double() * n, n.double()])
    finally:
        model.train(was_training)
    if all_reduce is not None:
        all_reduce(total)
    loss_sum, count = total.tolist()
    if count == 0:
        raise NanoGPT2Error("the validation split yields no full window; lower block_size")
    loss = loss_sum / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(count), "windows": windows,
            "seconds": time.time() - t0}


def validation_loss(trainer) -> dict:
    """A run's default `eval_fn`: `windows_loss` over `eval_iters` validation batches (0: the whole split), all
    processes together. Returns val_loss, val_ppl."""
    cfg, dist = trainer.cfg, trainer.dist
    res = windows_loss(trainer.eval_model, trainer.val_data, cfg.block_size, cfg.batch_size, cfg.eval_iters or None,
                       trainer.device, trainer.dtype, rank=dist.rank, world_size=dist.world_size,
                       all_reduce=dist.all_reduce, forward_kwargs=loss_only(trainer.raw_model))
    return {"val_loss": res["loss"], "val_ppl": res["ppl"]}


@torch.no_grad()
def test_perplexity(trainer) -> Optional[dict]:
    """A run's final test evaluation (`test_eval`): strided perplexity of its last weights on the dataset's own
    test split, when it has one (else None) — the numbers papers report. Under DDP every process scores its
    share of the windows and the sums are all-reduced."""
    cfg, ds = trainer.cfg, getattr(trainer, "dataset", None)
    if not (cfg.test_eval and ds is not None and "test" in ds.meta.get("splits", {})):
        return None
    block = min(cfg.block_size, trainer.raw_model.config.block_size)
    return evaluate_perplexity(trainer.raw_model, ds.tokens("test"), block_size=block,
                               stride=min(cfg.test_stride, block), batch_size=cfg.batch_size, device=trainer.device,
                               dtype=None if trainer.dtype == "float32" else DTYPES[trainer.dtype],
                               n_bytes=ds.meta["splits"]["test"].get("text_bytes"), rank=trainer.dist.rank,
                               world_size=trainer.dist.world_size, all_reduce=trainer.dist.all_reduce)


# ----------------------------------------------------------------------------------------------------
# A run's own data (`python -m nanogpt2.evaluate --init_from RUN`)

LM_TASKS = ("lm", "distill")  # finetune.py tasks that train on a token stream (train.py's runs have no task)


def run_config(info: dict, dataset: Optional[str] = None) -> Optional[RunConfig]:
    """The settings of the run a checkpoint comes from (load_model's info) when the data to score is the run's own
    (`dataset` None or the run's): None for another dataset or a model without a run (a GPT-2 name, an HF or
    OpenAI folder, an old checkpoint)."""
    saved = info.get("config") or {}
    if not isinstance(saved, dict) or "dataset" not in saved or dataset not in (None, saved["dataset"]):
        return None
    if saved.get("task", "lm") not in LM_TASKS:
        if dataset is not None:
            return None
        raise NanoGPT2Error(f"{info['path']} is a finetune.py --task {saved['task']} run, not a language model of a "
                            f"token stream: score it with --task {saved['task']} (if it has one), or name --dataset")
    known = settings_of(RunConfig)
    return RunConfig.from_dict({k: v for k, v in saved.items() if k in known}, where=f"the run settings in {info['path']}")


def evaluate_run(model, tokenizer, cfg: RunConfig, split: str = "val", *, stride: Optional[int] = None,
                 block_size: Optional[int] = None, batch_size: Optional[int] = None, eval_iters: Optional[int] = None,
                 max_tokens: Optional[int] = None, device=None, dtype=None, progress: bool = False) -> dict:
    """A run's model scored on its own data (`cfg`: its RunConfig): the tokens train.py made from its dataset,
    tokenizer, data_path and val_fraction (`nanogpt2.data.run_dataset`). Without `stride`, `val` / `train` are
    scored on the windows of the run's validation (`windows_loss`: block_size, batch_size, the first eval_iters
    batches; 0: all), so the loss is the one train.py reported for the same weights, and `test` as the run's final
    test evaluation (strided, test_stride); with `stride`, strided perplexity over the whole split. The other
    arguments override the run's settings."""
    from nanogpt2.checkpoint import tokenizer_info
    from nanogpt2.data import run_dataset, split_name

    ds = run_dataset(cfg)
    if tokenizer_info(tokenizer) != tokenizer_info(ds.tokenizer()):
        raise NanoGPT2Error(f"the run's data ({cfg.dataset}) is tokenized with {ds.tokenizer().name!r}, its model "
                            f"with {tokenizer.name!r}; name the data to score with --dataset")
    s = split_name(split)
    if s not in ds.splits:
        raise NanoGPT2Error(f"the run's dataset {cfg.dataset} has no {s} split (it has {', '.join(ds.splits)}); "
                            f"pick --split {' or --split '.join(ds.splits)}")
    ids = ds.tokens(s)
    n_bytes = ds.meta["splits"][s].get("text_bytes")
    if max_tokens is not None and max_tokens < len(ids):
        ids, n_bytes = ids[:max_tokens], None
    batch = batch_size or cfg.batch_size
    if stride is None and s != "test":  # the run's validation windows
        block = block_size or cfg.block_size
        if block > model.context_length:
            raise NanoGPT2Error(f"--block_size {block} is longer than the model's context ({model.context_length} tokens)")
        batches = cfg.eval_iters if eval_iters is None else eval_iters
        res = windows_loss(model, ids, block, batch, batches or None, device, dtype)
        res.update(block_size=block, stride=None, batch_size=batch, eval_iters=batches, tokens_total=len(ids))
    else:
        block = block_size or min(cfg.block_size, model.context_length)
        res = evaluate_perplexity(model, ids, block_size=block, stride=stride or min(cfg.test_stride, block),
                                  batch_size=batch, device=device, dtype=dtype, n_bytes=n_bytes, progress=progress)
    res.update(dataset=cfg.dataset, split=s, tokenizer=tokenizer.name)
    return res


# ----------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m nanogpt2.evaluate",
        description="Loss and perplexity of a model on a dataset split: a run folder on its own data and validation "
                    "windows by default, else strided perplexity (HF's method) and bits per byte.")
    ap.add_argument("--task", default="lm", choices=("lm", "classify"),
                    help="lm: perplexity (this command); classify: a classifier's accuracy (--task classify --help)")
    ap.add_argument("--init_from", default="gpt2", help="GPT-2 name, OpenAI size (124M, ...), HF or OpenAI folder, "
                    "train.py out_dir or checkpoint file, nanoGPT ckpt.pt or out_dir, llm.c model .bin")
    ap.add_argument("--meta_pkl", default=None, help="the meta.pkl of a nanoGPT character model (default: beside its "
                    "ckpt.pt, or data/<dataset>/meta.pkl)")
    ap.add_argument("--dataset", default=None,
                    help="dataset name (see nanogpt2.data.DATASETS) or a text file (default: a run's own, else wikitext2)")
    ap.add_argument("--split", default=None,
                    help="train, val or test (default: val for a run on its own data, the split it validated on; else test)")
    ap.add_argument("--data_path", default=None, help="local copy of the dataset (skips the download; default: a run's own)")
    ap.add_argument("--stride", type=int, default=None,
                    help="tokens between window starts, <= block_size (default 512; a run's val / train split: its "
                         "validation windows unless given, its test split: its test_stride)")
    ap.add_argument("--block_size", type=int, default=None, help="window length (default: the run's, else the model's context)")
    ap.add_argument("--batch_size", type=int, default=None, help="windows per forward pass (default: the run's, else 1)")
    ap.add_argument("--eval_iters", type=int, default=None,
                    help="a run's validation windows: batches scored (default: the run's eval_iters; 0: the whole split)")
    ap.add_argument("--max_tokens", type=int, default=None, help="score only the first N tokens (quick checks)")
    ap.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="autocast dtype; auto = bfloat16 on a GPU that supports it (else float16), float32 elsewhere")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return ap


def _check_args(args) -> None:
    """The options' ranges, before the model is loaded (or downloaded) and the text tokenized."""
    if args.task != "lm":
        raise NanoGPT2Error(f"nanogpt2.evaluate.main scores --task lm; --task {args.task} goes through the command "
                            f"(python -m nanogpt2.evaluate, nanogpt2.evaluate_cli.main)")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise NanoGPT2Error(f"--max_tokens must be >= 2 (perplexity needs two tokens), not {args.max_tokens}; "
                            f"leave it out to score the whole split")
    for name in ("stride", "batch_size", "block_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise NanoGPT2Error(f"--{name} must be >= 1, not {value}")
    if args.eval_iters is not None and args.eval_iters < 0:
        raise NanoGPT2Error(f"--eval_iters must be >= 0 (0: the whole split), not {args.eval_iters}")


def _describe(res: dict, own: bool) -> str:
    """The line saying what was scored."""
    what = (f"{res['dataset']} {res['split']}" + (" (the run's own data)" if own else "") + f": {res['tokens']:,} "
            f"tokens scored of {res['tokens_total']:,}, {res['windows']} windows of {res['block_size']}")
    if res.get("stride") is not None:
        return f"{what}, stride {res['stride']}"
    batches = f"at most {res['eval_iters']} batches" if res["eval_iters"] else "every batch"
    return (f"{what} ({batches} of {res['batch_size']}: the run's validation; --stride N for strided perplexity, "
            f"--eval_iters 0 for the whole split)")


def main(argv=None):
    """The perplexity command (`--task lm`; nanogpt2.evaluate_cli dispatches the other tasks)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    _check_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    model, tok, info = load_for_inference(args.init_from, device, meta_pkl=args.meta_pkl)
    cfg = run_config(info, args.dataset)
    if cfg is not None:  # the run's own data: its tokens, its validation windows
        if args.data_path is not None:
            cfg = cfg.replace(data_path=args.data_path)
        res = evaluate_run(model, tok, cfg, args.split or "val", stride=args.stride, block_size=args.block_size,
                           batch_size=args.batch_size, eval_iters=args.eval_iters, max_tokens=args.max_tokens,
                           device=device, dtype=dtype, progress=not args.json)
    else:
        if args.eval_iters is not None:
            raise NanoGPT2Error("--eval_iters picks a run's validation windows, on its own data; here use --stride")
        res = evaluate_dataset(model, tok, args.dataset or "wikitext2", args.split or "test", data_path=args.data_path,
                               max_tokens=args.max_tokens, block_size=args.block_size, stride=args.stride or 512,
                               batch_size=args.batch_size or 1, device=device, dtype=dtype, progress=not args.json)
    res["model"] = info["description"]
    if args.json:
        print(json.dumps(res))
    else:
        print(f"model {res['model']}\n{_describe(res, cfg is not None)}")
        bpb = f"  bits/byte {res['bits_per_byte']:.4f}" if res.get("bits_per_byte") is not None else ""
        print(f"loss {res['loss']:.4f}  perplexity {res['ppl']:.3f}{bpb}  ({res['seconds']:.1f}s)")
    return res


if __name__ == "__main__":  # the command: nanogpt2.evaluate_cli, above every task it dispatches to
    from nanogpt2.evaluate_cli import main as evaluate_command

    run_cli(evaluate_command)
