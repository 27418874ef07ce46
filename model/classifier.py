"""Fine-tuning classifier: the VideoMAE encoder on all tokens, mean pooling, fc_norm, dropout, linear head.

Parameter names are those of the official fine-tuned checkpoints (patch_embed, blocks, fc_norm, head; no final
`norm`, as with the official mean pooling).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .layers import LN_EPS, CubeEmbed, make_blocks, patchify, resample_table, run_blocks, sincos_table


def init_finetune_weights(module: nn.Module) -> None:
    """Official fine-tuning init: Linear weights normal with std 0.02 truncated at +-0.02 (the official wrapper
    passes a = -std, b = std), zero biases, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VideoMAEClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.patch_embed = CubeEmbed(cfg.embed_dim, cfg.patch_size, cfg.tubelet_size)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.drop_path)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.fc_dropout = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(cfg.embed_dim, num_classes)
        self.register_buffer("pos_embed", self.position_table(cfg), persistent=False)
        self.apply(init_finetune_weights)
        with torch.no_grad():
            self.head.weight.mul_(cfg.head_init_scale)
            self.head.bias.mul_(cfg.head_init_scale)

    @staticmethod
    def position_table(cfg: ModelConfig) -> torch.Tensor:
        source = cfg.pos_embed_grid or cfg.grid
        table = sincos_table(source[0] * source[1] * source[2], cfg.embed_dim)
        return table if tuple(source) == cfg.grid else resample_table(table, source, cfg.grid)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """video: B x 3 x T x H x W ImageNet-normalised -> B x embed_dim (mean of all tokens, fc_norm)."""
        cfg = self.cfg
        expected = (3, cfg.num_frames, cfg.input_size, cfg.input_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"video must be B x {' x '.join(map(str, expected))} (model.num_frames, "
                             f"model.input_size), got {tuple(video.shape)}")
        x = self.patch_embed(patchify(video, cfg.patch_size, cfg.tubelet_size)) + self.pos_embed
        x = run_blocks(self.blocks, x, cfg.use_checkpoint)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """-> B x num_classes logits."""
        return self.head(self.fc_dropout(self.forward_features(video)))

    def no_weight_decay(self) -> set[str]:
        return set()

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards as a unit, before the whole model: each encoder block."""
        return list(self.blocks)

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 embedding, i + 1 block i, depth + 1 fc_norm and head."""
        if name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1
