"""The study's data: the moving digits (shard_tools/digits.py) written twice, labelled by digit and by direction
(DIR/videos/digit/, DIR/videos/direction/; the same digit images in the same splits), every clip sharded once for
pre-training (DIR/shards/digit-all/), and per seed and label fraction the chosen training clips with every
validation and test clip (listed in DIR/videos/<label>/chosen-<pct>-s<seed>.csv, sharded into
DIR/shards/<label>-<pct>-s<seed>/)."""

from __future__ import annotations

import contextlib
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

from train.study.cells import ABLATION_FRACTION, fraction_name

DIRECTION_FRAMES = 6  # direction clips are short, so that the digit reaches no border and keeps its direction


class StudyError(RuntimeError):
    """A step of the study failed; the message names its folder and log."""


def make_data(out: Path, size: dict, say) -> None:
    """The collections and their shard folders under `out`; each step is skipped when its output is complete."""
    from shard_tools.digits import load_digits, make_digits

    dataset = None
    for label, frames in (("digit", 16), ("direction", DIRECTION_FRAMES)):
        videos, done = out / "videos" / label, out / "videos" / f"{label}.done"
        if not done.is_file():
            say(f"study: writing the digit clips labelled by {label} to {videos}")
            dataset = dataset or load_digits()
            make_digits(videos, size["clips_per_digit"], frames, label=label, seed=0, instances=size["digits"],
                        workers=2, dataset=dataset)
            done.write_text("")
    shard(out / "videos" / "digit" / "clips.csv", out / "shards" / "digit-all", say)
    for seed in size["seeds"]:
        for label, fractions in (("digit", size["fractions"]), ("direction", (ABLATION_FRACTION,))):
            for fraction in fractions:
                # beside clips.csv, so that its relative paths hold
                listing = out / "videos" / label / f"chosen-{fraction_name(fraction)}-s{seed}.csv"
                chosen = choose_labelled(out / "videos" / label / "clips.csv", fraction, seed)
                write_listing(listing, chosen)
                shard(listing, finetune_shards(out, label, fraction, seed), say)


def finetune_shards(out: Path, label: str, fraction: float, seed: int) -> Path:
    return out / "shards" / f"{label}-{fraction_name(fraction)}-s{seed}"


def choose_labelled(listing: Path, fraction: float, seed: int) -> list[dict]:
    """The rows of `listing` to fine-tune on: the training clips of a seeded `fraction` of each digit's training
    images (at least one image a digit; every clip of a chosen image; the same choice for either labelling), and
    every validation and test clip. The choices of one seed are nested: 1% of the images is within 5%."""
    rows = list(csv.DictReader(listing.open()))
    images = defaultdict(set)
    for row in rows:
        if row["split"] == "train":
            images[row["digit"]].add(int(row["instance"]))
    chosen = set()
    for digit, members in sorted(images.items()):
        order = sorted(members)
        random.Random(f"{seed}:{digit}").shuffle(order)
        chosen |= set(order[:max(1, round(fraction * len(order)))])
    return [row for row in rows if row["split"] != "train" or int(row["instance"]) in chosen]


def write_listing(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def shard(listing: Path, target: Path, say) -> None:
    """`shard-videos LISTING TARGET --codec copy`."""
    from shard_tools import cli as shard_cli

    if (target / "manifest.json").is_file():
        return
    log = target.parent / f"{target.name}.log"
    say(f"study: sharding {listing} into {target} (log {log.name})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f, contextlib.redirect_stderr(f), contextlib.redirect_stdout(f):  # rich prints to stderr
        code = shard_cli.main([str(listing), str(target), "--codec", "copy", "--workers", "2", "--overwrite",
                               "--min-frames", str(DIRECTION_FRAMES)])
    if code:
        raise StudyError(f"shard-videos into {target} failed (exit {code}): the reason is in {log}")


def train_clips(shards: Path) -> int:
    return json.loads((shards / "manifest.json").read_text())["splits"]["train"]["clips"]
