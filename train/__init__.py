"""The trainer: `train --config configs/X.yaml` (train/cli.py), and the names the study and the benchmarks build
on, listed in EXPORTS. Each loads on first use (`from train import load_train_config`), so that `train --help` and
the config checks do not wait for torch."""

import importlib

EXPORTS = {
    "train": "train.run",  # train(cfg, out_dir, resume=None, live=None, loader=None) -> exit status
    "TrainConfig": "train.config", "load_train_config": "train.config", "ConfigError": "train.config",
    "to_dict": "train.config", "shipped_config": "train.config",
    "make_loader": "train.task", "build_model": "train.task", "mask_counts": "train.task",
    "PretrainLoss": "train.task",
    "train_step": "train.loop",
    "Schedule": "train.optim", "build_optimizer": "train.optim", "make_schedule": "train.optim",
    "resolve_device": "train.distributed", "resolve_precision": "train.distributed",
    "CheckpointError": "train.checkpointer", "weights_of": "train.checkpointer",
    "read_metrics": "train.run_folder",
    "save_reconstruction": "train.pictures", "enlargement": "train.pictures", "figure": "train.pictures",
    "save_figure": "train.pictures",
    "expected_errors": "train.cli",
    "machine": "train.bench.machine", "describe": "train.bench.machine",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(EXPORTS[name]), name)
