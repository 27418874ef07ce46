"""`train --config configs/X.yaml`: VideoMAE pre-training, fine-tuning and evaluation, on one process or many
(torchrun). `mode` chooses: pretrain (masked-cube MSE), finetune (the classifier; train/finetune.py), eval.

    build   the device (torchrun's rank), the loader, the model (DDP / FSDP2), AdamW, the schedule, the loss
    resume  --resume auto|PATH: weights, optimizer, scaler, step, every rank's loader state and RNG
    loop    train_one_epoch (train/engine.py) epoch after epoch; every log_every steps a log line and a metrics
            record (the only wait for the GPU), every checkpoint_every a checkpoint, every picture_every a
            reconstruction picture (pretrain); at the end of every finetune.val_every-th epoch a validation, and
            best.pt when it is the best; SIGTERM / Ctrl-C: a checkpoint, then exit 143 / 130
    finish  a last checkpoint, the pictures (reconstruction or accuracy curve, loss curve), the multi-view test
            (finetune.test_split), a summary (summary.json)
    eval    mode eval: the multi-view test of finetune.weights on data.split, and nothing else
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from train import checkpoint, distributed, finetune
from train.build import build_model, build_optimizer, make_loader
from train.config import ConfigError, TrainConfig, to_dict
from train.display import Display
from train.engine import PretrainLoss, TrainState, autocast, resolve_precision, train_one_epoch
from train.pictures import save_loss_curve, save_reconstruction
from train.rundir import RunFolder, keep_metrics_until
from train.schedule import Schedule, make_schedule


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class Stopper:
    """SIGTERM (cluster preemption) and Ctrl-C ask the loop to stop after the current step; a second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Run:
    cfg: TrainConfig
    env: distributed.Env
    folder: RunFolder
    display: Display
    loader: object
    model: torch.nn.Module  # the model itself (FSDP: sharded in place)
    wrapped: torch.nn.Module  # what the step calls: DDP / FSDP, compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: Schedule
    precision: str
    steps_per_epoch: int
    last_step: int
    loss_of: object  # engine.PretrainLoss or finetune.ClassifierLoss
    validator: finetune.Validator | None = None
    class_names: list[str] | None = None
    state: TrainState = field(default_factory=TrainState)
    saved_step: int = -1  # step of the newest checkpoint
    started: float = field(default_factory=time.perf_counter)
    start_step: int = 0


def train(cfg: TrainConfig, out_dir: str | Path, resume: str | None = None, live: bool | None = None,
          loader=None) -> int:
    """Run `cfg` into `out_dir`; returns the exit code (0 done, 1 failed, 130 / 143 stopped by a signal).
    `loader`: batches to train on instead of the loader `cfg` names (`bench loop` passes batches held in memory)."""
    env = distributed.setup(cfg.run.device)
    folder = RunFolder(Path(out_dir), warn=lambda text: print(f"train: {text}", flush=True))
    run = None
    try:
        if env.is_main:
            folder.lock()
        if cfg.mode == "eval":
            return finetune.evaluate_only(cfg, env, folder)
        run = build(cfg, env, folder, live, loader)
        restore(run, resume)
        return fit(run)
    finally:
        if run is not None:
            run.display.close()
        folder.close()
        distributed.teardown(env)


