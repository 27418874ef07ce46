"""The Hugging Face `transformers` VideoMAE layout: parameter names both ways, and the config of a TubeMAE model.

Hugging Face name (the encoder under `videomae.`)            official / TubeMAE name
    embeddings.patch_embeddings.projection                   encoder.patch_embed.proj
    encoder.layer.N.layernorm_before / layernorm_after       encoder.blocks.N.norm1 / norm2
    encoder.layer.N.attention.attention.query/key/value      encoder.blocks.N.attn.qkv (the three stacked)
    encoder.layer.N.attention.attention.q_bias / v_bias      encoder.blocks.N.attn.q_bias / v_bias (no key bias)
    encoder.layer.N.attention.output.dense                   encoder.blocks.N.attn.proj
    encoder.layer.N.intermediate.dense / output.dense        encoder.blocks.N.mlp.fc1 / fc2
    layernorm (pre-training: use_mean_pooling=False)         encoder.norm
    decoder.decoder_layers.N (inside as above)               decoder.blocks.N
    classifier                                               head
    encoder_to_decoder, mask_token, decoder.norm, decoder.head, fc_norm: the same names.

The files on the Hub store the query and value biases as `q_bias` / `v_bias`; transformers 5 names them
`query.bias` / `value.bias` in memory and writes `q_bias` / `v_bias` again (its `save_pretrained` default), so every
version since 4.45 reads that layout, which is the one written here. Neither layout stores the sin-cos position
tables: transformers computes them from the config, as TubeMAE does (`layers.sincos_table`, the same values).

Every size exports, VideoMAE V2 giant included (patch 14, mlp_ratio 48/11: plain config values). What transformers
cannot represent, beyond training-time settings (drop_path, head_dropout; its forward has no V2 decoder mask): a
classifier whose position table is resampled from another grid (`pos_embed_grid`), refused. It builds
`decoder.norm` and `fc_norm` with LayerNorm eps 1e-5 whatever `layer_norm_eps` says, where the official code and
TubeMAE use 1e-6, so its outputs differ from ours by a few parts in a million (as for the official releases on
the Hub).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .classifier import VideoMAEClassifier
from .layers import LN_EPS
from .videomae import VideoMAEPretrain

INSTALL_HINT = "pip install 'tubemae[hf]'"
# Hugging Face names inside one transformer layer -> official names inside one block
_HF_BLOCK = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_OFFICIAL_BLOCK = {official: hf for hf, official in _HF_BLOCK.items()}
# Hugging Face modules outside the layers (the encoder's without `videomae.`) -> official modules
_HF_TOP = {"embeddings.patch_embeddings.projection": "encoder.patch_embed.proj", "layernorm": "encoder.norm",
           "classifier": "head"}
_OFFICIAL_TOP = {official: ("" if hf == "classifier" else "videomae.") + hf for hf, official in _HF_TOP.items()}
_QKV = ("query", "key", "value")


def _renamed(key: str, table: dict[str, str]) -> str:
    """`key` with its module renamed by `table` (module -> module), or unchanged when the table has none."""
    for source, target in table.items():
        if key.startswith(source + "."):
            return target + key[len(source):]
    return key


def huggingface_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face VideoMAE names -> official names (query/key/value joined into qkv, key bias dropped: zero)."""
    out: dict[str, torch.Tensor] = {}
    attention: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        k = key.removeprefix("videomae.")
        layer = re.fullmatch(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)", k)
        if layer:
            block = f"{'encoder' if layer[1] == 'encoder.layer' else 'decoder'}.blocks.{layer[2]}"
            rest = layer[3]
            if rest.startswith("attention.attention."):
                attention.setdefault(block, {})[rest.removeprefix("attention.attention.")] = value
                continue
            for hf, official in _HF_BLOCK.items():
                if rest.startswith(hf + "."):
                    out[f"{block}.{official}{rest[len(hf):]}"] = value
                    break
            else:
                out[key] = value  # unknown: reported as unexpected
        else:  # also encoder_to_decoder, mask_token, decoder.norm, decoder.head, fc_norm: the same names
            out[_renamed(k, _HF_TOP)] = value
    weights = tuple(f"{name}.weight" for name in _QKV)
    biases = {"query.bias": "q_bias", "q_bias": "q_bias", "value.bias": "v_bias", "v_bias": "v_bias"}
    for block, parts in attention.items():
        absent = [n for n in weights if n not in parts]
        if absent:
            raise ValueError(f"Hugging Face checkpoint: {block} lacks attention.attention.{absent[0]}")
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts[n] for n in weights])
        for name, value in parts.items():  # files on the Hub store q_bias / v_bias, transformers 5 query.bias
            if name in biases:
                out[f"{block}.attn.{biases[name]}"] = value
            elif name not in weights:
                out[f"{block}.attention.attention.{name}"] = value  # reported as unexpected
    return out


