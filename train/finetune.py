"""Fine-tuning as a task of the loop (train/task.py), and `mode: eval`: the classifier and its start, the
classification loss with timm's Mixup / CutMix, validation during training and best.pt, the multi-view test.

    task = Finetune(cfg, env)        # the classes of the shards' manifest; the validation loader
    task.model(say)                  # weights from finetune.weights (via train/checkpointer.py), or from scratch
    task.loss(model, batch)          # mixes the batch, soft-target (or label-smoothed) cross-entropy
    task.after_step(run, batch)      # every finetune.val_every epochs and at the end: one view per video; best.pt
    task.finish(run, batch)          # the multi-view test, the accuracy curve
    evaluate_weights(cfg, env, folder, say)   # mode eval
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from einops import rearrange
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from model import VideoMAEClassifier, load_weights
from pipeline.config import DataConfig
from pipeline.shards import read_manifest
from train import checkpointer, distributed
from train.config import ConfigError, TrainConfig, to_dict
from train.display import percent
from train.evaluate import evaluate, metrics, write_report
from train.pictures import save_accuracy_curve
from train.task import make_loader


def class_names(cfg: TrainConfig) -> list[str]:
    """The classes of the shards (manifest.json, label-index order), checked against finetune.num_classes."""
    names = list(read_manifest(Path(cfg.data.shards)).get("classes") or [])
    wanted = cfg.finetune.num_classes
    if wanted is None:
        if not names:
            raise ConfigError(f"{cfg.data.shards}/manifest.json lists no classes (unlabelled shards?): a classifier "
                              f"needs labelled shards, or set finetune.num_classes")
        return names
    if names and len(names) != wanted:
        raise ConfigError(f"finetune.num_classes is {wanted} but {cfg.data.shards}/manifest.json lists {len(names)} "
                          f"classes: drop finetune.num_classes to take the manifest's")
    return names or [str(i) for i in range(wanted)]


def build_classifier(cfg: TrainConfig, num_classes: int, device: torch.device, say) -> nn.Module:
    """The classifier of `cfg`, initialised from run.seed, then from finetune.weights when given (what was taken
    and what was left is said through `say`)."""
    torch.manual_seed(cfg.run.seed)
    model = VideoMAEClassifier(cfg.model, num_classes)
    if cfg.finetune.weights is None:
        say(f"{cfg.mode} from scratch (finetune.weights is null): every weight newly initialised")
        return model.to(device)
    path, obj = checkpointer.weights_of(cfg.finetune.weights, say)
    report = load_weights(model, obj, name=str(path))
    if cfg.mode == "eval" and report.missing:
        raise ConfigError(f"{path}: not a classifier of this config, it leaves {len(report.missing)} weights "
                          f"unset ({', '.join(report.missing[:3])}, ...): evaluate a fine-tuned checkpoint")
    say(f"weights from {path} ({report.layout}): {len(report.loaded)} tensors taken; new: "
        f"{_listed(report.missing)}; not used: {_listed(report.skipped + report.unexpected)}")
    for note in report.notes:
        say(f"note: {note}")
    return model.to(device)


def _listed(keys: list[str]) -> str:
    """Parameter names grouped by module: 'head', 'fc_norm', 'encoder.norm', 'decoder', ..."""
    groups = sorted({".".join(k.split(".")[:2]) if k.startswith("encoder.") else k.split(".")[0] for k in keys})
    return ", ".join(groups) if groups else "none"


class ClassifierLoss:
    """Cross-entropy of the classifier. With mixup or CutMix on, timm's Mixup mixes each batch with its reverse
    (one box for every frame of a clip) and gives label-smoothed soft targets; without, label smoothing alone."""

    def __init__(self, cfg, num_classes: int):
        self.mixup = None
        if cfg.mixes:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode="batch",
                               label_smoothing=cfg.label_smoothing, num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif cfg.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(cfg.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        video, target = batch["video"], batch["label"]
        if self.mixup is not None:
            channels = video.shape[1]
            frames = rearrange(video, "b c t h w -> b (c t) h w")  # timm cuts its box from the last two dims
            frames, target = self.mixup(frames.clone(), target)  # the loader's buffer stays as decoded
            video = rearrange(frames, "b (c t) h w -> b c t h w", c=channels)
        return self.criterion(model(video), target)


def eval_data(data: DataConfig, split: str, segments: int, crops: int) -> DataConfig:
    """The eval loader's settings for `split`: every video once, `segments` x `crops` views each."""
    return replace(data, mode="eval", split=split, drop_last=False, num_sample=1, test_num_segment=segments,
                   test_num_crop=crops)


