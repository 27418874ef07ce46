"""`train study --out DIR [--quick] [--seeds 0,1,2] [--jobs 2] [--threads 1]`: the whole study
(train/study/__init__.py says what it holds)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import train as trainer
from train.study.cells import DEFAULT_JOBS, DEFAULT_THREADS, SIZES
from train.study.data import StudyError, make_data
from train.study.report import (curves, paired_gains, plot_curves, plot_fractions, plot_pretrain_losses,
                                results_markdown, table_rows)
from train.study.runner import first_pretraining, run_all
from train.study.target import STROKE_LEVEL, look_at_clips

PICTURES = ("accuracy-vs-labels.png", "finetune-curves.png", "pretrain-loss.png", "reconstruction.png")


def run_study(out: Path, size_name: str, seeds: tuple[int, ...] | None, jobs: int, threads: int, say) -> dict:
    """The whole study into `out`; returns what results.json holds."""
    size = dict(SIZES[size_name], **({"seeds": seeds} if seeds else {}))
    started = time.perf_counter()
    make_data(out, size, say)
    found = run_all(out, size, jobs, threads, say)
    rows = table_rows(out, size, found)
    fine_tuning = curves(out, size)
    say("study: where the first tube 0.9 pre-trained model's loss stands on training and test clips, and its "
        "reconstruction of test digits")
    first, shards = first_pretraining(out, size), out / "shards" / "digit-all"
    target = {"train": look_at_clips(shards, first, "train"),
              "test": look_at_clips(shards, first, "test", picture=out / PICTURES[3])}
    chance = 0.1  # ten digits
    plot_fractions(out / PICTURES[0], rows, chance)
    plot_curves(out / PICTURES[1], fine_tuning)
    plot_pretrain_losses(out / PICTURES[2], out / "runs", size["seeds"])
    options = (["--quick"] if size_name == "quick" else []) + \
        ([f"--seeds {','.join(map(str, seeds))}"] if seeds else []) + \
        ([f"--jobs {jobs}"] if jobs != DEFAULT_JOBS else []) + ([f"--threads {threads}"] if threads != DEFAULT_THREADS
                                                                  else [])
    results = {"command": " ".join(["train study", "--out", str(out), *options]), "size": size_name,
               "settings": {**size, "finetune_steps": {str(k): v for k, v in size["finetune_steps"].items()}},
               "jobs": jobs, "threads": threads, "machine": trainer.machine(), "machine_text": trainer.describe(),
               "chance_top1": round(100 * chance, 1), "test_clips": found[f"{rows[0]['cell']}-s{size['seeds'][0]}"]
               ["test"]["num_videos"], "rows": rows, "gains": paired_gains(rows), "curves": fine_tuning,
               "stroke_level": STROKE_LEVEL, "target": target,
               # runs: every run's own wall time summed (two run at a time); total: this command's wall time, which
               # is the study's when nothing was resumed
               "seconds": {"runs": round(sum(r["wall_s"] for r in found.values()), 1),
                           "total": round(time.perf_counter() - started, 1)},
               "pictures": list(PICTURES)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results) + "\n")
    say(f"study: wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(PICTURES)}")
    return results


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds takes distinct numbers 0 or more, got {text!r}")
    return seeds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train study", description="VideoMAE's data-efficiency claim in miniature, on moving handwritten "
        "digits: pre-training with tube masking, then fine-tuning on 1, 5 and 10%% of the labels, against the same "
        "fine-tuning from the untrained pre-training model and from scratch; masking ablations and a motion-only "
        "task at 5%%; every cell with each seed (train/study/).")
    p.add_argument("--out", default="runs/study", help="study folder (default runs/study); run again to resume")
    p.add_argument("--quick", action="store_true", help="a tiny size that checks the plumbing in a few minutes")
    p.add_argument("--seeds", type=seed_list, help="the seeds of every cell, e.g. 0,1,2 (the default)")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"runs at a time (default {DEFAULT_JOBS})")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch threads per run (default {DEFAULT_THREADS}: on a 2-core CPU, two runs of one thread "
                        "each do more steps a second than one run of two)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import run_command

    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    for key in ("jobs", "threads"):
        if getattr(args, key) < 1:
            raise SystemExit(f"train study: --{key} must be 1 or more, got {getattr(args, key)}")

    def command() -> int:
        run_study(Path(args.out), "quick" if args.quick else "default", args.seeds, args.jobs, args.threads,
                  lambda text: print(text, flush=True))
        return 0

    return run_command("train study", command, args.debug, lambda: (*trainer.expected_errors(), StudyError))
