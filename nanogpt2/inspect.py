"""
Looking inside a model: its attention maps and its trainability table.

    python -m nanogpt2.inspect attention --init_from RUN --text "The cat sat on the mat" --out attention.png
    python -m nanogpt2.inspect attention --init_from gpt2 --text "..." --layers 0,11 --heads 0,3 --out a.png
    python -m nanogpt2.inspect params --init_from RUN [--grouped]
    python -m nanogpt2.inspect methods          # trainable parameters of each fine-tuning method on GPT-2 124M

- `attention`: the attention probabilities of the chosen layers (default all) and heads (default `mean`, the
  average over the heads; `all`, or indices such as 0,3; negative indices count from the end) over the text's
  tokens, a grid of heatmaps (a row per layer, a column per head), the axes labelled with the token strings (a
  space shown as `·`). Any model source the loader takes (GPT-2 names, HF and OpenAI folders, run folders and
  checkpoints, classifiers, PEFT runs); the positions a prefix or a prompt adds before the text are one more
  column, `[P virtual]`, holding the attention they take together. The probabilities come from the model's explicit
  attention path (`CausalSelfAttention.keep_attention`, model.py, which knows nothing of this module) and equal
  transformers' `output_attentions`. matplotlib is imported only here, and only to draw: without it the command
  is one error line.
- `params`: every parameter tensor, trainable or frozen, with its shape and count, then peft's line (total /
  trainable / ratio); `--grouped` (and `finetune.py` at start-up) shows the blocks that agree as one row, `h.[0-11]`.
  A run folder's model is rebuilt with its PEFT method (its base frozen), and a finetune.py run's config re-applies
  what its method trained (selective freezing, a classifier's head).
- `methods`: the table of docs/peft.md, computed here on GPT-2 124M's shapes built on the meta device (no memory,
  no weights): each method as nanogpt2.peft applies it, its trainable count and share.
"""

import argparse
import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from nanogpt2.errors import NanoGPT2Error, run_cli
from nanogpt2.model import GPT, CausalSelfAttention, GPTConfig
from nanogpt2.optim import set_trainable
from nanogpt2.peft import apply_adapters, apply_lora, apply_prefix, apply_prompt, trainable_report

# ----------------------------------------------------------------------------------------------------
# Attention maps


def attention_modules(model: nn.Module) -> list:
    """The model's attention modules in layer order (wrapped ones too, e.g. under adapters)."""
    mods = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    if not mods:
        raise NanoGPT2Error(f"a {type(model).__name__} has no GPT-2 attention layers to look at")
    return sorted(mods, key=lambda m: m.layer_idx)


@torch.no_grad()
def attention_maps(model: nn.Module, idx: torch.Tensor, layers=None) -> dict:
    """{layer: attention probabilities (B, n_head, T, S)} of one forward of `idx` (B, T) through `model` (a GPT, a
    classifier, ... : anything called as model(idx)); S = T, plus the virtual positions of a prefix or a prompt,
    which come first. layers: indices (default all)."""
    mods = attention_modules(model)
    layers = range(len(mods)) if layers is None else layers
    chosen = [mods[i] for i in layers]
    try:
        for m in chosen:
            m.keep_attention = True
        model(idx)
        return {i: m.last_attention for i, m in zip(layers, chosen)}
    finally:
        for m in chosen:
            m.keep_attention = False
            m.last_attention = None


def parse_indices(text: str, n: int, what: str) -> list:
    """'all' -> 0..n-1; '0,3,-1' -> [0, 3, n-1], each checked to be in range."""
    if text.strip() == "all":
        return list(range(n))
    try:
        raw = [int(s) for s in text.split(",")]
    except ValueError:
        raise NanoGPT2Error(f"--{what} must be 'all' or comma-separated indices such as 0,3,-1, not {text!r}") from None
    bad = [i for i in raw if not -n <= i < n]
    if bad:
        raise NanoGPT2Error(f"--{what} {bad[0]} is out of range: the model has {n} {what} (0..{n - 1}, or -{n}..-1)")
    return [i % n for i in raw]


def token_label(text: str) -> str:
    """A token string made visible on an axis: spaces as ·, newlines and tabs escaped."""
    return text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t") or "∅"


def heatmaps(maps: dict, heads, tokens: list) -> list:
    """The (title, (T, T + v) array) panels to draw: per layer, per head (or the mean over heads: heads ==
    'mean'), the virtual positions (if any) summed into one first column."""
    panels = []
    T = len(tokens)
    for layer, att in maps.items():
        att = att[0].float()  # (nh, T, S)
        chosen = [("mean", att.mean(0))] if heads == "mean" else [(f"head {h}", att[h]) for h in heads]
        for name, a in chosen:  # a: (T, S)
            if a.size(-1) > T:
                a = torch.cat([a[:, :-T].sum(-1, keepdim=True), a[:, -T:]], dim=1)  # (T, 1 + T)
            panels.append((f"layer {layer}, {name}", a.numpy()))
    return panels


