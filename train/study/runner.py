"""`train study --out DIR [--quick]`: VideoMAE's data-efficiency claim, in miniature, on one machine.

    data     the `study` synthetic collection (shard_tools/synthetic.py PRESETS): training clips in one look, test
             clips in another (new shapes, textures, backgrounds), and both again as single frames held still;
             sharded once per label fraction (the first fraction x N clips of each class as `train`, all test
             clips as `test`): DIR/shards/fraction-<pct>/, and DIR/shards/still/
    cells    pre-training (configs/study-pretrain.yaml) on every training clip without labels, then fine-tuning
             (configs/study-finetune.yaml); against the same fine-tuning from scratch, with the same steps; at each
             label fraction, and there too the control for the initialisation: fine-tuning from the pre-training
             model as it was before its first step (`untrained`); the ablations (tube / random / frame masking,
             mask ratio 0.5 / 0.75 / 0.9) at the smallest fraction; the single-frame baseline (from scratch on the
             still clips) at fraction 1; every cell with each seed. One run at a time, in this process
             (train.main.train); DIR/runs/<cell>-s<seed>/
    results  DIR/results.md and results.json (one row per cell: mean, spread, per-seed test top-1), plots in
             DIR/*.png, a reconstruction of test clips by the first tube-0.9 pre-trained model, and how its loss
             on training and on test clips splits between moving, flat and still cubes (results.json `target`)

A killed study resumes: runs with a summary.json are skipped, an unfinished one continues (--resume auto).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# the two sizes: `default` is the study the README shows (about 70 minutes on a 2-core CPU), `quick` checks the
# plumbing in under a minute (its figures mean nothing)
SIZES = {
    "default": dict(train_per_class=200, test_per_class=50, frames=32, fractions=(0.1, 1.0), seeds=3,
                    pretrain_steps=2000, finetune_steps=1000),
    "quick": dict(train_per_class=4, test_per_class=2, frames=20, fractions=(0.5, 1.0), seeds=3,
                  pretrain_steps=2, finetune_steps=2),
}
DEFAULT_THREADS = 2
# how each way to start the fine-tuning is drawn in the plots: colour and label
STARTS = {"pretrained": ("tab:blue", "pretrained"), "untrained": ("tab:purple", "untrained pre-training model"),
          "scratch": ("tab:orange", "from scratch")}
MASKS = (("tube", 0.9), ("random", 0.9), ("frame", 0.9), ("tube", 0.5), ("tube", 0.75))  # first: the main cells


@dataclass(frozen=True)
class Cell:
    """One table row: a way to start the fine-tuning (or the single-frame baseline) at one label fraction."""
    start: str  # "pretrained", "untrained" (the pre-training model's initial weights), "scratch" or "single-frame"
    fraction: float
    mask_type: str | None = None  # pre-training mask, for start == "pretrained"
    mask_ratio: float | None = None

    @property
    def name(self) -> str:
        pct = f"fraction-{percent(self.fraction)}"
        return f"{self.start}-{self.mask_type}-{self.mask_ratio}-{pct}" if self.start == "pretrained" else \
            f"{self.start}-{pct}"


def percent(fraction: float) -> str:
    return f"{round(100 * fraction):03d}"


def study_cells(fractions: tuple[float, ...]) -> list[Cell]:
    """Pre-trained (tube 0.9), the untrained control and scratch at every fraction, the other masks at the
    smallest, the single-frame baseline at fraction 1."""
    tube, ratio = MASKS[0]
    cells = [c for f in fractions for c in (Cell("pretrained", f, tube, ratio), Cell("untrained", f),
                                            Cell("scratch", f))]
    cells += [Cell("pretrained", min(fractions), kind, r) for kind, r in MASKS[1:]]
    return cells + [Cell("single-frame", 1.0)]


# ---------------------------------------------------------------------------------------------------- data


def make_data(out: Path, size: dict, say) -> None:
    """The collection and its shard folders under `out`; each step is skipped when its output is complete."""
    from shard_tools.synthetic import PRESETS, make_collection

    preset = PRESETS["study"]
    videos = out / "videos"
    for name, look, count, seed, still in (("train", preset.train, size["train_per_class"], 0, False),
                                           ("test", preset.test, size["test_per_class"], 1, False),
                                           ("still-train", preset.train, size["train_per_class"], 0, True),
                                           ("still-test", preset.test, size["test_per_class"], 1, True)):
        done = videos / f"{name}.done"
        if not done.is_file():
            say(f"study: writing {len(preset.motions)} x {count} {name} clips to {videos / name}")
            make_collection(videos / name, len(preset.motions), count, size["frames"], (64, 64), 25, "vp9", seed,
                            preset.motions, look, still)
            done.write_text("")
    for fraction in size["fractions"]:
        shard(videos, out / "shards" / f"fraction-{percent(fraction)}", "train", "test", fraction,
              size["train_per_class"], say)
    shard(videos, out / "shards" / "still", "still-train", "still-test", 1.0, size["train_per_class"], say)


def shard(videos: Path, target: Path, train: str, test: str, fraction: float, per_class: int, say) -> None:
    """`shard-videos` on a path,label,split list: the first `fraction` of each class's clips from videos/<train>
    as split train, every clip of videos/<test> as split test."""
    from shard_tools import cli as shard_cli

    if (target / "manifest.json").is_file():
        return
    keep = max(1, round(fraction * per_class))
    rows = [(p.relative_to(videos).as_posix(), p.parent.name, "train")
            for p in sorted((videos / train).glob("*/*.webm")) if int(p.stem.rsplit("_", 1)[1]) < keep]
    rows += [(p.relative_to(videos).as_posix(), p.parent.name, "test")
             for p in sorted((videos / test).glob("*/*.webm"))]
    target.mkdir(parents=True, exist_ok=True)
    listing = target.parent / f"{target.name}.csv"
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    log = target.parent / f"{target.name}.log"
    say(f"study: sharding {len(rows)} clips ({keep} per class for training) into {target} (log {log.name})")
    with log.open("w") as f, contextlib.redirect_stderr(f), contextlib.redirect_stdout(f):  # rich prints to stderr
        code = shard_cli.main([str(videos), str(target), "--labels", str(listing), "--codec", "copy",
                               "--workers", "2", "--overwrite", "--min-frames", "8"])
    if code:
        raise StudyError(f"shard-videos into {target} failed (exit {code}): the reason is in {log}")


# ---------------------------------------------------------------------------------------------------- runs


def epochs_for(steps: int, clips: int, batch_size: int) -> int:
    """Epochs that give about `steps` optimizer steps over `clips` training clips (full batches only)."""
    return max(1, round(steps / max(clips // batch_size, 1)))


def train_clips(shards: Path) -> int:
    return json.loads((shards / "manifest.json").read_text())["splits"]["train"]["clips"]


def pretrain_config(out: Path, size: dict, mask_type: str, mask_ratio: float, seed: int):
    return study_config("study-pretrain.yaml", out / "shards" / "fraction-100", size["pretrain_steps"], [
        f"data.mask_type={mask_type}", f"data.mask_ratio={mask_ratio}", f"run.seed={seed}"])


def finetune_config(out: Path, size: dict, cell: Cell, seed: int, weights: Path | None):
    return study_config("study-finetune.yaml", cell_shards(out, cell), size["finetune_steps"], [
        f"finetune.weights={weights if weights else 'null'}", f"run.seed={seed}"])


def study_config(name: str, shards: Path, steps: int, overrides: list[str]):
    """configs/<name> with `overrides`, on `shards`, with the epochs that give about `steps` steps (a tenth of them
    warm-up)."""
    from train.config import load_train_config

    overrides = [f"data.shards={shards}", *overrides]
    batch_size = load_train_config(CONFIGS / name, overrides).data.batch_size
    epochs = epochs_for(steps, train_clips(shards), batch_size)
    return load_train_config(CONFIGS / name, [*overrides, f"optim.epochs={epochs}",
                                              f"optim.warmup_epochs={epochs / 10}"])


class StudyError(RuntimeError):
    """A run of the study failed; the message names its folder and log."""


def run_once(cfg, folder: Path, logs: Path) -> dict:
    """`train` of `cfg` into `folder` (resumed when a killed study left it unfinished), its output in
    logs/<folder name>.log; returns its summary.json plus `wall_s`, the seconds the whole run took."""
    from train.main import train

    summary, timing = folder / "summary.json", folder.parent / f"{folder.name}.wall.json"
    if summary.is_file() and timing.is_file():
        return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{folder.name}.log"
    started = time.perf_counter()
    with log.open("a") as f, contextlib.redirect_stdout(f):
        code = train(cfg, folder, resume="auto", live=False)
    if code != 0:
        raise StudyError(f"{folder}: train exited with status {code}; the reason is at the end of {log} (run "
                         f"`train study` again to resume from its last checkpoint)")
    timing.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1)}) + "\n")
    return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}


def pretrain_name(mask_type: str, mask_ratio: float, seed: int) -> str:
    return f"pretrain-{mask_type}-{mask_ratio}-s{seed}"


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
            f"{elapsed / 60:.1f} min in this session)")
    return found


def untrained_weights(out: Path, size: dict, seed: int) -> Path:
    """The tube 0.9 pre-training run's model of `seed` before its first step (the same weights its run starts
    from), as a checkpoint: fine-tuned, it tells what pre-training learned from what its initialisation gives."""
    import torch

    from model import save_checkpoint
    from train.build import build_model

    path = out / "runs" / f"untrained-s{seed}.pt"
    if not path.is_file():
        save_checkpoint(path, build_model(pretrain_config(out, size, *MASKS[0], seed), torch.device("cpu")))
    return path


def final_loss(folder: Path) -> float:
    losses = [r["loss"] for r in read_metrics(folder) if "loss" in r]
    return losses[-1] if losses else float("nan")


def read_metrics(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ---------------------------------------------------------------------------------------------------- results


def table_rows(out: Path, size: dict, found: dict) -> list[dict]:
    """One row per cell: test top-1 (%) of each seed, their mean, standard deviation (n - 1) and range."""
    rows = []
    for cell in study_cells(size["fractions"]):
        seeds = list(range(size["seeds"]))
        values = [100 * found[f"{cell.name}-s{s}"]["test"]["top1"] for s in seeds]
        steps = found[f"{cell.name}-s0"]["steps"]
        rows.append({"cell": cell.name, "start": cell.start, "fraction": cell.fraction,
                     "train_clips": train_clips(cell_shards(out, cell)), "mask_type": cell.mask_type,
                     "mask_ratio": cell.mask_ratio, "finetune_steps": steps, "seeds": seeds,
                     "top1": [round(v, 1) for v in values], "mean": round(float(np.mean(values)), 1),
                     "std": round(float(np.std(values, ddof=1)), 1) if len(values) > 1 else None,
                     "min": round(min(values), 1), "max": round(max(values), 1)})
    return rows


def cell_shards(out: Path, cell: Cell) -> Path:
    return out / "shards" / ("still" if cell.start == "single-frame" else f"fraction-{percent(cell.fraction)}")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| start | pre-training mask | label fraction (clips) | test top-1 % mean | std | min - max | per seed |",
             "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        mask = f"{r['mask_type']} {r['mask_ratio']}" if r["mask_type"] else \
            "none: its initial weights" if r["start"] == "untrained" else "-"
        std = "-" if r["std"] is None else f"{r['std']:.1f}"
        lines.append(f"| {r['start']} | {mask} | {r['fraction']:g} ({r['train_clips']}) | {r['mean']:.1f} | {std} | "
                     f"{r['min']:.1f} - {r['max']:.1f} | {', '.join(f'{v:.1f}' for v in r['top1'])} |")
    return "\n".join(lines)


def figure(width: float = 5.5, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_fractions(path: Path, rows: list[dict], chance: float) -> Path:
    """Test top-1 against the label fraction: pre-trained (tube 0.9), untrained and from scratch; every seed as a
    dot."""
    fig, ax = figure()
    tube, ratio = MASKS[0]
    for start, (colour, label) in STARTS.items():
        mine = sorted((r for r in rows if r["start"] == start and r["mask_type"] in (None, tube)
                       and r["mask_ratio"] in (None, ratio)), key=lambda r: r["fraction"])
        x = [r["fraction"] for r in mine]
        ax.errorbar(x, [r["mean"] for r in mine], yerr=[r["std"] or 0 for r in mine], color=colour, marker="o",
                    capsize=4, label=f"{label} ({tube} {ratio})" if start == "pretrained" else label)
        for r in mine:
            ax.scatter([r["fraction"]] * len(r["top1"]), r["top1"], color=colour, s=10, alpha=0.5)
    for r in rows:
        if r["start"] == "single-frame":
            ax.errorbar([r["fraction"]], [r["mean"]], yerr=[r["std"] or 0], color="tab:grey", marker="s",
                        capsize=4, linestyle="none", label="single frame, scratch")
    ax.axhline(100 * chance, color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.minorticks_off()
    fractions = sorted({r["fraction"] for r in rows})
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlim(min(fractions) / 1.5, max(fractions) * 1.5)
    ax.set_xlabel("label fraction of the training clips")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("fine-tuned after pre-training vs from scratch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_masks(path: Path, rows: list[dict], chance: float) -> Path:
    """Test top-1 against the pre-training mask ratio, at the smallest label fraction, per mask type."""
    fig, ax = figure()
    fraction = min(r["fraction"] for r in rows)
    here = [r for r in rows if r["fraction"] == fraction]
    kinds = (("tube", "tab:blue", 0.0), ("random", "tab:green", 0.012), ("frame", "tab:red", 0.024))
    for kind, colour, shift in kinds:  # shifted sideways a little so that the points at 0.9 stay apart
        mine = sorted((r for r in here if r["mask_type"] == kind), key=lambda r: r["mask_ratio"])
        if mine:
            ax.errorbar([r["mask_ratio"] + shift for r in mine], [r["mean"] for r in mine],
                        yerr=[r["std"] or 0 for r in mine], color=colour, marker="o", capsize=4, label=kind)
            for r in mine:
                ax.scatter([r["mask_ratio"] + shift] * len(r["top1"]), r["top1"], color=colour, s=10, alpha=0.5)
    for r in here:
        if r["start"] in ("untrained", "scratch"):  # the baselines, as bands
            colour, label = STARTS[r["start"]]
            ax.axhspan(r["mean"] - (r["std"] or 0), r["mean"] + (r["std"] or 0), color=colour, alpha=0.15)
            ax.axhline(r["mean"], color=colour, label=f"{label} (mean, std)")
    ax.axhline(100 * chance, color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks([ratio for _, ratio in MASKS])
    ax.set_xlabel("pre-training mask ratio (random and frame shifted right to stay visible)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"masking ablation at label fraction {fraction:g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_pretrain_losses(path: Path, runs: Path, size: dict) -> Path:
    """The pre-training loss of every pre-training run: one colour per mask, one line per seed."""
    fig, ax = figure()
    colours = dict(zip(MASKS, ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:cyan")))
    for mask, colour in colours.items():
        for seed in range(size["seeds"]):
            records = [r for r in read_metrics(runs / pretrain_name(*mask, seed)) if "loss" in r]
            if records:
                ax.plot([r["step"] for r in records], [r["loss"] for r in records], color=colour, linewidth=1,
                        alpha=0.8, marker="." if len(records) < 3 else None,
                        label=f"{mask[0]} {mask[1]}" if seed == 0 else None)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("loss (normalised-pixel MSE of masked cubes)")
    ax.legend(fontsize=8)
    ax.set_title("pre-training loss", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def look_at_clips(out: Path, folder: Path, split: str, picture: Path | None = None, clips: int = 96) -> dict:
    """The pre-trained model of run `folder` on clips of `split`: where its loss comes from (`target_report`), and
    the reconstruction of the first batch as `picture`, if given."""
    from dataclasses import replace

    import torch

    from einops import rearrange

    from model import VideoMAEPretrain, load_weights
    from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify
    from train.build import make_loader
    from train.engine import mask_counts
    from train.finetune import resolve_weights
    from train.pictures import save_reconstruction

    from train.config import load_train_config

    train_cfg = load_train_config(folder / "config.yaml", [f"data.shards={out / 'shards' / 'fraction-100'}"])
    data = replace(train_cfg.data, split=split, drop_last=False)
    loader, _ = make_loader(data, "dali", "cpu")
    model = VideoMAEPretrain(train_cfg.model)
    load_weights(model, resolve_weights(str(folder)))
    model.eval()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None, None]
    losses, spreads, changes, seen = [], [], [], 0
    with torch.no_grad():
        for batch in loader:
            num_masked, num_decoded = mask_counts(batch)
            result = model(batch["video"], batch["mask"], num_masked=num_masked, num_decoded=num_decoded)
            if seen == 0 and picture is not None:
                save_reconstruction(picture, batch["video"], batch["mask"], result["pred"],
                                    result["index"], train_cfg.model)
            cubes = patchify(batch["video"] * std + mean, train_cfg.model.patch_size, train_cfg.model.tubelet_size)
            masked = cubes[torch.arange(len(cubes))[:, None], result["index"]] * 255  # B x M x C x (t p p), grey
            spreads.append(masked.std(dim=-1).mean(dim=-1).flatten())
            frames = rearrange(masked, "b m c (t q) -> b m c t q", t=train_cfg.model.tubelet_size)
            changes.append((frames[..., 1:, :] - frames[..., :-1, :]).abs().mean(dim=(-3, -2, -1)).flatten())
            losses.append(((result["pred"] - result["target"]) ** 2).mean(dim=-1).flatten())
            seen += len(cubes)
            if seen >= clips:
                break
    cube_pixels = train_cfg.model.tubelet_size * train_cfg.model.patch_size ** 2
    return target_report(torch.cat(losses).numpy(), torch.cat(spreads).numpy(), torch.cat(changes).numpy(), seen,
                         cube_pixels)


CUBE_KINDS = {"moving": "the frames of the cube differ by 4 grey levels (of 255) or more, mean absolute difference",
              "flat": "not moving, pixel standard deviation under 4 grey levels, per channel, mean over channels",
              "still": "the rest: structure that does not move (edges, gradients, texture)"}


def target_report(losses: np.ndarray, spreads: np.ndarray, changes: np.ndarray, clips: int,
                  cube_pixels: int) -> dict:
    """Mean loss of the masked cubes of each kind (`CUBE_KINDS`), each cube's loss given with its pixel spread and
    its change between frames, in grey levels. Predicting zero, the cube's own mean, scores (P - 1) / P."""
    moving = changes >= 4.0
    flat = ~moving & (spreads < 4.0)
    kinds = {"moving": moving, "flat": flat, "still": ~moving & ~flat}
    return {"clips": clips, "masked_cubes": int(len(losses)), "loss": round(float(losses.mean()), 4),
            "cube_pixels": cube_pixels, "predicting_the_mean": round(1 - 1 / cube_pixels, 4),
            "kinds": {name: {"share": round(float(which.mean()), 3),
                             "loss": round(float(losses[which].mean()), 4) if which.any() else None}
                      for name, which in kinds.items()},
            "kinds_mean": CUBE_KINDS}