def build(cfg: TrainConfig, env: distributed.Env, folder: RunFolder, live: bool | None, loader=None) -> Run:
    precision = resolve_precision(cfg.run.precision, env.device)
    if loader is None:
        loader, decode = make_loader(cfg.data, cfg.run.loader, env.device)
    else:
        decode = f"nothing ({type(loader).__name__})"
    steps_per_epoch = len(loader) // cfg.optim.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(f"an epoch of split '{cfg.data.split}' gives {len(loader)} batches of data.batch_size "
                          f"{cfg.data.batch_size} on each of {env.world} ranks, fewer than optim.accum_steps "
                          f"({cfg.optim.accum_steps}): lower data.batch_size or optim.accum_steps")
    total_steps = cfg.optim.epochs * steps_per_epoch
    clips_per_step = cfg.effective_batch * env.world
    schedule = make_schedule(cfg.optim, steps_per_epoch, cfg.lr_batch * env.world)
    display = Display(0, 0, enabled=env.is_main, live=live)
    names = finetune.class_names(cfg) if cfg.mode == "finetune" else None
    if names is None:
        model, loss_of, layer_decay = build_model(cfg, env.device), PretrainLoss(), None
    else:
        model = finetune.build_classifier(cfg, len(names), env.device, display.message)
        loss_of, layer_decay = finetune.ClassifierLoss(cfg.finetune, len(names)), cfg.finetune.layer_decay
    wrapped = distributed.wrap(model, env, cfg.run.parallel)
    optimizer = build_optimizer(cfg.optim, model, layer_decay)
    if cfg.run.compile:
        wrapped = torch.compile(wrapped, fullgraph=env.world == 1)
    scaler = torch.amp.GradScaler(env.device.type) if precision == "fp16" else None
    last_step = min(total_steps, cfg.run.max_steps or total_steps)
    display.set_total(last_step)
    if env.is_main:
        folder.write_config(to_dict(cfg))
        task = (f"{cfg.data.mask_type} mask {cfg.data.mask_ratio}" if names is None else
                f"{len(names)} classes, mixup {cfg.finetune.mixup if cfg.finetune.mixes else 'off'}, layer decay "
                f"{cfg.finetune.layer_decay}")
        display.message(
            f"train: {cfg.mode} {cfg.model.size} model, {cfg.data.num_frames}x{cfg.data.input_size}x"
            f"{cfg.data.input_size}, {task}; {env.world} rank(s) on {env.device}, {precision}"
            f"{', compiled' if cfg.run.compile else ''}; {cfg.run.loader} loader decoding on {decode}")
        display.message(
            f"train: {clips_per_step} clips per step ({cfg.data.batch_size} x {cfg.data.num_sample} views x "
            f"{cfg.optim.accum_steps} accumulation x {env.world} ranks): lr {schedule.peak_lr:.3g} = base_lr "
            f"{cfg.optim.base_lr:g} x {cfg.lr_batch * env.world} / 256; {steps_per_epoch} steps per epoch, "
            f"{total_steps} in all, warm-up {schedule.warmup_steps}")
    validator = (finetune.Validator(cfg, env, names) if names is not None and cfg.finetune.val_split else None)
    return Run(cfg, env, folder, display, loader, model, wrapped, optimizer, scaler, schedule, precision,
               steps_per_epoch, last_step, loss_of, validator, names)


def restore(run: Run, resume: str | None) -> None:
    """Continue from a checkpoint (--resume auto|PATH); without --resume, refuse a folder that holds any."""
    found = checkpoint.list_checkpoints(run.folder.path)
    if resume is None:
        if found:
            raise checkpoint.CheckpointError(
                f"{run.folder.path} already holds {found[-1].name}: continue it with --resume auto, or choose "
                f"another --out")
        return
    if resume == "auto":
        hit = checkpoint.find_resumable(run.folder.path, run.cfg.model, run.display.message)
        if hit is None:
            run.display.message(f"train: no checkpoint in {run.folder.path} yet: starting at step 0")
            return
        path, obj = hit
    else:
        path, obj = Path(resume), checkpoint.read(Path(resume), run.cfg.model)
    kind = "pretrain" if run.cfg.mode == "pretrain" else "classifier"
    if obj["tubemae"]["kind"] != kind:
        raise checkpoint.CheckpointError(f"{path}: a {obj['tubemae']['kind']} checkpoint, this run ({run.cfg.mode}) "
                                         f"trains a {kind}: start from its weights with finetune.weights instead")
    if len(obj["ranks"]) != run.env.world:
        raise checkpoint.CheckpointError(f"{path}: written by {len(obj['ranks'])} ranks, this run has "
                                         f"{run.env.world}: resume with the same number of processes")
    distributed.load_full_state(run.model, run.optimizer, obj["model"], obj["optimizer"])
    if run.scaler is not None and obj.get("scaler"):
        run.scaler.load_state_dict(obj["scaler"])
    run.state = TrainState(**obj["train_state"])
    loader_state = obj["ranks"][run.env.rank]["loader"]
    if loader_state is not None and hasattr(run.loader, "load_state_dict"):
        run.loader.load_state_dict(loader_state)
    else:
        run.display.message(f"train: the {run.cfg.run.loader} loader has no exact resume: the data after step "
                            f"{run.state.step} differs from an uninterrupted run")
    checkpoint.restore_rng(obj, run.env.rank)
    run.saved_step = run.start_step = run.state.step
    if run.env.is_main:
        keep_metrics_until(run.folder.metrics_path, run.state.step)
    run.display.message(f"train: resumed from {path} at step {run.state.step} (epoch {run.state.epoch + 1})")