def official_to_huggingface(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names (pre-training or fine-tuned layout) -> the Hugging Face names of the files on the Hub
    (qkv split into query/key/value weights, q_bias / v_bias kept). The inverse of `huggingface_to_official`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("patch_embed.", "blocks.", "norm.")):  # fine-tuned layout: the encoder at top level
            key = "encoder." + key
        block = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", key)
        if block:
            part, index, rest = block.groups()
            layer = f"videomae.encoder.layer.{index}" if part == "encoder" else f"decoder.decoder_layers.{index}"
            if rest == "attn.qkv.weight":  # (3 dim) x dim -> three dim x dim
                for name, weight in zip(_QKV, value.chunk(3)):
                    out[f"{layer}.attention.attention.{name}.weight"] = weight.clone()
                continue
            if rest in ("attn.q_bias", "attn.v_bias"):
                out[f"{layer}.attention.attention.{rest.removeprefix('attn.')}"] = value
                continue
            module, param = rest.rsplit(".", 1)
            if module not in _OFFICIAL_BLOCK:
                raise ValueError(f"no Hugging Face name for '{key}'")
            out[f"{layer}.{_OFFICIAL_BLOCK[module]}.{param}"] = value
        else:  # also encoder_to_decoder, mask_token, decoder.norm, decoder.head, fc_norm: the same names
            out[_renamed(key, _OFFICIAL_TOP)] = value
    return out


def huggingface_config(model: nn.Module, class_names: list[str] | None = None):
    """The `transformers.VideoMAEConfig` that builds `model` (a VideoMAEPretrain or VideoMAEClassifier) in
    transformers: VideoMAEForPreTraining or VideoMAEForVideoClassification, with `class_names` as id2label."""
    try:
        from transformers import VideoMAEConfig
    except ImportError:
        raise ImportError(f"exporting to Hugging Face needs transformers: {INSTALL_HINT}") from None
    classifier = isinstance(model, VideoMAEClassifier)
    if not classifier and not isinstance(model, VideoMAEPretrain):
        raise TypeError(f"expected a VideoMAEPretrain or VideoMAEClassifier, got {type(model).__name__}")
    cfg = model.cfg
    if classifier and cfg.pos_embed_grid is not None and tuple(cfg.pos_embed_grid) != cfg.grid:
        raise ValueError(f"transformers cannot hold a position table resampled from grid {cfg.pos_embed_grid} to "
                         f"{cfg.grid} (it computes the sin-cos table of its own grid): export the official layout")
    patch_embed = model.patch_embed if classifier else model.encoder.patch_embed
    labels = {}
    if classifier:
        labels["num_labels"] = model.num_classes
        if class_names is not None:
            if len(class_names) != model.num_classes:
                raise ValueError(f"{len(class_names)} class names for a classifier of {model.num_classes} classes")
            labels["id2label"] = dict(enumerate(class_names))
            labels["label2id"] = {name: i for i, name in enumerate(class_names)}
    return VideoMAEConfig(
        image_size=cfg.input_size, patch_size=cfg.patch_size, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, num_channels=patch_embed.proj.in_channels,
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_dim, hidden_act="gelu", qkv_bias=True, layer_norm_eps=LN_EPS,
        decoder_hidden_size=cfg.decoder_dim, decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads, decoder_intermediate_size=cfg.decoder_mlp_dim,
        use_mean_pooling=classifier,  # classifier: mean of the tokens, fc_norm; pre-training: encoder.norm
        norm_pix_loss=cfg.norm_target,
        architectures=["VideoMAEForVideoClassification" if classifier else "VideoMAEForPreTraining"], **labels)