class Finetune:
    """Classification: the classifier, its loss, validation (one centre view per video, as the official code
    validates each epoch; its loader is built once) and best.pt, and the multi-view test at the end."""
    kind = "classifier"

    def __init__(self, cfg: TrainConfig, env: distributed.Env):
        self.cfg, self.env, ft = cfg, env, cfg.finetune
        self.names = class_names(cfg)
        self.entries = {"classes": self.names}
        self.layer_decay = ft.layer_decay
        self.loss = ClassifierLoss(ft, len(self.names))
        self.describe = (f"{len(self.names)} classes, mixup {ft.mixup if ft.mixes else 'off'}, layer decay "
                         f"{ft.layer_decay}")
        self.val_loader = None
        if ft.val_split:
            self.val_loader, _ = make_loader(eval_data(cfg.data, ft.val_split, 1, 1), cfg.run.loader, env.device)

    def model(self, say) -> nn.Module:
        return build_classifier(self.cfg, len(self.names), self.env.device, say)

    def after_step(self, run, batch: dict) -> None:
        """Validate at the end of every finetune.val_every-th epoch (counted in steps: exact on resume) and after the
        last step, before its checkpoint, which then holds the best top-1."""
        epochs_done, rest = divmod(run.state.step, run.steps_per_epoch)
        if run.state.step == run.last_step or (not rest and epochs_done % self.cfg.finetune.val_every == 0):
            self.validate(run)

    def validate(self, run) -> None:
        """Validate, log the figures as a metrics record, keep best.pt when top-1 is the best so far."""
        if self.val_loader is None:
            return
        pred = evaluate(run.model, self.val_loader, self.env, expected_views=1)
        found, state = metrics(pred, self.names), run.state
        record = {"val_top1": found["top1"], "val_top5": found["top5"], "val_videos": found["num_videos"],
                  "step": state.step, "epoch": round(state.step / run.steps_per_epoch, 2), "time": time.time()}
        better = found["top1"] > state.best_top1
        if better:
            state.best_top1 = found["top1"]
            weights, _ = distributed.full_state(run.model)
            if self.env.is_main:
                run.checkpointer.write(run.folder.path / "best.pt", weights, step=state.step, val=record)
        if self.env.is_main:
            run.folder.log(record)
        run.say(f"step {state.step}, {self.cfg.finetune.val_split}: {accuracy_text(found, len(self.names))} "
                f"({found['num_videos']} videos, one view each){'; best so far: best.pt' if better else ''}")

    def finish(self, run, batch: dict | None) -> dict:
        """The multi-view test of the final weights on finetune.test_split, the accuracy curve; returns the summary's
        entries."""
        cfg, state = self.cfg, run.state
        tested = None
        if cfg.finetune.test_split:
            tested = test(run.model, cfg, self.env, cfg.finetune.test_split, self.names, run.folder.path, run.say)
        pictures = []
        if self.env.is_main and run.folder.metrics_path.is_file():
            pictures.append(save_accuracy_curve(run.folder.path / "pictures" / "accuracy.png",
                                                run.folder.metrics_path))
        return {"best_val_top1": state.best_top1 if state.best_top1 >= 0 else None, "pictures": pictures,
                "test": None if not tested else {k: tested[k] for k in ("top1", "top5", "num_videos")}}


def test(model: nn.Module, cfg: TrainConfig, env: distributed.Env, split: str, names: list[str], out_dir: Path,
         say) -> dict:
    """The multi-view test of `model` on `split` (data.test_num_segment x test_num_crop views per video, softmax
    averaged); rank 0 writes eval-<split>.json, its predictions and the confusion matrix into `out_dir`."""
    data = eval_data(cfg.data, split, cfg.data.test_num_segment, cfg.data.test_num_crop)
    loader, _ = make_loader(data, cfg.run.loader, env.device)
    pred = evaluate(model, loader, env, expected_views=data.num_views)
    if not env.is_main:
        return {}
    found = write_report(out_dir, pred, names, prefix=f"eval-{split}")
    say(f"{split}: {accuracy_text(found, len(names))} over {found['num_videos']} videos x {data.num_views} views "
        f"({data.test_num_segment} clips x {data.test_num_crop} crops); mean class accuracy "
        f"{percent(found['mean_class_accuracy'])}; report {out_dir / f'eval-{split}.json'}")
    return found


def accuracy_text(found: dict, num_classes: int) -> str:
    """'top-1 61.2%, top-5 88.0%'; top-5 only where it says something (more than 5 classes)."""
    return f"top-1 {percent(found['top1'])}" + (f", top-5 {percent(found['top5'])}" if num_classes > 5 else "")


def evaluate_weights(cfg: TrainConfig, env: distributed.Env, folder, say) -> int:
    """mode eval: the multi-view test of finetune.weights on data.split; the report goes into the run folder."""
    names = class_names(cfg)
    model = build_classifier(cfg, len(names), env.device, say)
    if env.is_main:
        folder.accept(to_dict(cfg))
    test(model, cfg, env, cfg.data.split, names, folder.path, say)
    return 0
