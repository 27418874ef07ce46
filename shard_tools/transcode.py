"""One clip in, one sample out: probe, decode, check, resize/cap the frame rate/trim, encode as video or as JPEG
frames (or remux with `--codec copy`), and count the frames that decode. Runs in worker processes; never raises on
bad input.

A rejected clip comes back with a reason `<kind>: <details>`; the kinds are listed in REJECT_KINDS.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from pipeline import frames
from shard_tools.encode import CODECS, COPY_MUXERS, JpegFramesWriter, VideoWriter

REJECT_KINDS = {
    "empty": "the file has 0 bytes",
    "unreadable": "no container could be opened",
    "no_video": "no video stream (e.g. audio only)",
    "zero_frames": "not one frame decodes",
    "truncated": "far fewer frames decode than the header declares",
    "undecodable": "decoding or encoding failed part way",
    "too_short": "fewer decodable frames than --min-frames",
}
TRUNCATED_BELOW = 0.8  # a clip is truncated when fewer than this fraction of the declared frames decode
CODEC_NAMES = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9", "libvpx": "vp8", "libdav1d": "av1",
               "libaom-av1": "av1"}


@dataclass(frozen=True)
class Settings:
    codec: str = "h264"  # a key of CODECS, or "copy"
    short_side: int | None = 320  # resize so the short side is this (never upscale); None keeps the size
    fps: float | None = None  # cap on the frame rate; None keeps the source's
    gop: int = 32  # keyframe interval, frames
    max_seconds: float | None = None  # keep at most this much of each clip
    min_frames: int = 16  # fewer decodable frames -> rejected
    frames: str | None = None  # "jpeg": store JPEG frames (pipeline/frames.py) instead of video; codec is unused
    quality: int = 90  # JPEG quality of stored frames
    frame_step: int = 1  # store every frame_step-th frame


@dataclass
class Result:
    video: bytes | None = None  # the encoded video, or the JPEG frames member
    extension: str = ""  # the sample member's extension: mp4, webm, mkv, avi, or jpegs
    meta: dict | None = None  # num_frames, fps, width, height, codec, duration (+ JPEG frames: frame_step, ...)
    reason: str | None = None  # why it was rejected; None when accepted


class Rejected(Exception):
    pass


def process_clip(path: str | Path, settings: Settings) -> Result:
    """The sample for one clip, or the reason it was left out."""
    try:
        return Result(*encode_clip(Path(path), settings))
    except Rejected as rejected:
        return Result(reason=str(rejected))
    except Exception as error:  # anything else a strange file provokes in libav or PyAV
        return Result(reason=f"undecodable: {type(error).__name__}: {error}")


def encode_clip(path: Path, settings: Settings) -> tuple[bytes, str, dict]:
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise Rejected(f"unreadable: {error.strerror}") from None
    if size == 0:
        raise Rejected("empty: the file has 0 bytes")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as error:
        raise Rejected(f"unreadable: {error.strerror or error}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            raise Rejected(f"no_video: the file has no video stream (streams: {', '.join(kinds) or 'none'})")
        stream = container.streams.video[0]
        stream.thread_count = 1
        declared = declared_frames(container, stream)
        if settings.codec == "copy":
            video, extension, cut = remux(container, stream, path, settings)
            decoded, probe = None, None
        else:
            video, extension, decoded, cut, probe = transcode(container, stream, settings)
    if decoded != 0 and probe is None:  # a video to probe (transcoding that decoded nothing leaves none)
        probe = probe_output(video)
        decoded = probe["num_frames"] if decoded is None else decoded
    if decoded == 0:
        raise Rejected("zero_frames: not one video frame decodes")
    if not cut and declared and decoded < TRUNCATED_BELOW * declared:
        raise Rejected(f"truncated: {decoded} frames decode, the header declares {declared:.0f}")
    if probe["num_frames"] < settings.min_frames:
        raise Rejected(f"too_short: {probe['num_frames']} decodable frames, fewer than --min-frames "
                       f"{settings.min_frames}")
    return video, extension, probe


def declared_frames(container, stream) -> float | None:
    """The frame count the header promises, if it says: a frame count, or duration x frame rate."""
    if stream.frames:
        return stream.frames
    rate = stream.average_rate or stream.guessed_rate
    if rate and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base * rate)
    if rate and container.duration:
        return container.duration / av.time_base * float(rate)
    return None


SIZE_MULTIPLE = 16  # DALI's NVDEC decoder cache looks decoders up by coded size: other sizes miss it every clip


def output_size(width: int, height: int, sample_aspect: Fraction | None, short_side: int | None) -> tuple[int, int]:
    """Square-pixel width and height with the source's display aspect ratio, short side about `short_side` at most
    (never upscaled), each side rounded to the nearest multiple of 16 (at least 16): NVDEC codes frames in 16x16
    macroblocks, and DALI reuses its decoder only for such sizes; 4:2:0 JPEG frames are then whole 16x16 blocks."""
    if sample_aspect and sample_aspect > 0 and sample_aspect != 1:
        width = width * sample_aspect
    scale = min(1, Fraction(short_side) / min(width, height)) if short_side else 1
    return tuple(max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in (width, height))


def transcode(container, stream, settings: Settings) -> tuple[bytes, str, int, bool, dict | None]:
    """Decode every frame, keep those under the frame-rate cap and time limit, encode them as video or as JPEG
    frames; returns (bytes, extension, frames decoded from the source, whether the clip was cut short on purpose,
    the JPEG frames' metadata or None for video, which is probed afterwards)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise Rejected("unreadable: the video stream has no frame rate")
    out_rate = min(rate, Fraction(settings.fps).limit_denominator(1001)) if settings.fps else rate
    context = stream.codec_context
    width, height = output_size(context.width, context.height, context.sample_aspect_ratio, settings.short_side)
    budget = int(settings.max_seconds * out_rate + 1e-6) if settings.max_seconds is not None else None  # frames
    buffer = io.BytesIO()
    if settings.frames:
        writer = JpegFramesWriter(settings.quality, settings.frame_step)
    else:
        writer = VideoWriter(buffer, settings.codec, width, height, out_rate, settings.gop)
    decoded, cut, first_time = 0, False, None
    with writer:
        for frame in container.decode(stream):
            if writer.num_frames == budget:
                cut = True
                break
            time = frame.time if frame.time is not None else decoded / float(rate)
            decoded += 1
            first_time = time if first_time is None else first_time
            time -= first_time
            if out_rate < rate and time < writer.num_frames / float(out_rate) - 0.5 / float(rate):
                continue  # dropped by the frame-rate cap
            writer.write(frame.reformat(width=width, height=height, format=writer.pix_fmt, interpolation="AREA"))
    if not settings.frames:
        return buffer.getvalue(), CODECS[settings.codec].extension, decoded, cut, None
    member, offsets = writer.member()
    fps = float(out_rate)
    meta = {"num_frames": writer.num_frames, "fps": round(fps, 6), "width": width, "height": height,
            "codec": frames.JPEG, "duration": round(writer.num_frames / fps, 6), "frame_step": settings.frame_step,
            "quality": settings.quality, "frame_offsets": offsets}
    return member, frames.EXTENSION, decoded, cut, meta


def remux(container, stream, path: Path, settings: Settings) -> tuple[bytes, str, bool]:
    """The video stream's packets, unchanged, in a container of the source's kind (audio dropped)."""
    extension = path.suffix.lower().lstrip(".")
    extension = {"mov": "mp4", "m4v": "mp4"}.get(extension, extension)
    if extension not in COPY_MUXERS:
        extension = "mkv"  # holds any codec
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    frame_seconds = 1 / rate if rate else 0
    buffer = io.BytesIO()
    cut, start = False, None
    with av.open(buffer, "w", format=COPY_MUXERS[extension], container_options={"fflags": "+bitexact"}) as out:
        out_stream = out.add_stream_from_template(stream)
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if settings.max_seconds is not None and packet.pts is not None:
                start = packet.pts if start is None else start
                if (packet.pts - start) * packet.time_base + frame_seconds > settings.max_seconds + 1e-6:
                    cut = True  # this frame would end after --max-seconds
                    break
            packet.stream = out_stream
            out.mux(packet)
    return buffer.getvalue(), extension, cut


def probe_output(video: bytes) -> dict:
    """What the pipeline will see in an encoded sample: frames that decode, rate, size, codec, duration."""
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        num_frames = sum(1 for _ in container.decode(stream))
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        context = stream.codec_context
        name, width, height = context.name, context.width, context.height
    fps = float(rate) if rate else 0.0
    return {"num_frames": num_frames, "fps": round(fps, 6), "width": width, "height": height,
            "codec": CODEC_NAMES.get(name, name), "duration": round(num_frames / fps, 6) if fps else 0.0}
