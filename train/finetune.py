"""What fine-tuning and evaluation add to the loop (train/main.py): the classifier and its start, the classification
loss with timm's Mixup / CutMix, validation during training and best.pt, the multi-view test, and `mode: eval`.

    model = build_classifier(cfg, num_classes, device, say)      # weights from finetune.weights, or from scratch
    loss_of = ClassifierLoss(cfg.finetune, num_classes)           # mixes the batch, soft-target cross-entropy
    validate(run)                                                 # every finetune.val_every epochs: one view per video
    conclude(run)                                                 # last validation, the test, the accuracy curve
    evaluate_only(cfg, env, folder)                               # mode eval
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

from model import VideoMAEClassifier, load_weights, save_checkpoint
from pipeline.config import DataConfig
from pipeline.shards import read_manifest
from train import checkpoint, distributed
from train.build import make_loader
from train.config import ConfigError, TrainConfig, to_dict
from train.engine import resolve_precision
from train.evaluate import evaluate, metrics, save_accuracy_curve, write_report


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
    weights = resolve_weights(cfg.finetune.weights)
    if weights is None:
        say(f"train: {cfg.mode} from scratch (finetune.weights is null): every weight newly initialised")
    else:
        report = load_weights(model, weights)
        if cfg.mode == "eval" and report.missing:
            raise ConfigError(f"{weights}: not a classifier of this config, it leaves {len(report.missing)} weights "
                              f"unset ({', '.join(report.missing[:3])}, ...): evaluate a fine-tuned checkpoint")
        say(f"train: weights from {weights} ({report.layout}): {len(report.loaded)} tensors taken; new: "
            f"{_listed(report.missing)}; not used: {_listed(report.skipped + report.unexpected)}")
        for note in report.notes:
            say(f"train: note: {note}")
    return model.to(device)


def resolve_weights(weights: str | None) -> Path | None:
    """finetune.weights as a file: a run folder of `train` stands for its newest checkpoint; any other folder is
    taken as a Hugging Face `save_pretrained` folder."""
    if weights is None:
        return None
    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"finetune.weights: {path} does not exist")
    found = checkpoint.list_checkpoints(path) if path.is_dir() else []
    return found[-1] if found else path


def _listed(keys: list[str]) -> str:
    """Parameter names grouped by module: 'head', 'fc_norm', 'encoder.norm', 'decoder', ..."""
    groups = sorted({".".join(k.split(".")[:2]) if k.startswith("encoder.") else k.split(".")[0] for k in keys})
    return ", ".join(groups) if groups else "none"


class ClassifierLoss:
    """Cross-entropy of the classifier. With mixup or CutMix on, timm's Mixup mixes each batch with its reverse
    (one box for every frame of a clip) and gives label-smoothed soft targets."""

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


def validate(run) -> None:
    """Fine-tuning: validate, log the figures as a metrics record, keep best.pt when top-1 is the best so far."""
    if run.validator is None:
        return
    found = run.validator(run.model, run.precision)
    state = run.state
    found.update(step=state.step, epoch=round(state.step / run.steps_per_epoch, 2), time=time.time())  # epochs done
    better = found["val_top1"] > state.best_top1
    if better:
        state.best_top1 = found["val_top1"]
        weights = distributed.full_weights(run.model)
        if run.env.is_main:
            save_checkpoint(run.folder.path / "best.pt", run.model, state_dict=weights, step=state.step,
                            val=found, config=to_dict(run.cfg))
    if run.env.is_main:
        run.folder.log(found)
    accuracy = accuracy_text(found["val_top1"], found["val_top5"], len(run.class_names))
    run.display.message(f"train: step {state.step}, {run.cfg.finetune.val_split}: {accuracy} ({found['val_videos']} "
                        f"videos, one view each){'; best so far: best.pt' if better else ''}")


def conclude(run) -> dict:
    """The end of a fine-tuning run: the last validation (unless this run trained no step), the multi-view test
    of the final weights on finetune.test_split, the accuracy curve; returns the summary's entries."""
    cfg, state = run.cfg, run.state
    if run.validator is not None and state.step > run.start_step:
        validate(run)
    tested = None
    if cfg.finetune.test_split:
        tested = test(run.model, cfg, run.env, run.precision, cfg.finetune.test_split, run.class_names,
                      run.folder.path, run.display.message)
    pictures = []
    if run.env.is_main and run.folder.metrics_path.is_file():
        pictures.append(save_accuracy_curve(run.folder.path / "pictures" / "accuracy.png", run.folder.metrics_path))
    return {"best_val_top1": state.best_top1 if state.best_top1 >= 0 else None, "pictures": pictures,
            "test": None if not tested else {k: tested[k] for k in ("top1", "top5", "num_videos")}}


