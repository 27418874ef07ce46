"""VideoMAE models: pre-training encoder-decoder, fine-tuning classifier, checkpoints, FLOPs."""

from .checkpoint import (LoadReport, build_from_checkpoint, export_huggingface, export_official, load_weights,
                         read_checkpoint, save_checkpoint, write_atomically)
from .classifier import VideoMAEClassifier
from .config import SIZES, ModelConfig
from .flops import classifier_flops, pretrain_flops, tube_num_masked
from .param_groups import param_groups
from .videomae import VideoMAEPretrain, cube_target, videomae_target

__all__ = [
    "SIZES", "LoadReport", "ModelConfig", "VideoMAEClassifier", "VideoMAEPretrain", "build_from_checkpoint",
    "classifier_flops", "cube_target", "export_huggingface", "export_official", "load_weights", "param_groups",
    "pretrain_flops", "read_checkpoint", "save_checkpoint", "tube_num_masked", "videomae_target", "write_atomically",
]
