"""One code path for 1 and N processes: torchrun's environment, DDP or FSDP2, reductions.

Launch with ``torchrun --nproc-per-node N -m midashenglm.cli train CONFIG`` (multi-node:
torchrun's ``--nnodes``/``--rdzv-*`` as usual). Without torchrun the same code runs as
one process with no process group; the reductions below are then the identity.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The project's device rule (``auto``: CUDA, else MPS, else CPU; a missing device is a
    ``ValueError``), with this process's own GPU under torchrun."""
    from midashenglm.modeling.weights import resolve_device as resolve

    device = resolve(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_world(device: str = "auto") -> World:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return World(rank, world_size, local_rank, target)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, world: World, strategy: str) -> nn.Module:
    """DDP, or FSDP2 ``fully_shard`` per transformer block (encoder and decoder) and the root."""
    if not world.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(world.device.type, (world.world_size,))
        for module in list(model.modules()):
            if _is_block(module, model):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    # BatchNorm statistics are averaged across ranks after each step (sync_buffers), not
    # broadcast from rank 0 before each forward.
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True)


def _is_block(module: nn.Module, root: nn.Module) -> bool:
    from midashenglm.modeling.encoder import Block

    decoder_blocks = set(getattr(root.decoder, "_no_split_modules", None) or [])
    base = getattr(root.decoder, "get_base_model", lambda: root.decoder)()
    decoder_blocks |= set(getattr(base, "_no_split_modules", None) or [])
    return isinstance(module, Block) or type(module).__name__ in decoder_blocks


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def no_sync(model: nn.Module, skip: bool) -> Any:
    """DDP's ``no_sync`` for the micro-batches before the last of an accumulation."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj: Any, world: World) -> list[Any]:
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, world: World) -> bool:
    return all_reduce_sum([float(flag)], world)[0] > 0


def sync_buffers(model: nn.Module, world: World) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
    if not world.distributed:
        return
    for buf in unwrap(model).buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world.world_size)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
