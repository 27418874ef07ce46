"""`shard-videos` end to end on real encoded inputs and broken files: shard contents and metadata, rejects,
determinism, kill-and-resume, the DALI reader on the shards, and `verify`."""

import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import av
import numpy as np
import pytest
from fixtures_video import (count_frames, make_hmdb51, make_kinetics, make_ssv2, make_ucf101, truncate,
                            write_audio_only, write_no_frames, write_random_bytes, write_video,
                            zero_packets)
from shard_samples import files_of, read_samples, rewrite_first_sample

from pipeline import shards as pipeline_shards
from shard_tools import cli
from shard_tools import verify as shard_verify
from shard_tools.build import ordered_results
from shard_tools.encode import CODECS, COPY_MUXERS
from shard_tools.inputs import Clip
from shard_tools.transcode import Result, Settings

REPO = Path(__file__).resolve().parents[2]
GOOD = {  # source -> (codec, frames): every codec and container a user's collection may hold
    "bike/b0.mp4": ("h264", 24), "bike/b1.avi": ("mpeg4", 30), "bike/b2.mkv": ("mjpeg", 20),
    "walk/w0.mp4": ("h264", 26), "walk/w1.webm": ("vp9", 24), "walk/w2.mp4": ("h264", 22),
}
BROKEN = {  # source -> the kind of reason it must be rejected with
    "bike/empty.mp4": "empty", "bike/noise.mp4": "unreadable", "bike/short.mp4": "too_short",
    "walk/cut.mp4": "unreadable", "walk/cut.webm": "truncated", "walk/sound.mp4": "no_video",
    "walk/header.mp4": "no_video",  # a video stream declared, not one packet written: libav sees no stream
    "walk/garbled.avi": "undecodable",  # every frame's packet zeroed: the MPEG-4 decoder raises
    "walk/blank.webm": "zero_frames",  # every frame's packet zeroed: the VP9 decoder returns nothing
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    for i, (name, (codec, frames)) in enumerate(GOOD.items()):
        write_video(root / name, codec, num_frames=frames, seed=i, audio=name == "walk/w2.mp4")
    (root / "bike/empty.mp4").write_bytes(b"")
    write_random_bytes(root / "bike/noise.mp4")
    write_video(root / "bike/short.mp4", num_frames=10)
    truncate(write_video(root / "walk/cut.mp4", num_frames=40))
    truncate(write_video(root / "walk/cut.webm", "vp9", num_frames=40))
    write_audio_only(root / "walk/sound.mp4")
    write_no_frames(root / "walk/header.mp4")
    zero_packets(write_video(root / "walk/garbled.avi", "mpeg4", num_frames=24))
    zero_packets(write_video(root / "walk/blank.webm", "vp9", num_frames=24))
    return root


def shard(*args) -> int:
    return cli.main([str(a) for a in args])


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "shards"
    assert shard(source, out, "--codec", "vp9", "--workers", 2, "--shard-size", "40kB") == 0
    return out


def test_every_good_clip_once_with_true_metadata(source, clean):
    samples = read_samples(clean)
    manifest = json.loads((clean / "manifest.json").read_text())
    assert [s["key"] for s in samples] == [f"train-{i:08d}" for i in range(len(GOOD))]
    assert len({s["shard"] for s in samples}) >= 2  # the 40 kB target made several shards
    assert manifest["classes"] == ["bike", "walk"] and manifest["codec"] == "vp9" and manifest["container"] == "webm"
    seen = []
    for sample in samples:
        assert sample["order"] == ["webm", "json", "frames", "label"]
        meta = json.loads(sample["members"]["json"])
        seen.append(meta["source"])
        video = sample["members"]["webm"]
        frames, = struct.unpack("<i", sample["members"]["frames"])
        label, = struct.unpack("<i", sample["members"]["label"])
        assert meta["num_frames"] == frames == count_frames(video) == count_frames(source / meta["source"])
        assert frames == GOOD[meta["source"]][1]
        assert meta["label"] == meta["source"].split("/")[0] and label == meta["label_index"] == \
            manifest["classes"].index(meta["label"])
        assert (meta["width"], meta["height"], meta["fps"], meta["codec"]) == (80, 64, 25.0, "vp9")  # no upscale
        assert meta["duration"] == pytest.approx(frames / 25)
        with av.open(io.BytesIO(video)) as container:
            assert [s.type for s in container.streams] == ["video"]  # audio dropped
    assert sorted(seen) == sorted(GOOD)  # every accepted clip exactly once

    rejected = [json.loads(line) for line in (clean / "rejected.jsonl").read_text().splitlines()]
    assert {r["path"]: r["reason"].split(":")[0] for r in rejected} == BROKEN and len(rejected) == len(BROKEN)
    assert manifest["rejected"] == {"total": len(BROKEN), "by_reason": dict(sorted(Counter(BROKEN.values()).items()))}
    assert manifest["splits"]["train"]["clips"] == len(GOOD)
    assert manifest["splits"]["train"]["per_class"] == {"bike": 3, "walk": 3}
    tars = sorted(clean.glob("*.tar"))
    assert [s["name"] for s in manifest["shards"]] == [t.name for t in tars]
    for entry, tar in zip(manifest["shards"], tars):
        data = tar.read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["samples"] == sum(s["shard"] == tar.name for s in samples)
        assert len(data) <= 40_000 or entry["samples"] == 1
    assert not list(clean.glob("*.tmp"))


def test_index_files_match_wds2idx(clean, tmp_path):
    from wds2idx import IndexCreator  # DALI's own indexer

    for tar in sorted(clean.glob("*.tar")):
        with IndexCreator(str(tar), str(tmp_path / "reference.idx"), verbose=False) as creator:
            creator.create_index()
        assert tar.with_suffix(".idx").read_text() == (tmp_path / "reference.idx").read_text()


def test_dali_webdataset_reader_reads_the_shards(clean):
    from nvidia.dali import fn, pipeline_def, types

    tars = sorted(clean.glob("*.tar"))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read():
        video, frames, label = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(t.with_suffix(".idx")) for t in tars],
            ext=["mp4;webm;mkv;avi", "frames", "label"], dtypes=[types.UINT8, types.INT32, types.INT32],
            name="reader")
        return fn.decoders.video(video, device="cpu"), frames, label

    pipe = read()
    pipe.build()
    assert pipe.epoch_size("reader") == len(GOOD)
    metas = {s["members"]["webm"]: json.loads(s["members"]["json"]) for s in read_samples(clean)}
    counts = []
    for _ in range(len(GOOD)):
        decoded, frames, label = (np.array(out[0]) for out in pipe.run())
        counts.append(int(frames[0]))
        assert decoded.shape == (frames[0], 64, 80, 3) and frames.dtype == np.int32 and label.dtype == np.int32
        assert any(m["num_frames"] == frames[0] and m["label_index"] == label[0] for m in metas.values())
    assert sorted(counts) == sorted(frames for _, frames in GOOD.values())


