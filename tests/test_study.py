"""`train study --quick`: the data, every cell's runs, the table (markdown and JSON) and the pictures are written;
a second call resumes (nothing runs again). The figures of the quick size mean nothing and are not checked."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from shard_tools import cli as shard_cli
from shard_tools.synthetic import PRESETS, make_collection
from train import cli
from train.study import SIZES, study_cells

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
    assert ("single-frame", 1.0, None, None) in starts
    for row in results["rows"]:
        assert row["seeds"] == [0, 1, 2] and len(row["top1"]) == 3
        assert row["mean"] == pytest.approx(np.mean(row["top1"]), abs=0.06)
        assert row["std"] is not None and row["min"] <= row["mean"] <= row["max"]
        assert row["finetune_steps"] >= 1
    assert results["seconds"]["total"] > 0 and results["machine_text"]
    assert set(results["target"]) >= {"loss", "flat_cubes", "structured_cubes", "predicting_the_mean"}

    table = (study / "results.md").read_text()
    assert results["command"] in table
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(lines) == 1 + len(cells)  # the header, then a row per cell


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
