"""AdamW over the model's parameter groups, and its learning-rate schedule, per optimizer step: linear warm-up,
then cosine decay (the official VideoMAE one).

    warm-up, step s < W:  warmup_lr + (peak - warmup_lr) * s / (W - 1)        (W points, both ends included)
    decay, step s >= W:   min_lr + (peak - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2

with W = warm-up epochs x steps per epoch and S = all steps. Each parameter group's lr is its `lr_scale`
(layer-wise decay, model.param_groups) times the schedule's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model import param_groups


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    total_steps: int

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_steps == 1:
                return self.peak_lr
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / (self.warmup_steps - 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = min(step - self.warmup_steps, decay_steps) / decay_steps
        return self.min_lr + (self.peak_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step`; returns the schedule's value (before lr_scale)."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


def make_schedule(optim_cfg, steps_per_epoch: int, batch_per_step: int) -> Schedule:
    """The schedule of `optim_cfg` (OptimConfig) for `steps_per_epoch` optimizer steps of `batch_per_step` clips
    summed over ranks: base_lr, min_lr and warmup_lr are per 256 clips."""
    scale = batch_per_step / 256
    return Schedule(peak_lr=optim_cfg.base_lr * scale, min_lr=optim_cfg.min_lr * scale,
                    warmup_lr=optim_cfg.warmup_lr * scale,
                    warmup_steps=round(optim_cfg.warmup_epochs * steps_per_epoch),
                    total_steps=optim_cfg.epochs * steps_per_epoch)


def build_optimizer(optim_cfg, model: nn.Module, layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over model.param_groups (no decay on norms, biases, tokens; layer-wise lr decay for a classifier);
    fused on CUDA. The lr is set per step by the schedule, times each group's lr_scale."""
    fused = next(model.parameters()).device.type == "cuda"
    groups = param_groups(model, optim_cfg.weight_decay, layer_decay)
    return torch.optim.AdamW(groups, lr=0.0, betas=optim_cfg.betas, fused=fused)
