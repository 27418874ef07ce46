"""The JPEG-frame sample format (ARCHITECTURE.md section 1), defined once: `shard-videos --frames jpeg` writes it,
`shard-videos verify` checks it, both loaders read it. Imports neither DALI nor torch (shard-videos' worker
processes import it).

A clip is one member `<key>.jpegs`: its kept frames as JPEG images, concatenated. Its `.json` adds `frame_step` S
(every S-th frame of the clip is kept: frames 0, S, 2S, ...), `quality` and `frame_offsets`, the byte offset of
each kept frame in the member plus the member's length (stored + 1 numbers, the first 0). `num_frames` (and the
`.frames` member) still count the clip's frames before the step, so both loaders draw the same frame indices from
video and JPEG-frame shards of the same clips (`pipeline.sampling`); index i is read from stored frame i // S.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig

EXTENSION = "jpegs"  # the member holding a clip's JPEG frames
JPEG = "jpeg"  # the codec of JPEG-frame shards (manifest.json's codec and frames.format)


class FrameError(ValueError):
    """A JPEG-frame sample whose .json, member and tar disagree; the message says how (the caller names the clip)."""


def pack(images: list[bytes]) -> tuple[bytes, list[int]]:
    """The member's bytes and the frame offsets (len(images) + 1 numbers) of these JPEG images."""
    offsets = [0]
    for image in images:
        offsets.append(offsets[-1] + len(image))
    return b"".join(images), offsets


def stored_count(num_frames: int, frame_step: int) -> int:
    """Frames kept of a clip of `num_frames` frames: 0, S, 2S, ... < num_frames."""
    return -(-num_frames // frame_step)


def stored_indices(indices: np.ndarray, frame_step: int) -> np.ndarray:
    """The stored frames that hold clip frames `indices`: the kept frame at or before each."""
    return (np.asarray(indices) // frame_step).astype(np.int64)


def frame_offsets(meta: dict, member_size: int) -> np.ndarray:
    """A sample's (stored + 1,) frame offsets from its .json, checked against its frame count, frame step and the
    size of its `.jpegs` member. FrameError says what is wrong: a missing or empty frame, offsets out of order or
    past the member's end."""
    offsets, step, count = meta.get("frame_offsets"), meta.get("frame_step"), meta.get("num_frames")
    if not isinstance(offsets, list) or not isinstance(step, int) or not isinstance(count, int) or step < 1:
        raise FrameError("its .json lacks frame_offsets, frame_step or num_frames (not a JPEG-frame sample written "
                         "by shard-videos --frames jpeg)")
    offsets = np.asarray(offsets, dtype=np.int64)
    expected = stored_count(count, step)
    if len(offsets) - 1 != expected:
        raise FrameError(f"its .json lists {len(offsets) - 1} frames where {count} frames at frame step {step} "
                         f"keep {expected}: a frame is missing")
    sizes = np.diff(offsets)
    if offsets[0] != 0 or (sizes <= 0).any():
        first = int(np.argmax(sizes <= 0)) if (sizes <= 0).any() else 0
        raise FrameError(f"its frame offsets are not increasing from 0 (stored frame {first} is empty or out of "
                         f"order)")
    if offsets[-1] != member_size:
        where = "past" if offsets[-1] > member_size else "short of"
        raise FrameError(f"its frame offsets end at byte {offsets[-1]}, {where} the end of its .{EXTENSION} member "
                         f"({member_size} bytes)")
    return offsets


def read_frames(tar: str | Path, member_offset: int, offsets: np.ndarray, stored: np.ndarray) -> list[np.ndarray]:
    """The JPEG bytes of stored frames `stored` of the member at `member_offset` in `tar`, one uint8 array each,
    read with one pread per frame (not the whole member)."""
    fd = os.open(tar, os.O_RDONLY)
    try:
        out = []
        for k in stored:
            size = int(offsets[k + 1] - offsets[k])
            data = os.pread(fd, size, member_offset + int(offsets[k]))
            if len(data) != size:
                raise FrameError(f"the shard ends inside stored frame {k} (truncated?)")
            out.append(np.frombuffer(data, np.uint8))
        return out
    finally:
        os.close(fd)


def check_frame_step(cfg: DataConfig, frame_step: int, root: str | Path) -> None:
    """Refuse, in one line, a sampling the shards' frame step cannot serve: the random sampler's indices are
    multiples of sampling_rate apart, so S must divide it; the segment sampler takes any frame, so S must be 1."""
    if frame_step == 1:
        return
    fix = "shard the clips again with a --frame-step that divides it (1 keeps every frame)"
    if cfg.sampler == "segment":
        raise ValueError(f"{root} holds JPEG frames at frame step {frame_step} (every {frame_step}th frame kept), "
                         f"and data.sampler 'segment' may take any frame; {fix}")
    if cfg.sampling_rate % frame_step:
        raise ValueError(f"{root} holds JPEG frames at frame step {frame_step} (every {frame_step}th frame kept), "
                         f"which cannot serve data.sampling_rate {cfg.sampling_rate}: use a multiple of "
                         f"{frame_step}, or {fix}")


def crop_window(boxes: np.ndarray, height: int, width: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of a frame that views `boxes` ((V, 4): y0, x0, y1, x1) resized to `size` read, in whole pixels:
    their union widened by the resize filter's reach (a side of L pixels resized to `size` reads up to
    ceil(L / size) + 1 pixels beyond the box with antialias, 1 without), within the frame. Returns the window
    ((4,) float32: y0, x0, height, width) and the boxes in window pixels, so that decoding only the window gives
    the pixels of decoding the whole frame."""
    sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    reach = int(np.ceil(sides.max() / size)) + 1
    y0 = max(0, int(np.floor(boxes[:, 0].min())) - reach)
    x0 = max(0, int(np.floor(boxes[:, 1].min())) - reach)
    y1 = min(height, int(np.ceil(boxes[:, 2].max())) + reach)
    x1 = min(width, int(np.ceil(boxes[:, 3].max())) + reach)
    window = np.array([y0, x0, y1 - y0, x1 - x0], dtype=np.float32)
    return window, (boxes - np.array([y0, x0, y0, x0], dtype=np.float32)).astype(np.float32)


class MemberTable:
    """Where each sample's `.jpegs` member lies in its tar (data offset, size), read from the shards' DALI indexes
    the first time a tar is asked about (no tar is read). Keys are `<split>-<running number>`."""

    def __init__(self, tars: list[str], indexes: list[str]):
        self._indexes = dict(zip(tars, indexes))
        self._tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def locate(self, tar: str, key: str) -> tuple[int, int]:
        numbers, offsets, sizes = self._table(tar)
        number = int(key.rsplit("-", 1)[1])
        i = int(np.searchsorted(numbers, number))
        if i == len(numbers) or numbers[i] != number:
            raise FrameError(f"its index {Path(self._indexes[tar]).name} lists no .{EXTENSION} member for it")
        return int(offsets[i]), int(sizes[i])

    def _table(self, tar: str):
        if tar not in self._tables:
            from pipeline.shards import index_members, index_stride  # torch: only where a loader reads

            lines = Path(self._indexes[tar]).read_text().split("\n")
            rows = []
            for line in lines[1:]:
                for ext, offset, size, name in index_members(line, index_stride(lines[0]), names=True):
                    if ext == EXTENSION:
                        rows.append((int(name.split(".", 1)[0].rsplit("-", 1)[1]), offset, size))
            rows.sort()
            self._tables[tar] = tuple(np.array(column, dtype=np.int64).reshape(-1)
                                      for column in (zip(*rows) if rows else ([], [], [])))
        return self._tables[tar]
