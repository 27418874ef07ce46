"""The model alone: training steps of VideoMAE pre-training on synthetic tensors, the ceiling the data path feeds.

    bench model [--config X.yaml] [--set model.size=base --set data.batch_size=32 ...] [--optimizer]

A step is the one `train` runs: the schedule's lr, then `train.loop.train_step` (autocast at run.precision,
backward, AdamW) on the model and optimizer `train` builds; without `--optimizer` the AdamW update is skipped
(forward + backward only). Masks are drawn every step as the loader draws them (data.mask_type,
data.decoder_mask). Reports clips/s and, from model/flops.py, achieved TFLOP/s and model FLOPs utilisation
against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

import train.loop as loop  # loop.train_step looked up per call: one definition of a step
from model import pretrain_flops
from pipeline.masking import draw_masks
from train.bench.machine import machine
from train.distributed import resolve_device, resolve_precision
from train.optim import Schedule, build_optimizer, make_schedule
from train.task import PretrainLoss, build_model, mask_counts
from train.config import TrainConfig

# dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (SXM parts unless named)
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3'; None when not in the table."""
    for key, value in PEAK_BF16_TFLOPS.items():  # longer, more specific names come first
        if key in gpu_name:
            return value
    return None


class SkipStep(torch.optim.Optimizer):
    """An optimizer whose step does nothing: forward + backward only (zero_grad still clears the gradients)."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


@dataclass
class Stepper:
    """Training steps as `train` runs them: the schedule's lr for the step, then loop.train_step."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    clip_grad: float | None = None
    step: int = 0

    def __call__(self, batches: list[dict], counts: tuple[int, int | None]) -> None:
        self.schedule.apply(self.optimizer, self.step)
        loop.train_step(self.model, self.optimizer, batches, PretrainLoss(counts), self.precision,
                          self.scaler, self.clip_grad)
        self.step += 1

    def timed(self, run_step, count: int) -> float:
        """Seconds for `count` calls of run_step(), the device synchronised before and after."""
        self.sync()
        started = time.perf_counter()
        for _ in range(count):
            run_step()
        self.sync()
        return time.perf_counter() - started

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def make_stepper(cfg: TrainConfig, device: torch.device, optimizer: bool = True) -> Stepper:
    """The model, optimizer (or SkipStep), schedule and precision of `cfg` on `device`; compiled with
    run.compile (one graph, fullgraph)."""
    precision = resolve_precision(cfg.run.precision, device)
    model = build_model(cfg, device).train()
    opt = build_optimizer(cfg.optim, model) if optimizer else SkipStep(model.parameters())
    forward = torch.compile(model, fullgraph=True) if cfg.run.compile else model
    schedule = make_schedule(cfg.optim, steps_per_epoch=1, batch_per_step=cfg.lr_batch)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return Stepper(forward, opt, schedule, precision, device, scaler, cfg.optim.clip_grad)


def synthetic_video(cfg: TrainConfig, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """Normal noise of a batch's shape: (batch_size x num_sample, 3, T, H, W) in data.dtype."""
    d = cfg.data
    shape = (d.batch_size * d.num_sample, 3, d.num_frames, d.input_size, d.input_size)
    return torch.randn(shape, generator=generator, device=device).to(getattr(torch, d.dtype))


def bench_model(cfg: TrainConfig, steps: int = 10, warmup: int = 3, optimizer: bool = False,
                verbose: bool = True) -> dict:
    """Time `steps` training steps after `warmup` ones; returns the settings, the machine and the figures."""
    device = resolve_device(cfg.run.device)
    stepper = make_stepper(cfg, device, optimizer)
    generator = torch.Generator(device=device).manual_seed(cfg.run.seed)
    video = synthetic_video(cfg, device, generator)

    def batches() -> list[dict]:  # a new mask every batch, drawn as the loader draws them
        return [{"video": video, **draw_masks(cfg.data, len(video), generator, device)}
                for _ in range(cfg.optim.accum_steps)]

    counts = mask_counts(batches()[0])
    warmup_s = stepper.timed(lambda: stepper(batches(), counts), warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = stepper.timed(lambda: stepper(batches(), counts), steps)
    result = model_figures(cfg, stepper, counts, optimizer, steps, warmup, warmup_s, elapsed)
    if verbose:
        print_model(cfg, result)
    return result


def model_figures(cfg: TrainConfig, stepper: Stepper, counts: tuple[int, int | None], optimizer: bool,
                  steps: int, warmup: int, warmup_s: float, elapsed: float) -> dict:
    info, device = machine(), stepper.device
    rows = cfg.data.batch_size * cfg.data.num_sample
    clips_per_s = steps * rows * cfg.optim.accum_steps / elapsed
    flops = pretrain_flops(cfg.model, *counts)
    achieved, peak, mfu = utilisation(cfg, counts, clips_per_s, stepper)
    return {
        "size": cfg.model.size, "batch_size": cfg.data.batch_size, "num_sample": cfg.data.num_sample,
        "rows": rows, "accum_steps": cfg.optim.accum_steps, "num_frames": cfg.data.num_frames,
        "input_size": cfg.data.input_size, "mask_type": cfg.data.mask_type, "mask_ratio": cfg.data.mask_ratio,
        "visible_tokens": cfg.model.num_tokens - counts[0], "decoder_mask": cfg.data.decoder_mask,
        "device": str(device), "precision": stepper.precision, "compile": cfg.run.compile, "optimizer": optimizer,
        "use_checkpoint": cfg.model.use_checkpoint, "steps": steps, "warmup": warmup,
        "warmup_s": round(warmup_s, 2), "step_ms": round(1000 * elapsed / steps, 2),
        "clips_per_s": round(clips_per_s, 3), "gflops_per_clip": round(flops["total"] / 1e9, 2),
        "achieved_tflops": achieved, "peak_tflops": peak, "mfu": mfu,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda" else None,
        **info,
    }


def utilisation(cfg: TrainConfig, counts: tuple[int, int | None], clips_per_s: float, stepper: Stepper
                ) -> tuple[float, float | str, float | str]:
    """(achieved TFLOP/s, the GPU's dense bf16 peak, model FLOPs utilisation) of pre-training steps at
    `clips_per_s`; peak and MFU are 'unknown' off a GPU, in another precision or on a GPU not in the table."""
    achieved = clips_per_s * pretrain_flops(cfg.model, *counts)["total"] / 1e12
    gpu = machine()["gpu"] if stepper.device.type == "cuda" and stepper.precision == "bf16" else None
    peak = peak_tflops(gpu) if gpu else None
    return round(achieved, 3), peak or "unknown", round(achieved / peak, 4) if peak else "unknown"


def print_model(cfg: TrainConfig, r: dict) -> None:
    where = r["gpu"] if r["device"].startswith("cuda") else f"{r['cpu']} ({r['torch_threads']} threads)"
    print(f"machine: {where}, {r['cpu_cores']} CPU cores, torch {r['torch']}")
    size = f"{r['num_frames']}x{r['input_size']}x{r['input_size']}"
    print(f"model {r['size']} {size} {r['mask_type']} mask {r['mask_ratio']} batch {r['rows']} {r['precision']}"
          f"{' compiled' if r['compile'] else ''}{' +AdamW' if r['optimizer'] else ''}: {r['clips_per_s']} "
          f"clips/s, {r['step_ms']} ms/step, {r['achieved_tflops']} TFLOP/s, MFU {r['mfu']}")
