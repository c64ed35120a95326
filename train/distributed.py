"""Several training processes with ``torchrun`` (PyTorch's launcher) and DistributedDataParallel.

``torchrun`` starts one process per GPU (or per CPU slot) and sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU) and gives each process
its GPU. Without those variables it is one process, world size 1, and nothing is initialised: the
single-process path is the same code.

    torchrun --standalone --nproc_per_node 8 -m sdgan_stream.training_cli train --data D --out R ...
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m sdgan_stream.training_cli train ...
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["DistContext", "all_reduce_mean", "all_reduce_sum", "any_process", "setup", "shutdown", "wrap"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among ``world`` processes, and its index on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` process group when there is one; returns this process's context and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if chosen.index not in (None, local_rank):
            log.warning("under torchrun each process takes the GPU of its LOCAL_RANK: cuda:%d, not %s", local_rank, chosen)
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    context = DistContext(rank=rank, world=world, local_rank=local_rank)
    log.info("process %d of %d on %s (%s)", rank, world, chosen, backend)
    return context, chosen


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, context: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``module`` in a distributed run; the module itself otherwise.

    No buffer broadcast: the networks have no running statistics (instance/group norms only).
    """
    if not context.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The sum of ``values`` over every process (``values`` itself in a single process)."""
    if not context.active:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_mean(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of ``values`` over every process."""
    return all_reduce_sum(values, context) / context.world


def any_process(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True on every process when it is true on any (so all stop at the same step)."""
    if not context.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
