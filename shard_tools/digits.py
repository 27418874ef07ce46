"""Moving handwritten digits: a labelled video collection made from scikit-learn's bundled digits.

scikit-learn ships 1,797 handwritten digits of 8 x 8 pixels, written by 43 people (`sklearn.datasets.load_digits`;
no download). Each digit *instance* (one of those images) is split once, per class and seeded, into `train`
(70%), `val` (10%) or `test` (20%), so that no image is seen in two splits. Each instance gives `clips_per_digit`
clips, each with a fresh motion: the digit, upsampled to `digit_size` pixels (bilinear, white on black), moves at
1 to 2.5 pixels a frame in one of 8 directions from a random start and bounces off the borders of the frame, never
leaving it.

The label is the digit (10 classes), or, with `label="direction"`, the direction of the motion (8 classes); then
the start is drawn so that the digit reaches no border during the clip, so the direction holds throughout.

The clips are written as `root/<split>/<label>/digit-<instance>-<k>.<ext>`, and `root/clips.csv` lists them, one
row per clip: path, label, split (the columns `shard-videos` reads from a list), then instance (the index in
`load_digits`), digit, direction, speed (pixels a frame), x, y (the digit box's top-left corner in the first
frame, pixels; y grows downwards). Shard them with `shard-videos root/clips.csv OUT`: the splits come from the
list, so they stay instance-disjoint.
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shard_tools.encode import CODECS, VideoWriter

DIRECTIONS = ("right", "up_right", "up", "up_left", "left", "down_left", "down", "down_right")  # 45 degrees apart,
# counter-clockwise from 'right'
SPEEDS = (1.0, 2.5)  # pixels a frame, drawn uniformly
SPLITS = (("test", 0.2), ("val", 0.1))  # of each digit class's instances; the rest is train
LABELS = ("digit", "direction")
LISTING = "clips.csv"
INSTALL_HINT = "pip install 'tubemae[digits]'"


@dataclass(frozen=True)
class DigitClip:
    """One row of clips.csv."""
    path: str  # relative to the collection's root
    label: str  # the digit, or the direction
    split: str
    instance: int  # index in sklearn.datasets.load_digits()
    digit: int
    direction: str
    speed: float  # pixels a frame
    x: float  # top-left corner of the digit box in the first frame, pixels
    y: float


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float32 images in [0, 1] and their (1797,) int digits."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError(f"the digits collection is drawn from scikit-learn's bundled handwritten digits, and "
                          f"scikit-learn is not installed: {INSTALL_HINT}") from None
    digits = sklearn_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(int)


def split_instances(targets: np.ndarray, seed: int = 0) -> dict[str, list[int]]:
    """Instance indices by split: per digit class a seeded shuffle, the first 20% test, the next 10% val."""
    splits = {"train": [], "val": [], "test": []}
    for digit in np.unique(targets):
        members = np.flatnonzero(targets == digit)
        np.random.default_rng([seed, int(digit)]).shuffle(members)
        start = 0
        for split, fraction in SPLITS:
            count = round(fraction * len(members))
            splits[split] += members[start:start + count].tolist()
            start += count
        splits["train"] += members[start:].tolist()
    return {split: sorted(members) for split, members in splits.items()}


def bounce(start: float, velocity: float, steps: np.ndarray, span: float) -> np.ndarray:
    """Positions in [0, span] of a point moving at `velocity` from `start`, reflected at 0 and span."""
    if span <= 0:
        return np.zeros(len(steps))
    folded = (start + velocity * steps) % (2 * span)
    return span - np.abs(folded - span)


def render(image: np.ndarray, x: float, y: float, size: int, digit_size: int) -> np.ndarray:
    """(size, size) float32 frame: `image` (h, w, in [0, 1]) scaled to digit_size pixels with its top-left corner at
    (x, y), bilinear (which also places it between pixels), black around it."""
    padded = np.pad(image, 1)  # a black border: samples past the digit's edge fade to black
    scale = image.shape[0] / digit_size

    def coordinates(corner: float, limit: int):
        u = np.clip((np.arange(size) + 0.5 - corner) * scale + 0.5, 0, limit - 1)  # in padded pixel units
        low = np.minimum(np.floor(u).astype(int), limit - 2)
        return low, (u - low).astype(np.float32)

    rows, fy = coordinates(y, padded.shape[0])
    cols, fx = coordinates(x, padded.shape[1])
    top = padded[rows][:, cols] * (1 - fx) + padded[rows][:, cols + 1] * fx
    bottom = padded[rows + 1][:, cols] * (1 - fx) + padded[rows + 1][:, cols + 1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def draw_motion(rng: np.random.Generator, num_frames: int, span: float, keep_off_borders: bool):
    """(direction index, speed, x, y) of one clip's motion."""
    direction = int(rng.integers(len(DIRECTIONS)))
    speed = float(rng.uniform(*SPEEDS))
    radians = np.deg2rad(45 * direction)
    velocity = speed * np.array([np.cos(radians), -np.sin(radians)])  # (x, y) pixels a frame, y downwards
    start = []
    for v in velocity:
        travel = abs(v) * (num_frames - 1) if keep_off_borders else 0.0
        position = rng.uniform(0, span - travel)
        start.append(float(position + travel if v < 0 else position))  # moving towards 0: start far enough
    return direction, speed, start[0], start[1]


