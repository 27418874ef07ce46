"""What the pre-training learned to predict: the first tube 0.9 pre-trained model on training and test clips, its
loss on the masked cubes that hold digit strokes against the mean-prediction floor (results.json `target`), and its
reconstruction of test digits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

import train as trainer

STROKE_LEVEL = 8  # grey levels (of 255): a cube with any pixel this bright holds part of a digit stroke


def look_at_clips(shards: Path, folder: Path, split: str, picture: Path | None = None, clips: int = 128) -> dict:
    """The pre-trained model of run `folder` on up to `clips` clips of `split` in `shards`: `target_report` of its
    masked cubes, and the reconstruction of the first batch as `picture`, if given."""
    import torch

    from model import VideoMAEPretrain, load_weights
    from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify

    cfg = trainer.load_train_config(folder / "config.yaml", [f"data.shards={shards}"])
    loader, _ = trainer.make_loader(replace(cfg.data, split=split, drop_last=False), "dali", "cpu")
    model = VideoMAEPretrain(cfg.model)
    path, weights = trainer.weights_of(folder, lambda text: print(f"study: {text}", flush=True))
    load_weights(model, weights, name=str(path))
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None, None]
    losses, brightest, seen = [], [], 0
    with torch.no_grad():
        for batch in loader:
            num_masked, num_decoded = trainer.mask_counts(batch)
            result = model(batch["video"], batch["mask"], num_masked=num_masked, num_decoded=num_decoded)
            if seen == 0 and picture is not None:
                trainer.save_reconstruction(picture, batch["video"], batch["mask"], result["pred"], result["index"],
                                            cfg.model, max_clips=8, scale=trainer.enlargement(cfg.data.input_size))
            cubes = patchify(batch["video"] * std + mean, cfg.model.patch_size, cfg.model.tubelet_size)  # B x N x C x P
            masked = cubes[torch.arange(len(cubes))[:, None], result["index"]]  # B x M x C x P, in [0, 1]
            brightest.append(255 * masked.amax(dim=(-2, -1)).flatten())
            losses.append(((result["pred"] - result["target"]) ** 2).mean(dim=-1).flatten())
            seen += len(cubes)
            if seen >= clips:
                break
    loader.close()
    return target_report(torch.cat(losses).numpy(), torch.cat(brightest).numpy(), seen,
                         cfg.model.tubelet_size * cfg.model.patch_size ** 2)


def target_report(losses: np.ndarray, brightest: np.ndarray, clips: int, cube_pixels: int) -> dict:
    """Mean loss of the masked cubes that hold strokes (their brightest pixel STROKE_LEVEL or more) and of the
    empty ones, each cube's loss given with its brightest pixel in grey levels. Predicting each cube's own mean
    scores (P - 1) / P on a stroke cube (the floor a model that learned nothing reaches); an empty cube's normalised
    target is 0, which the decoder learns to predict early."""
    stroke = brightest >= STROKE_LEVEL
    floor = 1 - 1 / cube_pixels
    stroke_loss = float(losses[stroke].mean()) if stroke.any() else None
    return {"clips": clips, "masked_cubes": int(len(losses)), "cube_pixels": cube_pixels,
            "predicting_the_mean": round(floor, 4), "stroke_share": round(float(stroke.mean()), 3),
            "stroke_loss": None if stroke_loss is None else round(stroke_loss, 4),
            "stroke_below_floor": None if stroke_loss is None else round(1 - stroke_loss / floor, 3),
            "empty_loss": round(float(losses[~stroke].mean()), 4) if (~stroke).any() else None}