# ---------------------------------------------------------------------------------------------------- command


def run_study(out: Path, size_name: str, seeds: int | None, threads: int, say) -> dict:
    """The whole study into `out`; returns what results.json holds."""
    import torch

    from shard_tools.synthetic import PRESETS
    from train.bench.machine import describe, machine

    torch.set_num_threads(threads)
    size = dict(SIZES[size_name], **({"seeds": seeds} if seeds else {}))
    started = time.perf_counter()
    make_data(out, size, say)
    data_s = time.perf_counter() - started
    found = run_all(out, size, say)
    rows = table_rows(out, size, found)
    chance = 1 / len(PRESETS["study"].motions)
    pictures = [plot_fractions(out / "accuracy-vs-fraction.png", rows, chance),
                plot_masks(out / "accuracy-vs-mask-ratio.png", rows, chance),
                plot_pretrain_losses(out / "pretrain-loss.png", out / "runs", size)]
    say("study: the target report of the first tube 0.9 pre-trained model on training and test clips, and its "
        "reconstruction of test clips")
    looked, first = time.perf_counter(), out / "runs" / pretrain_name(*MASKS[0], 0)
    target = {"train": look_at_clips(out, first, "train"),
              "test": look_at_clips(out, first, "test", picture=out / "reconstruction.png")}
    pictures.append(out / "reconstruction.png")
    runs_s, look_s = sum(r["wall_s"] for r in found.values()), time.perf_counter() - looked
    options = (["--quick"] if size_name == "quick" else []) + ([f"--seeds {seeds}"] if seeds else []) + \
        ([f"--threads {threads}"] if threads != DEFAULT_THREADS else [])
    results = {"command": " ".join(["train study", "--out", str(out), *options]),
               "size": size_name, "settings": size, "machine": machine(), "machine_text": describe(),
               "chance_top1": round(100 * chance, 1), "rows": rows, "target": target,
               # runs: the sum of every run's own wall time, also those of an earlier, resumed session
               "seconds": {"data": round(data_s, 1), "runs": round(runs_s, 1), "look": round(look_s, 1),
                           "total": round(data_s + runs_s + look_s, 1)},
               "pictures": [p.name for p in pictures]}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results) + "\n")
    say(f"study: wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(p.name for p in pictures)}")
    return results


