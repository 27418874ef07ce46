"""`train study --out DIR [--quick]`: the whole study (train/study/__init__.py says what it holds)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import train as trainer
from train.study.cells import DEFAULT_THREADS, MASKS, SIZES, pretrain_name
from train.study.data import StudyError, make_data
from train.study.report import plot_fractions, plot_masks, plot_pretrain_losses, results_markdown, table_rows
from train.study.runner import run_all
from train.study.target import look_at_clips


def run_study(out: Path, size_name: str, seeds: int | None, threads: int, say) -> dict:
    """The whole study into `out`; returns what results.json holds."""
    import torch

    from shard_tools.synthetic import PRESETS

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
               "size": size_name, "settings": size, "machine": trainer.machine(), "machine_text": trainer.describe(),
               "chance_top1": round(100 * chance, 1), "rows": rows, "target": target,
               # runs: the sum of every run's own wall time, also those an earlier `train study` of this folder ran
               "seconds": {"data": round(data_s, 1), "runs": round(runs_s, 1), "look": round(look_s, 1),
                           "total": round(data_s + runs_s + look_s, 1)},
               "pictures": [p.name for p in pictures]}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results) + "\n")
    say(f"study: wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(p.name for p in pictures)}")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train study", description="VideoMAE's data-efficiency claim in miniature: pre-training with tube "
        "masking then fine-tuning, against fine-tuning from scratch with the same steps, at two label fractions; "
        "masking ablations; a single-frame baseline; every cell with several seeds (train/study/).")
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

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    for key in ("seeds", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise SystemExit(f"train study: --{key} must be 1 or more, got {getattr(args, key)}")

    def command() -> int:
        run_study(Path(args.out), "quick" if args.quick else "default", args.seeds, args.threads,
                  lambda text: print(text, flush=True))
        return 0

    return run_command("train study", command, args.debug, lambda: (*trainer.expected_errors(), StudyError))
