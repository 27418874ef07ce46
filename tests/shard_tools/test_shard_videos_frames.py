"""`shard-videos --frames jpeg`: JPEG-frame shards of real encoded clips (H.264 MP4, VP9 WebM made by PyAV), their
metadata and frames, resume and determinism, `verify` on damaged frames, and the option rules; video shards' frame
sizes are multiples of 16."""

import io
import json
import shutil

import av
import numpy as np
import pytest
from fixtures_video import write_video
from PIL import Image
from shard_samples import files_of, read_samples, rewrite_first_sample
from test_shard_videos import shard

from pipeline import frames

CLIPS = {"a/h.mp4": ("h264", 30), "a/v.webm": ("vp9", 25), "b/h.mp4": ("h264", 21)}  # source -> (codec, frames)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i, (name, (codec, count)) in enumerate(CLIPS.items()):
        write_video(root / name, codec, num_frames=count, seed=i)
    return root


@pytest.fixture(scope="module")
def jpeg_shards(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "shards"
    assert shard(source, out, "--frames", "jpeg", "--frame-step", 2, "--quality", 85, "--workers", 0,
                 "--min-frames", 8) == 0
    return out


def decoded_source(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_every_kept_frame_as_a_jpeg_with_its_offsets_in_the_json(source, jpeg_shards):
    samples = read_samples(jpeg_shards)
    assert len(samples) == len(CLIPS)
    for sample in samples:
        assert sample["order"] == ["jpegs", "json", "frames", "label"]
        meta = json.loads(sample["members"]["json"])
        count = CLIPS[meta["source"]][1]
        assert (meta["codec"], meta["num_frames"], meta["frame_step"], meta["quality"]) == ("jpeg", count, 2, 85)
        assert (meta["width"], meta["height"], meta["fps"]) == (80, 64, 25.0)
        member = sample["members"]["jpegs"]
        offsets = frames.frame_offsets(meta, len(member))
        assert len(offsets) - 1 == (count + 1) // 2 and offsets[-1] == len(member)
        clip = decoded_source(source / meta["source"])
        for k in range(len(offsets) - 1):
            image = np.asarray(Image.open(io.BytesIO(member[offsets[k]:offsets[k + 1]])))
            assert image.shape == (64, 80, 3)
            # stored frame k is clip frame 2k: close to it (24-25 dB on these saturated random 8x8 colour blocks,
            # which 4:2:0 chroma blurs), far from the frames beside it (~14 dB: the picture scrolls)
            near = psnr(image, clip[2 * k])
            assert near > 22, (meta["source"], k, near)
            assert all(near > psnr(image, clip[j]) + 6 for j in (2 * k - 1, 2 * k + 1) if 0 <= j < count)
    manifest = json.loads((jpeg_shards / "manifest.json").read_text())
    assert (manifest["codec"], manifest["container"]) == ("jpeg", "jpegs")
    assert manifest["frames"] == {"format": "jpeg", "quality": 85, "frame_step": 2}
    assert shard("verify", jpeg_shards) == 0


def test_same_bytes_again_and_after_an_interrupted_run(source, jpeg_shards, tmp_path):
    args = ["--frames", "jpeg", "--frame-step", 2, "--quality", 85, "--min-frames", 8, "--shard-size", 1]
    clean = tmp_path / "clean"  # one clip per shard
    assert shard(source, clean, *args, "--workers", 1) == 0
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    lines = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n")  # killed after the first shard
    for name in ("manifest.json", "rejected.jsonl", "train-000002.tar"):
        (out / name).unlink()
    (out / "train-000001.tar").write_bytes(b"half a shard")
    assert shard(source, out, *args, "--workers", 0, "--resume") == 0
    assert files_of(out) == files_of(clean)
    assert shard(source, out, "--frames", "jpeg", "--min-frames", 8, "--shard-size", 1, "--resume") == 2  # other
    single = read_samples(jpeg_shards)  # settings: refused; one shard or three, the same samples
    assert [s["members"] for s in read_samples(clean)] == [s["members"] for s in single]


def corrupt(members: dict, how: str) -> dict:
    meta = json.loads(members["json"])
    data, offsets = members["jpegs"], meta["frame_offsets"]
    if how == "jpeg":  # stored frame 1 loses its start-of-image marker and headers
        start = offsets[1]
        data = data[:start] + bytes(64) + data[start + 64:]
    elif how == "missing":  # the last frame left out of the member and the json
        data, meta["frame_offsets"] = data[:offsets[-2]], offsets[:-1]
    elif how == "past_end":
        meta["frame_offsets"] = offsets[:-1] + [offsets[-1] + 100]
    return {**members, "jpegs": data, "json": json.dumps(meta).encode()}


@pytest.mark.parametrize("how, problem", [("jpeg", "stored frame 1 does not decode"),
                                          ("missing", "a frame is missing"),
                                          ("past_end", "past the end of its .jpegs member")])
def test_verify_names_a_damaged_frame_sample(jpeg_shards, tmp_path, capsys, how, problem):
    out = tmp_path / "out"
    shutil.copytree(jpeg_shards, out)
    key = rewrite_first_sample(out, lambda members: corrupt(members, how))
    capsys.readouterr()
    assert shard("verify", out) == 1
    err = capsys.readouterr().err
    assert f"FAILED train-000000.tar {key}: " in err and problem in err and err.count("FAILED") == 1


@pytest.mark.parametrize("args, message", [
    (["--quality", 80], "--quality are for JPEG-frame shards: add --frames jpeg"),
    (["--frame-step", 2], "--frame-step are for JPEG-frame shards"),
    (["--frames", "jpeg", "--codec", "vp9"], "--codec are for video shards; --frames jpeg stores JPEG frames"),
    (["--frames", "jpeg", "--quality", 101], "--quality must be 1..100")])
def test_options_that_do_not_go_together_are_refused_in_one_line(source, tmp_path, capsys, args, message):
    assert shard(source, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "out").exists()


def test_video_frame_sizes_are_multiples_of_16(tmp_path):
    write_video(tmp_path / "in" / "a.mp4", num_frames=20, size=(60, 100))  # 100x60: NVDEC would code 112x64
    assert shard(tmp_path / "in", tmp_path / "out", "--codec", "vp9", "--workers", 0) == 0
    sample, = read_samples(tmp_path / "out")
    meta = json.loads(sample["members"]["json"])
    assert (meta["width"], meta["height"]) == (96, 64)
    with av.open(io.BytesIO(sample["members"]["webm"])) as container:
        assert container.streams.video[0].codec_context.width == 96
