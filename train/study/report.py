"""The study's results: the table, the gains paired by seed, the fine-tuning curves (markdown and results.json) and
the plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import train as trainer
from train.study.cells import ABLATION_FRACTION, MAIN_MASK, STARTS, pretrain_masks, pretrain_name, study_cells
from train.study.data import finetune_shards, train_clips


def spread(values: list[float]) -> dict:
    """Mean, standard deviation (n - 1; None for one value), min and max, rounded to 0.1."""
    return {"mean": round(float(np.mean(values)), 1),
            "std": round(float(np.std(values, ddof=1)), 1) if len(values) > 1 else None,
            "min": round(min(values), 1), "max": round(max(values), 1)}


def table_rows(out: Path, size: dict, found: dict) -> list[dict]:
    """One row per cell: test top-1 (%) of each seed and their spread."""
    rows = []
    for cell in study_cells(size["fractions"]):
        seeds = list(size["seeds"])
        values = [100 * found[f"{cell.name}-s{s}"]["test"]["top1"] for s in seeds]
        rows.append({"cell": cell.name, "label": cell.label, "start": cell.start, "fraction": cell.fraction,
                     "train_clips": train_clips(finetune_shards(out, cell.label, cell.fraction, seeds[0])),
                     "mask": list(cell.mask) if cell.mask else None,
                     "finetune_steps": found[f"{cell.name}-s{seeds[0]}"]["steps"], "seeds": seeds,
                     "top1": [round(v, 1) for v in values], **spread(values)})
    return rows


def paired_gains(rows: list[dict]) -> list[dict]:
    """Per label fraction (and the motion-only task): pre-trained minus the untrained control, the untrained control
    minus scratch, and pre-trained minus scratch, in top-1 points, seed by seed, with their spread."""
    gains = []
    for label, fraction in sorted({(r["label"], r["fraction"]) for r in rows}, key=lambda k: (k[0] != "digit", k[1])):
        by_start = {r["start"]: r for r in rows if (r["label"], r["fraction"]) == (label, fraction)
                    and r["mask"] in (None, list(MAIN_MASK))}
        for name, (a, b) in (("pretraining", ("pretrained", "untrained")),
                             ("starting_weights", ("untrained", "scratch")), ("total", ("pretrained", "scratch"))):
            per_seed = [round(x - y, 1) for x, y in zip(by_start[a]["top1"], by_start[b]["top1"])]
            gains.append({"label": label, "fraction": fraction, "gain": name, "of": a, "over": b,
                          "per_seed": per_seed, **spread(per_seed)})
    return gains


def curves(out: Path, size: dict) -> list[dict]:
    """The validation top-1 of every main fine-tuning run (digit labels, tube 0.9) against its step, and where it
    stood at the end against its best: a run whose last validation is within a point or two of its best had
    stopped rising."""
    found = []
    for cell in study_cells(size["fractions"]):
        if cell.label != "digit" or cell.mask not in (None, MAIN_MASK):
            continue
        for seed in size["seeds"]:
            records = [r for r in trainer.read_metrics(out / "runs" / f"{cell.name}-s{seed}" / "metrics.jsonl")
                       if "val_top1" in r]
            if records:
                top1 = [round(100 * r["val_top1"], 1) for r in records]
                found.append({"cell": cell.name, "start": cell.start, "fraction": cell.fraction, "seed": seed,
                              "steps": [r["step"] for r in records], "val_top1": top1, "best": max(top1),
                              "last": top1[-1]})
    return found


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | start | pre-training mask | labels (training clips) | steps | test top-1 % mean | std | "
             "min - max | per seed |", "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        mask = f"{r['mask'][0]} {r['mask'][1]}" if r["mask"] else "-"
        std = "-" if r["std"] is None else f"{r['std']:.1f}"
        lines.append(f"| {r['label']} | {r['start']} | {mask} | {100 * r['fraction']:g}% ({r['train_clips']}) | "
                     f"{r['finetune_steps']} | {r['mean']:.1f} | {std} | {r['min']:.1f} - {r['max']:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in r['top1'])} |")
    return "\n".join(lines)


def markdown_gains(gains: list[dict]) -> str:
    names = {"pretraining": "pre-training (pre-trained - untrained control)",
             "starting_weights": "starting weights (untrained control - scratch)",
             "total": "total (pre-trained - scratch)"}
    lines = ["| task | labels | gain | mean | std | min - max | per seed |",
             "| --- | --- | --- | ---: | ---: | --- | --- |"]
    for g in gains:
        std = "-" if g["std"] is None else f"{g['std']:.1f}"
        lines.append(f"| {g['label']} | {100 * g['fraction']:g}% | {names[g['gain']]} | {g['mean']:+.1f} | {std} | "
                     f"{g['min']:+.1f} - {g['max']:+.1f} | {', '.join(f'{v:+.1f}' for v in g['per_seed'])} |")
    return "\n".join(lines)


def figure():
    return trainer.figure(5.5, 3.8, dpi=110)


def plot_fractions(path: Path, rows: list[dict], chance: float) -> Path:
    """Test top-1 against the label fraction for each start (digit labels, tube 0.9); every seed as a dot."""
    fig, ax = figure()
    for start, (colour, label) in STARTS.items():
        mine = sorted((r for r in rows if r["label"] == "digit" and r["start"] == start
                       and r["mask"] in (None, list(MAIN_MASK))), key=lambda r: r["fraction"])
        ax.errorbar([100 * r["fraction"] for r in mine], [r["mean"] for r in mine],
                    yerr=[r["std"] or 0 for r in mine], color=colour, marker="o", capsize=4, label=label)
        for r in mine:
            ax.scatter([100 * r["fraction"]] * len(r["top1"]), r["top1"], color=colour, s=10, alpha=0.5)
    ax.axhline(100 * chance, color="black", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.minorticks_off()
    percents = sorted({100 * r["fraction"] for r in rows})
    ax.set_xticks(percents, [f"{p:g}%" for p in percents])
    ax.set_xlim(min(percents) / 1.5, max(percents) * 1.5)
    ax.set_xlabel("labelled training digits")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("digits never seen in training: fine-tuned from three starts", fontsize=10)
    return trainer.save_figure(fig, path)


def plot_curves(path: Path, found: list[dict]) -> Path:
    """Validation top-1 against the fine-tuning step, one panel per label fraction, one line per run."""
    fractions = sorted({c["fraction"] for c in found})
    fig, axes = trainer.figure(4.2 * len(fractions), 3.6, dpi=100, panels=len(fractions))
    for ax, fraction in zip(np.atleast_1d(axes), fractions):
        for c in (c for c in found if c["fraction"] == fraction):
            colour, label = STARTS[c["start"]]
            ax.plot(c["steps"], c["val_top1"], color=colour, linewidth=1, marker=".",
                    label=label.split(" (")[0] if c["seed"] == found[0]["seed"] else None)
        ax.set_title(f"{100 * fraction:g}% of the labels", fontsize=10)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylim(0, 100)
    np.atleast_1d(axes)[0].set_ylabel("validation top-1 (%)")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower right")
    return trainer.save_figure(fig, path)


def plot_pretrain_losses(path: Path, runs: Path, seeds: tuple[int, ...]) -> Path:
    """The pre-training loss of every pre-training run: one colour per mask, one line per seed."""
    fig, ax = figure()
    for mask, colour in zip(pretrain_masks(), ("tab:blue", "tab:cyan", "tab:green")):
        for seed in seeds:
            records = [r for r in trainer.read_metrics(runs / pretrain_name(mask, seed) / "metrics.jsonl")
                       if "loss" in r]
            if records:
                ax.plot([r["step"] for r in records], [r["loss"] for r in records], color=colour, linewidth=1,
                        alpha=0.8, marker="." if len(records) < 3 else None,
                        label=f"{mask[0]} {mask[1]}" if seed == seeds[0] else None)
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("loss (normalised-pixel MSE of masked cubes)")
    ax.legend(fontsize=8)
    ax.set_title("pre-training loss", fontsize=10)
    return trainer.save_figure(fig, path)


def results_markdown(results: dict) -> str:
    size, target = results["settings"], results["target"]
    return "\n".join([
        f"`{results['command']}` on {results['machine_text']} ({results['jobs']} runs at a time, "
        f"{results['threads']} torch thread(s) each): {results['seconds']['total'] / 60:.0f} min; "
        f"{len(results['rows'])} cells x {len(size['seeds'])} seeds (seeds {', '.join(map(str, size['seeds']))}); "
        f"{size['pretrain_steps']} pre-training steps. Test top-1 on {results['test_clips']} clips of digit images "
        f"no training or validation clip shows; chance {results['chance_top1']}%.", "",
        markdown_table(results["rows"]), "",
        "Gains in top-1 points, paired by seed (same labelled digits, same seed):", "",
        markdown_gains(results["gains"]), "",
        f"Loss of the first tube 0.9 pre-trained model on masked cubes holding digit strokes (brightest pixel "
        f"{'>='} {results['stroke_level']} grey levels), against the {target['test']['predicting_the_mean']} that "
        f"predicting each cube's own mean scores:", "",
        "| clips | masked cubes | stroke cubes | stroke-cube loss | below the floor | empty-cube loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {t['clips']} {split} | {t['masked_cubes']} | {100 * t['stroke_share']:.0f}% | {t['stroke_loss']} | "
          f"{100 * t['stroke_below_floor']:.0f}% | {t['empty_loss']} |" for split, t in target.items())])
