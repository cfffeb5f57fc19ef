"""
Sample text from a trained model, from GPT-2 by name, or from a Hugging Face GPT-2 folder.

    python sample.py --init_from gpt2 --start "The meaning of life is" --max_new_tokens 60 --stream
    python sample.py --init_from out --num_samples 3 --temperature 0.8 --top_k 200   # a train.py run
    python sample.py --init_from gpt2 --start FILE:prompt.txt --top_p 0.9 --seed 7
    python sample.py --init_from gpt2 --start "Once upon a time" --compare            # strategies side by side
    python sample.py --init_from gpt2 --start "Once upon a time" --compare "t=0.5,t=1.0,t=1.5,k=10,k=50,p=0.9"
    python sample.py --init_from out-instruct --template alpaca --instruction "Name three colors." --greedy
    python sample.py --help

The option names are nanoGPT's (`--init_from`, `--start`, `--num_samples`, `--max_new_tokens`,
`--temperature`, `--top_k`, `--seed`, `--device`, `--dtype`, `--compile`), plus `--top_p`, `--greedy`,
`--repetition_penalty`, `--stop`, `--stream` and `--compare`, and `--instruction` / `--input` / `--template` (the
prompt an instruction-tuned model was trained on, `nanogpt2.instruct.format_prompt`; docs/instruct.md). Generation
is `nanogpt2.generate.generate` (KV cache); docs/sampling.md explains the strategies.
"""

import argparse
import shutil
import sys
import textwrap
from itertools import zip_longest

import torch

from nanogpt2.errors import NanoGPT2Error, read_text, run_cli
from nanogpt2.loader import load_model_and_tokenizer
from nanogpt2.generate import TextStreamer, check_sampling_args, generate
from nanogpt2.runtime import autocast, resolve_device, resolve_dtype
from nanogpt2.tokenizer import ENDOFTEXT

# The strategies a bare --compare shows (the recipes' grid is a --compare "t=0.5,t=1.0,t=1.5,k=10,k=50,p=0.9" away)
DEFAULT_NUM_SAMPLES = 3
DEFAULT_COMPARE = "greedy,t=0.7,t=1.3,k=5,k=200,p=0.9"
# a --compare key -> (generate keyword, its type, the label's name)
COMPARE_KEYS = {"t": ("temperature", float, "temperature"), "temperature": ("temperature", float, "temperature"),
                "k": ("top_k", int, "top_k"), "top_k": ("top_k", int, "top_k"),
                "p": ("top_p", float, "top_p"), "top_p": ("top_p", float, "top_p")}


