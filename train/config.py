"""`TrainConfig`, the `train` command's config: the stages' dataclasses (data, model) plus the optimizer, the run
and fine-tuning, with the keys two sections share stated once (ARCHITECTURE.md section 3). The YAML mapping itself
is train/yaml_config.py."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from model.config import SIZES, ModelConfig
from pipeline.config import DataConfig
from train.yaml_config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict

__all__ = ["ConfigError", "FinetuneConfig", "OptimConfig", "RunConfig", "TrainConfig", "load_train_config",
           "shipped_config", "to_dict"]


@dataclass
class OptimConfig:
    """AdamW and its schedule: linear warm-up from warmup_lr, then per-step cosine decay to min_lr.

    base_lr, min_lr and warmup_lr are per 256 clips: each is multiplied by TrainConfig.lr_batch x ranks / 256, the
    batch counting accumulation steps and, in pre-training only, `data.num_sample` views per clip (as the official
    code scales)."""
    epochs: int = 800
    warmup_epochs: float = 40.0
    base_lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05  # not on norms, biases and tokens (model.param_groups)
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max global gradient norm; None = no clipping (official pre-training)
    accum_steps: int = 1  # batches per optimizer step

    def __post_init__(self):
        for key in ("epochs", "accum_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"optim.warmup_epochs must be in [0, optim.epochs = {self.epochs}], "
                             f"got {self.warmup_epochs}")
        for key in ("base_lr", "min_lr", "warmup_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.min_lr > self.base_lr:
            raise ValueError(f"optim.min_lr ({self.min_lr}) must not exceed optim.base_lr ({self.base_lr})")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"optim.clip_grad must be > 0 or null, got {self.clip_grad}")


@dataclass
class RunConfig:
    """Where and how a run executes, what it writes and how often."""
    out_dir: Optional[str] = None  # default runs/<config file name>; `train --out DIR` overrides
    seed: int = 0  # model init and the loader's draws (data.seed follows it)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    compile: bool = False  # torch.compile the model (one graph per mask ratio)
    loader: Literal["dali", "reference"] = "dali"  # reference: webdataset + PyAV + DataLoader, for comparison
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; fsdp shards parameters (ViT-L and larger)
    max_steps: Optional[int] = None  # stop after this many optimizer steps (the schedule still spans all epochs)
    log_every: int = 10  # steps between log lines (the only time the loop waits for the GPU)
    checkpoint_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 2  # newest checkpoints kept in the run folder
    picture_every: int = 0  # steps between reconstruction pictures; 0 = only at the end
    picture_clips: Optional[int] = None  # clips in a reconstruction picture; null: 4, or fewer if a batch holds fewer

    def __post_init__(self):
        for key in ("log_every", "checkpoint_every", "keep_checkpoints", "picture_clips"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"run.{key} must be >= 1, got {getattr(self, key)}")
        if self.picture_every < 0:
            raise ValueError(f"run.picture_every must be >= 0, got {self.picture_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"run.max_steps must be >= 1 or null, got {self.max_steps}")


# keys that two sections carry: a config states each in either section (or in both, equal)
SHARED_KEYS = {"num_frames": ("data", "model"), "input_size": ("data", "model"), "patch_size": ("data", "model"),
               "tubelet_size": ("data", "model"), "seed": ("run", "data")}


@dataclass
class FinetuneConfig:
    """Fine-tuning (mode finetune) and evaluation (mode eval) of the classifier.

    Mixup / CutMix and the soft-target loss are timm's; layer-wise lr decay is model.param_groups'."""
    # finetune: the weights to start from (a TubeMAE checkpoint or run folder, an official file, a Hugging Face
    # folder), null = from scratch; eval: the classifier to evaluate
    weights: Optional[str] = None
    num_classes: Optional[int] = None  # null: the classes in the shards' manifest.json
    layer_decay: float = 0.75  # lr scale layer_decay ** (depth from the head); 1 = off
    mixup: float = 0.8  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 1.0  # Beta(alpha, alpha) of CutMix; 0 = off
    mixup_prob: float = 1.0  # share of batches mixed
    mixup_switch_prob: float = 0.5  # CutMix instead of mixup, when both are on
    label_smoothing: float = 0.1
    val_split: Optional[str] = "val"  # validated (one centre view per video) every val_every epochs; null = never
    val_every: int = 5  # epochs; the last epoch is always validated
    test_split: Optional[str] = None  # after training, tested with data.test_num_segment x test_num_crop views

    def __post_init__(self):
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"finetune.num_classes must be >= 1 or null, got {self.num_classes}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        for key in ("mixup", "cutmix"):
            if getattr(self, key) < 0:
                raise ValueError(f"finetune.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"finetune.{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"finetune.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.val_every < 1:
            raise ValueError(f"finetune.val_every must be >= 1, got {self.val_every}")

    @property
    def mixes(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass
class TrainConfig:
    mode: Literal["pretrain", "finetune", "eval"] = "pretrain"  # data.mode follows it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self):
        for key, (first, second) in SHARED_KEYS.items():
            a, b = getattr(getattr(self, first), key), getattr(getattr(self, second), key)
            if a != b:
                raise ValueError(f"{first}.{key} ({a}) and {second}.{key} ({b}) disagree: state it once, in "
                                 f"either section")
        if self.data.mode != self.mode:
            raise ValueError(f"data.mode ({self.data.mode!r}) and mode ({self.mode!r}) disagree: set mode only")
        if self.mode == "eval":
            if self.data.drop_last:
                raise ValueError("data.drop_last must be false for evaluation: every video is counted once")
            if self.finetune.weights is None:
                raise ValueError("mode eval needs finetune.weights: the classifier checkpoint to evaluate")
            return
        if not self.data.drop_last:
            raise ValueError("data.drop_last must be true for training: every rank takes the same number of full "
                             "batches (an epoch's short last batch is left out, as in the official code)")
        rows = self.data.batch_size * self.data.num_sample
        if self.mode == "pretrain" and (self.run.picture_clips or 0) > rows:
            raise ValueError(f"run.picture_clips ({self.run.picture_clips}) is more than a batch holds "
                             f"(data.batch_size x data.num_sample = {rows}): lower run.picture_clips or raise "
                             f"data.batch_size")
        if self.mode == "finetune" and self.finetune.mixes and rows % 2:
            raise ValueError(f"mixup and CutMix pair each clip with another of its batch: data.batch_size x "
                             f"data.num_sample must be even, got {self.data.batch_size} x {self.data.num_sample}")

    @property
    def effective_batch(self) -> int:
        """Training clips (views) per optimizer step on one rank; times the world size for the run's batch."""
        return self.data.batch_size * self.data.num_sample * self.optim.accum_steps

    @property
    def picture_clips(self) -> int:
        """Clips in a reconstruction picture: run.picture_clips, or 4 and at most a batch's rows."""
        return self.run.picture_clips or min(4, self.data.batch_size * self.data.num_sample)

    @property
    def lr_batch(self) -> int:
        """The batch the lr is scaled by (per rank), as the official code counts it: pre-training counts every view
        (VideoMAE V2 repeated sampling), fine-tuning counts clips, not their num_sample views."""
        views = self.data.num_sample if self.mode == "pretrain" else 1
        return self.data.batch_size * views * self.optim.accum_steps


