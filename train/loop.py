"""The fit loop, one for pre-training and fine-tuning: what differs is the task it is handed (train/task.py).

    while step < last step:                                     # epoch after epoch
        for batches in the epoch, accum_steps at a time:
            train_step: lr from the schedule; forward under autocast, backward of loss / accum_steps outside it
                        (gradients all-reduced on the last batch only); the gradient norm, clipped to clip_grad;
                        one AdamW step
            every log_every steps: a log line and a metrics record (the loop's only wait for the device)
            task.after_step: pictures (pretrain), validation and best.pt at epoch ends (finetune)
            every checkpoint_every steps: a checkpoint
            SIGTERM / Ctrl-C on any rank: stop after this step

Nothing here waits for the GPU between log lines: losses and gradient norms stay on the device, summed until read.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from train.distributed import any_rank, autocast, gather, grad_sync


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict], loss_of,
               precision: str = "fp32", scaler: torch.amp.GradScaler | None = None,
               clip_grad: float | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over `batches` (gradient accumulation); `loss_of(model, batch)` gives a batch's loss.
    Returns the mean loss and the gradient norm before clipping, as device tensors (reading them waits)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        with grad_sync(model, i == len(batches) - 1):
            with autocast(device, precision):
                loss = loss_of(model, batch)
            scaled = loss / len(batches)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad or float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum / len(batches), "grad_norm": grad_norm.detach()}


def groups_of(loader, size: int):
    """(batches, seconds waited for them) of the epoch in progress, `size` batches at a time; a trailing group of
    fewer is read but not trained on. A resumed loader yields the rest of its epoch."""
    batches, waited, since = [], 0.0, time.perf_counter()
    for batch in loader:
        waited += time.perf_counter() - since
        batches.append(batch)
        if len(batches) == size:
            yield batches, waited
            batches, waited = [], 0.0
        since = time.perf_counter()


class Stopper:
    """SIGTERM (cluster preemption) and Ctrl-C ask the loop to stop after the current step; a second Ctrl-C
    interrupts at once."""

    def __enter__(self):
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Interval:
    """What happened since the last log line (host clock; losses and norms stay on the device until read)."""
    device: torch.device
    steps: int = 0
    clips: int = 0
    data_wait_s: float = 0.0
    since: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.loss_sum = torch.zeros((), device=self.device)
        self.norm_sum = torch.zeros((), device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step, or -1

    def add(self, step: int, out: dict, clips: int, waited: float) -> None:
        self.loss_sum += out["loss"]
        self.norm_sum += out["grad_norm"]
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(out["loss"]), step, self.first_bad)
        self.steps, self.clips, self.data_wait_s = self.steps + 1, self.clips + clips, self.data_wait_s + waited


def fit(run) -> tuple[int | None, dict | None]:
    """Train `run` (train/run.py) to its last step or a stop signal; returns (the signal, the last batch)."""
    cfg, state = run.cfg, run.state
    run.interval, last_batch = Interval(run.env.device), None
    with Stopper() as stopper:
        while state.step < run.last_step:
            for batches, waited in groups_of(run.loader, cfg.optim.accum_steps):
                lr = run.schedule.apply(run.optimizer, state.step)
                out = train_step(run.wrapped, run.optimizer, batches, run.task.loss, run.env.precision,
                                 run.scaler, cfg.optim.clip_grad)
                state.step += 1
                clips = sum(len(b["video"]) for b in batches)
                state.clips += clips
                run.interval.add(state.step, out, clips, waited)
                last_batch = batches[-1]
                if state.step % cfg.run.log_every == 0 or state.step == run.last_step:
                    log(run, lr)
                run.task.after_step(run, last_batch)
                if state.step % cfg.run.checkpoint_every == 0:
                    save(run)
                if state.step >= run.last_step or any_rank(stopper.signal is not None, run.env):
                    break
            else:  # the epoch ran to its end
                state.epoch += 1
                continue
            break
    return stopper.signal, last_batch


def check_finite(run) -> None:
    bad = int(run.interval.first_bad)
    if bad >= 0:
        kept = run.checkpointer.saved()
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written before it"
        raise NonFiniteLoss(f"the loss is not finite at step {bad}: stopping; {where} (lower optim.base_lr, set "
                            f"optim.clip_grad, or check the data)")


def save(run) -> None:
    """A checkpoint of the current step (all ranks take part), never of weights a non-finite loss has touched."""
    check_finite(run)
    run.checkpointer.save()
    run.saved_step = run.state.step


def log(run, lr: float) -> None:
    """A log line and a metrics record; reading the loss is the loop's only wait for the device."""
    interval, state, cfg, env = run.interval, run.state, run.cfg, run.env
    steps = max(interval.steps, 1)
    loss, grad_norm = (interval.loss_sum / steps).item(), (interval.norm_sum / steps).item()
    check_finite(run)
    now = time.perf_counter()
    elapsed = now - interval.since
    skipped = sum(gather(len(getattr(run.loader, "skipped", [])), env))
    rate = (state.step - run.start_step) / max(now - run.started, 1e-9)
    record = {"step": state.step, "total_steps": run.last_step, "epoch": state.epoch, "epochs": cfg.optim.epochs,
              "loss": loss, "grad_norm": grad_norm, "lr": lr, "clips_per_s": interval.clips * env.world / elapsed,
              "data_wait": interval.data_wait_s / elapsed, "step_s": elapsed / steps,
              "gpu_memory_gib": (torch.cuda.max_memory_allocated(env.device) / 2**30
                                 if env.device.type == "cuda" else None),
              "eta_s": (run.last_step - state.step) / rate if rate > 0 else 0.0, "skipped": skipped,
              "time": time.time()}
    if env.is_main:
        run.folder.log(record)
    run.display.update(record)
    run.interval = Interval(env.device, since=now)
    run.interval.first_bad = interval.first_bad
