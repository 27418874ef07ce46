"""The study's data: the `study` synthetic collection (shard_tools/synthetic.py PRESETS) written once, and sharded
once per label fraction (DIR/shards/fraction-<pct>/) and as single frames held still (DIR/shards/still/)."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

from train.study.cells import fraction_name


class StudyError(RuntimeError):
    """A step of the study failed; the message names its folder and log."""


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
        shard(videos, out / "shards" / f"fraction-{fraction_name(fraction)}", "train", "test", fraction,
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


def train_clips(shards: Path) -> int:
    return json.loads((shards / "manifest.json").read_text())["splits"]["train"]["clips"]
