"""`train --config configs/X.yaml`: one run, on one process or many (torchrun). `mode` chooses the task:
pretrain (masked-cube MSE, train/task.py), finetune (the classifier, train/finetune.py), or eval (a test alone).

    train(cfg, out_dir, resume)
      setup    the ranks and the device (train/distributed.py); the run folder locked (train/run_folder.py)
      start    the task, its loader and model, DDP / FSDP2, AdamW and the schedule, the checkpointer (--resume
               auto|PATH: weights, optimizer, scaler, step, every rank's loader state and RNG). Nothing is written
               until all of it succeeded: then the run is accepted (config.yaml); a finished run resumed is a no-op
      fit      train/loop.py; SIGTERM / Ctrl-C: a checkpoint, then exit 143 / 130
      finish   a last checkpoint, the task's pictures and test, the loss curve, summary.json
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train import distributed
from train.checkpointer import Checkpointer, TrainState, check_resumable
from train.config import ConfigError, TrainConfig, to_dict
from train.display import Display
from train.finetune import Finetune, evaluate_weights
from train.loop import Interval, NonFiniteLoss, fit, save
from train.optim import Schedule, build_optimizer, make_schedule
from train.pictures import save_loss_curve
from train.run_folder import RunFolder
from train.task import Pretrain, make_loader


class Say:
    """Messages of the run, 'train: ...', printed by rank 0 only; through the live display once there is one."""

    def __init__(self, enabled: bool):
        self.enabled, self.display = enabled, None

    def __call__(self, text: str) -> None:
        if self.display is not None:
            self.display.message(f"train: {text}")
        elif self.enabled:
            print(f"train: {text}", flush=True)


@dataclass
class Run:
    cfg: TrainConfig
    env: distributed.Env
    folder: RunFolder
    say: Say
    task: object  # task.Pretrain or finetune.Finetune
    loader: object
    model: torch.nn.Module  # the model itself (FSDP: sharded in place)
    wrapped: torch.nn.Module  # what the step calls: DDP / FSDP, compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: Schedule
    steps_per_epoch: int
    last_step: int
    state: TrainState
    checkpointer: Checkpointer
    display: Display | None = None
    interval: Interval | None = None
    saved_step: int = -1  # step of the newest checkpoint
    start_step: int = 0
    started: float = field(default_factory=time.perf_counter)


def train(cfg: TrainConfig, out_dir: str | Path, resume: str | None = None, live: bool | None = None,
          loader=None) -> int:
    """Run `cfg` into `out_dir`; returns the exit code (0 done, 1 failed, 130 / 143 stopped by a signal).
    `loader`: batches to train on instead of the loader `cfg` names (`bench loop` passes batches held in memory)."""
    env = distributed.setup(cfg.run.device, cfg.run.precision)
    say = Say(env.is_main)
    folder = RunFolder(out_dir, warn=say)
    run = None
    try:
        if env.is_main:
            folder.lock()
        if cfg.mode == "eval":
            return evaluate_weights(cfg, env, folder, say)
        run = start(cfg, env, folder, say, loader)
        if not resume_from(run, resume):
            return 0
        if env.is_main:
            folder.accept(to_dict(cfg), run.start_step)
        run.display = say.display = Display(run.last_step, run.start_step, enabled=env.is_main, live=live)
        try:
            signum, last_batch = fit(run)
        except NonFiniteLoss as e:
            say(str(e))
            return 1
        return finish(run, last_batch, signum)
    finally:
        if run is not None and loader is None and hasattr(run.loader, "close"):  # the prefetch thread it made
            run.loader.close()
        if run is not None and run.display is not None:
            run.display.close()
        folder.close()
        distributed.teardown(env)


def start(cfg: TrainConfig, env: distributed.Env, folder: RunFolder, say: Say, loader=None) -> Run:
    """Everything a run is built from, in the order the config names it; writes nothing."""
    task = Pretrain(cfg, env) if cfg.mode == "pretrain" else Finetune(cfg, env)
    decode = f"nothing ({type(loader).__name__})"
    if loader is None:
        loader, decode = make_loader(cfg.data, cfg.run.loader, env.device)
    steps_per_epoch = len(loader) // cfg.optim.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(f"an epoch of split '{cfg.data.split}' gives {len(loader)} batches of data.batch_size "
                          f"{cfg.data.batch_size} on each of {env.world} ranks, fewer than optim.accum_steps "
                          f"({cfg.optim.accum_steps}): set optim.accum_steps to {len(loader)} or less")
    model = task.model(say)
    wrapped = distributed.wrap(model, env, cfg.run.parallel)
    optimizer = build_optimizer(cfg.optim, model, task.layer_decay)
    if cfg.run.compile:
        wrapped = torch.compile(wrapped, fullgraph=env.world == 1)
    scaler = torch.amp.GradScaler(env.device.type) if env.precision == "fp16" else None
    schedule = make_schedule(cfg.optim, steps_per_epoch, cfg.lr_batch * env.world)
    total_steps = cfg.optim.epochs * steps_per_epoch
    state = TrainState()
    checkpointer = Checkpointer(folder.path, env, cfg.run.keep_checkpoints, say, model=model, optimizer=optimizer,
                                scaler=scaler, loader=loader, state=state,
                                entries={"config": to_dict(cfg), **task.entries})
    compiled = ", compiled" if cfg.run.compile else ""
    say(f"{cfg.mode} {cfg.model.size} model, {cfg.data.num_frames}x{cfg.data.input_size}x{cfg.data.input_size}, "
        f"{task.describe}; {env.world} rank(s) on {env.device}, {env.precision}{compiled}; {cfg.run.loader} loader "
        f"decoding on {decode}")
    say(f"{cfg.effective_batch * env.world} clips per step ({cfg.data.batch_size} x {cfg.data.num_sample} views x "
        f"{cfg.optim.accum_steps} accumulation x {env.world} ranks): lr {schedule.peak_lr:.3g} = base_lr "
        f"{cfg.optim.base_lr:g} x {cfg.lr_batch * env.world} / 256; {steps_per_epoch} steps per epoch, "
        f"{total_steps} in all, warm-up {schedule.warmup_steps}")
    return Run(cfg, env, folder, say, task, loader, model, wrapped, optimizer, scaler, schedule, steps_per_epoch,
               min(total_steps, cfg.run.max_steps or total_steps), state, checkpointer)


def resume_from(run: Run, resume: str | None) -> bool:
    """Continue from a checkpoint (--resume auto|PATH); without --resume, refuse a folder that holds any. False
    when the run has nothing left to do: it reached its last step and wrote its summary."""
    def check(path: Path, obj: dict) -> None:
        check_resumable(path, obj, run.task.kind, run.cfg.model, run.env.world)

    path = run.checkpointer.resume(resume, check)
    if path is None:
        if resume is not None:
            run.say(f"no checkpoint in {run.folder.path} yet: starting at step 0")
        return True
    state = run.state
    run.saved_step = run.start_step = state.step
    summary = run.folder.summary()
    if state.step >= run.last_step and summary is not None and summary.get("steps") == state.step:
        run.say(f"{run.folder.path} finished at step {state.step} ({run.folder.path / 'summary.json'}): nothing to "
                f"do; raise optim.epochs or run.max_steps to train on")
        return False
    run.say(f"resumed from {path} at step {state.step} (epoch {state.epoch + 1})")
    return True


def finish(run: Run, last_batch: dict | None, signum: int | None) -> int:
    """A last checkpoint; after a signal, the exit status; else the task's end, the loss curve and summary.json."""
    cfg, state, folder = run.cfg, run.state, run.folder
    if state.step > run.saved_step:
        save(run)
    kept = run.checkpointer.saved()
    if signum is not None:
        run.say(f"stopped by {signal.Signals(signum).name} after step {state.step}; checkpoint {kept[-1]}; "
                f"continue with --resume auto")
        return 128 + signum
    seconds = time.perf_counter() - run.started
    results = run.task.finish(run, last_batch)
    pictures = results.pop("pictures")
    if run.env.is_main and folder.metrics_path.is_file():
        pictures.append(save_loss_curve(folder.path / "pictures" / "loss.png", folder.metrics_path))
    steps = state.step - run.start_step
    summary = {"steps": state.step, "steps_this_run": steps, "seconds": round(seconds, 1),
               "clips_per_s": round(steps * cfg.effective_batch * run.env.world / max(seconds, 1e-9), 2),
               "skipped_clips": state.skipped, "checkpoint": str(kept[-1]) if kept else None,
               "pictures": [str(p) for p in pictures if p is not None], **results}
    if run.env.is_main:
        folder.write_summary(summary)
        run.display.close()
        run.say(f"done, {state.step} steps ({steps} in this run, {summary['seconds']} s, {summary['clips_per_s']} "
                f"clips/s); {state.skipped} clips skipped; checkpoint {summary['checkpoint']}; pictures in "
                f"{folder.path / 'pictures'}")
    return 0