def parse_compare(spec: str) -> list:
    """`--compare`'s strategies as [(label, generate keywords)]: comma-separated, each `greedy` or `KEY=VALUE`
    (t / temperature, k / top_k, p / top_p), several joined by `+` for one strategy (`t=0.8+k=50`)."""
    strategies = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise NanoGPT2Error(f"--compare {spec!r} has an empty strategy; write e.g. --compare \"t=0.5,k=10,p=0.9\"")
        kw, labels = {}, []
        for term in (t.strip() for t in item.split("+")):
            key, eq, value = term.partition("=")
            if term == "greedy":
                kw["greedy"], label = True, "greedy"
            elif eq and key.strip() in COMPARE_KEYS:
                name, typ, shown = COMPARE_KEYS[key.strip()]
                try:
                    kw[name] = typ(value)
                except ValueError:
                    raise NanoGPT2Error(f"--compare: {term!r} needs {'an integer' if typ is int else 'a number'} "
                                        f"after '='") from None
                label = f"{shown} {value.strip()}"
            else:
                raise NanoGPT2Error(f"--compare: unknown strategy {term!r}; use greedy, t=T, k=K, p=P (or temperature=, "
                                    f"top_k=, top_p=), several joined by '+', e.g. \"greedy,t=0.8+k=50,p=0.9\"")
            labels.append(label)
        check_sampling_args(kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"))
        strategies.append((", ".join(labels), kw))
    return strategies


COMPARE = parse_compare(DEFAULT_COMPARE)  # (label, generate keywords) of a bare --compare


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sample.py", description="Sample from a GPT-2 model.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--init_from", default="gpt2",
                    help="a train.py out_dir or checkpoint .pt, a GPT-2 name (gpt2, gpt2-medium, ...), an OpenAI size (124M, "
                         "355M, ...), an HF or OpenAI folder, a nanoGPT ckpt.pt or out_dir, or an llm.c model .bin; "
                         "'resume' means --out_dir")
    ap.add_argument("--out_dir", default="out", help="run folder used when --init_from resume (nanoGPT)")
    ap.add_argument("--meta_pkl", default=None, help="the meta.pkl of a nanoGPT character model (default: beside its "
                    "ckpt.pt, or data/<dataset>/meta.pkl)")
    ap.add_argument("--start", default="",
                    help="prompt text, or FILE:path to read it from a file; empty starts from <|endoftext|>")
    ap.add_argument("--instruction", default=None,
                    help="an instruction: the prompt is --template filled with it and --input, as finetune.py --task "
                         "instruct trains (instead of --start)")
    ap.add_argument("--input", default="", help="the instruction's input (with --instruction; empty: none)")
    ap.add_argument("--template", default=None,
                    help="prompt template of --instruction: alpaca (the default), a file, or text with {instruction} and {input}")
    ap.add_argument("--num_samples", type=int, default=None, help="samples to draw (default: 3; 1 with --greedy or "
                    "--temperature 0, whose samples would all be the same)")
    ap.add_argument("--max_new_tokens", type=int, default=200, help="tokens generated per sample")
    ap.add_argument("--temperature", type=float, default=0.8, help="< 1 sharper, > 1 more random; 0 = greedy")
    ap.add_argument("--top_k", type=int, default=200, help="keep the k most likely tokens (0: no top-k)")
    ap.add_argument("--top_p", type=float, default=None, help="nucleus: keep the smallest set with probability >= p, in (0, 1]")
    ap.add_argument("--greedy", action="store_true", help="always take the most likely token (deterministic)")
    ap.add_argument("--repetition_penalty", type=float, default=None, help="> 1 discourages repeating tokens (CTRL)")
    ap.add_argument("--stop", action="append", default=None, help="stop a sample at this string (repeatable)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the sampling generator")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="autocast dtype; auto = bfloat16 on a GPU that supports it (else float16), float32 elsewhere")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model: decoding then uses a fixed-shape KV cache, so the prefill and the one-token step compile once (pays off for long or many samples)")
    ap.add_argument("--compile_mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                    help="torch.compile's mode with --compile; reduce-overhead decodes through CUDA graphs on a GPU")
    ap.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    ap.add_argument("--compare", nargs="?", const=DEFAULT_COMPARE, default=None, metavar="STRATEGIES",
                    help="show the same prompt under several strategies side by side, each with the same seed: "
                         "comma-separated greedy, t=T, k=K, p=P, several joined by '+' (t=0.8+k=50); bare: "
                         f"{DEFAULT_COMPARE}")
    ap.add_argument("--columns", type=int, default=2, help="columns for --compare")
    ap.add_argument("--no_cache", action="store_true", help="recompute the whole context every step (for checks)")
    return ap.parse_args(argv)


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        return read_text(start[5:], "prompt file")
    return start


def make_prompt(args) -> str:
    """The prompt text: --start, or --instruction (and --input) in --template (nanogpt2.instruct.format_prompt)."""
    if args.instruction is None:
        if args.input or args.template:
            raise NanoGPT2Error("--input and --template format an instruction; add --instruction \"...\"")
        return read_prompt(args.start)
    if args.start:
        raise NanoGPT2Error("--instruction makes the prompt from the template; drop --start (or --instruction)")
    from nanogpt2.instruct import format_prompt

    return format_prompt({"instruction": args.instruction, "input": args.input}, args.template or "alpaca")


def encode_prompt(tok, text: str) -> list:
    """Prompt ids; an empty prompt starts from <|endoftext|> (a char vocabulary: from a newline)."""
    if text:
        return tok.encode(text, allowed_special={ENDOFTEXT}) if getattr(tok, "eot_token", None) is not None else tok.encode(text)
    if getattr(tok, "eot_token", None) is not None:
        return [tok.eot_token]
    if "\n" in getattr(tok, "chars", []):
        return tok.encode("\n")
    raise NanoGPT2Error("this tokenizer has no end-of-text token to start from: pass a prompt with --start")


def decode(tok, ids) -> str:
    return tok.decode([t for t in ids if t < tok.n_vocab])


def side_by_side(columns: list, n_cols: int) -> str:
    """[(title, text)] laid out in n_cols columns that fit the terminal."""
    width = shutil.get_terminal_size((120, 40)).columns
    n_cols = max(1, min(n_cols, len(columns)))
    col_w = max(20, (width - 3 * (n_cols - 1)) // n_cols)
    blocks = []
    for i in range(0, len(columns), n_cols):
        group = columns[i:i + n_cols]
        cells = []
        for title, text in group:
            lines = [f"== {title} =="]
            for para in text.split("\n"):
                lines += textwrap.wrap(para, col_w, replace_whitespace=False, drop_whitespace=False) or [""]
            cells.append(lines)
        rows = [" | ".join(c.ljust(col_w) for c in row).rstrip() for row in zip_longest(*cells, fillvalue="")]
        blocks.append("\n".join(rows))
    return ("\n" + "-" * min(width, n_cols * col_w) + "\n").join(blocks)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    check_sampling_args(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.max_new_tokens)
    strategies = parse_compare(args.compare) if args.compare is not None else None  # checked before the model loads
    if args.compile_mode and not args.compile:
        raise NanoGPT2Error(f"--compile_mode {args.compile_mode} needs --compile")
    if args.num_samples is None:  # greedy decoding gives every seed the same text: one sample unless asked
        args.num_samples = 1 if args.greedy or args.temperature == 0 else DEFAULT_NUM_SAMPLES
    if args.num_samples < 1:
        raise NanoGPT2Error(f"--num_samples must be >= 1, got {args.num_samples}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)  # checked before the model loads (or downloads)
    prompt = make_prompt(args)  # before the model loads: a bad prompt file or template fails at once
    init_from = args.out_dir if args.init_from == "resume" else args.init_from
    model, tok, desc = load_model_and_tokenizer(init_from, device, meta_pkl=args.meta_pkl)
    print(f"loaded {desc}", file=sys.stderr)
    if args.compile:
        model = torch.compile(model, mode=args.compile_mode)
    ctx = autocast(device, dtype)

    prompt_ids = encode_prompt(tok, prompt)
    block = model.context_length
    if len(prompt_ids) > block:
        print(f"warning: the prompt has {len(prompt_ids)} tokens; the model sees only the last {block}", file=sys.stderr)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    eos = getattr(tok, "eot_token", None)
    gen_device = device if torch.device(device).type == "cuda" else "cpu"
    common = dict(eos_token_id=eos, tokenizer=tok, stop_strings=args.stop, repetition_penalty=args.repetition_penalty,
                  use_cache=not args.no_cache)

    def run(seed, stream=None, **kw):
        g = torch.Generator(device=gen_device).manual_seed(seed)
        import warnings
        with ctx, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the long-prompt warning was printed above
            return generate(model, x, args.max_new_tokens, generator=g, stream=stream, **common, **kw)

    if strategies is not None:
        cells = []
        for label, kw in strategies:
            y = run(args.seed, **kw)
            cells.append((label, decode(tok, y[0, len(prompt_ids):].tolist())))
        print(f"prompt: {decode(tok, prompt_ids)!r}\n")
        print(side_by_side(cells, args.columns))
        return

    strategy = dict(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)
    for k in range(args.num_samples):
        seed = args.seed + k
        if args.stream:
            sys.stdout.write(decode(tok, prompt_ids))
            streamer = TextStreamer(tok, eot_token=eos)
            run(seed, stream=streamer, **strategy)
            streamer.end()
        else:
            y = run(seed, **strategy)
            print(decode(tok, y[0].tolist()))
        print("---------------")


if __name__ == "__main__":
    run_cli(main)
