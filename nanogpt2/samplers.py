"""
Batches for training and evaluation, drawn from token sequences (a memmap from nanogpt2/data.py, ids mapped
from another tool's files by nanogpt2/token_files.py, a tensor, a list): the language-modelling windows here;
the task samplers of fine-tuning sit beside them.

- `RandomWindowSampler`: nanoGPT-style random windows of block_size + 1 tokens with a counter-based RNG, so a
  batch is a pure function of (seed, step, rank): seeded, resumable without state, sharded by DDP rank.
- `StridedWindowSampler`: windows every `train_stride` tokens (the small-LM recipe's GPTDatasetV1), shuffled
  per epoch, as pure a function of (seed, step, rank); `train_sampler` picks one of the two for a run.
- `eval_windows`: sequential non-overlapping windows (validation during training).
- `stride_windows`: the strided windows of HF's "Perplexity of fixed-length models" guide (nanogpt2.evaluate).

    from nanogpt2.samplers import RandomWindowSampler, eval_windows
    train = RandomWindowSampler(ds.tokens("train"), block_size=1024, batch_size=8, seed=1337)
    x, y = train.next_batch("cuda")          # (8, 1024) int64 each; y is x shifted left by one token
    for x, y in eval_windows(ds.tokens("val"), block_size=1024, batch_size=8):
        ...

References: karpathy/nanoGPT `train.py:get_batch`; HF "Perplexity of fixed-length models" (strided windows).
"""

import warnings
from pathlib import Path

import numpy as np
import torch

from nanogpt2.errors import DataWarning, NanoGPT2Error

# ---------------------------------------------------------------------------------------------------------------
# Checks and conversions
# ---------------------------------------------------------------------------------------------------------------

def check_length(tokens, block_size: int, what: str | None = None) -> None:
    """Raise a NanoGPT2Error unless `tokens` holds at least one training window (block_size + 1 tokens)."""
    n = len(tokens)
    if n < block_size + 1:
        what = what or _describe(tokens)
        lower = f"lower block_size (to at most {n - 1:,}) or " if n >= 2 else ""
        raise NanoGPT2Error(f"{what} has {n:,} tokens, but a window of block_size={block_size:,} needs "
                            f"block_size + 1 = {block_size + 1:,}: {lower}use more data")


def _describe(tokens) -> str:
    fn = getattr(tokens, "filename", None)
    if fn:
        p = Path(fn)
        return f"the {p.stem} split ({p.parent.name}/{p.name})"
    return "the token sequence"


def _as_tokens(tokens) -> np.ndarray:
    """An array of ids; a sequence type that slices into arrays itself (nanogpt2.token_files.MappedTokens, ids
    over many files) passes as it is: never read whole."""
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray) or (hasattr(tokens, "__len__") and hasattr(tokens, "__getitem__")
                                          and not isinstance(tokens, (list, tuple, range))):
        return tokens
    return np.asarray(tokens)