def test_same_seed_gives_identical_bytes_whatever_the_workers(source, clean, tmp_path):
    again = tmp_path / "again"
    assert shard(source, again, "--codec", "vp9", "--workers", 0, "--shard-size", "40kB") == 0
    assert files_of(again) == files_of(clean)
    other = tmp_path / "other_seed"
    assert shard(source, other, "--codec", "vp9", "--workers", 0, "--shard-size", "40kB", "--seed", 1) == 0
    order = [json.loads(s["members"]["json"])["source"] for s in read_samples(clean)]
    other_order = [json.loads(s["members"]["json"])["source"] for s in read_samples(other)]
    assert sorted(order) == sorted(other_order) and order != other_order


def test_killed_run_resumes_to_the_same_bytes(tmp_path):
    source = tmp_path / "many"
    for i in range(24):
        write_video(source / f"c{i % 2}" / f"{i:02d}.mp4", num_frames=40, seed=i)
    write_random_bytes(source / "c0" / "bad.mp4")
    args = [source, None, "--codec", "vp9", "--shard-size", "1", "--seed", 7]  # one clip per shard
    clean = tmp_path / "clean"
    assert shard(*[clean if a is None else a for a in args], "--workers", 0) == 0
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "shard_tools.cli"] + [str(killed if a is None else a) for a in args]
    process = subprocess.Popen(command + ["--workers", "1"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (killed / "train-000001.tar").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its worker, as a crash or an OOM kill would
    process.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it was killed: make it longer"
    journal = [json.loads(line) for line in (killed / "progress.jsonl").read_text().splitlines()[1:]]
    assert journal, process.stderr.read().decode()
    finished = {e["name"]: (killed / e["name"]).stat().st_mtime_ns for e in journal}
    with open(killed / "progress.jsonl", "a") as f:
        f.write('{"split": "train", "name": "tr')  # as if killed in the middle of writing a journal line

    assert shard(*[killed if a is None else a for a in args], "--workers", 0, "--resume") == 0
    assert files_of(killed) == files_of(clean)  # no duplicates, no gaps, same numbering
    assert all((killed / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())  # not redone
    assert shard(*[killed if a is None else a for a in args], "--resume") == 0  # finished: nothing to do
    assert files_of(killed) == files_of(clean)


def test_resume_redoes_shards_finished_after_the_last_journal_line(source, clean, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    lines = (out / "progress.jsonl").read_text().splitlines()
    assert len(lines) >= 3  # header and at least two shards
    (out / "progress.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n")  # killed before journalling shard 2
    (out / "manifest.json").unlink()
    (out / "rejected.jsonl").unlink()
    (out / "train-000001.tar").write_bytes(b"half a shard")
    (out / "train-000002.tar.tmp").write_bytes(b"an unfinished shard")
    assert shard(source, out, "--codec", "vp9", "--workers", 0, "--shard-size", "40kB", "--resume") == 0
    assert files_of(out) == files_of(clean)


def test_output_folder_rules(source, clean, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    assert shard(source, out, "--codec", "vp9") == 2
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert shard(source, out, "--codec", "h264", "--shard-size", "40kB", "--resume") == 2
    assert "different inputs or settings (codec)" in capsys.readouterr().err
    assert shard(source, out, "--codec", "vp9", "--workers", 0, "--shard-size", "40kB", "--overwrite") == 0
    assert files_of(out) == files_of(clean)
    (out / "mine.txt").write_text("a user's file")
    assert shard(source, out, "--codec", "vp9", "--overwrite") == 2
    assert "files shard-videos did not write (e.g. mine.txt)" in capsys.readouterr().err


def test_verify_passes_then_names_a_corrupted_sample(clean, tmp_path, capsys):
    assert shard("verify", clean) == 0
    err = capsys.readouterr().err
    assert f"{len(GOOD)} with DALI CPU" in err and "verified" in err
    bad = tmp_path / "bad"
    shutil.copytree(clean, bad)
    index = sorted(bad.glob("*.idx"))[0]
    fields = index.read_text().splitlines()[1].split()  # the first sample: ext offset size name, per member
    offset, size, key = int(fields[1]), int(fields[2]), fields[3].split(".")[0]
    with open(index.with_suffix(".tar"), "r+b") as tar:
        tar.seek(offset + 64)
        tar.write(b"\x07" * (size - 64))
    assert shard("verify", bad) == 1
    err = capsys.readouterr().err
    assert f"FAILED {index.with_suffix('.tar').name} {key}:" in err
    assert f"FAILED {index.with_suffix('.tar').name} -: sha256 differs" in err
    assert err.count("FAILED") == 2  # the other samples still pass


def test_verify_fails_on_an_unfinished_run(clean, tmp_path, capsys):
    out = tmp_path / "killed"
    shutil.copytree(clean, out)
    (out / "manifest.json").unlink()  # what a killed run leaves: finished shards, no manifest
    assert shard("verify", out) != 0
    err = capsys.readouterr().err
    assert "did not finish" in err and f"{out} --resume" in err and "verified" not in err


def with_frames(members: dict, frames: int) -> dict:
    meta = json.loads(members["json"])
    meta["num_frames"] = frames  # the json agrees with .frames: only decoding the clip can tell
    return {**members, "json": json.dumps(meta).encode(), "frames": struct.pack("<i", frames)}


@pytest.mark.parametrize("wrong", ["frames", "label"])
def test_verify_names_a_sample_whose_frames_or_label_member_is_wrong(clean, tmp_path, capsys, wrong):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    rewrite_first_sample(out, lambda members: members)
    assert files_of(out) == files_of(clean)  # the rewrite alone changes nothing
    if wrong == "frames":
        key = rewrite_first_sample(out, lambda m: with_frames(m, struct.unpack("<i", m["frames"])[0] + 3))
    else:  # .label disagrees with the json's label_index
        key = rewrite_first_sample(out, lambda m: {**m, "label": struct.pack("<i", json.loads(m["json"])[
            "label_index"] + 1)})
    capsys.readouterr()
    assert shard("verify", out) == 1
    err = capsys.readouterr().err
    first = json.loads((out / "manifest.json").read_text())["shards"][0]["name"]
    problem = "frames decode, .frames says" if wrong == "frames" else ".frames/.label"
    assert f"FAILED {first} {key}: " in err and problem in err and err.count("FAILED") == 1


def test_shard_member_extensions_and_cpu_codecs_are_defined_once():
    assert shard_verify.VIDEO_EXTENSIONS is pipeline_shards.VIDEO_EXTENSIONS
    assert shard_verify.CPU_CODECS is pipeline_shards.CPU_CODECS
    # every container shard-videos writes (transcoded or --codec copy) is one the readers look for
    assert {c.extension for c in CODECS.values()} | set(COPY_MUXERS) == set(pipeline_shards.VIDEO_EXTENSIONS)


def test_options_resize_cap_frame_rate_and_trim(tmp_path):
    write_video(tmp_path / "in" / "a.mp4", num_frames=50, size=(96, 128), fps=25)
    out = tmp_path / "out"
    assert shard(tmp_path / "in", out, "--short-side", 48, "--fps", 10, "--max-seconds", 1.5, "--min-frames", 1,
                 "--gop", 4, "--workers", 0) == 0
    sample, = read_samples(out)
    meta = json.loads(sample["members"]["json"])
    assert (meta["width"], meta["height"], meta["fps"], meta["codec"]) == (64, 48, 10.0, "h264")
    assert meta["num_frames"] == 15 == count_frames(sample["members"]["mp4"])  # 1.5 s at 10 fps
    assert meta["label"] is None and meta["label_index"] == -1 and sample["key"] == "all-00000000"
    with av.open(io.BytesIO(sample["members"]["mp4"])) as container:
        keyframes = [i for i, p in enumerate(container.demux(video=0)) if p.is_keyframe]
    assert keyframes[:4] == [0, 4, 8, 12]


@pytest.mark.parametrize("codec, extension, decoder", [("h264", "mp4", "h264"), ("hevc", "mp4", "hevc"),
                                                      ("vp9", "webm", "vp9"), ("mjpeg", "mkv", "mjpeg"),
                                                      ("mpeg4", "avi", "mpeg4")])
def test_every_output_codec(tmp_path, codec, extension, decoder):
    write_video(tmp_path / "in" / "a.avi", "mpeg4", num_frames=20)
    assert shard(tmp_path / "in", tmp_path / "out", "--codec", codec, "--workers", 0) == 0
    sample, = read_samples(tmp_path / "out")
    assert sample["order"] == [extension, "json", "frames", "label"]
    with av.open(io.BytesIO(sample["members"][extension])) as container:
        assert container.streams.video[0].codec_context.name == decoder
        assert sum(1 for _ in container.decode(video=0)) == 20 == json.loads(sample["members"]["json"])["num_frames"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["codec"], manifest["container"]) == (codec, extension)


def test_copy_keeps_the_stream_and_drops_audio(tmp_path):
    write_video(tmp_path / "in" / "x" / "a.mp4", num_frames=20, audio=True)
    out = tmp_path / "out"
    assert shard(tmp_path / "in", out, "--codec", "copy", "--workers", 0) == 0
    sample, = read_samples(out)
    packets = {}
    for name, data in (("source", (tmp_path / "in" / "x" / "a.mp4").read_bytes()), ("copy", sample["members"]["mp4"])):
        with av.open(io.BytesIO(data)) as container:
            packets[name] = [bytes(p) for p in container.demux(video=0) if p.size]
            if name == "copy":
                assert [s.type for s in container.streams] == ["video"]
    assert packets["copy"] == packets["source"]
    assert json.loads((out / "manifest.json").read_text())["codec"] == "h264"
    trimmed = tmp_path / "trimmed"
    assert shard(tmp_path / "in", trimmed, "--codec", "copy", "--max-seconds", 0.5, "--min-frames", 1,
                 "--workers", 0) == 0
    sample, = read_samples(trimmed)
    assert json.loads(sample["members"]["json"])["num_frames"] == 12 == count_frames(sample["members"]["mp4"])
    assert shard(tmp_path / "in", tmp_path / "o2", "--codec", "copy", "--short-side", 100) == 2


@pytest.mark.parametrize("layout", ["ucf101", "hmdb51", "kinetics", "ssv2"])
def test_dataset_layouts_end_to_end(layout, tmp_path, capsys):
    clip = {"num_frames": 18}
    maker = {"ucf101": make_ucf101, "hmdb51": make_hmdb51, "kinetics": make_kinetics, "ssv2": make_ssv2}[layout]
    videos, labels = maker(tmp_path / "data", **clip)
    codec = {"ssv2": "copy", "kinetics": "h264"}.get(layout, "vp9")  # SSv2 is VP9 already: keep it
    out = tmp_path / "out"
    assert shard(videos, out, "--labels", labels, "--codec", codec, "--workers", 0) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    splits = {"ucf101": {"train", "test"}, "hmdb51": {"train", "test"}, "kinetics": {"train", "val"},
              "ssv2": {"train", "val"}}[layout]
    assert set(manifest["splits"]) == splits and manifest["settings"]["layout"] == layout
    for sample in read_samples(out):
        meta = json.loads(sample["members"]["json"])
        assert sample["key"].split("-")[0] == sample["shard"].split("-")[0]
        assert meta["label_index"] == manifest["classes"].index(meta["label"]) and meta["num_frames"] == 18
        assert meta["codec"] == {"ucf101": "vp9", "hmdb51": "vp9", "kinetics": "h264", "ssv2": "vp9"}[layout]
    if layout == "kinetics":  # H.264 on a machine without a GPU: verify says it could not use DALI for them
        capsys.readouterr()
        assert shard("verify", out, "--device", "cpu") == 0
        assert "were decoded with PyAV, not with the pipeline's decoder" in capsys.readouterr().err


@pytest.mark.gpu
def test_verify_on_the_gpu_decodes_h264_with_nvdec(source, tmp_path, capsys):
    out = tmp_path / "h264"
    assert shard(source, out, "--codec", "h264", "--workers", 0) == 0
    capsys.readouterr()
    assert shard("verify", out) == 0
    err = capsys.readouterr().err
    assert f"{len(GOOD)} with DALI mixed (NVDEC)" in err and "PyAV" not in err


def crash_on_a_name(path: str, settings: Settings) -> Result:
    """A stand-in for process_clip whose process dies on one file, as a crash inside libav would."""
    if path.endswith("crash.mp4"):
        os._exit(3)
    return Result(video=path.encode(), extension="mp4", meta={})


class BreakingPool:
    """A stand-in for ProcessPoolExecutor that runs each call at once. A call on crash.mp4 breaks it as a dead
    worker does: that call's future, and every submit after it, fail with BrokenProcessPool."""

    def __init__(self, workers, mp_context=None):
        self.broken = False

    def submit(self, function, path, settings):
        if self.broken:
            raise BrokenProcessPool("A child process terminated abruptly")
        future = Future()
        if path.endswith("crash.mp4"):
            self.broken = True
            future.set_exception(BrokenProcessPool("A child process terminated abruptly"))
        else:
            future.set_result(function(path, settings))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def test_a_pool_broken_before_the_next_submit_rejects_only_the_crashing_clip(monkeypatch):
    # With real processes the pool can break between two results (the crash is noticed while the loop still
    # submits): submit itself then raises. Here that happens on every run.
    monkeypatch.setattr("shard_tools.build.ProcessPoolExecutor", BreakingPool)
    names = [f"{i}.mp4" for i in range(3)] + ["crash.mp4"] + [f"{i}.mp4" for i in range(3, 12)]
    clips = [Clip(Path("/nowhere") / name, name, "train", None) for name in names]
    results = list(ordered_results(clips, Settings(), workers=1, function=crash_on_a_name))
    assert [clip.source for clip, _ in results] == names
    assert [clip.source for clip, result in results if result.reason] == ["crash.mp4"]
    assert "killed the worker process" in results[3][1].reason


def test_a_worker_crash_rejects_only_its_clip():
    names = [f"{i}.mp4" for i in range(5)] + ["crash.mp4"] + [f"{i}.mp4" for i in range(5, 9)]
    clips = [Clip(Path("/nowhere") / name, name, "train", None) for name in names]
    results = list(ordered_results(clips, Settings(), workers=2, function=crash_on_a_name))
    assert [clip.source for clip, _ in results] == names
    for clip, result in results:
        if clip.source == "crash.mp4":
            assert "killed the worker process" in result.reason
        else:
            assert result.reason is None and result.video == str(clip.path).encode()
