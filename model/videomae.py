"""VideoMAE pre-training: a ViT encoder on the visible cubes, a narrow decoder that reconstructs the masked ones.

    video (B x 3 x T x H x W, ImageNet-normalised), mask (B x N bool, True = masked, same count in every row)
    -> encoder on the N_vis visible tokens -> encoder_to_decoder -> [visible tokens | mask tokens] + positions
    -> decoder -> predicted pixels of the masked cubes -> mean squared error against `cube_target`.

As in the official code, the decoder sees the visible tokens first and the mask tokens after them (not put back
in token order; attention does not care, the position embeddings say where each token is). Token sets are taken
with a stable argsort of the mask, so every shape depends only on the number of masked tokens: with that number
passed as an int (`num_masked`), `torch.compile` builds one graph for all masks of a given ratio.

VideoMAE V2 dual masking: pass `decoder_mask` (B x N bool, True = not reconstructed, the same count in every row);
the decoder then predicts the tokens it leaves out, visible ones included, and the loss is taken on those of them
that the encoder did not see.

Speed: run it under `torch.autocast(device, dtype=torch.bfloat16)` (matrix products and attention in bf16; norms,
the target and the loss stay float32) and `torch.compile`; `cfg.use_checkpoint` recomputes block activations in
the backward pass for the large sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import IMAGENET_MEAN, IMAGENET_STD, LN_EPS, CubeEmbed, make_blocks, patchify, run_blocks, sincos_table


def cube_target(cubes: torch.Tensor, norm_target: bool = True) -> torch.Tensor:
    """VideoMAE's reconstruction target for the given cubes.

    cubes: B x n x C x P ImageNet-normalised values (`patchify` output, P = tubelet * patch^2). Returns
    B x n x (P * C) float32, channels last as in the official code: the pixels back in [0, 1], then, with
    `norm_target`, each cube normalised per colour channel by its mean and unbiased standard deviation (+ 1e-6).
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=cubes.device)[:, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=cubes.device)[:, None]
    pixels = cubes.float() * std + mean  # C x P innermost: reductions over P run on contiguous memory
    if norm_target:
        centred = pixels - pixels.mean(dim=-1, keepdim=True)
        pixels = centred / (pixels.var(dim=-1, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return pixels.transpose(-1, -2).flatten(-2)  # B x n x (P C)


def videomae_target(video: torch.Tensor, patch_size: int = 16, tubelet_size: int = 2,
                    norm_target: bool = True) -> torch.Tensor:
    """The target of every cube of a video: B x C x T x H x W -> B x N x (tubelet * patch^2 * C)."""
    return cube_target(patchify(video, patch_size, tubelet_size), norm_target)


def init_pretrain_weights(module: nn.Module) -> None:
    """Official pre-training init: xavier-uniform Linear weights, zero biases, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def row_count(mask: torch.Tensor, count: int | None, name: str) -> int:
    """The number of True per row of `mask`, the same in every row (the batch contract).

    Given as an int it is only checked asynchronously on the device (no host sync, static shapes); otherwise it
    is read from the mask, which waits for the device and cannot be traced by torch.compile.
    """
    if count is not None:
        torch._assert_async((mask.sum(1) == count).all(), f"{name}={count} does not match every row of the mask")
        return count
    if torch.compiler.is_compiling():
        raise ValueError(f"under torch.compile pass {name}= (a Python int) so that shapes are static")
    low, high = torch.stack(torch.aminmax(mask.sum(1))).tolist()
    if low != high:
        raise ValueError(f"every row of the mask must hold the same number of True, got {low} to {high}")
    return low


class Encoder(nn.Module):
    """Cube embedding + fixed sin-cos positions + blocks + norm, run on the tokens it is given."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.use_checkpoint = cfg.use_checkpoint
        self.patch_embed = CubeEmbed(cfg.embed_dim, cfg.patch_size, cfg.tubelet_size)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.register_buffer("pos_embed", sincos_table(cfg.num_tokens, cfg.embed_dim), persistent=False)

    def forward(self, cubes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """cubes: B x n x C x P, index: B x n their token indices -> B x n x embed_dim."""
        x = self.patch_embed(cubes) + self.pos_embed[index]
        return self.norm(run_blocks(self.blocks, x, self.use_checkpoint))


class Decoder(nn.Module):
    """Narrow blocks, then norm and a linear head on the last `num_out` tokens: their cubes' pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.use_checkpoint = cfg.use_checkpoint
        self.blocks = make_blocks(cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.decoder_mlp_dim,
                                  cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.decoder_dim, eps=LN_EPS)
        self.head = nn.Linear(cfg.decoder_dim, cfg.cube_dim)

    def forward(self, x: torch.Tensor, num_out: int) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.use_checkpoint)
        return self.head(self.norm(x[:, -num_out:]))


class VideoMAEPretrain(nn.Module):
    """The VideoMAE encoder-decoder with its loss; parameter names are those of the official checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder = Decoder(cfg)
        self.register_buffer("pos_embed", sincos_table(cfg.num_tokens, cfg.decoder_dim), persistent=False)
        self.encoder.apply(init_pretrain_weights)
        self.decoder.apply(init_pretrain_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards as a unit, before the whole model: each encoder and decoder block (its weights are
        gathered for its own forward and backward only)."""
        return [*self.encoder.blocks, *self.decoder.blocks]

    def forward(self, video: torch.Tensor, mask: torch.Tensor, decoder_mask: torch.Tensor | None = None, *,
                num_masked: int | None = None, num_decoded: int | None = None) -> dict[str, torch.Tensor]:
        """video: B x 3 x T x H x W ImageNet-normalised; mask: B x N bool, True = masked (hidden from the encoder);
        decoder_mask: optional B x N bool, True = not reconstructed (V2 dual masking). num_masked / num_decoded:
        True per row of `mask` / False per row of `decoder_mask`, as ints for static shapes (else read, one sync).

        Returns loss (scalar float32), pred (B x n x cube_dim, the decoder's output), target (B x n x cube_dim
        float32) and index (B x n int64, the tokens predicted: the masked ones, or with `decoder_mask` the ones it
        leaves out, in token order).
        """
        cfg = self.cfg
        self.check_inputs(video, mask, decoder_mask)
        b, n = mask.shape
        num_masked = row_count(mask, num_masked, "num_masked")
        rows = torch.arange(b, device=mask.device)[:, None]
        cubes = patchify(video, cfg.patch_size, cfg.tubelet_size)  # B x N x C x P
        order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first, each part in token order
        visible = order[:, :n - num_masked]  # B x N_vis
        if decoder_mask is None:
            decoded = order[:, n - num_masked:]  # B x N_masked
        else:
            num_decoded = row_count(~decoder_mask, num_decoded, "num_decoded")
            decoded = torch.argsort(decoder_mask.to(torch.uint8), dim=1, stable=True)[:, :num_decoded]

        x = self.encoder(cubes[rows, visible], visible)  # B x N_vis x embed_dim
        x = self.encoder_to_decoder(x) + self.pos_embed[visible]
        queries = self.mask_token + self.pos_embed[decoded]  # B x n x decoder_dim
        pred = self.decoder(torch.cat([x, queries], dim=1), num_out=decoded.shape[1])  # B x n x cube_dim

        with torch.no_grad():
            target = cube_target(cubes[rows, decoded], cfg.norm_target)
        if decoder_mask is None:
            loss = F.mse_loss(pred.float(), target)
        else:
            error = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)  # B x n
            weight = mask[rows, decoded].float()  # the encoder-masked among the decoded tokens
            loss = (error * weight).sum() / weight.sum()
        return {"loss": loss, "pred": pred, "target": target, "index": decoded}

    def check_inputs(self, video: torch.Tensor, mask: torch.Tensor, decoder_mask: torch.Tensor | None) -> None:
        cfg = self.cfg
        expected = (3, cfg.num_frames, cfg.input_size, cfg.input_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"video must be B x {' x '.join(map(str, expected))} (model.num_frames, "
                             f"model.input_size), got {tuple(video.shape)}")
        for name, m in (("mask", mask), ("decoder_mask", decoder_mask)):
            if m is None:
                continue
            if m.dtype != torch.bool or tuple(m.shape) != (video.shape[0], cfg.num_tokens):
                raise ValueError(f"{name} must be a bool tensor of shape B x N = {video.shape[0]} x "
                                 f"{cfg.num_tokens} (grid {cfg.grid}), got {m.dtype} {tuple(m.shape)}")
