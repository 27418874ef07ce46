"""Where the pre-training loss comes from: the first tube 0.9 pre-trained model on training and test clips, its loss
on the masked cubes split into moving, flat and still ones (results.json `target`), and its reconstruction picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import train as trainer


def look_at_clips(out: Path, folder: Path, split: str, picture: Path | None = None, clips: int = 96) -> dict:
    """The pre-trained model of run `folder` on clips of `split`: where its loss comes from (`target_report`), and
    the reconstruction of the first batch as `picture`, if given."""
    from dataclasses import replace

    import torch
    from einops import rearrange

    from model import VideoMAEPretrain, load_weights
    from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify

    train_cfg = trainer.load_train_config(folder / "config.yaml", [f"data.shards={out / 'shards' / 'fraction-100'}"])
    data = replace(train_cfg.data, split=split, drop_last=False)
    loader, _ = trainer.make_loader(data, "dali", "cpu")
    model = VideoMAEPretrain(train_cfg.model)
    path, weights = trainer.weights_of(folder, lambda text: print(f"study: {text}", flush=True))
    load_weights(model, weights, name=str(path))
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None, None]
    losses, spreads, changes, seen = [], [], [], 0
    with torch.no_grad():
        for batch in loader:
            num_masked, num_decoded = trainer.mask_counts(batch)
            result = model(batch["video"], batch["mask"], num_masked=num_masked, num_decoded=num_decoded)
            if seen == 0 and picture is not None:
                trainer.save_reconstruction(picture, batch["video"], batch["mask"], result["pred"],
                                    result["index"], train_cfg.model)
            cubes = patchify(batch["video"] * std + mean, train_cfg.model.patch_size, train_cfg.model.tubelet_size)
            masked = cubes[torch.arange(len(cubes))[:, None], result["index"]] * 255  # B x M x C x (t p p), grey
            spreads.append(masked.std(dim=-1).mean(dim=-1).flatten())
            frames = rearrange(masked, "b m c (t q) -> b m c t q", t=train_cfg.model.tubelet_size)
            changes.append((frames[..., 1:, :] - frames[..., :-1, :]).abs().mean(dim=(-3, -2, -1)).flatten())
            losses.append(((result["pred"] - result["target"]) ** 2).mean(dim=-1).flatten())
            seen += len(cubes)
            if seen >= clips:
                break
    cube_pixels = train_cfg.model.tubelet_size * train_cfg.model.patch_size ** 2
    return target_report(torch.cat(losses).numpy(), torch.cat(spreads).numpy(), torch.cat(changes).numpy(), seen,
                         cube_pixels)


CUBE_KINDS = {"moving": "the frames of the cube differ by 4 grey levels (of 255) or more, mean absolute difference",
              "flat": "not moving, pixel standard deviation under 4 grey levels, per channel, mean over channels",
              "still": "the rest: structure that does not move (edges, gradients, texture)"}


def target_report(losses: np.ndarray, spreads: np.ndarray, changes: np.ndarray, clips: int,
                  cube_pixels: int) -> dict:
    """Mean loss of the masked cubes of each kind (`CUBE_KINDS`), each cube's loss given with its pixel spread and
    its change between frames, in grey levels. Predicting zero, the cube's own mean, scores (P - 1) / P."""
    moving = changes >= 4.0
    flat = ~moving & (spreads < 4.0)
    kinds = {"moving": moving, "flat": flat, "still": ~moving & ~flat}
    return {"clips": clips, "masked_cubes": int(len(losses)), "loss": round(float(losses.mean()), 4),
            "cube_pixels": cube_pixels, "predicting_the_mean": round(1 - 1 / cube_pixels, 4),
            "kinds": {name: {"share": round(float(which.mean()), 3),
                             "loss": round(float(losses[which].mean()), 4) if which.any() else None}
                      for name, which in kinds.items()},
            "kinds_mean": CUBE_KINDS}
