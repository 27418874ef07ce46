"""Multi-view evaluation of a classifier: softmax averaged over each video's views, gathered across ranks.

    pred = evaluate(model, loader, env, expected_views=data.num_views)   # on every rank, at env.precision
    found = metrics(pred, class_names)              # top1, top5, per-class accuracy, confusion matrix
    write_report(run_dir, pred, class_names)        # eval.json, eval-predictions.jsonl, eval-confusion.png

An eval loader (ARCHITECTURE.md section 2, mode 'eval') yields each video's test_num_segment x test_num_crop views
as consecutive rows; with several ranks the views of one video may come from different ranks, so each rank sums
the softmax of the views it saw per video (`predict`), the ranks exchange these sums (`gather`), and only then
are they divided by the number of views (`merge`). Every rank ends with the same `Predictions`.

With several ranks the ranks run the model in step (`distributed.run_in_step`): before each forward they agree
whether any rank still has a batch, and a rank that has run out runs its last batch again and drops the result.
A model whose forward is itself collective (FSDP gathers each block's weights) therefore never waits on a rank
that stopped, although the eval loader (drop_last false) gives ranks different numbers of batches. An error on
one rank while reading or running a batch (an unlabelled clip, a clip that fails to decode) is raised on every
rank instead of leaving the others waiting. The confusion picture is train/pictures.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import write_atomically
from train.distributed import Env, autocast, gather, resolve_precision, run_in_step
from train.pictures import save_confusion

TOP_K = 5


@dataclass
class Predictions:
    """One row per video, sorted by key."""
    keys: list[str]
    labels: np.ndarray  # (N,) int64
    probs: np.ndarray  # (N, C) float64: softmax averaged over the video's views
    views: np.ndarray  # (N,) int64: how many views were averaged

    @property
    def predicted(self) -> np.ndarray:
        """(N,) int64: the class of highest mean probability (the lowest index among equals)."""
        return self.probs.argmax(axis=1).astype(np.int64)


# --- predicting -------------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: nn.Module, loader, device, precision: str = "fp32",
            env: Env | None = None) -> dict[str, tuple[int, np.ndarray, int]]:
    """This rank's part: per key (label, sum of the softmax over the views seen here (C,) float64, number of views).

    `model(batch['video'])` gives B x C logits; the model is in eval mode meanwhile and every submodule gets its
    own train/eval mode back afterwards, also after an error. `precision` is 'fp32', 'bf16', 'fp16' or 'auto'
    (train.distributed.autocast); the softmax is taken in float32. With `env` of several ranks, the ranks run the model
    in step (module docstring): pass it whenever every rank calls this together."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    part: dict[str, tuple[int, np.ndarray, int]] = {}
    last: list[torch.Tensor] = []  # the last video batch run: what a rank that ran out runs again

    def step(batch: dict) -> None:
        _check_labelled(batch)
        video = batch["video"].to(device, non_blocking=True)  # (B*V) x C x T x H x W
        _add_views(part, batch, _softmax(model, video, device, precision))
        last[:] = [video]

    def idle() -> None:
        if last:
            with autocast(device, precision):
                model(last[0])

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        if env is None or env.world == 1:
            for batch in loader:
                step(batch)
        else:
            run_in_step(loader, env, step, idle)
    finally:
        for module, training in modes:
            module.training = training
    return part


def _check_labelled(batch: dict) -> None:
    labels = torch.as_tensor(batch["label"]).tolist()
    for key, label in zip(batch["key"], labels):
        if label < 0:
            raise ValueError(f"cannot evaluate {key}: its label is {label} (unlabelled); evaluation needs a split "
                             f"whose clips carry labels")


