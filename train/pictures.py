"""The pictures of a run: masked-autoencoder reconstructions, the loss curve, the validation accuracy curve and
the confusion matrix of a test.

`reconstruct` puts the decoder's predicted cubes back into the clip, undoing the per-cube normalisation of the
target (`model.videomae.cube_target`) with the statistics of the original cube, as the VideoMAE paper's figures
do; `save_reconstruction` lays original / seen / reconstruction out as one PNG; `save_loss_curve` and
`save_accuracy_curve` plot the run's metrics.jsonl (train/run_folder.py reads it); `save_confusion` draws a
test's confusion matrix (train/evaluate.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from model.config import ModelConfig
from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify
from train.display import percent
from train.run_folder import read_metrics

GREY = 0.5  # fill of the cubes the encoder did not see
CLIP_GAP = 4  # white pixels between the clips of a reconstruction picture
MIN_DRAWN_FRAME = 96  # pixels: smaller frames are drawn enlarged (enlargement)
MAX_CONFUSION_CLASSES = 50  # above this a confusion picture is unreadable: JSON only
ANNOTATED_CLASSES = 20  # up to this many classes the picture writes the count into each cell


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


def enlargement(frame_size: int) -> int:
    """The whole factor by which a picture of `frame_size`-pixel frames is enlarged (nearest neighbour) so that a
    frame is drawn at least MIN_DRAWN_FRAME pixels tall: 3 for 32x32 clips, 1 from 96 pixels up."""
    return max(1, -(-MIN_DRAWN_FRAME // frame_size))


def save_reconstruction(path: str | Path, video: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor,
                        index: torch.Tensor, cfg: ModelConfig, max_clips: int = 4, max_frames: int = 8,
                        scale: int = 1) -> Path:
    """One PNG: per clip three rows (original, seen, reconstruction) of up to `max_frames` evenly spaced frames,
    clips stacked with a `CLIP_GAP`-pixel white gap, all enlarged `scale` times (nearest neighbour). Size:
    scale * ((frames * W) x (clips * 3 * H + (clips - 1) * gap))."""
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
    picture = Image.fromarray((sheet * 255).round().to(torch.uint8).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    picture.save(path)
    return path


def save_loss_curve(path: str | Path, metrics_jsonl_path: str | Path) -> Path:
    """PNG of loss against step (log scale when every loss is > 0), with the learning rate on a twin axis when
    the records carry 'lr'. Raises ValueError naming the file when no line has both 'step' and 'loss'."""
    records = [r for r in read_metrics(metrics_jsonl_path) if "step" in r and "loss" in r]
    if not records:
        raise ValueError(f"{metrics_jsonl_path}: no line with both 'step' and 'loss' to plot")
    steps = np.array([r["step"] for r in records], dtype=float)
    losses = np.array([r["loss"] for r in records], dtype=float)

    fig, ax = figure()
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
    return save_figure(fig, path)


def save_confusion(path, confusion, class_names: list[str] | None) -> Path | None:
    """PNG of the confusion matrix (rows true class, columns predicted), each row shaded by its share of the true
    class's videos, counts written in the cells up to 20 classes. None, and nothing written, above 50 classes."""
    matrix = np.asarray(confusion, dtype=np.int64)  # C x C
    num_classes = len(matrix)
    if num_classes > MAX_CONFUSION_CLASSES:
        return None
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"a confusion matrix is square, got shape {matrix.shape}")
    names = class_names or [str(c) for c in range(num_classes)]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # C x C, each row sums to 1 (or 0)

    side = min(4 + 0.3 * num_classes, 20)
    fig, ax = figure(side + 1.5, side)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if num_classes <= ANNOTATED_CLASSES:
        for true, guess in zip(*np.nonzero(matrix)):
            ax.text(guess, true, str(matrix[true, guess]), ha="center", va="center", fontsize=8,
                    color="white" if share[true, guess] > 0.5 else "black")
    correct = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"confusion, {matrix.sum()} videos, top-1 {percent(correct)}")
    return save_figure(fig, path)


def save_accuracy_curve(path, metrics_path) -> Path | None:
    """PNG of validation top-1 (and top-5 where recorded) in percent against epoch, from the metrics.jsonl
    records that have 'val_top1' (fractions, as `metrics` gives them), the best top-1 marked. None, and nothing
    written, when no record has 'val_top1'."""
    records = [r for r in read_metrics(metrics_path) if "val_top1" in r]
    if not records:
        return None
    if any("epoch" not in r for r in records):
        raise ValueError(f"{metrics_path}: a validation record without 'epoch'")
    epochs = np.array([r["epoch"] for r in records], dtype=float)
    top1 = 100 * np.array([r["val_top1"] for r in records], dtype=float)
    best = int(top1.argmax())

    fig, ax = figure()
    ax.plot(epochs, top1, marker="o", markersize=3, color="tab:blue", label="top-1")
    with_top5 = [r for r in records if r.get("val_top5") is not None]
    if with_top5:
        ax.plot([r["epoch"] for r in with_top5], [100 * r["val_top5"] for r in with_top5], marker="o",
                markersize=3, color="tab:orange", label="top-5")
    ax.plot(epochs[best], top1[best], marker="*", markersize=12, color="tab:red", linestyle="none",
            label=f"best top-1 {percent(top1[best] / 100)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"validation accuracy, {len(records)} validations (best top-1 at epoch {records[best]['epoch']})")
    return save_figure(fig, path)


def figure(width: float = 8, height: float = 4.5, dpi: int = 100, panels: int = 1) -> tuple[Figure, object]:
    """A figure drawn with Agg (no global backend is set) and its axes: one, or `panels` side by side (an array)
    sharing the y axis."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot() if panels == 1 else fig.subplots(1, panels, sharey=True)


def save_figure(fig: Figure, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