def plot_attention(panels: list, tokens: list, virtual: int, columns: int, out, title: str) -> Path:
    """A grid of heatmaps (`columns` a row), query tokens down, key tokens across; saved to `out` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NanoGPT2Error("drawing attention maps needs matplotlib, which is not installed: pip install matplotlib") from None
    keys = ([f"[{virtual} virtual]"] if virtual else []) + tokens
    rows = -(-len(panels) // columns)
    side = max(3.0, 0.28 * len(keys) + 1.2)
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns, side * rows), squeeze=False)
    for ax, (name, a) in zip(axes.flat, panels):
        im = ax.imshow(a, cmap="viridis", vmin=0.0, vmax=max(float(a.max()), 1e-9), aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_xlabel("attends to", fontsize=8)
        ax.set_ylabel("query token", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------------
# The trainability table


def trainability_rows(model: nn.Module) -> list:
    """(name, trainable, shape, count) of every parameter tensor (a tied tensor listed once)."""
    return [(n, p.requires_grad, tuple(p.shape), p.numel()) for n, p in model.named_parameters()]


def _ranges(blocks: list) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    spans, start = [], blocks[0]
    for prev, cur in zip(blocks, blocks[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return ",".join(spans)


def grouped_rows(rows: list) -> list:
    """The rows with the blocks that agree (same tensor, shape and trainability) as one, `h.[0-11]`, the count
    of one block times their number: (name, trainable, shape, count, n_blocks)."""
    groups, order = {}, []
    for name, trainable, shape, count in rows:
        m = re.search(r"(?:^|\.)h\.(\d+)\.", name)
        key = (re.sub(r"((?:^|\.)h\.)\d+\.", r"\1{}.", name, count=1) if m else name, trainable, shape)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(int(m.group(1)) if m else None)
    out = []
    for key in order:
        (pattern, trainable, shape), blocks = key, groups[key]
        name = pattern.format(f"[{_ranges(blocks)}]") if blocks[0] is not None else pattern
        out.append((name, trainable, shape, len(blocks) * math.prod(shape), len(blocks)))
    return out


def trainability_table(model: nn.Module, grouped: bool = False) -> str:
    """Every tensor trainable or frozen with its shape and count (grouped: blocks that agree shown once), then
    peft's line: `trainable params: N || all params: M || trainable%: P`."""
    rows = trainability_rows(model)
    shown = grouped_rows(rows) if grouped else [(*r, 1) for r in rows]
    width = max(len(r[0]) for r in shown)
    lines = [f"{'parameter':<{width}}  {'state':9}  {'shape':>14}  {'count':>13}"]
    for name, trainable, shape, count, n in shown:
        times = f"{n} x " if n > 1 else ""
        lines.append(f"{name:<{width}}  {'trainable' if trainable else 'frozen':9}  {str(shape):>14}  "
                     f"{times + format(count // n, ','):>13}")
    return "\n".join([*lines, trainable_report(model)])


def trainable_as_run(model: nn.Module, run_config: dict) -> None:
    """What a finetune.py run trained, on its rebuilt model: its method's set_trainable (selective freezing; a
    classifier's head trains under every method). A train.py run, or a model with no run, keeps what it loaded."""
    method = (run_config or {}).get("method")
    if method is None:
        return
    head = ("score.*",) if hasattr(model, "score") else ("transformer.ln_f.*", "lm_head.*", "transformer.wte.*")
    set_trainable(model, method, head, head if hasattr(model, "score") else (), run_config.get("freeze_layers", ""),
                  bool(run_config.get("freeze_embeddings")), bool(run_config.get("freeze_head")))


# ----------------------------------------------------------------------------------------------------
# The methods table of docs/peft.md (GPT-2 124M, computed on the meta device)

METHOD_ROWS = (  # (method, setting, how to apply it to a fresh GPT)
    ("full", "every weight", lambda m: None),
    ("LoRA", "r=4, alpha=8, c_attn", lambda m: apply_lora(m, 4, 8.0, ["c_attn"])),
    ("LoRA", "r=16, alpha=32, c_attn, c_proj, c_fc", lambda m: apply_lora(m, 16, 32.0, ["c_attn", "c_proj", "c_fc"])),
    *[("adapters", f"bottleneck {k} (+ LayerNorms)", lambda m, k=k: apply_adapters(m, k)) for k in (32, 64, 256)],
    *[("prefix", f"{P} virtual tokens", lambda m, P=P: apply_prefix(m, P)) for P in (20, 50)],
    *[("prefix", f"{P} virtual tokens, projection 512", lambda m, P=P: apply_prefix(m, P, 512)) for P in (20, 50)],
    *[("prompt", f"{P} virtual tokens", lambda m, P=P: apply_prompt(m, P)) for P in (20, 50)],
    *[("selective", f"blocks 0-{b} frozen", lambda m, b=b: set_trainable(m, "selective", freeze_layers=",".join(
        str(i) for i in range(b + 1)))) for b in (3, 5, 9)],
)


