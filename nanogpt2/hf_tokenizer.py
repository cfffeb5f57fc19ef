"""
The tokenizer files of an HF export: GPT-2's vocab.json, merges.txt, tokenizer_config.json and
special_tokens_map.json, built from the ranks the package ships (nanogpt2/assets/gpt2.tiktoken), so that
`AutoTokenizer.from_pretrained(folder)` encodes as tiktoken does and `pipeline("text-generation", folder)`
runs. No new dependency: the files are written from the ranks alone.

    from nanogpt2.hf_tokenizer import write_tokenizer_files
    write_tokenizer_files("out/hf", tokenizer, model_max_length=1024, log=print)

vocab.json maps each token, spelled in GPT-2's printable byte alphabet ("Ġworld"), to its id (= its rank).
merges.txt lists, in rank order, the pair each multi-byte token was merged from: the two parts byte-level BPE
leaves when only the ranks below the token's own may merge (the merges were learned in rank order, so that
pair is the one that made the token). A character model has no HF tokenizer: the export says so in one line.
"""

import json
from functools import lru_cache
from pathlib import Path

from nanogpt2.tokenizer import (ENDOFTEXT, GPT2_RANKS_FILE, GPT2_RANKS_SHA256, GPT2_SPECIAL_TOKENS, bpe_merge,
                                load_tiktoken_ranks, token_to_str, vocabulary_checksum)

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class _RanksBelow:
    """The ranks, as bpe_merge reads them, with every rank >= `limit` hidden."""

    def __init__(self, ranks: dict, limit: int):
        self.ranks, self.limit = ranks, limit

    def get(self, token, default=None):
        rank = self.ranks.get(token)
        return rank if rank is not None and rank < self.limit else default


@lru_cache(maxsize=1)
def gpt2_files_text() -> dict:
    """{file name: text} of vocab.json and merges.txt for the shipped GPT-2 ranks (built once per process)."""
    ranks = load_tiktoken_ranks(GPT2_RANKS_FILE, GPT2_RANKS_SHA256)
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    merges = []
    for token, rank in by_rank:
        if len(token) < 2:
            continue
        parts = bpe_merge(token, _RanksBelow(ranks, rank))
        if len(parts) != 2:  # a token no single merge makes: not GPT-2's ranks
            raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two earlier tokens")
        merges.append(f"{token_to_str(parts[0])} {token_to_str(parts[1])}")
    vocab = {token_to_str(token): rank for token, rank in by_rank}
    vocab.update(GPT2_SPECIAL_TOKENS)
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False), "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n"}


def _is_gpt2(tokenizer) -> bool:
    if getattr(tokenizer, "name", None) != "gpt2":
        return False
    ranks = load_tiktoken_ranks(GPT2_RANKS_FILE, GPT2_RANKS_SHA256)
    return getattr(tokenizer, "checksum", None) == vocabulary_checksum(ranks, GPT2_SPECIAL_TOKENS)


def write_tokenizer_files(out_dir, tokenizer, model_max_length: int, vocab_size=None, log=None, write=None) -> list:
    """Write GPT-2's HF tokenizer files into `out_dir` when `tokenizer` is the GPT-2 BPE (None: the model's
    vocab_size >= 50257 says it is GPT-2's). Otherwise (a character model) write none, remove stale ones of an
    earlier export, and say so in one line through `log`. `write(name, bytes)`: how a file is written (an export
    plan's atomic write; default: straight into out_dir). Returns the paths written."""
    out_dir = Path(out_dir)
    gpt2 = _is_gpt2(tokenizer) if tokenizer is not None else (vocab_size or 0) >= GPT2_SPECIAL_TOKENS[ENDOFTEXT] + 1
    if not gpt2:
        for name in TOKENIZER_FILES:
            (out_dir / name).unlink(missing_ok=True)
        if log is not None:
            what = getattr(tokenizer, "name", None) or f"a vocabulary of {vocab_size}"
            log(f"no HF tokenizer exists for this model's tokenizer ({what}): the folder has none; encode with "
                f"nanogpt2's tokenizer (its vocabulary is in the run's checkpoint)")
        return []
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, **special}
    texts = {**gpt2_files_text(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
             "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}
    written = []
    for name in TOKENIZER_FILES:
        if write is None:
            (out_dir / name).write_text(texts[name], encoding="utf-8")
        else:
            write(name, texts[name].encode("utf-8"))
        written.append(out_dir / name)
    return written
