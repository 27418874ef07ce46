"""FLOPs per clip, counted analytically: matrix products only, 2 * m * n * k each (cube embedding, qkv, QK^T,
attention x V, projections, MLPs, encoder_to_decoder, heads); norms, softmax, GELU and element-wise work are left
out, as is usual for model FLOPs utilisation. Backward is counted as 2 x forward.
"""

from __future__ import annotations

from .config import ModelConfig


def block_flops(tokens: int, dim: int, mlp_dim: int) -> int:
    """One transformer block on `tokens` tokens: qkv + proj (4 d^2), MLP (2 d m) per token; QK^T and AV."""
    return 2 * tokens * dim * (4 * dim + 2 * mlp_dim) + 4 * tokens * tokens * dim


def tube_num_masked(cfg: ModelConfig, mask_ratio: float) -> int:
    """Masked tokens per clip under VideoMAE tube masking: int(ratio * H'W') per time slot."""
    t, h, w = cfg.grid
    return t * int(mask_ratio * h * w)


def pretrain_flops(cfg: ModelConfig, num_masked: int, num_decoded: int | None = None) -> dict[str, int]:
    """Pre-training FLOPs per clip with `num_masked` tokens hidden from the encoder; the decoder predicts
    `num_decoded` tokens (default: the masked ones; V2 dual masking: the tokens its mask leaves out)."""
    visible = cfg.num_tokens - num_masked
    decoded = num_masked if num_decoded is None else num_decoded
    encoder = 2 * visible * cfg.cube_dim * cfg.embed_dim + cfg.depth * block_flops(visible, cfg.embed_dim,
                                                                                     cfg.mlp_dim)
    decoder = (2 * visible * cfg.embed_dim * cfg.decoder_dim
               + cfg.decoder_depth * block_flops(visible + decoded, cfg.decoder_dim, cfg.decoder_mlp_dim)
               + 2 * decoded * cfg.decoder_dim * cfg.cube_dim)
    forward = encoder + decoder
    return {"encoder": encoder, "decoder": decoder, "forward": forward, "backward": 2 * forward,
            "total": 3 * forward}


def classifier_flops(cfg: ModelConfig, num_classes: int) -> dict[str, int]:
    """Fine-tuning FLOPs per clip: the encoder on all tokens and the head."""
    n = cfg.num_tokens
    forward = (2 * n * cfg.cube_dim * cfg.embed_dim + cfg.depth * block_flops(n, cfg.embed_dim, cfg.mlp_dim)
               + 2 * cfg.embed_dim * num_classes)
    return {"forward": forward, "backward": 2 * forward, "total": 3 * forward}
