"""`DataConfig`: every setting of the data path, typed and range-checked at start (ARCHITECTURE.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["pretrain", "finetune", "eval"]

# The batch contract's normalisation (ARCHITECTURE.md section 2), RGB order: every other module imports these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    # where: a folder written by `shard-videos`, and which split of it
    shards: str = "data/shards"
    split: str = "train"
    mode: Mode = "pretrain"  # pretrain: crop + tube mask; finetune: RRC + RandAugment + erasing; eval: multi-view

    # temporal sampling
    num_frames: int = 16
    sampling_rate: int = 4  # r: 4 for Kinetics-like data, 2 for SSv2 pre-training; the segment sampler has none
    # which frames, following the official VideoMAE datasets in each mode (pipeline/sampling.py has the table):
    # random: a window of num_frames * r frames; pre-training every r-th frame from a random start (official
    #   pre-training), fine-tuning num_frames linspace points over a random window (official Kinetics, UCF101,
    #   HMDB51 fine-tuning), eval test_num_segment windows of every r-th frame spread over the clip;
    # segment: num_frames segments of n // num_frames frames, a random frame of each (official SSv2 fine-tuning),
    #   eval the segment starts, then the midpoints (official SSv2 test with test_num_segment 2)
    sampler: Literal["random", "segment"] = "random"

    # spatial augmentation
    input_size: int = 224
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop (pretrain)
    max_distort: int = 1  # at most this many steps between the height and width scale
    flip: bool = False  # random horizontal flip: official pre-training does not flip; fine-tuning does, except SSv2
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop (finetune)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rand_augment_n: int = 4  # RandAugment ops per clip (finetune); 0 turns it off
    rand_augment_m: int = 7  # RandAugment magnitude on the 0..10 scale
    erase_prob: float = 0.25  # random erasing per frame (finetune)

    # masking (pretrain)
    patch_size: int = 16
    tubelet_size: int = 2
    mask_type: Literal["tube", "random", "frame"] = "tube"
    mask_ratio: float = 0.9
    decoder_mask: Literal["none", "running_cell"] = "none"  # VideoMAE V2 dual masking, half of each 2x2 cell

    # repeated sampling and evaluation views
    num_sample: int = 1  # crops (and masks) per decoded clip; a batch holds batch_size * num_sample rows
    test_num_segment: int = 5  # eval: temporal clips evenly spaced over the video
    test_num_crop: int = 3  # eval: crops along the long side after resizing the short side to input_size

    # execution
    batch_size: int = 8  # decoded clips per batch
    num_threads: int = 4  # DALI worker threads per pipeline (reference loader: DataLoader workers)
    # auto: NVDEC (video) or nvJPEG (JPEG frames) when CUDA is present, until `bench decode` on a GPU says when
    # CPU decoding is faster; not yet measured on a GPU for either format
    decode_device: Literal["auto", "cpu", "gpu"] = "auto"
    decode_pipelines: int = 1  # decoding pipelines per GPU run side by side (NVDEC has several engines)
    # JPEG-frame shards: decode only the part of each frame a clip's views need (DALI's ROI decoder), else whole
    # frames; the same pixels either way (within one grey level of the resize's rounding). It saves decoding work
    # in proportion to the crop; which is faster end to end is not measured on a quiet machine or a GPU yet
    # (`bench loader SHARDS --set data.roi_decode=false` against the default decides; .ci/gpu-checks runs both)
    roi_decode: bool = True
    # JPEG-frame shards on a GPU: share of the JPEGs nvJPEG gives its hardware engines (A100, H100), the rest to
    # CUDA; 0.65 is DALI's own default, not yet measured here (`bench loader` over values on a GPU sets it)
    hw_decoder_load: float = 0.65
    prefetch: int = 2  # batches in flight per decoding pipeline, and decoded batches waiting for the training step
    shuffle_buffer: int = 256  # samples; training splits only
    drop_last: bool = False  # True: every rank yields the same number of full batches (DDP training)
    seed: int = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    on_error: Literal["raise", "skip"] = "raise"  # skip: drop clips that fail to decode, count them

    def __post_init__(self):
        positive = ["num_frames", "sampling_rate", "input_size", "patch_size", "tubelet_size", "num_sample",
                    "test_num_segment", "test_num_crop", "batch_size", "num_threads", "decode_pipelines",
                    "prefetch", "shuffle_buffer"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames ({self.num_frames}) must be divisible by tubelet_size "
                             f"({self.tubelet_size})")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size ({self.input_size}) must be divisible by patch_size ({self.patch_size})")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of values in (0, 1], got {list(self.scales)}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")
        low, high = self.rrc_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"rrc_scale must satisfy 0 < min <= max <= 1, got {list(self.rrc_scale)}")
        low, high = self.rrc_ratio
        if not 0 < low <= high:
            raise ValueError(f"rrc_ratio must satisfy 0 < min <= max, got {list(self.rrc_ratio)}")
        if self.rand_augment_n < 0:
            raise ValueError(f"rand_augment_n must be >= 0, got {self.rand_augment_n}")
        if not 0 <= self.rand_augment_m <= 10:
            raise ValueError(f"rand_augment_m must be in [0, 10], got {self.rand_augment_m}")
        if not 0 <= self.hw_decoder_load <= 1:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")
        if not 0 <= self.erase_prob <= 1:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")
        if self.decoder_mask == "running_cell" and self.grid_size % 2:
            raise ValueError(f"decoder_mask 'running_cell' needs an even patch grid; input_size / patch_size "
                             f"= {self.grid_size}")
        if "/" in self.split or "-" in self.split:
            raise ValueError(f"split must be a plain name such as 'train' or 'val', got {self.split!r}")

    @property
    def grid_size(self) -> int:
        """Patches along each side of a frame: H' = W' = input_size / patch_size."""
        return self.input_size // self.patch_size

    @property
    def rand_augment_ops(self) -> int:
        """RandAugment ops applied to each view: rand_augment_n in fine-tuning, else none."""
        return self.rand_augment_n if self.mode == "finetune" else 0

    @property
    def num_views(self) -> int:
        """Crops the graph cuts from one decoded clip."""
        if self.mode == "eval":
            return self.test_num_segment * self.test_num_crop
        return self.num_sample

    @property
    def num_tokens(self) -> int:
        """N = (T / tubelet) x H' x W'."""
        return self.num_frames // self.tubelet_size * self.grid_size ** 2
