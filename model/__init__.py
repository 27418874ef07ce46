"""VideoMAE models: pre-training encoder-decoder, fine-tuning classifier, checkpoints, FLOPs."""

from .checkpoint import (LoadReport, build_from_checkpoint, export_huggingface, export_official, load_weights,
                         save_checkpoint)
from .classifier import VideoMAEClassifier
from .config import SIZES, ModelConfig
from .flops import classifier_flops, pretrain_flops, tube_num_masked
from .param_groups import param_groups
from .videomae import VideoMAEPretrain, cube_target, videomae_target

__all__ = [
    "SIZES", "LoadReport", "ModelConfig", "VideoMAEClassifier", "VideoMAEPretrain", "build_from_checkpoint",
    "classifier_flops", "cube_target", "export_huggingface", "export_official", "load_weights", "param_groups",
    "pretrain_flops", "save_checkpoint", "tube_num_masked", "videomae_target",
]
