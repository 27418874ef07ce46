"""`ReferenceLoader`: what a user would write without DALI, for `bench` and for CPU training from any codec.

The webdataset library reads the shards, PyAV decodes in torch DataLoader workers (seeking to the keyframe
before the first wanted frame, as decord does in the official VideoMAE code; JPEG-frame shards: Pillow decodes
the stored frames that hold the wanted ones), torch crops, resizes and normalises. Frame indices, crop boxes,
flips and masks come from the same functions as the DALI path (`pipeline.sampling`, `pipeline.masking`); only the
uniform draws come from a numpy Generator per worker. Batches have the DaliLoader's layout.
"""

from __future__ import annotations

import io
import json
import random
import struct

import av
import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info
from torchvision.transforms import v2

from pipeline import frames as jpeg_frames
from pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from pipeline.masking import draw_masks, random_erase
from pipeline.ranks import rank_and_world
from pipeline.sampling import crop_boxes, derive_seed, frame_indices, resize_antialias, space_draws
from pipeline.shards import FRAMES_EXTENSION, VIDEO_EXTENSIONS, check_unchanged, find_shards

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)  # broadcast over (C, T, H, W)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def decode_frames(data: bytes, indices: np.ndarray) -> np.ndarray:
    """Frames `indices` of an encoded clip as (len(indices), H, W, 3) uint8, decoded with PyAV."""
    wanted = set(int(i) for i in indices)
    first, last = min(wanted), max(wanted)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        rate, base, start = stream.average_rate, stream.time_base, stream.start_time or 0
        got = _decode(container, stream, wanted, last, rate, base, start, seek_to=first if rate else 0)
        if first not in got:  # the seek landed past the first wanted frame: decode from the start
            container.seek(start, stream=stream, backward=True)
            got = _decode(container, stream, wanted, last, rate, base, start, seek_to=0)
    if not got:
        raise RuntimeError("no frame decoded")
    latest = None
    for index in range(last + 1):  # frames past the decodable end repeat the last one decoded
        latest = got.get(index, latest)
        if index in wanted:
            got[index] = latest
    return np.stack([got[int(i)] for i in indices])


def decode_jpeg_frames(sample: dict, indices: np.ndarray) -> torch.Tensor:
    """Frames `indices` of a JPEG-frame sample as (len(indices), H, W, 3) uint8: the stored frames holding them."""
    member = sample[FRAMES_EXTENSION]
    meta = json.loads(sample["json"])
    offsets = jpeg_frames.frame_offsets(meta, len(member))
    stored = jpeg_frames.stored_indices(indices, meta["frame_step"])
    images = [np.asarray(Image.open(io.BytesIO(member[offsets[k]:offsets[k + 1]])).convert("RGB")) for k in stored]
    return torch.from_numpy(np.stack(images))


def _decode(container, stream, wanted, last, rate, base, start, seek_to) -> dict[int, np.ndarray]:
    if seek_to > 0:
        container.seek(start + int(seek_to / rate / base), stream=stream, backward=True)
    got = {}
    for position, frame in enumerate(container.decode(stream)):
        index = round(float((frame.pts - start) * base * rate)) if frame.pts is not None and rate else position
        if index in wanted:
            got[index] = frame.to_ndarray(format="rgb24")
        if index >= last:
            break
    return got