def share_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Copy each shared key to the section that does not state it, and `mode` to data.mode (plain dicts)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    sections = {name: data.setdefault(name, {}) for name in ("data", "model", "run")}
    if not all(isinstance(s, dict) for s in sections.values()):
        return data  # from_dict names the section that is not a mapping
    if "patch_size" not in sections["data"] and "patch_size" not in sections["model"]:
        size = sections["model"].get("size", ModelConfig.size)
        if size in SIZES:
            sections["model"]["patch_size"] = SIZES[size].patch_size
    for key, names in SHARED_KEYS.items():
        stated = [sections[n][key] for n in names if key in sections[n]]
        for name in names:
            if stated and key not in sections[name]:
                sections[name][key] = stated[0]
    if "mode" in data and "mode" not in sections["data"]:
        sections["data"]["mode"] = data["mode"]
    # training takes full batches only, evaluation every video (TrainConfig checks it)
    sections["data"].setdefault("drop_last", data.get("mode") != "eval")
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """`train --config PATH --set a.b=c ...` -> TrainConfig, every key and value checked; an error caused by a
    --set item names that item, not the file."""
    overrides = overrides or []
    data, source = read_yaml(config_path(path)) if path is not None else ({}, "--set")
    try:
        return from_dict(TrainConfig, share_keys(apply_overrides(data, overrides)), source=source)
    except ConfigError as error:
        named = [item for item in overrides if _names(str(error), item.partition("=")[0].strip())]
        if not named:
            raise
        raise ConfigError(f"--set {named[-1]}: {str(error).removeprefix(source + ': ')}") from None


def _names(message: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


# the configs that come with TubeMAE: in an installed package under train/configs, in a checkout in configs/
SHIPPED = next((p for p in (Path(__file__).parent / "configs", Path(__file__).parent.parent / "configs")
                if p.is_dir()), Path(__file__).parent / "configs")


def shipped_config(name: str) -> Path:
    """The shipped config `name` (e.g. 'study-digits-pretrain.yaml')."""
    return SHIPPED / name


def config_path(path: str | Path) -> Path:
    """`path` when it is a file; else, for `configs/NAME.yaml` or `NAME.yaml`, the shipped config of that name, so
    that the configs the README names work from any folder. A config found nowhere is an error with a suggestion."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and shipped_config(path.name).is_file():
        return shipped_config(path.name)
    names = sorted(p.name for p in SHIPPED.glob("*.yaml"))
    close = difflib.get_close_matches(path.name, names, n=1)
    hint = f"; did you mean configs/{close[0]}?" if close else f" (the shipped configs are in {SHIPPED})"
    raise ConfigError(f"config file not found: {path}{hint}")
