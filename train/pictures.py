"""Pictures of a pre-training run: masked-autoencoder reconstructions and the loss curve.

`reconstruct` puts the decoder's predicted cubes back into the clip, undoing the per-cube normalisation of the
target (`model.videomae.cube_target`) with the statistics of the original cube, as the VideoMAE paper's figures
do; `save_reconstruction` lays original / seen / reconstruction out as one PNG; `save_loss_curve` plots the
trainer's metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from model.config import ModelConfig
from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify

GREY = 0.5  # fill of the cubes the encoder did not see
CLIP_GAP = 4  # white pixels between the clips of a reconstruction picture


def reconstruct(video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, index: torch.Tensor,
                cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """video: B x 3 x T x H x W ImageNet-normalised; mask: B x N bool (True = masked); pred: B x n x cube_dim,
    the model's output for the tokens `index` (B x n). Returns `original`, `seen` and `reconstruction`, each
    B x T x H x W x 3 float in [0, 1], on the device of `video`.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=video.device)[:, None, None, None]
    std = torch.tensor(IMAGENET_STD, device=video.device)[:, None, None, None]
    pixels = video.detach().float() * std + mean  # B x C x T x H x W in [0, 1]
    cubes = patchify(pixels, cfg.patch_size, cfg.tubelet_size)  # B x N x C x P
    rows = torch.arange(video.shape[0], device=video.device)[:, None]

    guess = rearrange(pred.detach().float(), "b n (p c) -> b n c p", c=cubes.shape[2])  # B x n x C x P
    if cfg.norm_target:  # inverse of cube_target: x = target * (std + 1e-6) + mean, per cube and channel
        own = cubes[rows, index]
        guess = guess * (own.var(dim=-1, unbiased=True, keepdim=True).sqrt() + 1e-6) + own.mean(-1, keepdim=True)
    predicted = cubes.clone()
    predicted[rows, index] = guess
    hidden = mask[:, :, None, None]  # B x N x 1 x 1
    out = {
        "original": cubes,
        "seen": torch.where(hidden, torch.full_like(cubes, GREY), cubes),
        "reconstruction": torch.where(hidden, predicted, cubes),  # visible cubes pasted back from the original
    }
    t, h, w = cfg.grid
    return {name: rearrange(x, "b (t h w) c (p0 p1 p2) -> b (t p0) (h p1) (w p2) c", t=t, h=h, w=w,
                            p0=cfg.tubelet_size, p1=cfg.patch_size, p2=cfg.patch_size).clamp(0, 1)
            for name, x in out.items()}


def save_reconstruction(path: str | Path, video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor,
                        index: torch.Tensor, cfg: ModelConfig, max_clips: int = 4, max_frames: int = 8) -> Path:
    """One PNG: per clip three rows (original, seen, reconstruction) of up to `max_frames` evenly spaced frames,
    clips stacked with a `CLIP_GAP`-pixel white gap. Size: (frames * W) x (clips * 3 * H + (clips - 1) * gap)."""
    k = min(video.shape[0], max_clips)
    pictures = reconstruct(video[:k], mask[:k], pred[:k], index[:k], cfg)  # each k x T x H x W x 3
    num_frames = pictures["original"].shape[1]
    frames = torch.linspace(0, num_frames - 1, min(num_frames, max_frames)).round().long().to(video.device)
    rows = ("original", "seen", "reconstruction")
    grid = torch.stack([pictures[name][:, frames] for name in rows], dim=1)  # k x 3 x f x H x W x 3
    blocks = rearrange(grid.cpu(), "k r f h w c -> k (r h) (f w) c")  # one block of three rows per clip
    gap = torch.ones(CLIP_GAP, blocks.shape[2], 3)
    sheet = torch.cat([part for block in blocks for part in (block, gap)][:-1])  # (k 3 H + gaps) x (f W) x 3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((sheet * 255).round().to(torch.uint8).numpy()).save(path)
    return path


def read_losses(metrics_jsonl_path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl that carry both 'step' and 'loss' (blank or unreadable lines skipped)."""
    records = []
    for line in Path(metrics_jsonl_path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # blank, or a line cut short by a run that is still writing
            continue
        if isinstance(record, dict) and "step" in record and "loss" in record:
            records.append(record)
    return records


def save_loss_curve(path: str | Path, metrics_jsonl_path: str | Path) -> Path:
    """PNG of loss against step (log scale when every loss is > 0), with the learning rate on a twin axis when
    the records carry 'lr'. Raises ValueError naming the file when no line has both 'step' and 'loss'."""
    records = read_losses(metrics_jsonl_path)
    if not records:
        raise ValueError(f"{metrics_jsonl_path}: no line with both 'step' and 'loss' to plot")
    steps = np.array([r["step"] for r in records], dtype=float)
    losses = np.array([r["loss"] for r in records], dtype=float)

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # draws with Agg; no global backend is set
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="tab:blue", linewidth=1)
    if (losses > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(True, alpha=0.3)
    with_lr = [r for r in records if r.get("lr") is not None]
    if with_lr:
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in with_lr], [r["lr"] for r in with_lr], color="tab:orange", linewidth=1)
        lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(f"training loss, {len(records)} logged steps (last step {records[-1]['step']})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
