"""Model sizes and the typed config of the model stage (`model:` section of a YAML config).

Sizes follow the official VideoMAE (S, B, L, H) and VideoMAE V2 (g) releases; `tiny` is ours, for tests and CPU
demos. Any architecture field left at None takes the value of `size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

SizeName = Literal["tiny", "small", "base", "large", "huge", "giant"]


@dataclass(frozen=True)
class VitSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    decoder_dim: int
    decoder_depth: int  # as the official pre-training scripts set it
    decoder_num_heads: int
    decoder_mlp_dim: int  # the official code shares mlp_ratio between encoder and decoder
    patch_size: int = 16


SIZES: dict[str, VitSize] = {
    "tiny": VitSize(128, 2, 2, 512, 64, 1, 2, 256),
    "small": VitSize(384, 12, 6, 1536, 192, 4, 3, 768),
    "base": VitSize(768, 12, 12, 3072, 384, 4, 6, 1536),
    "large": VitSize(1024, 24, 16, 4096, 512, 12, 8, 2048),
    "huge": VitSize(1280, 32, 16, 5120, 640, 12, 8, 2560),
    # VideoMAE V2 ViT-g: mlp_ratio 48/11 in encoder and decoder, int(1408 * 48/11) = 6144, int(512 * 48/11) = 2234
    "giant": VitSize(1408, 40, 16, 6144, 512, 4, 8, 2234, patch_size=14),
}


@dataclass
class ModelConfig:
    size: SizeName = "base"
    num_frames: int = 16
    input_size: int = 224  # square crops, pixels
    tubelet_size: int = 2  # frames per cube
    # architecture; None = the value of `size`
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_dim: Optional[int] = None
    decoder_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    decoder_mlp_dim: Optional[int] = None
    # pre-training target: True = each cube's pixels normalised per colour channel (VideoMAE), False = raw [0, 1]
    norm_target: bool = True
    # regularisation and the fine-tuning head
    drop_path: float = 0.0  # stochastic depth of the last encoder block, rising linearly from 0
    head_dropout: float = 0.0  # classifier: dropout before the head (official `fc_drop_rate`)
    head_init_scale: float = 0.001  # classifier: head weights and bias scaled by this after init
    # classifier: token grid (T', H', W') of the pre-training position table; when it differs from this model's
    # grid the table is resampled to it. None = a new table laid over this grid, as the official code does.
    pos_embed_grid: Optional[tuple[int, int, int]] = None
    use_checkpoint: bool = False  # activation checkpointing per block (trades ~30% compute for memory)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"model.size must be one of {sorted(SIZES)}, got {self.size!r}")
        default = SIZES[self.size]
        for name in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_dim",
                     "decoder_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_dim"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(default, name))
        for name in ("num_frames", "input_size", "tubelet_size", "patch_size", "embed_dim", "depth", "num_heads",
                     "mlp_dim", "decoder_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.input_size % self.patch_size:
            raise ValueError(f"model.input_size ({self.input_size}) must be a multiple of model.patch_size "
                             f"({self.patch_size})")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"model.num_frames ({self.num_frames}) must be a multiple of model.tubelet_size "
                             f"({self.tubelet_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim ({self.embed_dim}) must be a multiple of model.num_heads "
                             f"({self.num_heads})")
        if self.decoder_dim % self.decoder_num_heads:
            raise ValueError(f"model.decoder_dim ({self.decoder_dim}) must be a multiple of "
                             f"model.decoder_num_heads ({self.decoder_num_heads})")
        for name in ("drop_path", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.pos_embed_grid is not None:
            self.pos_embed_grid = tuple(self.pos_embed_grid)
            if len(self.pos_embed_grid) != 3 or min(self.pos_embed_grid) < 1:
                raise ValueError(f"model.pos_embed_grid must be three positive integers (T', H', W'), "
                                 f"got {self.pos_embed_grid}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'); tokens are flattened in this (t, h, w) order."""
        side = self.input_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def cube_dim(self) -> int:
        """Values in one cube: tubelet_size x patch_size^2 x 3 (the decoder's output width)."""
        return self.tubelet_size * self.patch_size ** 2 * 3
