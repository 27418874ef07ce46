"""Real encoded test inputs made with PyAV: clips, broken files, and the on-disk layouts of public datasets.

Independent of the code under test (plain PyAV calls). Sizes default to tiny (64x80, 24 frames) so a test
can make dozens of files in a second.
"""

from __future__ import annotations

import csv
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ENCODERS = {"h264": ("libx264", "yuv420p", {"preset": "ultrafast"}),
            "mpeg4": ("mpeg4", "yuv420p", {}),
            "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
            "mjpeg": ("mjpeg", "yuvj420p", {})}


def frames_of(seed: int, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W, 3) uint8: a random 8x8-block picture scrolling right by 2 pixels a frame."""
    height, width = size
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    picture = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    return np.stack([np.roll(picture, 2 * t, axis=1) for t in range(num_frames)])


def write_video(path, codec: str = "h264", num_frames: int = 24, size: tuple[int, int] = (64, 80), fps: int = 25,
                seed: int = 0, audio: bool = False, sample_aspect: Fraction | None = None) -> Path:
    """An encoded clip; the container follows the file suffix. size is (height, width)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, pix_fmt, options = ENCODERS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        sound = add_audio(container) if audio else None
        for i, picture in enumerate(frames_of(seed, num_frames, size)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            write_tone(container, sound, seconds=num_frames / fps)
    return path


def add_audio(container):
    stream = container.add_stream("aac", rate=16000)
    stream.layout = "mono"
    return stream


def write_tone(container, stream, seconds: float) -> None:
    samples = int(16000 * seconds)
    tone = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    for start in range(0, samples, 1024):
        frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_no_frames(path, codec: str = "h264", size: tuple[int, int] = (64, 80)) -> Path:
    """A container with a video stream that holds not one frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder, pix_fmt, options = ENCODERS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=25, options=options)
        stream.height, stream.width = size
        stream.pix_fmt = pix_fmt
        container.start_encoding()  # writes the header: a file exists though no packet follows
    return path


def zero_packets(path) -> Path:
    """Overwrite the payload of every video packet with zeros, where the demuxer says it lies; the container's
    headers and index stay intact."""
    path = Path(path)
    with av.open(str(path)) as container:
        spans = [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]
    data = bytearray(path.read_bytes())
    for position, size in spans:
        data[position:position + size] = bytes(size)
    path.write_bytes(bytes(data))
    return path


def write_audio_only(path, seconds: float = 1.0) -> Path:
    """A file with one AAC track and no video."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        write_tone(container, add_audio(container), seconds)
    return path


def write_random_bytes(path, size: int = 4096, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def truncate(path, keep: float = 0.5) -> Path:
    """Cut a file to the first `keep` fraction of its bytes (a download that stopped)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def count_frames(source) -> int:
    """Frames that decode from a file (path) or from encoded bytes."""
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        return sum(1 for _ in container.decode(video=0))


# --- dataset layouts -----------------------------------------------------------------------------------------

def make_ucf101(root, classes=("ApplyEyeMakeup", "Archery", "BabyCrawling"), groups: int = 3,
                **clip) -> tuple[Path, Path]:
    """UCF-101/<Class>/v_<Class>_g<GG>_c01.avi (MPEG-4 Part 2) and ucfTrainTestlist/ with classInd.txt and three
    splits: split k puts group k in the test list. Returns (videos folder, split folder)."""
    root = Path(root)
    videos, splits = root / "UCF-101", root / "ucfTrainTestlist"
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {name}\r\n" for i, name in enumerate(classes)))
    lists = {f"{kind}{k:02d}.txt": [] for kind in ("trainlist", "testlist") for k in (1, 2, 3)}
    for index, name in enumerate(classes):
        for group in range(1, groups + 1):
            relative = f"{name}/v_{name}_g{group:02d}_c01.avi"
            write_video(videos / relative, "mpeg4", seed=100 * index + group, **clip)
            for k in (1, 2, 3):
                if group == k:
                    lists[f"testlist{k:02d}.txt"].append(f"{relative}\r\n")
                else:
                    lists[f"trainlist{k:02d}.txt"].append(f"{relative} {index + 1}\r\n")
    for name, lines in lists.items():
        (splits / name).write_text("".join(lines))
    return videos, splits


def make_hmdb51(root, classes=("brush_hair", "cartwheel"), clips: int = 3, **clip) -> tuple[Path, Path]:
    """hmdb51/<class>/<name>.avi and testTrainMulti_7030_splits/<class>_test_split<k>.txt with flags
    1 (train), 2 (test), 0 (unused): clip 0 is train, 1 test, 2 unused in every split."""
    root = Path(root)
    videos, splits = root / "hmdb51", root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(classes):
        lines = []
        for i in range(clips):
            file = f"{name.title()}_clip_{i}_f_cm_np1_fr_med_{i}.avi"
            write_video(videos / name / file, "mpeg4", seed=200 + 10 * index + i, **clip)
            lines.append(f"{file} {(1, 2, 0)[i % 3]} \n")
        for k in (1, 2, 3):
            (splits / f"{name}_test_split{k}.txt").write_text("".join(lines))
    return videos, splits


def make_kinetics(root, labels=("abseiling", "air drumming"), per_split=None, **clip) -> tuple[Path, Path]:
    """Kinetics-style H.264 MP4s named <youtube_id>_<start:06d>_<end:06d>.mp4 under <split>/<label>/, and one
    annotation CSV (label,youtube_id,time_start,time_end,split). Returns (videos folder, csv)."""
    root = Path(root)
    per_split = per_split or {"train": 2, "val": 1}
    videos, rows = root / "kinetics", []
    for index, label in enumerate(labels):
        for split, count in per_split.items():
            for i in range(count):
                youtube_id = f"{label[:3]}{split[:2]}{i:02d}-_x"  # ids may hold '-' and '_'
                start = 10 * i + 1
                write_video(videos / split / label / f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4", "h264",
                            seed=300 + 10 * index + i + 100 * len(split), **clip)
                rows.append([label, youtube_id, start, start + 10, {"val": "validate"}.get(split, split)])
    annotations = root / "annotations.csv"
    with open(annotations, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(rows)
    return videos, annotations


def make_ssv2(root, templates=("Holding [something] next to [something]", "Pushing [something] from left to right"),
              per_split=None, **clip) -> tuple[Path, Path]:
    """20bn-something-something-v2/<id>.webm (VP9) and labels/ with labels.json (template without brackets ->
    index as a string) and train.json / validation.json lists. Returns (videos folder, labels folder)."""
    root = Path(root)
    per_split = per_split or {"train": 2, "validation": 1}
    videos, labels = root / "20bn-something-something-v2", root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    names = [t.replace("[", "").replace("]", "") for t in templates]
    (labels / "labels.json").write_text(json.dumps({name: str(i) for i, name in enumerate(names)}, indent=1))
    next_id = 1000
    for split, count in per_split.items():
        entries = []
        for template in templates:
            for _ in range(count):
                next_id += 7
                write_video(videos / f"{next_id}.webm", "vp9", seed=next_id, **clip)
                entries.append({"id": str(next_id), "label": template.replace("[something]", "a cup").lower(),
                                "template": template, "placeholders": ["a cup", "a cup"]})
        (labels / f"{split}.json").write_text(json.dumps(entries))
    return videos, labels