def method_counts(config: GPTConfig = None) -> list:
    """[(method, setting, trainable, total)] of METHOD_ROWS on a GPT of `config` (default GPT-2 124M), built on the
    meta device; totals count what a method adds, trainable% is trainable / total (peft's)."""
    rows = []
    for method, setting, apply in METHOD_ROWS:
        with torch.device("meta"):
            model = GPT(config or GPTConfig())
            apply(model)
        params = list(model.parameters())
        rows.append((method, setting, sum(p.numel() for p in params if p.requires_grad),
                     sum(p.numel() for p in params)))
    return rows


def methods_markdown(config: GPTConfig = None) -> str:
    lines = ["| method | setting | trainable | all parameters | trainable % |", "|---|---|---:|---:|---:|"]
    for method, setting, trainable, total in method_counts(config):
        lines.append(f"| {method} | {setting} | {trainable:,} | {total:,} | {100 * trainable / total:.4f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# python -m nanogpt2.inspect


def attention_main(args) -> Path:
    from nanogpt2.loader import load_model_and_tokenizer
    from nanogpt2.runtime import resolve_device

    if not args.text:
        raise NanoGPT2Error("--text is empty: give the text whose attention to draw")
    device = resolve_device(args.device)
    model, tok, desc = load_model_and_tokenizer(args.init_from, device)
    mods = attention_modules(model)
    layers = parse_indices(args.layers, len(mods), "layers")
    n_head = mods[0].n_head
    heads = "mean" if args.heads == "mean" else parse_indices(args.heads, n_head, "heads")
    ids = tok.encode_ordinary(args.text)
    context = getattr(model, "context_length", model.config.block_size)
    if len(ids) > min(context, args.max_tokens):
        raise NanoGPT2Error(f"--text is {len(ids)} tokens; draw at most {min(context, args.max_tokens)} (the model's "
                            f"context, or --max_tokens for readable axes): shorten it")
    maps = attention_maps(model, torch.tensor([ids], device=device), layers)
    tokens = [token_label(tok.decode([i])) for i in ids]
    virtual = next(iter(maps.values())).size(-1) - len(ids)
    panels = heatmaps({k: v.cpu() for k, v in maps.items()}, heads, tokens)
    columns = 1 if heads == "mean" else len(heads)
    if heads == "mean":  # one map a layer: lay the layers out in a near-square grid
        columns = min(len(panels), max(1, round(len(panels) ** 0.5)))
    out = plot_attention(panels, tokens, virtual, columns, args.out, f"{desc}: attention")
    print(f"wrote {out} ({len(panels)} maps: layers {','.join(map(str, layers))}, heads {args.heads}; "
          f"{len(ids)} tokens{f' + {virtual} virtual' if virtual else ''})")
    return out


def params_main(args) -> str:
    from nanogpt2.loader import load_model

    model, info = load_model(args.init_from)
    trainable_as_run(model, info.get("config"))
    table = trainability_table(model, grouped=args.grouped)
    print(f"model {info.get('description', args.init_from)}\n{table}")
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m nanogpt2.inspect", description="Look inside a model.")
    sub = ap.add_subparsers(dest="command", required=True)
    att = sub.add_parser("attention", help="attention maps of a text, as a PNG grid of heatmaps")
    att.add_argument("--init_from", default="gpt2", help="any model source: GPT-2 name, HF / OpenAI folder, run folder, checkpoint")
    att.add_argument("--text", required=True, help="the text whose tokens' attention to draw")
    att.add_argument("--layers", default="all", help="all, or comma-separated layer indices (negative: from the end)")
    att.add_argument("--heads", default="mean", help="mean (average over the heads), all, or comma-separated indices")
    att.add_argument("--out", required=True, help="the PNG to write")
    att.add_argument("--max_tokens", type=int, default=128, help="the most tokens drawn (labels stay readable)")
    att.add_argument("--device", default="cpu", help="cpu, cuda, mps, auto")
    par = sub.add_parser("params", help="the trainability table: every tensor trainable or frozen, then the totals")
    par.add_argument("--init_from", default="gpt2")
    par.add_argument("--grouped", action="store_true", help="blocks that agree as one row (default: every tensor)")
    sub.add_parser("methods", help="trainable parameters of each fine-tuning method on GPT-2 124M (docs/peft.md)")
    args = ap.parse_args(argv)
    if args.command == "attention":
        return attention_main(args)
    if args.command == "params":
        return params_main(args)
    table = methods_markdown()
    print(table, end="")
    return table


if __name__ == "__main__":
    run_cli(main)
