"""One process or many: torchrun's environment, DDP / FSDP2 wrapping, and what ranks must agree on.

    torchrun --nproc-per-node 8 -m train --config configs/X.yaml                 one machine, 8 GPUs
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m train --config configs/X.yaml          several machines (README: SLURM)

Each rank reads its own part of the shards (the loaders take rank and world size from torch.distributed). NCCL
on CUDA, gloo on the CPU; a second gloo group carries the small host-side agreements (stop now? loader states)
so they never wait on the GPU stream.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from train.build import resolve_device


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    control: object = None  # gloo process group for host-side agreements

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Env:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world == 1:
        return Env(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            device_id=dev if dev.type == "cuda" else None)
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return Env(rank, world, local_rank, dev, control)


def teardown(env: Env) -> None:
    if env.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, env: Env, parallel: str) -> nn.Module:
    """DistributedDataParallel, or FSDP2 (`fully_shard` per block, then the whole model), over `env`'s ranks."""
    if env.world == 1:
        return model
    if parallel == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        fully_shard(block)
    return fully_shard(model)


def any_rank(flag: bool, env: Env) -> bool:
    """True on every rank when `flag` is true on any (e.g. a stop signal that reached one rank first)."""
    if env.world == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=env.control)
    return bool(value.item())


def gather(obj, env: Env) -> list:
    """`obj` of every rank, in rank order, on every rank."""
    if env.world == 1:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj, group=env.control)
    return out


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, env: Env) -> tuple[dict, dict]:
    """(model weights, optimizer state), whole and on the CPU, for rank 0 to save; FSDP gathers them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optim = get_state_dict(model, optimizer, options=options)
    return {k: v.detach().cpu() for k, v in weights.items()}, optim


def full_weights(model: nn.Module) -> dict:
    """The model weights alone, whole and on the CPU (every rank calls it: FSDP gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in weights.items()}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """The inverse of `full_state`, on every rank (each takes its shard under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True))
