"""`bench loader` over several shard folders in one run, `bench decode`'s cost against the last frame index, and
`--record`: the JSON lines a figure is kept in (docs/benchmarks/records.jsonl)."""

import json
import subprocess

import pytest
from synthetic_shards import synthetic_shards

from pipeline.errors import PROJECT_ROOT
from shard_tools import cli as shard_cli
from train.bench import cli as bench_cli
from train.bench import records
from train.config import load_train_config

SMALL = ["--set=data.num_frames=8", "--set=data.sampling_rate=2", "--set=data.input_size=32", "--batch-size=2",
         "--set=data.num_threads=1", "--set=data.shuffle_buffer=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    vp9 = synthetic_shards(root, num_classes=2, clips_per_class=3, num_frames=40)
    jpeg = root / "jpeg"
    assert shard_cli.main([str(root / "videos"), str(jpeg), "--frames", "jpeg", "--frame-step", "2",
                           "--workers", "1"]) == 0
    return {"vp9": vp9, "jpeg": jpeg}


def test_bench_loader_compares_shard_folders_in_rounds_and_records_each(shards, tmp_path, capsys):
    file = tmp_path / "records.jsonl"
    assert bench_cli.main(["loader", str(shards["jpeg"]), str(shards["vp9"]), *SMALL, "--batches=2", "--warmup=1",
                           "--rounds=2", "--record", str(file), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(next(line for line in out if line.startswith("{")))
    jpeg_row, vp9_row = result["rows"]
    assert (jpeg_row["shards"], vp9_row["shards"]) == (str(shards["jpeg"]), str(shards["vp9"]))
    assert all(len(row["rounds_clips_per_s"]) == 2 and row["train_thread_ms_per_clip"] > 0 for row in result["rows"])
    assert result["ratios"][str(shards["vp9"])] == pytest.approx(jpeg_row["clips_per_s"] / vp9_row["clips_per_s"])
    assert any("delivers" in line and "x the clips/s of" in line for line in out)
    assert out[-1] == f"recorded 2 row(s) in {file}"
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert [r["shards"]["format"] for r in lines] == ["jpeg", "vp9"]
    assert lines[0]["shards"] == {"path": str(shards["jpeg"]), "format": "jpeg", "width": 64, "height": 48,
                                  "frame_step": 2, "quality": 90}
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    for row, measured in zip(lines, result["rows"]):
        assert row["bench"] == "loader" and row["clips_per_s"] == measured["clips_per_s"]
        assert row["commit"].startswith(head) and row["date"].endswith("Z") and "cores" in row["device"]
        assert row["command"].endswith(f"--record {file} --json") and row["batch_size"] == 2
    assert bench_cli.main(["masks", "--batch-size=2", "--set=data.input_size=32", "--record", str(file)]) == 0
    assert len(file.read_text().splitlines()) == 3  # appended


def test_bench_decode_gives_ms_per_clip_by_last_frame_for_video_and_jpeg_frames(shards, capsys):
    for kind in ("vp9", "jpeg"):
        assert bench_cli.main(["decode", str(shards[kind]), *SMALL, "--decode-pipelines", "1", "--threads", "1",
                               "--batches=1", "--warmup=0", "--last-frames", "3", "20", "39", "--json"]) == 0
        out = capsys.readouterr().out.splitlines()
        curve, = json.loads(out[-1])["by_last_frame"]
        assert curve["codec"] == kind and curve["decode"] == "cpu"
        # 8 frames 2 apart ending at k, those at frame 0 or later: 2 for k = 3, 8 otherwise
        assert [(r["last_frame"], r["frames"]) for r in curve["rows"]] == [(3, 2), (20, 8), (39, 8)]
        assert all(r["ms_per_clip"] > 0 for r in curve["rows"]) and "us_per_frame" in curve
        assert any(line.startswith(f"{kind} on cpu, 8 frames at stride 2 ending at frame k") for line in out)


def test_model_and_e2e_records_carry_mfu_and_data_wait():
    cfg = load_train_config(None, ["model.size=tiny"])
    e2e = {"samples_per_s": 5.0, "mfu": "unknown", "data_wait_fraction": 0.25}
    row, = records.record_rows("e2e", cfg, e2e, "configs/x.yaml")
    assert (row["model"], row["clips_per_s"], row["mfu"], row["data_wait"]) == ("tiny", 5.0, "unknown", 0.25)
    assert row["config"] == "configs/x.yaml" and row["result"] == e2e
