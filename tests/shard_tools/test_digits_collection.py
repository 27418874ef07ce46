"""The digits collection: moving handwritten digits as real encoded clips, split by digit image, each clip's digit
image and motion listed in clips.csv, sharded with the generator's splits."""

import csv
import json
import sys
import tarfile
from collections import Counter

import av
import numpy as np
import pytest

from shard_tools import cli
from shard_tools.digits import (DIRECTIONS, LISTING, load_digits, make_digits, read_listing, render,
                                 split_instances)

SIZE, DIGIT = 32, 16  # the defaults: frame and digit size, pixels
SPAN = SIZE - DIGIT  # the digit box's corner moves in [0, SPAN]


def decode(path) -> np.ndarray:
    """(T, H, W) grey frames, float32."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)]).astype(np.float32)


def centroids(frames: np.ndarray) -> np.ndarray:
    """(T, 2) intensity-weighted centre (x, y) of each frame."""
    y, x = np.mgrid[:frames.shape[1], :frames.shape[2]]
    mass = frames.sum(axis=(1, 2))
    return np.stack([(frames * x).sum(axis=(1, 2)) / mass, (frames * y).sum(axis=(1, 2)) / mass], axis=1)


def simulated_path(clip, num_frames: int) -> tuple[np.ndarray, int]:
    """(T, 2) corners of a point moving from (clip.x, clip.y) at clip.speed in clip.direction, stepped frame by
    frame and reflected at 0 and SPAN (written apart from the generator's closed form), and how many bounces."""
    angle = np.deg2rad(45 * DIRECTIONS.index(clip.direction))
    position = np.array([clip.x, clip.y])
    velocity = clip.speed * np.array([np.cos(angle), -np.sin(angle)])
    path, bounces = [position.copy()], 0
    for _ in range(num_frames - 1):
        position = position + velocity
        for axis in range(2):
            if position[axis] < 0 or position[axis] > SPAN:
                position[axis] = -position[axis] if position[axis] < 0 else 2 * SPAN - position[axis]
                velocity[axis] = -velocity[axis]
                bounces += 1
        path.append(position.copy())
    return np.array(path), bounces


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return root, make_digits(root, clips_per_digit=2, num_frames=16, instances=40, seed=0)


def test_clips_are_encoded_videos_listed_with_their_split_digit_image_and_motion(digits):
    root, rows = digits
    assert rows == read_listing(root)  # clips.csv holds what was written
    with open(root / LISTING, newline="") as f:
        assert next(csv.reader(f))[:3] == ["path", "label", "split"]  # the columns shard-videos reads
    images, targets = load_digits()
    assert len(rows) == 80 and {r.label for r in rows} <= {str(d) for d in range(10)}
    for row in rows:
        assert row.label == str(row.digit) == str(targets[row.instance])
        assert row.path.startswith(f"{row.split}/{row.label}/digit-{row.instance:04d}-") and row.path.endswith(".webm")
        with av.open(str(root / row.path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.width, stream.height) == ("vp9", SIZE, SIZE)
        frames = decode(root / row.path)
        assert len(frames) == 16
        # the first frame shows that digit image at the recorded corner: its 16 x 16 box (a pixel wider for the
        # interpolation between pixels) holds nearly all the ink; that box, shrunk back to 8 x 8, correlates with the
        # image, and the nearest of all 1,797 images is one of the same digit
        x, y = int(row.x), int(row.y)
        ink = np.where(frames[0] > 8, frames[0], 0)  # the codec leaves a grey level or two on the black
        assert ink[y:y + DIGIT + 1, x:x + DIGIT + 1].sum() > 0.97 * ink.sum()
        box = frames[0][round(row.y):round(row.y) + DIGIT, round(row.x):round(row.x) + DIGIT]
        small = box.reshape(8, 2, 8, 2).mean(axis=(1, 3))
        assert np.corrcoef(small.ravel(), images[row.instance].ravel())[0, 1] > 0.85, row
        assert targets[np.argmin(((images * 255 - small) ** 2).sum(axis=(1, 2)))] == row.digit, row
    # each digit image gives 2 clips with motions of their own
    by_instance = Counter(r.instance for r in rows)
    assert set(by_instance.values()) == {2}
    pairs = {}
    for row in rows:
        pairs.setdefault(row.instance, []).append((row.direction, row.speed, row.x, row.y))
    assert all(a != b for a, b in pairs.values())


def test_splits_are_disjoint_by_digit_image_and_seeded():
    _, targets = load_digits()
    splits = split_instances(targets, seed=0)
    sets = {name: set(members) for name, members in splits.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sets["train"] | sets["val"] | sets["test"] == set(range(len(targets)))
    for digit in range(10):  # per class: 20% test, 10% val, the rest train
        count = (targets == digit).sum()
        assert (targets[splits["test"]] == digit).sum() == round(0.2 * count)
        assert (targets[splits["val"]] == digit).sum() == round(0.1 * count)
    assert split_instances(targets, seed=0) == splits
    assert split_instances(targets, seed=1)["test"] != splits["test"]


def test_shards_keep_the_generator_splits_and_each_clip_json_names_its_listed_clip(digits, tmp_path):
    root, rows = digits
    out = tmp_path / "shards"
    assert cli.main([str(root / LISTING), str(out), "--codec", "copy", "--workers", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [str(d) for d in range(10)]
    listed = {r.path: r for r in rows}
    seen = set()
    for shard in sorted(out.glob("*.tar")):
        split = shard.name.split("-")[0]
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    row = listed[meta["source"]]  # the .json names the clip; clips.csv has its image and motion
                    assert (split, meta["label"], meta["label_index"]) == (row.split, row.label, row.digit)
                    # the .json also holds the clip's digit image and motion, as clips.csv lists them
                    assert (int(meta["instance"]), meta["direction"], float(meta["speed"])) == \
                        (row.instance, row.direction, row.speed)
                    seen.add(meta["source"])
    assert seen == set(listed)
    instances = {split: {r.instance for r in rows if r.split == split} for split in ("train", "val", "test")}
    assert all(instances.values())
    assert not (instances["train"] & instances["test"] or instances["train"] & instances["val"]
                or instances["val"] & instances["test"])


def test_clips_are_lossless_so_the_background_stays_exactly_black(digits):
    root, rows = digits  # VP9 lossless: no coding noise around the digit for the per-cube target to chase
    images, _ = load_digits()
    for row in rows[:4]:
        frames = decode(root / row.path)
        drawn = np.stack([np.round(255 * render(images[row.instance], x, y, SIZE, DIGIT))
                          for x, y in simulated_path(row, len(frames))[0]])
        assert np.abs(frames - drawn).max() <= 1  # the grey conversion's rounding (crf 28 was off by up to ~20)
        assert (frames[drawn == 0] == 0).all()


def test_the_digit_moves_as_recorded_and_bounces_off_the_borders_inside_the_frame(digits):
    root, rows = digits
    bounced = 0
    for row in rows:
        frames = decode(root / row.path)
        mass = frames.sum(axis=(1, 2))
        assert mass.min() > 0.9 * mass.max(), row  # no part of the digit leaves the frame
        path, bounces = simulated_path(row, len(frames))
        assert ((path >= 0) & (path <= SPAN)).all()
        moved = centroids(frames) - centroids(frames)[:1]  # the ink moves with the digit box
        assert np.abs(moved - (path - path[:1])).max() < 0.6, (row, moved, path)
        bounced += bounces > 0
    assert bounced > len(rows) // 2  # 16 frames at 1 to 2.5 pixels a frame over a span of 16: most clips bounce


def test_direction_labels_keep_the_motion_off_the_borders(tmp_path):
    rows = make_digits(tmp_path, clips_per_digit=3, num_frames=7, label="direction", instances=20, seed=2)
    assert {r.label for r in rows} <= set(DIRECTIONS) and all(r.label == r.direction for r in rows)
    assert len({r.label for r in rows}) >= 6  # 60 clips over 8 directions
    for row in rows:
        assert row.path.startswith(f"{row.split}/{row.direction}/")
        path, bounces = simulated_path(row, 7)
        assert bounces == 0, row
        steps = np.diff(centroids(decode(tmp_path / row.path)), axis=0)  # (6, 2) pixels a frame, (x, y)
        angle = np.deg2rad(45 * DIRECTIONS.index(row.direction))
        expected = row.speed * np.array([np.cos(angle), -np.sin(angle)])
        assert np.abs(steps - expected).max() < 0.6, (row, steps)
    with pytest.raises(ValueError, match="at most 7 frames"):
        make_digits(tmp_path / "long", num_frames=8, label="direction", instances=10)


def test_cli_writes_the_digits_and_says_how_to_shard_them(tmp_path, capsys):
    out = tmp_path / "digits"
    assert cli.main(["synth", str(out), "--preset", "digits", "--digits", "30", "--clips-per-digit", "1",
                     "--frames", "4"]) == 0
    err = capsys.readouterr().err
    rows = read_listing(out)
    assert len(rows) == 30 and all(len(decode(out / r.path)) == 4 for r in rows)
    assert "wrote 30 vp9 clips" in err and f"shard-videos {out / LISTING} SHARDS" in " ".join(err.split())
    assert cli.main(["synth", str(tmp_path / "x"), "--preset", "digits", "--classes", "3"]) == 2
    assert "--classes: not for --preset digits" in capsys.readouterr().err
    assert cli.main(["synth", str(tmp_path / "y"), "--label", "direction"]) == 2
    assert "--label: only for --preset digits" in capsys.readouterr().err


def test_without_scikit_learn_the_digits_preset_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `from sklearn.datasets import ...` fails
    assert cli.main(["synth", str(tmp_path / "digits"), "--preset", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shard-videos: ") and "\n" not in err and "Traceback" not in err
    assert "scikit-learn is not installed: pip install 'tubemae[digits]'" in err
    assert not (tmp_path / "digits" / LISTING).exists()
