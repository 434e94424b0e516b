"""Running the one trainer on several processes with PyTorch's own engine (``torchrun``).

    torchrun --nproc_per_node 2 -m xlstm_torch.cli train --preset default distributed=fsdp

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; we join the process group (gloo on CPU, nccl on GPU) and wrap
the model from outside: ``DistributedDataParallel``, or FSDP2 (``fully_shard`` on every block, then on the whole
model), so the model code knows nothing about distribution. Ranks read disjoint rows of each global batch
(``PackedBatches``), gradients are averaged by the wrapper, and checkpoints hold full tensors (checkpointing.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "wrap_model", "all_reduce_sum", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device of this process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP or FSDP2 around ``model`` (returned unchanged on one process).

    FSDP2 shards each residual block as a unit (its parameters are gathered just before it runs and freed
    after), then the rest (embedding, final norm, head) as the root unit.
    """
    if not info.enabled:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise ValueError(f"distributed='fsdp' needs a model with .blocks; {type(model).__name__} has none")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {strategy!r}")


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (a no-op on one process)."""
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