@dataclass
class Interval:
    """What happened since the last log line (host clock; losses stay on the device until read)."""
    loss_sum: torch.Tensor
    first_bad: torch.Tensor  # first step whose loss was not finite, -1 if none
    steps: int = 0
    clips: int = 0
    data_wait_s: float = 0.0
    since: float = field(default_factory=time.perf_counter)


def fit(run: Run) -> int:
    cfg, state = run.cfg, run.state
    device = run.env.device
    interval = Interval(torch.zeros((), device=device), torch.full((), -1, dtype=torch.long, device=device))
    stopper, last_batch = Stopper(), None
    try:
        while state.step < run.last_step:
            for out in train_one_epoch(run.wrapped, run.loader, run.optimizer, run.schedule, state, run.loss_of,
                                       cfg.optim.accum_steps, run.precision, run.scaler, cfg.optim.clip_grad):
                last_batch = out.batch
                interval.loss_sum += out.loss
                interval.first_bad = torch.where((interval.first_bad < 0) & ~torch.isfinite(out.loss),
                                                 out.step, interval.first_bad)
                interval.steps += 1
                interval.clips += len(out.batch["video"]) * cfg.optim.accum_steps
                interval.data_wait_s += out.data_wait_s
                if out.step % cfg.run.log_every == 0 or out.step == run.last_step:
                    log(run, interval, out.lr)
                    interval = Interval(interval.loss_sum.zero_(), interval.first_bad)
                epochs_done, rest = divmod(out.step, run.steps_per_epoch)  # in steps: exact on resume; before a
                # checkpoint, which then holds the best top-1
                if not rest and epochs_done % cfg.finetune.val_every == 0 and out.step < run.last_step:
                    finetune.validate(run)
                if out.step % cfg.run.checkpoint_every == 0:
                    save(run, interval)
                if cfg.run.picture_every and out.step % cfg.run.picture_every == 0 and cfg.mode == "pretrain":
                    picture(run, out.batch)
                if out.step >= run.last_step or distributed.any_rank(stopper.signal is not None, run.env):
                    break
            else:  # the epoch ran to its end
                state.epoch += 1
                continue
            break
    except NonFiniteLoss as e:
        run.display.message(f"train: {e}")
        return 1
    finally:
        stopper.restore()
    return finish(run, interval, last_batch, stopper.signal)


def check_finite(run: Run, interval: Interval) -> None:
    bad = int(interval.first_bad)
    if bad >= 0:
        kept = checkpoint.list_checkpoints(run.folder.path)
        where = f"the last good checkpoint is {kept[-1]}" if kept else "no checkpoint was written before it"
        raise NonFiniteLoss(f"the loss is not finite at step {bad}: stopping; {where} (lower optim.base_lr, set "
                            f"optim.clip_grad, or check the data)")


