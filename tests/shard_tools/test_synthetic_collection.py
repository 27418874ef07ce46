"""The synthetic collection: real encoded files, folder per class, classes that differ by motion."""

import av
import numpy as np
import pytest

from shard_tools import cli
from shard_tools.synthetic import MOTIONS, PRESETS, make_collection


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("codec, extension", [("vp9", "webm"), ("h264", "mp4"), ("mpeg4", "avi"), ("mjpeg", "mkv")])
def test_files_are_encoded_with_the_codec_in_its_container(tmp_path, codec, extension):
    paths = make_collection(tmp_path, num_classes=2, clips_per_class=2, num_frames=20, size=(48, 64), fps=20,
                            codec=codec)
    names = [m.name for m in MOTIONS[:2]]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"{name}/{name}_{i:03d}.{extension}" for name in names for i in range(2)]
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == {"h264": "h264", "vp9": "vp9"}.get(codec, codec)
            assert (stream.width, stream.height, stream.average_rate) == (64, 48, 20)
            assert sum(1 for _ in container.decode(stream)) == 20


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path):
    first = make_collection(tmp_path / "a", num_classes=2, clips_per_class=2, num_frames=12, size=(32, 48), seed=3)
    again = make_collection(tmp_path / "b", num_classes=2, clips_per_class=2, num_frames=12, size=(32, 48), seed=3)
    other = make_collection(tmp_path / "c", num_classes=2, clips_per_class=2, num_frames=12, size=(32, 48), seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(a.read_bytes() != c.read_bytes() for a, c in zip(first, other))
    assert len({p.read_bytes() for p in first}) == 4  # every clip is its own


def foreground(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) how far each pixel is from the still background (the per-pixel median over time)."""
    frames = frames.astype(np.float32)
    return np.abs(frames - np.median(frames, axis=0)).sum(-1)


def shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dy, dx) that moves picture a onto picture b (phase correlation, circular)."""
    spectrum = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
    peak = np.unravel_index(np.argmax(np.fft.ifft2(spectrum / (np.abs(spectrum) + 1e-9)).real), a.shape)
    return tuple(int(p - n if p > n // 2 else p) for p, n in zip(peak, a.shape))


def centre(weights: np.ndarray) -> np.ndarray:
    """(y, x) weighted centre of a picture whose content wraps around the edges (circular mean)."""
    result = []
    for axis, n in ((0, weights.shape[0]), (1, weights.shape[1])):
        angle = 2 * np.pi * np.arange(n) / n
        profile = weights.sum(axis=1 - axis)
        result.append(np.angle((profile * np.exp(1j * angle)).sum()) % (2 * np.pi) * n / (2 * np.pi))
    return np.array(result)


def test_classes_are_defined_by_their_motion(tmp_path):
    paths = make_collection(tmp_path, num_classes=8, clips_per_class=2, num_frames=30, size=(64, 80), seed=1)
    expected_sign = {"move_right": (0, 1), "move_left": (0, -1), "move_up": (-1, 0), "move_down": (1, 0)}
    for path in paths:
        name = path.parent.name
        fg = foreground(decode(path))
        if name in expected_sign:
            dy, dx = shift(fg[5], fg[15])  # 10 frames at 0.25 widths/s, 25 fps: about 8 pixels
            assert (np.sign(dy), np.sign(dx)) == expected_sign[name] and max(abs(dy), abs(dx)) >= 4, (path, dy, dx)
        elif name.startswith("rotate"):  # rotating in place: the object's centre stays put
            moved = np.abs(centre(fg[5]) - centre(fg[15]))
            assert (moved <= 2).all(), (path, moved)
    # (growing and shrinking are not checked here: the median background swallows an object that stays put)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="num_classes"):
        make_collection("unused", num_classes=len(MOTIONS) + 1)
    with pytest.raises(ValueError, match="codec"):
        make_collection("unused", codec="theora")
    with pytest.raises(ValueError, match="even"):
        make_collection("unused", size=(33, 48))


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    assert cli.main(["synth", str(out), "--classes", "3", "--clips-per-class", "2", "--frames", "8", "--height", "32",
                     "--width", "48", "--codec", "h264"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == sorted(
        f"{m.name}/{m.name}_{i:03d}.mp4" for m in MOTIONS[:3] for i in range(2))
    assert "wrote 6 h264 clips" in capsys.readouterr().err


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
    assert cli.main(["synth", str(out), "--preset", "study", "--held-out", "--still", "--clips-per-class", "1",
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
