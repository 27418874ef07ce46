"""The study's runs: every cell's pre-training and fine-tuning, seed after seed, each a `train` run of a shipped
config (configs/study-pretrain.yaml, configs/study-finetune.yaml) into DIR/runs/<run>/; a run that finished is not
run again, an unfinished one resumes."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import train as trainer
from train.study.cells import MASKS, Cell, cell_shards, pretrain_name, study_cells
from train.study.data import StudyError, train_clips


def epochs_for(steps: int, clips: int, batch_size: int) -> int:
    """Epochs that give about `steps` optimizer steps over `clips` training clips (full batches only)."""
    return max(1, round(steps / max(clips // batch_size, 1)))


def pretrain_config(out: Path, size: dict, mask_type: str, mask_ratio: float, seed: int):
    return study_config("study-pretrain.yaml", out / "shards" / "fraction-100", size["pretrain_steps"], [
        f"data.mask_type={mask_type}", f"data.mask_ratio={mask_ratio}", f"run.seed={seed}"])


def finetune_config(out: Path, size: dict, cell: Cell, seed: int, weights: Path | None):
    return study_config("study-finetune.yaml", cell_shards(out, cell), size["finetune_steps"], [
        f"finetune.weights={weights if weights else 'null'}", f"run.seed={seed}"])


def study_config(name: str, shards: Path, steps: int, overrides: list[str]):
    """configs/<name> with `overrides`, on `shards`, with the epochs that give about `steps` steps (a tenth of them
    warm-up)."""
    config = trainer.shipped_config(name)
    overrides = [f"data.shards={shards}", *overrides]
    batch_size = trainer.load_train_config(config, overrides).data.batch_size
    epochs = epochs_for(steps, train_clips(shards), batch_size)
    return trainer.load_train_config(config, [*overrides, f"optim.epochs={epochs}",
                                              f"optim.warmup_epochs={epochs / 10}"])


def run_once(cfg, folder: Path, logs: Path) -> dict:
    """`train` of `cfg` into `folder` (resumed when a killed study left it unfinished), its output in
    logs/<folder name>.log; returns its summary.json plus `wall_s`, the seconds the whole run took."""
    summary, timing = folder / "summary.json", folder.parent / f"{folder.name}.wall.json"
    if summary.is_file() and timing.is_file():
        return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{folder.name}.log"
    started = time.perf_counter()
    with log.open("a") as f, contextlib.redirect_stdout(f):
        code = trainer.train(cfg, folder, resume="auto", live=False)
    if code != 0:
        raise StudyError(f"{folder}: train exited with status {code}; the reason is at the end of {log} (run "
                         f"`train study` again to resume from its last checkpoint)")
    timing.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1)}) + "\n")
    return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}


def run_all(out: Path, size: dict, say) -> dict:
    """Every run, seed after seed (a study stopped part way has whole seeds); returns {run name: summary}."""
    cells = study_cells(size["fractions"])
    masks = [m for m in MASKS if any((c.mask_type, c.mask_ratio) == m for c in cells)]
    runs = out / "runs"
    plan = [(seed, ("pretrain", m)) for seed in range(size["seeds"]) for m in masks]
    plan += [(seed, ("finetune", c)) for seed in range(size["seeds"]) for c in cells]
    plan.sort(key=lambda job: job[0])  # stable: each seed's pre-training before its fine-tuning
    found, started = {}, time.perf_counter()
    for number, (seed, (kind, what)) in enumerate(plan, 1):
        if kind == "pretrain":
            name = pretrain_name(*what, seed)
            cfg = pretrain_config(out, size, *what, seed)
        else:
            name = f"{what.name}-s{seed}"
            weights = None
            if what.start == "pretrained":
                weights = runs / pretrain_name(what.mask_type, what.mask_ratio, seed)
            elif what.start == "untrained":
                weights = untrained_weights(out, size, seed)
            cfg = finetune_config(out, size, what, seed, weights)
        found[name] = run_once(cfg, runs / name, out / "logs")
        result = found[name]
        figure = (f"test top-1 {100 * result['test']['top1']:.1f}%" if kind == "finetune" else
                  f"final loss {final_loss(runs / name):.3f}")
        elapsed = time.perf_counter() - started
        say(f"study: [{number}/{len(plan)}] {name}: {result['steps']} steps, {figure} ({result['wall_s']:.0f} s; "
            f"{elapsed / 60:.1f} min since this command started)")
    return found


def untrained_weights(out: Path, size: dict, seed: int) -> Path:
    """The tube 0.9 pre-training run's model of `seed` before its first step (the same weights its run starts
    from), as a checkpoint: fine-tuned, it tells what pre-training learned from what its initialisation gives."""
    import torch

    from model import save_checkpoint

    path = out / "runs" / f"untrained-s{seed}.pt"
    if not path.is_file():
        save_checkpoint(path, trainer.build_model(pretrain_config(out, size, *MASKS[0], seed), torch.device("cpu")))
    return path


def final_loss(folder: Path) -> float:
    losses = [r["loss"] for r in trainer.read_metrics(folder / "metrics.jsonl") if "loss" in r]
    return losses[-1] if losses else float("nan")
