"""torch.distributed setup from torchrun's environment, and wrapping a model for FSDP2 or DDP.

The same trainer runs as one plain process or under `torchrun --nproc_per_node N`; with gloo on CPU the
multi-process path is what the tests exercise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); a plain run gets world 1."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def wrap_model(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """mode: 'none', 'ddp' or 'fsdp' (FSDP2: each decoder layer its own unit, the rest in the root)."""
    if mode == "none" or not info.enabled:
        return model
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(info.device.type, (info.world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"parallel mode must be 'none', 'ddp' or 'fsdp', got {mode!r}")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them, applied from outside like
    FSDP: every layer is wrapped in torch's checkpoint wrapper, whose state-dict hooks keep the parameter names."""
    layers = model.model.layers
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def run_stage(body, recipe, resume: bool, fresh: bool, log):
    """A stage's entry point: `body(recipe, info, resume, fresh, log)` between process-group setup and teardown,
    with `log` silent on every rank but the first."""
    info = init_distributed(recipe.train.device)
    log = log if info.main else (lambda *a, **k: None)
    try:
        return body(recipe, info, resume, fresh, log)
    finally:
        shutdown()