def resize_box(frames: torch.Tensor, box: np.ndarray, size: int, antialias: bool) -> torch.Tensor:
    """The box (y0, x0, y1, x1) of (T, 3, H, W) float frames resized to (T, 3, size, size), as DALI's ROI resize.

    With antialias (pre-training boxes are whole pixels): the cut-out box, resized. Without: bilinear samples of
    the whole frame at the box's size x size grid of pixel centres, so fractional boxes (eval views) and the
    pixels just outside the box count as in DALI, and as in the official resize-then-crop test views.
    """
    y0, x0, y1, x1 = (float(c) for c in box)
    if antialias:
        crop = frames[:, :, int(y0):int(y1), int(x0):int(x1)]
        return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    height, width = frames.shape[-2:]
    centres = (torch.arange(size) + 0.5) / size  # (size,) fractions of the box
    ys = (y0 + centres * (y1 - y0)) / height * 2 - 1  # grid_sample's [-1, 1] spans the frame's outer edges
    xs = (x0 + centres * (x1 - x0)) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (size, size, 2) as (x, y)
    return F.grid_sample(frames, grid.expand(len(frames), -1, -1, -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


class ClipTransform:
    """One webdataset sample -> {'video': V x C x T x S x S, 'label', 'key'} (runs in a DataLoader worker)."""

    def __init__(self, cfg: DataConfig, shard_id: int, epoch: int):
        self.cfg, self.shard_id, self.epoch = cfg, shard_id, epoch
        self.rng = None
        self.rand_augment = None
        if cfg.mode == "finetune" and cfg.rand_augment_n > 0:
            self.rand_augment = v2.RandAugment(num_ops=cfg.rand_augment_n, magnitude=cfg.rand_augment_m,
                                               num_magnitude_bins=11, fill=128)

    def __call__(self, sample: dict) -> dict:
        cfg = self.cfg
        if self.rng is None:  # first call in this worker
            worker = get_worker_info()
            worker_id = worker.id if worker else 0
            self.rng = np.random.default_rng(derive_seed(cfg.seed, self.shard_id, 3, self.epoch, worker_id))
        num_available = struct.unpack("<i", sample["frames"])[0]
        indices = frame_indices(cfg, num_available, self.rng.random(cfg.num_frames))
        if FRAMES_EXTENSION in sample:
            frames = decode_jpeg_frames(sample, indices)  # (F, H, W, 3) uint8
        else:
            ext = next(e for e in VIDEO_EXTENSIONS if e in sample)
            frames = torch.from_numpy(decode_frames(sample[ext], indices))
        height, width = frames.shape[1:3]
        boxes, flips = crop_boxes(cfg, height, width, self.rng.random((cfg.num_views, space_draws(cfg))))
        views = []
        for v, (box, flip) in enumerate(zip(boxes, flips)):
            clip = frames
            if cfg.mode == "eval":
                t = v // cfg.test_num_crop
                clip = frames[t * cfg.num_frames:(t + 1) * cfg.num_frames]
            clip = clip.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
            clip = resize_box(clip, box, cfg.input_size, resize_antialias(cfg))
            clip = clip.round().clamp(0, 255).to(torch.uint8)
            if self.rand_augment is not None:
                clip = self.rand_augment(clip)  # one choice of ops for all frames
            if flip:
                clip = clip.flip(-1)
            clip = clip.permute(1, 0, 2, 3).float() / 255  # (3, T, S, S)
            views.append((clip - MEAN) / STD)
        return {"video": torch.stack(views).to(DTYPES[cfg.dtype]),
                "label": struct.unpack("<i", sample["label"])[0], "key": sample["__key__"]}


def collate(samples: list[dict]) -> dict:
    video = torch.stack([s["video"] for s in samples])  # (B, V, C, T, S, S)
    clips, num_views = video.shape[:2]
    return {"video": video.reshape(clips * num_views, *video.shape[2:]),
            "label": torch.tensor([s["label"] for s in samples]).repeat_interleave(num_views),
            "key": [s["key"] for s in samples for _ in range(num_views)],
            "view": torch.arange(num_views).repeat(clips)}


class ReferenceLoader:
    """webdataset + PyAV + DataLoader workers; tars are split over ranks, then over workers."""

    def __init__(self, cfg: DataConfig, device: str | torch.device = "cpu", num_workers: int | None = None,
                 shard_id: int | None = None, num_shards: int | None = None):
        self.cfg = cfg
        rank, world = rank_and_world()
        self.shard_id = rank if shard_id is None else shard_id
        self.num_shards = world if num_shards is None else num_shards
        self.device = torch.device(device)
        self.num_workers = cfg.num_threads if num_workers is None else num_workers
        self.shards = find_shards(cfg.shards, cfg.split)
        if self.shards.frames:
            jpeg_frames.check_frame_step(cfg, self.shards.frame_step, self.shards.root)
        self.tars = self.shards.tars[self.shard_id::self.num_shards]
        if not self.tars:
            raise ValueError(f"{len(self.shards.tars)} shards cannot be spread over {self.num_shards} ranks "
                             f"(the reference loader splits whole tars)")
        self.epoch = 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(derive_seed(cfg.seed, self.shard_id, 1))

    def __len__(self) -> int:
        sizes = dict(zip(self.shards.tars, self.shards.sizes))
        workers = max(self.num_workers, 1)
        per_worker = [sum(sizes[t] for t in self.tars[w::workers]) for w in range(workers)]
        rounding = (lambda n: n // self.cfg.batch_size) if self.cfg.drop_last else (
            lambda n: -(-n // self.cfg.batch_size))
        return sum(rounding(n) for n in per_worker)

    def _dataset(self):
        train = self.cfg.mode != "eval"
        dataset = wds.WebDataset(self.tars, shardshuffle=False, empty_check=False,
                                 nodesplitter=lambda urls: urls, workersplitter=wds.split_by_worker)
        if train:
            dataset = dataset.shuffle(self.cfg.shuffle_buffer,
                                      rng=random.Random(derive_seed(self.cfg.seed, self.shard_id, 4, self.epoch)))
        return dataset.map(ClipTransform(self.cfg, self.shard_id, self.epoch))

    def __iter__(self):
        check_unchanged(self.shards)  # a shard deleted or truncated since the start is named (as DaliLoader)
        loader = DataLoader(self._dataset(), batch_size=self.cfg.batch_size, num_workers=self.num_workers,
                            collate_fn=collate, drop_last=self.cfg.drop_last,
                            persistent_workers=False, prefetch_factor=2 if self.num_workers else None)
        for batch in loader:
            batch["video"] = batch["video"].to(self.device, non_blocking=True)
            batch["label"] = batch["label"].to(self.device)
            if self.cfg.mode == "eval":
                batch["view"] = batch["view"].to(self.device)
                yield batch
                continue
            del batch["view"]
            if self.cfg.mode == "pretrain":
                batch.update(draw_masks(self.cfg, len(batch["video"]), self._generator, self.device))
            elif self.cfg.erase_prob > 0:
                batch["video"] = random_erase(batch["video"], self.cfg.erase_prob, self._generator)
            yield batch
        self.epoch += 1
