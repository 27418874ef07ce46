"""Optimizer parameter groups: no weight decay on norms, biases and embedding tokens; layer-wise lr decay.

Each group carries `lr_scale`; the trainer sets a group's lr to `lr_scale * lr` at every step (as the official
code does). With `layer_decay`, parameter depth i of L + 1 (0 = cube embedding, i = block i - 1, L + 1 = fc_norm
and head) gets `layer_decay ** (L + 1 - i)`.
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Groups for `torch.optim.AdamW(param_groups(model, 0.05, 0.75), lr=...)`; frozen parameters are left out."""
    if layer_decay is not None and not hasattr(model, "layer_id"):
        raise ValueError(f"layer_decay needs a model with layer ids (VideoMAEClassifier), got {type(model).__name__}")
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    num_layers = len(model.blocks) + 2 if layer_decay is not None else 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim == 1 or name.endswith(".bias") or name in skip)
        layer = model.layer_id(name) if layer_decay is not None else 0
        if (layer, decay) not in groups:
            scale = layer_decay ** (num_layers - 1 - layer) if layer_decay is not None else 1.0
            groups[layer, decay] = {"params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
                                    "lr_scale": scale}
        groups[layer, decay]["params"].append(param)
        groups[layer, decay]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]