def _to_device(arr: np.ndarray, device):
    t = torch.from_numpy(arr)
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise NanoGPT2Error(f"{name} must be an int >= {lo}, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------------------------------------------
# Training samplers: what both share
# ---------------------------------------------------------------------------------------------------------------

class _TrainingWindows:
    """The settings, batches and resume check both training samplers share; a subclass says where call k's
    windows start (`starts`) and what else its state holds."""

    kind = "training sampler"

    def _setup(self, tokens, block_size, batch_size, seed, rank, world_size) -> None:
        self.tokens = _as_tokens(tokens)
        self.block_size = _check_int("block_size", block_size, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise NanoGPT2Error(f"rank must be in [0, world_size={world_size}), got {rank}")
        check_length(self.tokens, self.block_size)
        self.step = 0  # the number of batches drawn so far

    def starts(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def next_batch(self, device=None):
        """(x, y): int64 tensors of shape (batch_size, block_size); y[:, t] = x[:, t + 1] of the same window."""
        starts = self.starts(self.step)
        self.step += 1
        T = self.block_size
        w = np.stack([self.tokens[s:s + T + 1] for s in starts]).astype(np.int64)  # (B, T + 1)
        return _to_device(np.ascontiguousarray(w[:, :-1]), device), _to_device(np.ascontiguousarray(w[:, 1:]), device)

    def _state(self, **extra) -> dict:
        return {"kind": type(self).__name__, "seed": self.seed, "step": self.step, **extra,
                "block_size": self.block_size, "batch_size": self.batch_size, "world_size": self.world_size,
                "n_tokens": int(len(self.tokens))}

    def _resume(self, state: dict, changes: list) -> None:
        """Take a saved state's seed and step, warning once when the data or the batch changed (`changes`: the
        subclass's own differences)."""
        try:
            seed, step = int(state["seed"]), int(state["step"])
        except (KeyError, TypeError, ValueError):
            raise NanoGPT2Error(f"not a {self.kind} state: {state!r}") from None
        if state.get("block_size") not in (None, self.block_size):
            changes.append(f"block_size {state['block_size']} -> {self.block_size}")
        if state.get("n_tokens") not in (None, len(self.tokens)):
            changes.append(f"the data has {len(self.tokens):,} tokens, the saved run had {state['n_tokens']:,}")
        saved_global = (state.get("batch_size") or 0) * (state.get("world_size") or 0)
        if saved_global and saved_global != self.batch_size * self.world_size:
            changes.append(f"global batch {saved_global} -> {self.batch_size * self.world_size}")
        if changes:
            warnings.warn("resuming the batch sampler with different settings (" + "; ".join(changes) +
                          "): the batches will not be those of an uninterrupted run", DataWarning, stacklevel=3)
        self.seed, self.step = seed, step


# ---------------------------------------------------------------------------------------------------------------
# Training: random windows
# ---------------------------------------------------------------------------------------------------------------

class RandomWindowSampler(_TrainingWindows):
    """Random training windows of block_size + 1 tokens, nanoGPT style; seeded, resumable, DDP-sharded.

    Call k draws `world_size * batch_size` window starts from `np.random.default_rng([seed, k])` (uniform over
    every start that leaves room for block_size + 1 tokens) and returns this rank's slice
    `[rank * batch_size, (rank + 1) * batch_size)`. The draw depends only on (seed, k): the state is one
    counter, a resumed run draws exactly the batches the uninterrupted run would have, and the union over ranks
    of call k is the same for any world size with the same global batch.
    """

    kind = "RandomWindowSampler"

    def __init__(self, tokens, block_size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self._setup(tokens, block_size, batch_size, seed, rank, world_size)

    def starts(self, step: int) -> np.ndarray:
        """The window starts of this rank at call `step` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step])
        n_starts = len(self.tokens) - self.block_size  # starts 0 .. N - T - 1: room for T + 1 tokens
        all_starts = rng.integers(0, n_starts, size=self.world_size * self.batch_size)
        return all_starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return self._state()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state: the next batch is the one the saved run would have drawn next."""
        changes = []
        if state.get("kind") not in (None, "RandomWindowSampler"):
            changes.append(f"the saved run drew {state['kind']} batches (train_stride={state.get('stride')}), this "
                           f"one random windows")
        self._resume(state, changes)


# ---------------------------------------------------------------------------------------------------------------
# Training: strided windows, shuffled per epoch
# ---------------------------------------------------------------------------------------------------------------

class StridedWindowSampler(_TrainingWindows):
    """Training windows of block_size + 1 tokens starting every `stride` tokens (overlapping when stride <
    block_size: the small-LM recipe's GPTDatasetV1, `range(0, len(ids) - max_length, stride)`), each epoch in a
    new seeded order; seeded, resumable, DDP-sharded.

    The windows start at 0, stride, 2 stride, ... while a window has its block_size + 1 tokens. Epoch e visits
    them in the order `np.random.default_rng([seed, e]).permutation(n_windows)`, `world_size * batch_size` per
    call; the windows left over at an epoch's end (fewer than one call's) are dropped, as a DataLoader with
    shuffle=True, drop_last=True does, so an epoch is `steps_per_epoch = n_windows // (world_size *
    batch_size)` calls. Call k is a pure function of (seed, k): a resumed run draws exactly the batches of the
    uninterrupted one, and every rank takes its slice of the same global batch.
    """

    def __init__(self, tokens, block_size: int, batch_size: int, stride: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self._setup(tokens, block_size, batch_size, seed, rank, world_size)
        self.stride = _check_int("train_stride", stride, 1)
        self.n_windows = (len(self.tokens) - self.block_size - 1) // self.stride + 1  # starts s: s + T + 1 <= N
        rows = self.world_size * self.batch_size
        self.steps_per_epoch = self.n_windows // rows
        if self.steps_per_epoch == 0:
            raise NanoGPT2Error(f"train_stride={stride} gives {self.n_windows:,} training windows of "
                                f"block_size={block_size}, fewer than one step's {rows:,} rows; lower train_stride "
                                f"or the rows per step (batch_size x gradient_accumulation_steps)")
        self._perm = (None, None)  # (epoch, its permutation): one epoch's order kept

    def starts(self, step: int) -> np.ndarray:
        """The window starts of this rank at call `step` (a pure function of seed and step)."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n_windows))
        rows = self.world_size * self.batch_size
        picked = self._perm[1][j * rows:(j + 1) * rows]  # (world_size * B,) window numbers of this call
        return picked[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] * self.stride

    def state_dict(self) -> dict:
        return self._state(stride=self.stride)

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state: the next batch is the one the saved run would have drawn next."""
        changes = []
        if state.get("kind") != "StridedWindowSampler":
            changes.append(f"the saved run drew {state.get('kind')} batches, this one strided windows")
        if state.get("stride") not in (None, self.stride):
            changes.append(f"train_stride {state['stride']} -> {self.stride}")
        self._resume(state, changes)


def train_sampler(tokens, block_size: int, batch_size: int, stride: int = 0, seed: int = 0, rank: int = 0,
                  world_size: int = 1):
    """A run's training sampler: random windows (stride 0, nanoGPT's), else strided windows shuffled per epoch."""
    if stride:
        return StridedWindowSampler(tokens, block_size, batch_size, stride, seed=seed, rank=rank, world_size=world_size)
    return RandomWindowSampler(tokens, block_size, batch_size, seed=seed, rank=rank, world_size=world_size)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: sequential and strided windows
# ---------------------------------------------------------------------------------------------------------------

def eval_windows(tokens, block_size: int, batch_size: int, max_batches=None, device=None, *,
                 rank: int = 0, world_size: int = 1):
    """Yield (x, y) batches of evaluation windows in order, int64 (B, T) (the last batch may be smaller).

    Non-overlapping windows of block_size + 1 tokens starting at 0, T, 2T, ...; every target is scored once;
    the last (N - 1) % T targets, too few for a window, are left out. (Strided windows, where each token is
    scored with more context, are `stride_windows`, what nanogpt2.evaluate uses.)
    rank / world_size: batch i goes to rank i % world_size (DDP evaluation). max_batches: at most this many
        batches for this rank.
    """
    tokens = _as_tokens(tokens)
    T = _check_int("block_size", block_size, 1)
    B = _check_int("batch_size", batch_size, 1)
    check_length(tokens, T)
    starts = range(0, len(tokens) - T, T)  # s + T + 1 <= n
    batch_i, yielded, xs, ys = 0, 0, [], []

    def emit():
        return _to_device(np.stack(xs), device), _to_device(np.stack(ys), device)

    for s in starts:
        w = tokens[s:s + T + 1].astype(np.int64)
        xs.append(w[:-1])
        ys.append(w[1:])
        if len(xs) == B:
            if batch_i % world_size == rank:
                if max_batches is not None and yielded >= max_batches:
                    return
                yield emit()
                yielded += 1
            batch_i += 1
            xs, ys = [], []
    if xs and batch_i % world_size == rank and (max_batches is None or yielded < max_batches):
        yield emit()


def stride_windows(n_tokens: int, block_size: int, stride: int) -> list:
    """The guide's windows over n_tokens tokens: [(begin, end, first_scored)], where the window is
    tokens[begin:end] and it scores the tokens at indices first_scored..end-1 (each predicted from the
    tokens before it inside the window)."""
    if block_size < 1:
        raise NanoGPT2Error(f"block_size must be >= 1, got {block_size}")
    if not 1 <= stride <= block_size:
        raise NanoGPT2Error(f"stride must be between 1 and block_size ({block_size}), got {stride}")
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + block_size, n_tokens)
        first = max(prev_end, begin + 1)  # token `begin` has no context inside its window
        if first < end:
            windows.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return windows
