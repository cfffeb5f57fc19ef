"""
The processes of a run: torchrun's environment, the process group, and the collectives the trainer needs.

torchrun starts N copies of the script and tells each its place through RANK, LOCAL_RANK and WORLD_SIZE;
without them a run is one process and every collective here is a no-op, so the code that calls them reads
the same for 1 and N processes. What a run does across processes:

  all_reduce(t, op)      sum (or max) a tensor over every process, in place
  together(here, fn, ..) fn() on some processes only (rank 0, or each machine's first); a NanoGPT2Error
                         there stops every process, so none waits forever at the next collective
  gather(obj)            one picklable object per process, to every process (the RNG states a checkpoint holds)
  barrier()              every process waits for the others (before leaving the group at the end)

References: PyTorch's torch.distributed and torchrun docs; nanoGPT's train.py (ddp_rank, ddp_local_rank,
ddp_world_size, master_process).

    dist = dist_from_env()
    dist.init_process_group(device, backend=None)   # nccl on CUDA, gloo elsewhere; no-op for one process
    total = dist.all_reduce(torch.tensor([loss_sum, n], device=device))
    dist.close()

How an optimizer step's micro-batches spread over the processes (`batch_geometry`): gradient_accumulation_steps
is the global number of micro-batches per step and each process runs its share (nanoGPT's rule) when N processes
divide it; when they do not, each runs ceil(count / N) micro-steps — a step then holds N x that many micro-batches,
more tokens than configured — and the geometry carries a notice saying so and how to get the configured batch back.
"""

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from nanogpt2.errors import ElsewhereError, NanoGPT2Error


@dataclass
class Dist:
    """This process's place among the run's processes, and the collectives over them."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collective tensors live
    initialized: bool = False  # this object created the process group (and so destroys it)

    @property
    def master(self) -> bool:
        """Rank 0: the process that prints, and writes the run folder."""
        return self.rank == 0

    @property
    def local_master(self) -> bool:
        """The first process of its machine: the one that prepares caches there (datasets, downloads)."""
        return self.local_rank == 0

    def init_process_group(self, device: torch.device, backend: Optional[str] = None, timeout: float = 1800.0) -> None:
        """Join the run's process group (nccl on CUDA, gloo elsewhere, unless `backend`); no-op for one process.
        `timeout`: seconds a collective waits for the other processes before it fails (a lost process)."""
        self.device = device
        if not self.enabled:
            return
        import datetime

        import torch.distributed as td

        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"),
                              timeout=datetime.timedelta(seconds=timeout))
        self.initialized = True

    @contextlib.contextmanager
    def lost_processes(self):
        """Turn a collective that fails inside the `with` because another process is gone into its one-line error."""
        try:
            yield
        except RuntimeError as e:
            lost = self.lost_process_error(e)
            if lost is None:
                raise
            raise lost from None

    def lost_process_error(self, e: BaseException) -> Optional[NanoGPT2Error]:
        """The one-line error for a collective that failed because another process is gone (killed, crashed, past
        the timeout), or None when `e` is something else."""
        import torch.distributed as td

        if not self.enabled or not isinstance(e, RuntimeError):
            return None
        text = str(e)
        lost = isinstance(e, getattr(td, "DistError", ())) or any(
            k in text for k in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                                "timed out", "NCCL communicator was aborted", "Socket Timeout"))
        if not lost:
            return None
        who = f"rank {1 - self.rank}" if self.world_size == 2 else "another process"
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        err = NanoGPT2Error(f"lost {who} of the run ({first}); this process stops too. The checkpoints written so far "
                            f"are intact: resume with --resume_from auto")
        err.rank = None if self.master else self.rank  # a survivor other than rank 0 tells too (rank 0 may be the lost one)
        return err

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        if self.initialized:
            import torch.distributed as td

            td.destroy_process_group()
            self.initialized = False

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`t` summed ("sum") or maxed ("max") over every process, in place; returned."""
        if self.enabled:
            import torch.distributed as td

            td.all_reduce(t, op=td.ReduceOp.SUM if op == "sum" else td.ReduceOp.MAX)
        return t

    def together(self, runs_here: bool, fn: Callable, elsewhere: str):
        """fn() on the processes where `runs_here` (rank 0, or each machine's first); a NanoGPT2Error there
        stops every process (its failure flags are all-reduced), so none hangs at a later collective. Returns fn's
        result (None where it did not run); the processes where it did not fail raise ElsewhereError(elsewhere).
        One voice: when rank 0 failed, it alone tells; otherwise each failing process tells, with its rank."""
        flags, error, result = torch.zeros(2, device=self.device), None, None  # (failed somewhere, failed on rank 0)
        if runs_here:
            try:
                result = fn()
            except NanoGPT2Error as e:
                flags[0], error = 1.0, e
                flags[1] = 1.0 if self.master else 0.0
        failed, failed_on_master = (bool(v) for v in self.all_reduce(flags, op="max").tolist())
        if failed:
            if error is None:
                raise ElsewhereError(elsewhere)
            if not self.master and not failed_on_master:
                error.rank = self.rank
            raise error
        return result

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process ([obj] for one process)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        objs = [None] * self.world_size
        td.all_gather_object(objs, obj)
        return objs

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.enabled:
            import torch.distributed as td

            td.barrier()


@dataclass(frozen=True)
class BatchGeometry:
    """How one optimizer step's micro-batches are shared by the processes."""

    accum_steps: int      # micro-batches per optimizer step, over all processes
    micro_steps: int      # micro-batches each process runs per step
    rows_per_step: int    # rows (windows) this process gets per step: batch_size * micro_steps
    tokens_per_step: int  # tokens per step over all processes: batch_size * block_size * accum_steps
    notice: Optional[str] = None  # set when the processes do not divide the configured accumulation


def batch_geometry(cfg, world_size: int) -> BatchGeometry:
    """The step's geometry from a run config (batch_size, block_size, gradient_accumulation_steps, or
    tokens_per_step which sets the accumulation) for `world_size` processes."""
    accum = cfg.gradient_accumulation_steps
    if cfg.tokens_per_step:
        per_micro = cfg.batch_size * cfg.block_size
        if cfg.tokens_per_step % per_micro:
            raise NanoGPT2Error(
                f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size * block_size = {per_micro}; "
                f"pick a multiple, e.g. {max(1, round(cfg.tokens_per_step / per_micro)) * per_micro}")
        accum = cfg.tokens_per_step // per_micro
    micro = -(-accum // world_size)  # ceil: every process runs the same number of micro-steps
    per_micro = cfg.batch_size * cfg.block_size
    notice = None
    if accum % world_size:
        rows = accum * cfg.batch_size  # the configured step's rows
        keep = (f"--batch_size={rows // world_size} --gradient_accumulation_steps={world_size}" if rows % world_size == 0
                else f"--gradient_accumulation_steps={max(world_size, accum // world_size * world_size)}")
        notice = (f"note: gradient_accumulation_steps={accum} (the global count) does not divide among {world_size} "
                  f"processes: each runs {micro} micro-step(s), so a step is {micro * world_size} micro-batches = "
                  f"{micro * world_size * per_micro:,} tokens instead of the configured {accum * per_micro:,}; "
                  + (f"for the configured {accum * per_micro:,} tokens per step use {keep}" if rows % world_size == 0
                     else f"for a step the processes divide use {keep} (or --tokens_per_step, a multiple of "
                          f"{world_size * per_micro:,})"))
    return BatchGeometry(micro * world_size, micro, cfg.batch_size * micro, per_micro * micro * world_size, notice)


def dist_from_env() -> Dist:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]), True)
    return Dist()
