"""`train study --quick`: the data, every cell's runs, the tables (markdown and JSON) and the pictures are written;
a second call resumes (nothing runs again). The figures of the quick size mean nothing and are not checked. Also the
pieces the figures rest on: the labelled subsets, the paired gains, the stroke-cube report."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from train import cli
from train.study import SIZES, study_cells, target_report
from train.study.cells import ABLATION_FRACTION, MAIN_MASK, pretrain_name
from train.study.cli import PICTURES, seed_list
from train.study.data import choose_labelled
from train.study.report import paired_gains
from train.study.runner import plan


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
    starts = {(r["label"], r["start"], r["fraction"], tuple(r["mask"] or ())) for r in results["rows"]}
    for fraction in size["fractions"]:
        assert {("digit", "pretrained", fraction, MAIN_MASK), ("digit", "untrained", fraction, ()),
                ("digit", "scratch", fraction, ())} <= starts
    for mask in (("tube", 0.75), ("random", 0.9)):
        assert ("digit", "pretrained", ABLATION_FRACTION, mask) in starts
    assert {("direction", s, ABLATION_FRACTION, m) for s, m in (("pretrained", MAIN_MASK), ("untrained", ()),
                                                                ("scratch", ()))} <= starts
    for row in results["rows"]:
        assert row["seeds"] == list(size["seeds"]) and len(row["top1"]) == len(size["seeds"])
        assert row["mean"] == pytest.approx(np.mean(row["top1"]), abs=0.06)
        assert row["std"] is not None and row["min"] <= row["mean"] <= row["max"]
        assert row["finetune_steps"] >= 1 and row["train_clips"] >= 10
    assert results["seconds"]["total"] > 0 and results["machine_text"] and results["test_clips"] > 0
    for split in ("train", "test"):
        report = results["target"][split]
        assert 0 < report["stroke_share"] < 1 and report["predicting_the_mean"] == pytest.approx(31 / 32, abs=1e-4)
    assert {c["start"] for c in results["curves"]} == {"pretrained", "untrained", "scratch"}
    assert all(c["steps"] and len(c["steps"]) == len(c["val_top1"]) for c in results["curves"])

    table = (study / "results.md").read_text()
    assert results["command"] in table
    first = table.split("\n\n")[1]  # the results table; the gains and the stroke-cube table follow
    lines = [line for line in first.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(lines) == 1 + len(cells)  # the header, then a row per cell
    for split in ("train", "test"):  # the stroke-cube table: a row for each split
        assert re.search(rf"^\| {results['target'][split]['clips']} {split} \|", table, re.MULTILINE), split


def test_gains_are_paired_by_seed(study):
    results = json.loads((study / "results.json").read_text())
    rows = {(r["label"], r["fraction"], r["start"]): r for r in results["rows"]
            if r["mask"] in (None, list(MAIN_MASK))}
    assert results["gains"] == paired_gains(results["rows"])
    for gain in results["gains"]:
        a, b = rows[(gain["label"], gain["fraction"], gain["of"])], rows[(gain["label"], gain["fraction"], gain["over"])]
        assert gain["per_seed"] == pytest.approx([x - y for x, y in zip(a["top1"], b["top1"])], abs=0.06)
    assert {(g["of"], g["over"]) for g in results["gains"]} == {("pretrained", "untrained"), ("untrained", "scratch"),
                                                               ("pretrained", "scratch")}


def test_the_pictures_are_written(study):
    for name in PICTURES:
        with Image.open(study / name) as picture:
            assert picture.width > 200 and picture.height > 100, name


def test_a_second_call_resumes_without_running_again(study, capsys):
    summaries = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*/summary.json")}
    assert len(summaries) == len(plan(study, SIZES["quick"]))
    assert cli.main(["study", "--out", str(study), "--quick"]) == 0
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    out = capsys.readouterr().out
    assert "writing" not in out and "sharding" not in out  # nor were the clips made or sharded again


def test_the_labelled_digits_are_seeded_nested_and_whole(tmp_path):
    listing = tmp_path / "clips.csv"
    rows = [{"path": f"{split}/{digit}/digit-{image:04d}-{k}.webm", "label": str(digit), "split": split,
             "instance": str(image), "digit": str(digit)}
            for digit in range(10) for image in range(100 * digit, 100 * digit + 40)
            for split in (("train",) if image % 10 < 8 else ("val",) if image % 10 == 8 else ("test",))
            for k in range(2)]
    with listing.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def chosen(fraction, seed):
        return [r for r in choose_labelled(listing, fraction, seed) if r["split"] == "train"]

    one, ten = chosen(0.01, 0), chosen(0.1, 0)
    assert len(one) == 10 * 1 * 2 and len(ten) == 10 * 3 * 2  # at least one image a digit; both clips of each
    assert {r["instance"] for r in one} <= {r["instance"] for r in ten}  # nested
    assert chosen(0.1, 0) == ten and {r["instance"] for r in chosen(0.1, 1)} != {r["instance"] for r in ten}
    kept = choose_labelled(listing, 0.01, 0)
    assert sum(r["split"] != "train" for r in kept) == sum(r["split"] != "train" for r in rows)  # val, test: all


def test_the_seeds_are_the_ones_asked_for(tmp_path):
    size = dict(SIZES["quick"], seeds=seed_list("3,7"))
    names = [job.name for job in plan(tmp_path, size)]
    assert pretrain_name(MAIN_MASK, 7) in names and not any(name.endswith("-s0") for name in names)
    for job in plan(tmp_path, size):  # a pre-trained fine-tuning starts from its own seed's pre-training
        if job.after:
            assert job.after.endswith(job.name[-3:]) and f"finetune.weights={tmp_path / 'runs' / job.after}" in \
                job.overrides
    with pytest.raises(Exception, match="distinct"):
        seed_list("1,1")


def test_the_target_report_splits_masked_cubes_into_stroke_and_empty():
    losses = np.array([0.5, 0.7, 0.01, 0.03, 0.9])
    brightest = np.array([200.0, 9.0, 0.0, 7.0, 255.0])  # grey levels: three cubes hold strokes
    report = target_report(losses, brightest, clips=2, cube_pixels=32)
    assert report["stroke_share"] == pytest.approx(0.6) and report["stroke_loss"] == pytest.approx(0.7)
    assert report["empty_loss"] == pytest.approx(0.02) and report["predicting_the_mean"] == pytest.approx(31 / 32,
                                                                                                         abs=1e-4)
    assert report["stroke_below_floor"] == pytest.approx(1 - 0.7 / (31 / 32), abs=1e-3)
