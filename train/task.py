"""What pre-training and fine-tuning do differently, as a small object handed to the loop (train/loop.py):

    task.kind                    the model its checkpoints hold: 'pretrain' or 'classifier'
    task.model(say)              the model, initialised from run.seed (fine-tuning: then from finetune.weights)
    task.loss(model, batch)      a batch's loss
    task.after_step(run, batch)  pre-training: a reconstruction picture every run.picture_every steps;
                                 fine-tuning: validation, and best.pt, every finetune.val_every epochs and at the end
    task.finish(run, batch)      the end, after the last checkpoint: pictures, fine-tuning's multi-view test; the
                                 summary's entries
    task.entries                 what its checkpoints hold besides the run's state (fine-tuning: the class names)

`Pretrain` is here; `Finetune` is train/finetune.py. Both take their loader through `make_loader`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from model import VideoMAEPretrain
from pipeline.config import DataConfig
from pipeline.shards import find_shards
from train.config import ConfigError
from train.distributed import autocast
from train.pictures import enlargement, save_reconstruction


def make_loader(cfg: DataConfig, loader: str, device: torch.device | str):
    """(loader, what decodes) for 'dali' or 'reference'; rank and world size come from torch.distributed. With
    data.drop_last (training), a split with fewer clips per rank than one batch is refused, saying what fits."""
    if cfg.drop_last:
        world = dist.get_world_size() if dist.is_initialized() else 1
        clips = find_shards(cfg.shards, cfg.split).num_samples // world
        if clips < cfg.batch_size:
            raise ConfigError(f"split '{cfg.split}' of {cfg.shards} has {clips} clips per rank ({world} rank(s)), "
                              f"fewer than data.batch_size {cfg.batch_size}: set data.batch_size to {max(clips, 1)} "
                              f"or less")
    if loader == "dali":
        from pipeline.loader import DaliLoader

        data = DaliLoader(cfg, device=device)
        return data, data.decode_device
    if loader == "reference":
        from pipeline.reference import ReferenceLoader  # needs PyAV, which a GPU box may lack

        return ReferenceLoader(cfg, device=device), "cpu (PyAV)"
    raise ValueError(f"loader must be 'dali' or 'reference', got {loader!r}")


def build_model(cfg, device: torch.device) -> nn.Module:
    """The pre-training model of TrainConfig `cfg` on `device`, initialised from run.seed."""
    torch.manual_seed(cfg.run.seed)
    return VideoMAEPretrain(cfg.model).to(device)


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
        num_masked, num_decoded = self.counts
        return model(batch["video"], batch["mask"], batch.get("decoder_mask"), num_masked=num_masked,
                     num_decoded=num_decoded)["loss"]


class Pretrain:
    """Masked-cube reconstruction: the pre-training model, its MSE, reconstruction pictures."""
    kind = "pretrain"
    layer_decay = None
    entries: dict = {}

    def __init__(self, cfg, env):
        self.cfg, self.env = cfg, env
        self.loss = PretrainLoss()
        self.describe = f"{cfg.data.mask_type} mask {cfg.data.mask_ratio}"

    def model(self, say) -> nn.Module:
        return build_model(self.cfg, self.env.device)

    def after_step(self, run, batch: dict) -> None:
        every = self.cfg.run.picture_every
        if every and run.state.step % every == 0:
            self.picture(run, batch)

    def finish(self, run, batch: dict | None) -> dict:
        return {"pictures": [self.picture(run, batch)] if batch is not None else []}

    def picture(self, run, batch: dict) -> Path | None:
        """A reconstruction picture of the first `cfg.picture_clips` rows of `batch` (every rank runs the forward:
        FSDP gathers)."""
        rows = self.cfg.picture_clips
        video, mask = batch["video"][:rows], batch["mask"][:rows]
        decoder_mask = batch.get("decoder_mask")
        num_masked, num_decoded = self.loss.counts
        with torch.no_grad(), autocast(self.env.device, self.env.precision):
            out = run.model(video, mask, None if decoder_mask is None else decoder_mask[:rows],
                            num_masked=num_masked, num_decoded=num_decoded)
        if not self.env.is_main:
            return None
        path = run.folder.path / "pictures" / f"reconstruction-{run.state.step:08d}.png"
        return save_reconstruction(path, video.float(), mask, out["pred"].float(), out["index"], self.cfg.model,
                                   max_clips=rows, scale=enlargement(video.shape[-1]))
