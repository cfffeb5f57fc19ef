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
from nanogpt2.loader import load_model_and_tokenizer
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

    The text is `nanogpt2.data.get_split_text(dataset, split, data_path)` (documents joined by "\\n\\n",
    as the guide joins wikitext's rows); `max_tokens` keeps only the first that many tokens (quick checks;
    bits per byte then counts the bytes of those tokens)."""
    from nanogpt2.data import get_split_text

    if max_tokens is not None and max_tokens < 2:
        raise NanoGPT2Error(f"max_tokens must be >= 2 (perplexity needs two tokens) or None, not {max_tokens}")
    text = get_split_text(dataset, split, data_path=data_path)
    ids = tokenizer.encode_ordinary(text)
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and max_tokens < len(ids):
        ids = ids[:max_tokens]
        n_bytes = len(tokenizer.decode_bytes(ids))
    res = evaluate_perplexity(model, np.asarray(ids, dtype=np.int64), n_bytes=n_bytes, **kwargs)
    res.update(dataset=dataset, split=split)
    return res


# ----------------------------------------------------------------------------------------------------
# A training run's evaluations (nanogpt2.trainer: `eval_fn` and the final test)


def loss_only(model) -> dict:
    """The forward keyword that skips the logits, for a GPT (another model given to the Trainer may not take it)."""
    return {"return_logits": False} if isinstance(model, GPT) else {}


@torch.no_grad()
def validation_loss(trainer) -> dict:
    """A run's default `eval_fn`: the mean loss over `eval_iters` validation batches (0: the whole split) of
    non-overlapping windows, each process taking every world_size-th batch; token-weighted and all-reduced.
    Returns val_loss, val_ppl."""
    cfg, dist, device = trainer.cfg, trainer.dist, trainer.device
    model = trainer.eval_model
    model.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)  # (sum of token losses, tokens)
    # The first eval_iters batches of the split (built on the CPU); this process takes every world_size-th.
    batches = eval_windows(trainer.val_data, cfg.block_size, cfg.batch_size, max_batches=cfg.eval_iters or None)
    for i, (x, y) in enumerate(batches):
        if i % dist.world_size != dist.rank:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with trainer.autocast():
            _, loss = model(x, y, **loss_only(trainer.raw_model))  # the loss alone: no (B, T, vocab) logits
        n = (y != IGNORE_INDEX).sum()
        total += torch.stack([loss.double() * n, n.double()])
    dist.all_reduce(total)
    loss_sum, count = total.tolist()
    if count == 0:
        raise NanoGPT2Error("the validation split yields no full window; lower block_size")
    val_loss = loss_sum / count
    return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}


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
# CLI


def main(argv=None):
    """The perplexity command (`--task lm`; nanogpt2.evaluate_cli dispatches the other tasks)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(
        prog="python -m nanogpt2.evaluate",
        description="Strided perplexity (HF's method) and bits per byte of a model on a dataset split.")
    ap.add_argument("--task", default="lm", choices=("lm", "classify"),
                    help="lm: perplexity (this command); classify: a classifier's accuracy (--task classify --help)")
    ap.add_argument("--init_from", default="gpt2", help="GPT-2 name, OpenAI size (124M, ...), HF or OpenAI folder, "
                    "train.py out_dir or checkpoint file, nanoGPT ckpt.pt or out_dir, llm.c model .bin")
    ap.add_argument("--meta_pkl", default=None, help="the meta.pkl of a nanoGPT character model (default: beside its "
                    "ckpt.pt, or data/<dataset>/meta.pkl)")
    ap.add_argument("--dataset", default="wikitext2", help="dataset name (see nanogpt2.data.DATASETS) or a text file")
    ap.add_argument("--split", default="test", help="split to score (wikitext: train/validation/test)")
    ap.add_argument("--data_path", default=None, help="local copy of the dataset (skips the download)")
    ap.add_argument("--stride", type=int, default=512, help="tokens between window starts (<= block_size)")
    ap.add_argument("--block_size", type=int, default=None, help="window length (default: the model's context)")
    ap.add_argument("--batch_size", type=int, default=1, help="windows per forward pass")
    ap.add_argument("--max_tokens", type=int, default=None, help="score only the first N tokens (quick checks)")
    ap.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="autocast dtype; auto = bfloat16 on a GPU that supports it (else float16), float32 elsewhere")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args(argv)
    if args.task != "lm":
        raise NanoGPT2Error(f"nanogpt2.evaluate.main scores --task lm; --task {args.task} goes through the command "
                            f"(python -m nanogpt2.evaluate, nanogpt2.evaluate_cli.main)")
    # Checked before the model is loaded (or downloaded) and the text tokenized.
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.max_tokens is not None and args.max_tokens < 2:
        raise NanoGPT2Error(f"--max_tokens must be >= 2 (perplexity needs two tokens), not {args.max_tokens}; "
                            f"leave it out to score the whole split")
    for name in ("stride", "batch_size", "block_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise NanoGPT2Error(f"--{name} must be >= 1, not {value}")

    model, tok, desc = load_model_and_tokenizer(args.init_from, device, meta_pkl=args.meta_pkl)
    res = evaluate_dataset(model, tok, args.dataset, args.split, data_path=args.data_path, max_tokens=args.max_tokens,
                           block_size=args.block_size, stride=args.stride, batch_size=args.batch_size,
                           device=device, dtype=dtype, progress=not args.json)
    res["model"] = desc
    if args.json:
        print(json.dumps(res))
    else:
        print(f"model {desc}\n{args.dataset} {args.split}: {res['tokens']:,} tokens scored of {res['tokens_total']:,}, "
              f"{res['windows']} windows of {res['block_size']}, stride {res['stride']}")
        print(f"loss {res['loss']:.4f}  perplexity {res['ppl']:.3f}  bits/byte {res.get('bits_per_byte', float('nan')):.4f}  "
              f"({res['seconds']:.1f}s)")
    return res


if __name__ == "__main__":  # the command: nanogpt2.evaluate_cli, above every task it dispatches to
    from nanogpt2.evaluate_cli import main as evaluate_command

    run_cli(evaluate_command)