def _softmax(model: nn.Module, video: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    """(B, C) float64 on the host: the softmax of the model's logits for each row of `video`."""
    with autocast(device, precision):
        logits = model(video)
    if logits.ndim != 2 or logits.shape[0] != video.shape[0]:
        raise ValueError(f"the model gave logits of shape {tuple(logits.shape)} for {video.shape[0]} views; "
                         f"expected (views, classes)")
    return torch.softmax(logits.float(), dim=-1).double().cpu().numpy()


def _add_views(part: dict, batch: dict, probs: np.ndarray) -> None:
    """Add each row's softmax (probs: B x C) to its video's sum in `part`."""
    keys, labels = batch["key"], torch.as_tensor(batch["label"]).tolist()
    if not len(keys) == len(labels) == len(probs):
        raise ValueError(f"a batch with {len(probs)} videos, {len(keys)} keys and {len(labels)} labels: the eval "
                         f"loader must give one key and one label per view")
    for key, label, row in zip(keys, labels, probs):
        if key not in part:
            part[key] = (label, row.copy(), 1)
            continue
        seen_label, total, count = part[key]
        if seen_label != label:
            raise ValueError(f"{key}: one view has label {seen_label}, another {label}")
        part[key] = (label, total + row, count + 1)


# --- merging ranks ----------------------------------------------------------------------------------------------

def merge(parts: list[dict]) -> Predictions:
    """Merge ranks' parts (views of one video may be on different ranks): sum the softmax sums and view counts per
    key, then divide. A key whose label differs between parts is an error naming the key."""
    totals: dict[str, tuple[int, np.ndarray, int]] = {}
    for part in parts:
        for key, (label, prob_sum, count) in part.items():
            prob_sum = np.asarray(prob_sum, dtype=np.float64)
            if key not in totals:
                totals[key] = (int(label), prob_sum, int(count))
                continue
            seen_label, seen_sum, seen_count = totals[key]
            if seen_label != label:
                raise ValueError(f"{key}: label {seen_label} on one rank and {label} on another; the views of "
                                 f"one video must carry one label")
            if seen_sum.shape != prob_sum.shape:
                raise ValueError(f"{key}: {seen_sum.shape[-1]} classes on one rank and {prob_sum.shape[-1]} on "
                                 f"another")
            totals[key] = (seen_label, seen_sum + prob_sum, seen_count + int(count))
    keys = sorted(totals)
    widths = {totals[key][1].shape for key in keys}
    if len(widths) > 1:
        raise ValueError(f"videos have softmax sums of different shapes {sorted(widths)}: one model for all")
    labels = np.array([totals[key][0] for key in keys], dtype=np.int64)
    views = np.array([totals[key][2] for key in keys], dtype=np.int64)
    sums = np.stack([totals[key][1] for key in keys]) if keys else np.zeros((0, 0))  # N x C
    return Predictions(keys, labels, sums / np.maximum(views, 1)[:, None], views)


def evaluate(model: nn.Module, loader, env: Env, precision: str | None = None,
             expected_views: int | None = None) -> Predictions:
    """`predict` on every rank (in step), gather the parts, merge; every rank returns the same Predictions. With
    `expected_views`, a video that got a different number of views is an error naming the key (a loader bug,
    never silently averaged)."""
    part = predict(model, loader, env.device, precision or env.precision, env=env)
    pred = merge(gather(part, env))
    if expected_views is not None:
        check_views(pred, expected_views)
    return pred


def check_views(pred: Predictions, expected: int) -> None:
    wrong = np.flatnonzero(pred.views != expected)
    if len(wrong):
        i = wrong[0]
        raise ValueError(f"{pred.keys[i]} got {pred.views[i]} views, expected {expected} (test_num_segment x "
                         f"test_num_crop); {len(wrong)} of {len(pred.keys)} videos differ: a loader bug, not "
                         f"averaged")


# --- metrics ----------------------------------------------------------------------------------------------------

def metrics(pred: Predictions, class_names: list[str] | None = None) -> dict:
    """top1, top5 (top-k with k = min(5, C)) and mean_class_accuracy as fractions in [0, 1]; num_videos;
    views_per_video (an int when every video got as many views, else the mean); per_class ({name: {"accuracy"
    (None for a class without videos), "videos"}}); confusion (C x C list of ints, rows = true class, columns =
    predicted class)."""
    num_videos, num_classes = pred.probs.shape
    if num_videos == 0:
        raise ValueError("no videos to evaluate: the loader yielded nothing")
    _check_labels(pred, num_classes)
    names = _class_names(class_names, num_classes)
    predicted = pred.predicted
    k = min(TOP_K, num_classes)
    top_k = np.argsort(-pred.probs, axis=1, kind="stable")[:, :k]  # N x k, most probable first
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (pred.labels, predicted), 1)
    videos = confusion.sum(axis=1)  # per true class
    accuracy = [int(confusion[c, c]) / int(videos[c]) if videos[c] else None for c in range(num_classes)]
    present = [a for a in accuracy if a is not None]
    return {
        "top1": float((predicted == pred.labels).mean()),
        "top5": float((top_k == pred.labels[:, None]).any(axis=1).mean()),
        "num_videos": int(num_videos),
        "views_per_video": _views_per_video(pred.views),
        "mean_class_accuracy": float(np.mean(present)),
        "per_class": {name: {"accuracy": accuracy[c], "videos": int(videos[c])} for c, name in enumerate(names)},
        "confusion": confusion.tolist(),
    }


