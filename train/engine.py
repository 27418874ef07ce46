"""The training step and one epoch (what `train` runs and `bench e2e` times), for pre-training and fine-tuning.

    loss_of = PretrainLoss()  (or train.finetune.ClassifierLoss)      # batch -> scalar loss
    for epoch in ...:
        for out in train_one_epoch(model, loader, optimizer, schedule, state, loss_of, ...):  # one per step
            log / checkpoint / stop, as train/main.py decides

A step takes `accum_steps` batches: forward under autocast (bf16 on a GPU by default; fp16 with a GradScaler),
backward of loss / accum_steps (gradients are all-reduced only on the last batch under DDP / FSDP), optional
clipping of the global gradient norm, one AdamW step at the schedule's lr. Nothing here waits for the GPU: losses
stay on the device, summed until the caller reads them when it logs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from train.schedule import Schedule

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, fp32 elsewhere; fp16 and bf16 autocast are for CUDA only here."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(f"run.precision {precision!r} needs a CUDA device (training runs on {device}); "
                         f"set run.precision: fp32 or auto")
    return precision


def autocast(device: torch.device, precision: str):
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


def forward_loss(model: nn.Module, batch: dict, counts: tuple[int, int | None]) -> torch.Tensor:
    """The pre-training loss of one batch; `counts` = (masked, decoded) tokens per row, as ints (static shapes)."""
    num_masked, num_decoded = counts
    return model(batch["video"], batch["mask"], batch.get("decoder_mask"), num_masked=num_masked,
                 num_decoded=num_decoded)["loss"]


def mask_counts(batch: dict) -> tuple[int, int | None]:
    """(masked, decoded) tokens per row, read once from a batch (the same in every row: the batch contract)."""
    decoder_mask = batch.get("decoder_mask")
    return int(batch["mask"][0].sum()), None if decoder_mask is None else int((~decoder_mask[0]).sum())


class PretrainLoss:
    """The pre-training loss of a batch (the model computes it); the mask counts are read once, from the first
    batch, so every step has the same static shapes."""

    def __init__(self, counts: tuple[int, int | None] | None = None):
        self.counts = counts

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        self.counts = self.counts or mask_counts(batch)
        return forward_loss(model, batch, self.counts)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], loss_of,
               precision: str = "fp32", scaler: torch.amp.GradScaler | None = None,
               clip_grad: float | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over `batches` (gradient accumulation); `loss_of(model, batch)` gives a batch's loss.
    Returns the mean loss and, with `clip_grad`, the gradient norm before clipping, both as device tensors (reading
    them waits for the device)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        with grad_sync(model, i == len(batches) - 1), autocast(device, precision):
            loss = loss_of(model, batch)
            scaled = loss / len(batches)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    out = {"loss": loss_sum / len(batches)}
    if clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint stores besides the weights, optimizer and loader."""
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    clips: int = 0  # training clips (views) seen on this rank
    skipped: int = 0  # clips the loader dropped for failing to decode (on_error: skip)
    best_top1: float = -1.0  # fine-tuning: the best validation top-1 so far (best.pt), -1 before the first


@dataclass
class StepOutput:
    step: int  # optimizer steps done, this one included
    lr: float
    loss: torch.Tensor  # on the device
    batch: dict  # the step's last batch (for pictures)
    data_wait_s: float  # host time blocked on the loader for this step
    step_s: float  # host time of the whole step, waiting included
    extra: dict = field(default_factory=dict)  # grad_norm when clipping


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, schedule: Schedule,
                    state: TrainState, loss_of, accum_steps: int = 1, precision: str = "fp32",
                    scaler: torch.amp.GradScaler | None = None, clip_grad: float | None = None
                    ) -> Iterator[StepOutput]:
    """The optimizer steps of the epoch in progress, one StepOutput each; a resumed loader yields the rest of its
    epoch. A trailing group of fewer than `accum_steps` batches is read but not trained on."""
    model.train()
    batches: list[dict] = []
    started = waiting_since = time.perf_counter()
    waited = 0.0
    for batch in loader:
        waited += time.perf_counter() - waiting_since
        batches.append(batch)
        if len(batches) == accum_steps:
            lr = schedule.apply(optimizer, state.step)
            out = train_step(model, optimizer, batches, loss_of, precision, scaler, clip_grad)
            state.step += 1
            state.clips += sum(len(b["video"]) for b in batches)
            now = time.perf_counter()
            yield StepOutput(state.step, lr, out.pop("loss"), batch, waited, now - started, out)
            batches = []
            started, waited = time.perf_counter(), 0.0
        waiting_since = time.perf_counter()
