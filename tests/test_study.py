"""`train study --quick`: the data, every cell's runs, the table (markdown and JSON) and the pictures are written;
a second call resumes (nothing runs again). The figures of the quick size mean nothing and are not checked."""

import json
import re

import av
import numpy as np
import pytest
from PIL import Image

from shard_tools import cli as shard_cli
from shard_tools.synthetic import PRESETS, make_collection
from train import cli
from train.study import CUBE_KINDS, SIZES, study_cells, target_report

PICTURES = ("accuracy-vs-fraction.png", "accuracy-vs-mask-ratio.png", "pretrain-loss.png", "reconstruction.png")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert cli.main(["study", "--out", str(out), "--quick"]) == 0
    return out


def test_the_table_has_one_row_per_cell_with_every_seed(study):
    results = json.loads((study / "results.json").read_text())
    size = SIZES["quick"]
    cells = study_cells(size["fractions"])
    assert [r["cell"] for r in results["rows"]] == [c.name for c in cells]
    starts = {(r["start"], r["fraction"], r["mask_type"], r["mask_ratio"]) for r in results["rows"]}
    low, high = min(size["fractions"]), max(size["fractions"])
    for fraction in (low, high):
        assert ("pretrained", fraction, "tube", 0.9) in starts and ("scratch", fraction, None, None) in starts
    for mask in (("random", 0.9), ("frame", 0.9), ("tube", 0.5), ("tube", 0.75)):
        assert ("pretrained", low, *mask) in starts
    assert ("untrained", low, None, None) in starts and ("single-frame", 1.0, None, None) in starts
    for row in results["rows"]:
        assert row["seeds"] == [0, 1, 2] and len(row["top1"]) == 3
        assert row["mean"] == pytest.approx(np.mean(row["top1"]), abs=0.06)
        assert row["std"] is not None and row["min"] <= row["mean"] <= row["max"]
        assert row["finetune_steps"] >= 1
    assert results["seconds"]["total"] > 0 and results["machine_text"]
    for split in ("train", "test"):
        report = results["target"][split]
        assert set(report) >= {"loss", "kinds", "predicting_the_mean"} and set(report["kinds"]) == set(CUBE_KINDS)
        assert sum(kind["share"] for kind in report["kinds"].values()) == pytest.approx(1.0, abs=0.002)

    table = (study / "results.md").read_text()
    assert results["command"] in table
    first = table.split("\n\n")[1]  # the results table; the target's table follows
    lines = [line for line in first.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(lines) == 1 + len(cells)  # the header, then a row per cell
    for split in ("train", "test"):  # the target's table: a row for each split
        assert re.search(rf"^\| {results['target'][split]['clips']} {split} \|", table, re.MULTILINE), split


def test_the_pictures_are_written(study):
    for name in PICTURES:
        with Image.open(study / name) as picture:
            assert picture.width > 200 and picture.height > 100, name


def test_a_second_call_resumes_without_running_again(study, capsys):
    summaries = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*/summary.json")}
    assert len(summaries) == 5 * 3 + len(study_cells(SIZES["quick"]["fractions"])) * 3
    assert cli.main(["study", "--out", str(study), "--quick"]) == 0
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    assert "writing" not in capsys.readouterr().out  # nor were the clips made again


def test_the_study_collection_holds_motion_apart_from_looks(tmp_path):
    preset = PRESETS["study"]
    for part in ("shapes", "textures", "backgrounds"):
        assert not set(getattr(preset.train, part)) & set(getattr(preset.test, part)), part
    moving = make_collection(tmp_path / "a", 1, 1, 12, (32, 32), motions=preset.motions, look=preset.train)
    still = make_collection(tmp_path / "b", 1, 1, 12, (32, 32), motions=preset.motions, look=preset.train,
                            still=True)
    frames = {}
    for name, path in (("moving", moving[0]), ("still", still[0])):
        with av.open(str(path)) as container:
            frames[name] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)
    assert np.abs(np.diff(frames["moving"], axis=0)).mean() > 1  # the object moves
    assert np.abs(np.diff(frames["still"], axis=0)).mean() < 1  # one frame, repeated (up to the codec)


def test_shard_videos_synth_writes_the_study_preset(tmp_path):
    out = tmp_path / "synth"
    assert shard_cli.main(["synth", str(out), "--preset", "study", "--held-out", "--still", "--clips-per-class", "1",
                           "--frames", "4", "--height", "32", "--width", "32"]) == 0
    assert sorted(p.parent.name for p in out.glob("*/*.webm")) == sorted(m.name for m in PRESETS["study"].motions)


def test_the_study_backgrounds_are_smooth_so_that_a_masked_cube_can_be_guessed_from_its_neighbours():
    from dataclasses import replace

    from shard_tools.synthetic import Look, draw_background

    def roughness(look):  # mean grey-level step between neighbouring pixels
        return np.mean([np.abs(np.diff(draw_background(np.random.default_rng(i), 64, 64, look).astype(int), axis=1))
                        .mean() for i in range(10)])

    preset = PRESETS["study"]
    for look in (preset.train, preset.test):
        for kind in look.backgrounds:
            assert roughness(replace(look, backgrounds=(kind,))) < 2.0, kind  # the noise alone gives about 1.1
    assert roughness(Look(backgrounds=("rings",))) > 4.0  # the first study look's rings and noise: about 6


def test_the_target_report_splits_masked_cubes_into_moving_flat_and_still():
    losses = np.array([0.2, 0.4, 1.0, 0.9, 0.5])
    spreads = np.array([10.0, 2.0, 1.0, 3.0, 20.0])  # grey levels
    changes = np.array([6.0, 5.0, 0.5, 1.0, 2.0])  # a moving cube may be flat or not; the rest are still
    report = target_report(losses, spreads, changes, clips=2, cube_pixels=128)
    assert report["kinds"]["moving"] == {"share": 0.4, "loss": pytest.approx(0.3)}
    assert report["kinds"]["flat"] == {"share": 0.4, "loss": pytest.approx(0.95)}
    assert report["kinds"]["still"] == {"share": 0.2, "loss": pytest.approx(0.5)}
    assert report["loss"] == pytest.approx(0.6) and report["predicting_the_mean"] == pytest.approx(127 / 128, abs=1e-4)
