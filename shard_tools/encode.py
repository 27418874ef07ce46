"""The output codecs (encoder, container, settings), a small writer of encoded video files with PyAV, and the
writer of JPEG-frame samples (`--frames jpeg`, the format of pipeline/frames.py)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from pipeline import frames


@dataclass(frozen=True)
class Codec:
    name: str  # what the shards' json and manifest call it
    encoder: str  # the libavcodec encoder
    extension: str  # the container, as a file extension (and the sample's member extension)
    muxer: str  # the libavformat muxer for that container
    pix_fmt: str
    options: tuple[tuple[str, str], ...]  # encoder options; the keyframe interval is set separately


# No B-frames anywhere: decoded order equals stored order, so a seek to a keyframe plus N decodes gives frame N.
CODECS = {
    "h264": Codec("h264", "libx264", "mp4", "mp4", "yuv420p",
                  (("preset", "veryfast"), ("crf", "23"), ("bf", "0"), ("sc_threshold", "0"))),
    "hevc": Codec("hevc", "libx265", "mp4", "mp4", "yuv420p",
                  (("preset", "fast"), ("crf", "28"), ("x265-params", "bframes=0:scenecut=0:log-level=error"))),
    "vp9": Codec("vp9", "libvpx-vp9", "webm", "webm", "yuv420p",
                 (("deadline", "realtime"), ("cpu-used", "8"), ("crf", "28"), ("b", "0"))),
    "mjpeg": Codec("mjpeg", "mjpeg", "mkv", "matroska", "yuvj420p", (("qmin", "3"), ("qmax", "3"))),
    "mpeg4": Codec("mpeg4", "mpeg4", "avi", "avi", "yuv420p", (("qmin", "3"), ("qmax", "3"), ("bf", "0"))),
}

# Muxers for `--codec copy`, by the source's extension (the source container is kept).
COPY_MUXERS = {"mp4": "mp4", "webm": "webm", "mkv": "matroska", "avi": "avi"}


class VideoWriter:
    """Encodes frames into a file or a binary stream, deterministically (same frames -> same bytes).

    >>> with VideoWriter("clip.webm", "vp9", width=160, height=128, rate=25) as writer:
    ...     writer.write(rgb)  # (H, W, 3) uint8, or an av.VideoFrame
    """

    def __init__(self, file: str | Path | BinaryIO, codec: str, width: int, height: int, rate: Fraction | float,
                 gop: int = 32, lossless: bool = False):
        spec = CODECS[codec]
        if lossless and codec != "vp9":
            raise ValueError(f"lossless encoding is offered for vp9 only, not {codec}")
        self.rate = Fraction(rate).limit_denominator(100000)
        self.container = av.open(file if not isinstance(file, Path) else str(file), "w", format=spec.muxer,
                                 container_options={"fflags": "+bitexact"})
        options = {**dict(spec.options), "g": str(gop), "keyint_min": str(gop)}
        if lossless:  # libvpx-vp9's lossless mode in place of the quality target
            options = {k: v for k, v in options.items() if k not in ("crf", "b")} | {"lossless": "1"}
        self.stream = self.container.add_stream(spec.encoder, rate=self.rate, options=options)
        self.pix_fmt = spec.pix_fmt  # what write() wants frames converted to
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, spec.pix_fmt
        self.stream.thread_count = 1  # parallelism comes from worker processes
        self.num_frames = 0

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        frame.pts = self.num_frames
        frame.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(frame))
        self.num_frames += 1

    def close(self, flush: bool = True) -> None:
        if self.container is None:
            return
        try:
            if flush:
                self.container.mux(self.stream.encode())
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(flush=exc_type is None)


class JpegFramesWriter:
    """Every `frame_step`-th frame written, as a baseline JPEG of `quality` (libjpeg-turbo through Pillow, 4:2:0
    chroma), for one `.jpegs` member: `member()` gives its bytes and frame offsets. Same frames -> same bytes.

    >>> writer = JpegFramesWriter(quality=90, frame_step=2)
    >>> writer.write(rgb)  # (H, W, 3) uint8, or an av.VideoFrame
    """

    pix_fmt = "rgb24"

    def __init__(self, quality: int = 90, frame_step: int = 1):
        self.quality, self.frame_step = quality, frame_step
        self.images: list[bytes] = []
        self.num_frames = 0  # frames written, kept or not

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        if self.num_frames % self.frame_step == 0:
            rgb = frame.to_ndarray(format="rgb24") if isinstance(frame, av.VideoFrame) else frame
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, "JPEG", quality=self.quality, subsampling="4:2:0")
            self.images.append(buffer.getvalue())
        self.num_frames += 1

    def member(self) -> tuple[bytes, list[int]]:
        return frames.pack(self.images)

    def __enter__(self) -> "JpegFramesWriter":
        return self

    def __exit__(self, *exc) -> None:
        pass
