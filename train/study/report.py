"""The study's results: the table (markdown and results.json rows) and the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import train as trainer
from train.study.cells import MASKS, STARTS, cell_shards, pretrain_name, study_cells
from train.study.data import train_clips
from train.study.target import CUBE_KINDS


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


def figure():
    return trainer.figure(5.5, 3.8, dpi=110)


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
    return trainer.save_figure(fig, path)


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
    return trainer.save_figure(fig, path)


def plot_pretrain_losses(path: Path, runs: Path, size: dict) -> Path:
    """The pre-training loss of every pre-training run: one colour per mask, one line per seed."""
    fig, ax = figure()
    colours = dict(zip(MASKS, ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:cyan")))
    for mask, colour in colours.items():
        for seed in range(size["seeds"]):
            records = [r for r in trainer.read_metrics(runs / pretrain_name(*mask, seed) / "metrics.jsonl")
                       if "loss" in r]
            if records:
                ax.plot([r["step"] for r in records], [r["loss"] for r in records], color=colour, linewidth=1,
                        alpha=0.8, marker="." if len(records) < 3 else None,
                        label=f"{mask[0]} {mask[1]}" if seed == 0 else None)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("loss (normalised-pixel MSE of masked cubes)")
    ax.legend(fontsize=8)
    ax.set_title("pre-training loss", fontsize=10)
    return trainer.save_figure(fig, path)


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