def log(run: Run, interval: Interval, lr: float) -> None:
    """A log line and a metrics record; reading the loss is the loop's only wait for the device."""
    loss = (interval.loss_sum / max(interval.steps, 1)).item()
    check_finite(run, interval)
    now = time.perf_counter()
    elapsed = now - interval.since
    state, cfg = run.state, run.cfg
    skipped = sum(distributed.gather(len(getattr(run.loader, "skipped", [])), run.env))
    rate = (state.step - run.start_step) / max(now - run.started, 1e-9)
    record = {"step": state.step, "total_steps": run.last_step, "epoch": state.epoch, "epochs": cfg.optim.epochs,
              "loss": loss, "lr": lr, "clips_per_s": interval.clips * run.env.world / elapsed,
              "data_wait": interval.data_wait_s / elapsed, "step_s": elapsed / max(interval.steps, 1),
              "gpu_memory_gib": (torch.cuda.max_memory_allocated(run.env.device) / 2**30
                                 if run.env.device.type == "cuda" else None),
              "eta_s": (run.last_step - state.step) / rate if rate > 0 else 0.0, "skipped": skipped,
              "time": time.time()}
    if run.env.is_main:
        run.folder.log(record)
    run.display.update(record)


def save(run: Run, interval: Interval) -> None:
    """A checkpoint of the current step (all ranks take part: FSDP gathers, every rank gives its loader state)."""
    check_finite(run, interval)  # never write weights that a non-finite loss has touched
    weights, optimizer_state = distributed.full_state(run.model, run.optimizer, run.env)
    ranks = distributed.gather(checkpoint.rank_entry(run.loader), run.env)
    run.state.skipped = sum(len(r["loader"]["skipped"]) for r in ranks if r["loader"] is not None)
    if run.env.is_main:
        checkpoint.save(run.folder.path, run.model, weights, optimizer_state, run.scaler, run.state, ranks,
                        to_dict(run.cfg), run.cfg.run.keep_checkpoints)
    run.saved_step = run.state.step


def picture(run: Run, batch: dict) -> Path | None:
    """A reconstruction picture of the first clips of `batch` (every rank runs the forward: FSDP gathers)."""
    rows = min(run.cfg.run.picture_clips, len(batch["video"]))
    video, mask = batch["video"][:rows], batch["mask"][:rows]
    decoder_mask = batch.get("decoder_mask")
    num_masked, num_decoded = run.loss_of.counts
    with torch.no_grad(), autocast(run.env.device, run.precision):
        out = run.model(video, mask, None if decoder_mask is None else decoder_mask[:rows],
                        num_masked=num_masked, num_decoded=num_decoded)
    if not run.env.is_main:
        return None
    path = run.folder.path / "pictures" / f"reconstruction-{run.state.step:08d}.png"
    save_reconstruction(path, video.float(), mask, out["pred"].float(), out["index"], run.cfg.model)
    return path


def finish(run: Run, interval: Interval, last_batch: dict | None, signum: int | None) -> int:
    cfg, state, folder = run.cfg, run.state, run.folder
    if state.step > run.saved_step:
        save(run, interval)
    kept = checkpoint.list_checkpoints(folder.path)
    if signum is not None:
        name = signal.Signals(signum).name
        run.display.message(f"train: stopped by {name} after step {state.step}; checkpoint {kept[-1]}; continue "
                            f"with --resume auto")
        return 128 + signum
    seconds = time.perf_counter() - run.started
    pictures = [picture(run, last_batch)] if cfg.mode == "pretrain" and last_batch is not None else []
    results = finetune.conclude(run) if cfg.mode == "finetune" else {}  # the last validation, the test
    if run.env.is_main and folder.metrics_path.is_file():
        pictures.append(save_loss_curve(folder.path / "pictures" / "loss.png", folder.metrics_path))
    steps = state.step - run.start_step
    summary = {"steps": state.step, "steps_this_run": steps, "seconds": round(seconds, 1),
               "clips_per_s": round(steps * cfg.effective_batch * run.env.world / max(seconds, 1e-9), 2),
               "skipped_clips": state.skipped, "checkpoint": str(kept[-1]) if kept else None,
               "pictures": [str(p) for p in pictures + results.pop("pictures", []) if p is not None], **results}
    if run.env.is_main:
        (folder.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        run.display.close()
        run.display.message(
            f"train: done, {state.step} steps ({steps} in this run, {summary['seconds']} s, "
            f"{summary['clips_per_s']} clips/s); {state.skipped} clips skipped; checkpoint {summary['checkpoint']}; "
            f"pictures in {folder.path / 'pictures'}")
    return 0
