"""Processes, devices, FSDP2 sharding and activation checkpointing.

Launched by ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` set) each process drives one GPU
(NCCL) or the CPU (Gloo); without those variables there is a single process and no process group.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the torchrun process group (once) and pick this process's device."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, local_rank, world_size, device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def apply_activation_checkpointing(blocks: Sequence[nn.Module]) -> None:
    """Recompute each block's activations in backward (non-reentrant ``torch.utils.checkpoint``).

    The block's ``forward`` is wrapped in place, so parameter names stay as they were.
    """
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def parallelize(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    env: DistEnv,
    *,
    bf16: bool,
    activation_checkpointing: bool,
    forward_methods: Sequence[str] = ("forward_train",),
) -> nn.Module:
    """Prepare ``model`` for training on ``env``; ``blocks`` are its repeated layers.

    With several processes each block, then the root, is sharded with FSDP2 ``fully_shard``
    (bf16 compute when ``bf16``, fp32 gradient reduction). Gradients are *summed* over ranks, not
    averaged: the trainer divides them by the global number of loss tokens. ``forward_methods``
    are entry points other than ``forward`` that must gather the root's parameters.
    """
    if activation_checkpointing:
        apply_activation_checkpointing(blocks)
    if env.world_size == 1:
        return model.to(env.device)
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again at once by backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for method in forward_methods:
        register_fsdp_forward_method(model, method)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # a plain SUM: no PREMUL_SUM/AVG, which Gloo lacks
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (nothing to do in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def print0(*values) -> None:
    """Print on rank 0 only, to stderr, without breaking a progress bar."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(" ".join(str(v) for v in values), file=sys.stderr)