def results_markdown(results: dict) -> str:
    size, target, threads = results["settings"], results["target"], results["machine"]["torch_threads"]
    minutes = results["seconds"]["runs"] / 60
    return "\n".join([
        f"`{results['command']}` on {results['machine_text']} ({threads} torch thread{'s' * (threads > 1)}): "
        f"{minutes:.0f} min of runs, their wall times summed; {len(results['rows'])} cells x {size['seeds']} seeds; "
        f"{size['pretrain_steps']} pre-training and {size['finetune_steps']} fine-tuning steps per run. Test top-1 "
        f"on {4 * size['test_per_class']} held-out clips of new shapes, textures and backgrounds; chance "
        f"{results['chance_top1']}%.", "",
        markdown_table(results["rows"]), "",
        f"Pre-training loss of the first tube 0.9 model on the masked cubes of each kind "
        f"({target['test']['predicting_the_mean']} is what predicting each cube's own mean scores: (P - 1) / P, "
        f"P = {target['test']['cube_pixels']} pixels a channel; "
        + "; ".join(f"{kind}: {text}" for kind, text in CUBE_KINDS.items()) + "):", "",
        "| clips | masked cubes | loss | " + " | ".join(f"{kind} cubes: share, loss" for kind in CUBE_KINDS) + " |",
        "| --- | ---: | ---: | " + " | ".join("---" for _ in CUBE_KINDS) + " |",
        *(f"| {report['clips']} {split} | {report['masked_cubes']} | {report['loss']} | " + " | ".join(
            f"{100 * report['kinds'][kind]['share']:.0f}%, {report['kinds'][kind]['loss']}" for kind in CUBE_KINDS)
          + " |" for split, report in target.items())])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train study", description="VideoMAE's data-efficiency claim in miniature: pre-training with tube "
        "masking then fine-tuning, against fine-tuning from scratch with the same steps, at two label fractions; "
        "masking ablations; a single-frame baseline; every cell with several seeds (train/study.py).")
    p.add_argument("--out", default="runs/study", help="study folder (default runs/study); run again to resume")
    p.add_argument("--quick", action="store_true", help="a tiny size that checks the plumbing in a few minutes")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 3)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch threads (default {DEFAULT_THREADS}: on a 2-core CPU a fine-tuning step of the study "
                        "takes about 76 ms with 2 threads, 98 ms with 1; 1 suits a machine that another process "
                        "shares)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import run_command
    from train.cli import expected_errors

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    for key in ("seeds", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise SystemExit(f"train study: --{key} must be 1 or more, got {getattr(args, key)}")

    def command() -> int:
        run_study(Path(args.out), "quick" if args.quick else "default", args.seeds, args.threads,
                  lambda text: print(text, flush=True))
        return 0

    return run_command("train study", command, args.debug, lambda: (*expected_errors(), StudyError))
