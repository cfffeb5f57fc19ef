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

How an optimizer step's micro-batches spread over the processes (`batch_geometry`, nanoGPT's semantics):
gradient_accumulation_steps is the global number of micro-batches per step, each process runs its share.
"""

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from nanogpt2.errors import NanoGPT2Error


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

    def init_process_group(self, device: torch.device, backend: Optional[str] = None) -> None:
        """Join the run's process group (nccl on CUDA, gloo elsewhere, unless `backend`); no-op for one process."""
        self.device = device
        if not self.enabled:
            return
        import torch.distributed as td

        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
        self.initialized = True

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
        stops every process (its failure flag is all-reduced), so none hangs at a later collective. Returns fn's
        result (None where it did not run); the others raise NanoGPT2Error(elsewhere)."""
        failed, error, result = torch.zeros(1, device=self.device), None, None
        if runs_here:
            try:
                result = fn()
            except NanoGPT2Error as e:
                failed[0], error = 1.0, e
        if self.all_reduce(failed, op="max").item():
            raise error or NanoGPT2Error(elsewhere)
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
    if accum % world_size:
        raise NanoGPT2Error(
            f"gradient_accumulation_steps={accum} is the global count and must be divisible by the "
            f"{world_size} processes; use a multiple of {world_size}")
    micro = accum // world_size
    return BatchGeometry(accum, micro, cfg.batch_size * micro, cfg.batch_size * cfg.block_size * accum)


def dist_from_env() -> Dist:
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]), True)
    return Dist()
