"""ViT building blocks with the official VideoMAE parameter names (so its checkpoints load without renaming).

norm1 -> attn (qkv, q_bias, v_bias, proj) -> norm2 -> mlp (fc1, fc2); LayerNorm eps 1e-6; attention through
`scaled_dot_product_attention` (flash attention on the GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported: the model's pixel statistics)

LN_EPS = 1e-6


def sincos_table(num_positions: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 1-D sin/cos position table (num_positions x dim): sin at even channels, cos at odd ones, base 10000."""
    position = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64, device=device) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim, device=device) % 2 == 0, angle.sin(), angle.cos())
    return table.float()


def resample_table(table: torch.Tensor, source_grid: tuple[int, int, int],
                   grid: tuple[int, int, int]) -> torch.Tensor:
    """A position table laid out on `source_grid` (T'H'W' x D) resampled to `grid`: bicubic over (h, w) in
    every time slot, as the official fine-tuning code resizes position embeddings, then linear over time."""
    t0, h0, w0 = source_grid
    t1, h1, w1 = grid
    x = rearrange(table, "(t h w) d -> t d h w", t=t0, h=h0, w=w0)
    if (h0, w0) != (h1, w1):
        x = F.interpolate(x, size=(h1, w1), mode="bicubic", align_corners=False)
    if t0 != t1:
        x = rearrange(x, "t d h w -> (h w) d t")
        x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
        x = rearrange(x, "(h w) d t -> t d h w", h=h1, w=w1)
    return rearrange(x, "t d h w -> (t h w) d")


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """B x C x T x H x W -> B x N x C x (tubelet * patch * patch): the cubes in (t, h, w) token order, each in
    the Conv3d weight's (c, t, h, w) order.

    einops: "b c (t p0) (h p1) (w p2) -> b (t h w) c (p0 p1 p2)". The model's forward uses plain torch ops:
    einops inside torch.compile guards on its backend cache and recompiles when that cache grows.
    """
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet_size, tubelet_size, h // patch_size, patch_size, w // patch_size,
                      patch_size)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # B x T' x H' x W' x C x tubelet x patch x patch
    return x.reshape(b, -1, c, tubelet_size * patch_size * patch_size)


class CubeEmbed(nn.Module):
    """Cube embedding: a Conv3d with kernel = stride = (tubelet, patch, patch), applied as one matrix product on
    the cubes that are kept (`patchify` output), so masked cubes cost nothing. Stored as the official Conv3d."""

    def __init__(self, dim: int, patch_size: int, tubelet_size: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """cubes: B x n x C x (t p q) -> B x n x dim."""
        return F.linear(cubes.flatten(2), self.proj.weight.flatten(1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention; `qkv` has no bias of its own: learned q_bias and v_bias, a zero key bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        b, n, dim = x.shape
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x N x head_dim
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each through stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(dim: int, depth: int, num_heads: int, mlp_dim: int, drop_path: float = 0.0) -> nn.ModuleList:
    """`depth` blocks with stochastic depth rising linearly from 0 to `drop_path`."""
    rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
    return nn.ModuleList(Block(dim, num_heads, mlp_dim, rate) for rate in rates)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply blocks in turn; with `use_checkpoint` (and gradients on) their activations are recomputed."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x
