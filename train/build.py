"""What a run is built from: the device, the loader, the model and its optimizer. Shared by `train` and `bench`,
so a benchmark times exactly what training runs."""

from __future__ import annotations

import torch
from torch import nn

from model import VideoMAEPretrain, param_groups
from pipeline.config import DataConfig


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """run.device 'auto' | 'cpu' | 'cuda' -> the training device of this rank."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ValueError("run.device is 'cuda' but CUDA is not available; set run.device: auto or cpu")
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def make_loader(cfg: DataConfig, loader: str, device: torch.device | str):
    """(loader, what decodes) for 'dali' or 'reference'; rank and world size come from torch.distributed."""
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


def build_optimizer(optim_cfg, model: nn.Module, layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW over model.param_groups (no decay on norms, biases, tokens; layer-wise lr decay for a classifier);
    fused on CUDA. The lr is set per step by the schedule, times each group's lr_scale."""
    fused = next(model.parameters()).device.type == "cuda"
    groups = param_groups(model, optim_cfg.weight_decay, layer_decay)
    return torch.optim.AdamW(groups, lr=0.0, betas=optim_cfg.betas, fused=fused)