def eval_data(data: DataConfig, split: str, segments: int, crops: int) -> DataConfig:
    """The eval loader's settings for `split`: every video once, `segments` x `crops` views each."""
    return replace(data, mode="eval", split=split, drop_last=False, num_sample=1, test_num_segment=segments,
                   test_num_crop=crops)


class Validator:
    """Validation during fine-tuning: top-1 / top-5 on finetune.val_split, one centre view per video (as the
    official code validates each epoch; the multi-view test comes at the end). The loader is built once."""

    def __init__(self, cfg: TrainConfig, env: distributed.Env, names: list[str]):
        self.loader, _ = make_loader(eval_data(cfg.data, cfg.finetune.val_split, 1, 1), cfg.run.loader, env.device)
        self.env, self.names = env, names

    def __call__(self, model: nn.Module, precision: str) -> dict:
        pred = evaluate(model, self.loader, self.env, precision, expected_views=1)
        found = metrics(pred, self.names)
        return {"val_top1": found["top1"], "val_top5": found["top5"], "val_videos": found["num_videos"]}


def test(model: nn.Module, cfg: TrainConfig, env: distributed.Env, precision: str, split: str, names: list[str],
         out_dir: Path, say) -> dict:
    """The multi-view test of `model` on `split` (data.test_num_segment x test_num_crop views per video, softmax
    averaged); rank 0 writes eval-<split>.json, its predictions and the confusion matrix into `out_dir`."""
    data = eval_data(cfg.data, split, cfg.data.test_num_segment, cfg.data.test_num_crop)
    loader, _ = make_loader(data, cfg.run.loader, env.device)
    pred = evaluate(model, loader, env, precision, expected_views=data.num_views)
    if not env.is_main:
        return {}
    found = write_report(out_dir, pred, names, prefix=f"eval-{split}")
    say(f"train: {split}: {accuracy_text(found['top1'], found['top5'], len(names))} over "
        f"{found['num_videos']} videos x {data.num_views} views ({data.test_num_segment} clips x "
        f"{data.test_num_crop} crops); mean class accuracy {100 * found['mean_class_accuracy']:.1f}%; report "
        f"{out_dir / f'eval-{split}.json'}")
    return found


def accuracy_text(top1: float, top5: float, num_classes: int) -> str:
    """'top-1 61.2%, top-5 88.0%'; top-5 only where it says something (more than 5 classes)."""
    return f"top-1 {100 * top1:.1f}%" + (f", top-5 {100 * top5:.1f}%" if num_classes > 5 else "")


def evaluate_only(cfg: TrainConfig, env: distributed.Env, folder) -> int:
    """mode eval: the multi-view test of finetune.weights on data.split; the report goes into the run folder."""
    say = (lambda text: print(text, flush=True)) if env.is_main else (lambda text: None)
    names = class_names(cfg)
    model = build_classifier(cfg, len(names), env.device, say)
    precision = resolve_precision(cfg.run.precision, env.device)
    if env.is_main:
        folder.write_config(to_dict(cfg))
    test(model, cfg, env, precision, cfg.data.split, names, folder.path, say)
    return 0