def positions(clip: DigitClip, num_frames: int, span: float) -> np.ndarray:
    """(num_frames, 2) top-left corners (x, y) of the digit box in each frame of `clip`."""
    radians = np.deg2rad(45 * DIRECTIONS.index(clip.direction))
    velocity = clip.speed * np.array([np.cos(radians), -np.sin(radians)])
    steps = np.arange(num_frames)
    return np.stack([bounce(clip.x, velocity[0], steps, span), bounce(clip.y, velocity[1], steps, span)], axis=1)


def make_digits(root, clips_per_digit: int = 2, num_frames: int = 16, size: int = 32, digit_size: int = 16,
                label: str = "digit", fps: int = 25, codec: str = "vp9", seed: int = 0,
                instances: int | None = None, workers: int = 0, progress=None,
                dataset: tuple[np.ndarray, np.ndarray] | None = None) -> list[DigitClip]:
    """Write the clips and `root/clips.csv`; returns the rows of clips.csv (split by split, then by instance).

    `instances`: use only this many digit images (a seeded choice; None = all 1,797), for tests and quick runs.
    Clip k of instance i depends only on (seed, i, k). `workers` processes encode the clips (0: this process);
    `progress(done, total)` is called after each clip.
    `dataset`: what `load_digits()` returns, when the caller has it already.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    if size % 2 or not 8 <= digit_size <= size:
        raise ValueError(f"size must be even and at least the digit size ({digit_size} pixels), got {size}")
    if clips_per_digit < 1 or num_frames < 1:
        raise ValueError(f"clips_per_digit and num_frames must be positive, got {clips_per_digit}, {num_frames}")
    span = size - digit_size  # the top-left corner moves in [0, span] on each axis
    if label == "direction" and SPEEDS[1] * (num_frames - 1) > span:
        most = int(span // SPEEDS[1]) + 1
        raise ValueError(f"with the direction as the label the digit must reach no border during a clip: at "
                         f"{size}x{size} with {digit_size}-pixel digits at up to {SPEEDS[1]} pixels a frame that is "
                         f"at most {most} frames, got {num_frames}; use fewer frames or a larger frame size")
    images, targets = dataset if dataset is not None else load_digits()
    chosen = np.arange(len(images))
    if instances is not None:
        if not 10 <= instances <= len(images):
            raise ValueError(f"instances must be 10..{len(images)} (the digits scikit-learn ships), got {instances}")
        chosen = np.sort(np.random.default_rng([seed, 1]).choice(len(images), instances, replace=False))
    by_split = split_instances(targets[chosen], seed)
    root = Path(root)
    rows, jobs = [], []
    for split, members in by_split.items():
        for instance in chosen[members]:
            digit = int(targets[instance])
            for k in range(clips_per_digit):
                rng = np.random.default_rng([seed, int(instance), k])
                direction, speed, x, y = draw_motion(rng, num_frames, span, keep_off_borders=label == "direction")
                name = str(digit) if label == "digit" else DIRECTIONS[direction]
                path = Path(split) / name / f"digit-{instance:04d}-{k}.{CODECS[codec].extension}"
                clip = DigitClip(path.as_posix(), name, split, int(instance), digit, DIRECTIONS[direction],
                                 round(speed, 4), round(x, 4), round(y, 4))
                rows.append(clip)
                jobs.append((root / path, images[instance], positions(clip, num_frames, span), size, digit_size, fps,
                             codec))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers else \
            contextlib.nullcontext() as pool:
        written = pool.map(write_clip, *zip(*jobs), chunksize=32) if pool else (write_clip(*job) for job in jobs)
        for done, _ in enumerate(written, 1):
            if progress:
                progress(done, len(jobs))
    with open(root / LISTING, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(DigitClip.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    return rows


def write_clip(path: Path, image: np.ndarray, corners: np.ndarray, size: int, digit_size: int, fps: int,
               codec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # VP9 lossless: the black background stays exactly 0 (at crf 28 it flickered with coding noise, which a masked
    # cube's per-cube normalised target turns into pixels no model can predict) and the files are smaller
    with VideoWriter(path, codec, size, size, fps, gop=min(32, len(corners)), lossless=codec == "vp9") as writer:
        for x, y in corners:
            grey = np.round(255 * render(image, x, y, size, digit_size)).astype(np.uint8)
            writer.write(np.repeat(grey[:, :, None], 3, axis=2))


def read_listing(root) -> list[DigitClip]:
    """The rows of root/clips.csv."""
    with open(Path(root) / LISTING, newline="") as f:
        return [DigitClip(r["path"], r["label"], r["split"], int(r["instance"]), int(r["digit"]), r["direction"],
                          float(r["speed"]), float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
