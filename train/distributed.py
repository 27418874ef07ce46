"""Where a run executes: torchrun's ranks, the device and precision of each, DDP / FSDP2 wrapping, and what the
ranks must agree on.

    torchrun --nproc-per-node 8 --no-python train --config configs/X.yaml            one machine, 8 GPUs
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 --no-python train --config configs/X.yaml    several machines (docs/usage.md)

Each rank reads its own part of the shards (the loaders take rank and world size from torch.distributed). NCCL
on CUDA, gloo on the CPU; a second gloo group carries the small host-side agreements (stop now? loader states, the
ranks of an evaluation running in step) so they never wait on the GPU stream. FSDP shards the units the model
declares (`model.fsdp_units()`), then the whole model.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    control: object = None  # gloo process group for host-side agreements
    precision: str = "fp32"  # of the forward: fp32, or bf16 / fp16 autocast on CUDA

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """run.device 'auto' | 'cpu' | 'cuda' -> the training device of this rank."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ValueError("run.device is 'cuda' but CUDA is not available; set run.device: auto or cpu")
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, fp32 elsewhere; fp16 and bf16 autocast are for CUDA only here."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"run.precision {precision!r} needs a CUDA device (training runs on {device}); "
                         f"set run.precision: fp32 or auto")
    return precision


def autocast(device: torch.device, precision: str):
    """The forward's autocast context at `precision` (nothing for fp32)."""
    dtype = DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def setup(device: str, precision: str = "fp32") -> Env:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise one process. `device` and
    `precision` are run.device and run.precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    precision = resolve_precision(precision, dev)
    if world == 1:
        return Env(0, 1, 0, dev, precision=precision)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            device_id=dev if dev.type == "cuda" else None)
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    return Env(rank, world, local_rank, dev, control, precision)


def teardown(env: Env) -> None:
    if env.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, env: Env, parallel: str) -> nn.Module:
    """DistributedDataParallel, or FSDP2 (`fully_shard` on each of `model.fsdp_units()`, then on the whole model),
    over `env`'s ranks."""
    if env.world == 1:
        return model
    if parallel == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for unit in model.fsdp_units():
        fully_shard(unit)
    return fully_shard(model)


def grad_sync(model: nn.Module, enabled: bool):
    """A context in which backward all-reduces gradients (DDP, FSDP2) only when `enabled`."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DistributedDataParallel
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 fully_shard
        @contextlib.contextmanager
        def paused():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return paused()
    return contextlib.nullcontext()


def max_over_ranks(value: int, env: Env) -> int:
    """The largest of every rank's `value`, on every rank (e.g. a stop signal that reached one rank first)."""
    if env.world == 1:
        return value
    tensor = torch.tensor([value])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=env.control)
    return int(tensor.item())


def any_rank(flag: bool, env: Env) -> bool:
    """True on every rank when `flag` is true on any."""
    return bool(max_over_ranks(int(flag), env))


def gather(obj, env: Env) -> list:
    """`obj` of every rank, in rank order, on every rank."""
    if env.world == 1:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj, group=env.control)
    return out


# What a rank reports before each round of `run_in_step`; the ranks act on the largest.
DONE, RUNNING, FAILED = 0, 1, 2


def run_in_step(items, env: Env, step, idle, name: str = "evaluation") -> None:
    """`step(item)` for each of this rank's `items`, then `idle()` until every rank has run out; each round starts
    with an agreement over the ranks, so a collective forward (FSDP) never waits on a rank that stopped. An exception
    on any rank is raised on all of them (`name` says what stopped) instead of leaving the others waiting."""
    items, exhausted, error = iter(items), False, None
    while True:
        item = None
        if error is None and not exhausted:
            try:
                item = next(items)
            except StopIteration:  # asking again would start the loader's next epoch
                exhausted = True
            except Exception as failure:
                error = failure
        agreed = max_over_ranks(FAILED if error is not None else RUNNING if item is not None else DONE, env)
        if agreed == FAILED:
            raise_on_every_rank(error, env, name)
        if agreed == DONE:
            return
        try:
            step(item) if item is not None else idle()
        except Exception as failure:  # reported at the next agreement, so that the other ranks stop too
            error = failure


def raise_on_every_rank(error: Exception | None, env: Env, name: str):
    messages = gather(None if error is None else f"{type(error).__name__}: {error}", env)
    if error is not None:
        raise error
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    raise RuntimeError(f"{name} stopped: rank {rank} failed: {message}")


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(model weights, optimizer state or None), whole and on the CPU, for rank 0 to save; every rank calls it
    (FSDP gathers)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        weights, optim = get_model_state_dict(model, options=options), None
    else:
        weights, optim = get_state_dict(model, optimizer, options=options)
    return {k: v.detach().cpu() for k, v in weights.items()}, optim


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """The inverse of `full_state`, on every rank (each takes its shard under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True))