def _check_labels(pred: Predictions, num_classes: int) -> None:
    for key, label in zip(pred.keys, pred.labels.tolist()):
        if label < 0:
            raise ValueError(f"cannot evaluate {key}: its label is {label} (unlabelled)")
        if label >= num_classes:
            raise ValueError(f"{key}: label {label} but the model has {num_classes} classes")


def _class_names(class_names: list[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model of {num_classes} classes")
    if len(set(names)) != len(names):
        doubled = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class names must be distinct: {', '.join(doubled)} appear more than once")
    return names


def _views_per_video(views: np.ndarray) -> int | float:
    return int(views[0]) if (views == views[0]).all() else float(views.mean())


# --- report -----------------------------------------------------------------------------------------------------

def write_report(out_dir, pred: Predictions, class_names: list[str] | None, prefix: str = "eval") -> dict:
    """Writes {prefix}.json (the metrics), {prefix}-predictions.jsonl (per video: key, label, predicted, views and
    the top-5 classes with their mean probability) and {prefix}-confusion.png (up to 50 classes); returns the
    metrics. Call it on one rank (rank 0)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = metrics(pred, class_names)
    names = list(found["per_class"])
    write_atomically(out / f"{prefix}.json", _metrics_json(found))
    lines = [json.dumps(record) for record in prediction_records(pred, names)]
    write_atomically(out / f"{prefix}-predictions.jsonl", "".join(line + "\n" for line in lines))
    save_confusion(out / f"{prefix}-confusion.png", found["confusion"], names)
    return found


def prediction_records(pred: Predictions, names: list[str]) -> list[dict]:
    """One dict per video: key, label, predicted (indices and names), views, top5 ([class, probability], most
    probable first)."""
    k = min(TOP_K, pred.probs.shape[1])
    top_k = np.argsort(-pred.probs, axis=1, kind="stable")[:, :k]  # N x k
    records = []
    for i, key in enumerate(pred.keys):
        label, guess = int(pred.labels[i]), int(top_k[i, 0])
        records.append({"key": key, "label": label, "label_name": names[label], "predicted": guess,
                        "predicted_name": names[guess], "views": int(pred.views[i]),
                        "top5": [[int(c), round(float(pred.probs[i, c]), 6)] for c in top_k[i]]})
    return records


def _metrics_json(found: dict) -> str:
    """Indented JSON with one line per row of the confusion matrix (not one per cell)."""
    placeholder = json.dumps("confusion matrix")
    rest = {key: value for key, value in found.items() if key != "confusion"}
    before, _, after = json.dumps({**rest, "confusion": "confusion matrix"}, indent=1).rpartition(placeholder)
    rows = ",\n  ".join(json.dumps(row) for row in found["confusion"])
    return f"{before}[\n  {rows}\n ]{after}\n"
