"""The shards of one split on disk (ARCHITECTURE.md section 1): tar and index paths, sample counts, codec.

`find_shards` is where both loaders start. It refuses, with one line naming the folder or shard and the fix, what
it can tell is unfinished or damaged without reading the tars; `shard-videos verify` reads every byte.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline.frames import EXTENSION as FRAMES_EXTENSION, JPEG  # the JPEG-frame member and codec

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi")  # a sample's video member; DALI's reader takes ";".join(...)
CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI's CPU video decoder reads; NVDEC reads more
CODEC_ALIASES = {"libvpx": "vp8", "libvpx-vp9": "vp9", "avc": "h264", "avc1": "h264", "libx264": "h264",
                 "h265": "hevc", "libx265": "hevc", "mjpg": "mjpeg"}
MANIFEST, JOURNAL = "manifest.json", "progress.jsonl"  # written by shard-videos: manifest last, journal first


class UnfinishedShards(FileNotFoundError):
    """A shard folder without manifest.json: the shard-videos run that writes it last did not finish."""


class DamagedShard(ValueError):
    """A shard whose size disagrees with its index or manifest.json, or that manifest.json does not list."""


@dataclass(frozen=True)
class Shards:
    root: Path
    split: str
    tars: list[str]
    indexes: list[str]
    sizes: list[int]  # samples per tar, from the index headers
    codec: str  # the video codec, or "jpeg" for JPEG-frame shards
    tar_bytes: list[int]  # size of each tar at start (checked against manifest.json): `check_unchanged` compares
    frame_step: int = 1  # JPEG-frame shards: every frame_step-th frame of a clip is stored

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    @property
    def frames(self) -> bool:
        """JPEG-frame shards (`shard-videos --frames jpeg`), not video."""
        return self.codec == JPEG

    def without(self, tar: str) -> "Shards":
        """These shards less `tar` (on_error: skip leaving out a shard that changed during the run)."""
        keep = [i for i, t in enumerate(self.tars) if t != tar]
        return replace(self, tars=[self.tars[i] for i in keep], indexes=[self.indexes[i] for i in keep],
                       sizes=[self.sizes[i] for i in keep], tar_bytes=[self.tar_bytes[i] for i in keep])


def find_shards(root: str | Path, split: str) -> Shards:
    """Locate `<split>-NNNNNN.tar` and their `.idx` files under `root`, check them cheaply and read the codec.

    Checked here, at every start, from file sizes, the indexes and manifest.json (no tar is read): the
    shard-videos run finished (manifest.json exists), every tar has its index, the tars on disk are those
    manifest.json lists for the split, and each tar's size reaches the end of the last member its index lists
    (else it was truncated) and equals the size manifest.json records. Not checked here: the sha256 checksums and
    whether every clip decodes, which read every byte (far too slow at each start for a TB collection);
    `shard-videos verify` checks those. The loader repeats the size check at every epoch (`check_unchanged`).
    """
    root = Path(root)
    manifest = read_manifest(root)
    tars = sorted(root.glob(f"{split}-[0-9]*.tar"))
    if not tars:
        found = sorted({p.name.split("-")[0] for p in root.glob("*-[0-9]*.tar")})
        hint = f"; splits present: {', '.join(found)}" if found else "; make shards with `shard-videos INPUT OUTPUT`"
        raise FileNotFoundError(f"no shards '{split}-*.tar' in {root}{hint}")
    listed = {s["name"]: s for s in manifest.get("shards", []) if s["name"].startswith(f"{split}-")}
    indexes, sizes, tar_bytes = [], [], []
    for tar in tars:
        index = tar.with_suffix(".idx")
        if not index.is_file():
            raise FileNotFoundError(f"{index} is missing: every shard needs its DALI index; rebuild the shards "
                                    f"with `shard-videos` or run `wds2idx {tar} {index}`")
        lines = index.read_text().split("\n")
        header = lines[0].split()
        if len(header) != 2 or not header[1].isdigit():
            raise ValueError(f"{index}: not a DALI webdataset index (first line {' '.join(header)!r})")
        tar_bytes.append(check_size(tar, index, lines, listed.get(tar.name)))
        indexes.append(str(index))
        sizes.append(int(header[1]))
    missing = sorted(set(listed) - {t.name for t in tars})
    if missing:
        raise DamagedShard(f"{root}: manifest.json lists {len(missing)} shard(s) not on disk ({missing[0]}, ...); "
                           f"run `shard-videos verify {root}` and copy the missing shards")
    frames = manifest.get("frames") or {}
    return Shards(root, split, [str(t) for t in tars], indexes, sizes, read_codec(manifest, tars[0], indexes[0]),
                  tar_bytes, int(frames.get("frame_step", 1)))


class ChangedShard(DamagedShard):
    """A shard deleted, truncated or rewritten since the run started; `tar` names it."""

    def __init__(self, message: str, tar: str):
        super().__init__(message)
        self.tar = tar


def check_unchanged(shards: Shards) -> None:
    """Every tar is still there with the size it had at start (one stat each: cheap at every epoch start).
    ChangedShard naming the first that was deleted, truncated or rewritten since `find_shards`."""
    fix = (f"run `shard-videos verify {shards.root}`, restore the shard, then resume from the last checkpoint "
           f"(train --resume auto)")
    for tar, start in zip(shards.tars, shards.tar_bytes, strict=True):
        try:
            size = Path(tar).stat().st_size
        except FileNotFoundError:
            raise ChangedShard(f"{tar} was deleted while the run was reading the shards; {fix}", tar) from None
        if size != start:
            raise ChangedShard(f"{tar} is now {size} bytes, {start} when the run started: it was truncated or "
                               f"rewritten while the run was reading it; {fix}", tar)


def read_manifest(root: Path) -> dict:
    """manifest.json of a shard folder. A folder with shard-videos output but no manifest is an unfinished run
    (killed or still running: finished tars, maybe a `.tar.tmp`); both cases without one raise, naming the fix."""
    path = root / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    if (root / JOURNAL).is_file() or any(root.glob("*-[0-9]*.tar*")):
        raise UnfinishedShards(f"{root} has no {MANIFEST}: the shard-videos run writing it did not finish (killed, "
                               f"or still running); finish it with `shard-videos {journal_input(root)} {root} "
                               f"--resume` and the options of the first run")
    raise FileNotFoundError(f"no shards in {root} (no {MANIFEST}); make them with `shard-videos INPUT {root}`")


def journal_input(root: Path) -> str:
    """The INPUT of the shard-videos run that wrote `root`, from its journal's header; 'INPUT' if unreadable."""
    try:
        with open(root / JOURNAL) as f:
            return str(json.loads(f.readline())["header"]["input"])
    except (OSError, ValueError, KeyError, TypeError):
        return "INPUT"


def index_members(line: str, stride: int, names: bool = False) -> list[tuple]:
    """(extension, data offset, size) of each member on one sample line of a DALI index; with `names`, the member's
    file name as a fourth field (index format v1.2, which shard-videos writes)."""
    fields = line.split()
    if names and stride != 4:
        raise ValueError("this DALI index has no member names (format older than v1.2); rebuild the shards with "
                         "`shard-videos`")
    return [(fields[i], int(fields[i + 1]), int(fields[i + 2]), *fields[i + 3:i + 3 + names])
            for i in range(0, len(fields) - 2, stride)]


def index_stride(header: str) -> int:
    return 4 if header.startswith("v1.2") else 3  # v1.2 adds each member's file name


def check_size(tar: Path, index: Path, lines: list[str], listed: dict | None) -> int:
    """The tar's size, checked to reach the end of the last member its index lists and to be the size
    manifest.json records."""
    size, root = tar.stat().st_size, tar.parent
    samples = [line for line in lines[1:] if line.strip()]
    end = max((offset + length for _, offset, length in index_members(samples[-1], index_stride(lines[0]))),
              default=0) if samples else 0
    if size < end:
        raise DamagedShard(f"{tar} is {size} bytes, shorter than its index {index.name} expects ({end} bytes): "
                           f"the shard is truncated (an interrupted copy?); run `shard-videos verify {root}` and "
                           f"copy or rebuild the shard")
    if listed is None:
        raise DamagedShard(f"{tar} is not listed in {root / MANIFEST} (a file from another run?); run "
                           f"`shard-videos verify {root}`")
    if size != listed["bytes"]:
        raise DamagedShard(f"{tar} is {size} bytes but {MANIFEST} lists {listed['bytes']}: the file changed after "
                           f"shard-videos wrote it; run `shard-videos verify {root}`")
    return size


def read_codec(manifest: dict, tar: Path, index: str) -> str:
    """Codec of the shards: manifest.json's `codec`, else (--codec copy) the first sample's `.json` member."""
    codec = manifest.get("codec")
    if not codec or codec == "copy":
        codec = first_sample_meta(tar, index).get("codec")
    if not codec:
        raise ValueError(f"cannot tell the codec of the shards in {tar.parent}: neither manifest.json nor the first "
                         f"sample's .json has a 'codec'")
    codec = str(codec).lower()
    return CODEC_ALIASES.get(codec, codec)


def first_sample_meta(tar: Path, index: str) -> dict:
    """The `.json` member of the first sample, located through the index (no tar scan)."""
    meta = first_samples(tar, index, 1, only=("json",))[0].get("json")
    if meta is None:
        raise ValueError(f"{tar}: the first sample has no .json member")
    return json.loads(meta)


def first_samples(tar: Path | str, index: str, count: int, only: tuple[str, ...] | None = None
                  ) -> list[dict[str, bytes]]:
    """The members (extension -> bytes; `only` these extensions) of the first `count` samples of a shard, read
    through its index."""
    lines = [line for line in Path(index).read_text().split("\n")[1:] if line.strip()]
    stride = index_stride(Path(index).read_text().split("\n", 1)[0])
    samples = []
    with open(tar, "rb") as f:
        for line in lines[:count]:
            sample = {}
            for ext, offset, size in index_members(line, stride):
                if only is not None and ext not in only:
                    continue
                f.seek(offset)
                sample[ext] = f.read(size)
            samples.append(sample)
    return samples


def resolve_decode_device(requested: str) -> str:
    """'cpu' or 'gpu' from the config's 'auto' | 'cpu' | 'gpu'."""
    has_gpu = torch.cuda.is_available()
    if requested == "gpu" and not has_gpu:
        raise RuntimeError("decode_device is 'gpu' but CUDA is not available; set decode_device to 'cpu' or 'auto'")
    if requested == "auto":
        return "gpu" if has_gpu else "cpu"
    return requested


# NVDEC refuses frames smaller than this in either dimension (read from the decoder's error on an H100, DALI 2.4)
NVDEC_MIN_SIDE = {"hevc": 144, "vp9": 128}


def choose_decode_device(requested: str, shards: Shards) -> str:
    """'cpu' or 'gpu' for decoding `shards`: `requested` resolved ('auto': NVDEC when CUDA is present, except for
    clips too small for NVDEC in a codec the CPU reads, said in one line), then checked."""
    device = resolve_decode_device(requested)
    small = nvdec_too_small(shards) if device == "gpu" else None
    if small and requested == "auto" and cpu_decodes(shards.codec):
        print(f"[pipeline] {small}: decoding on the CPU (decode_device: auto)", file=sys.stderr, flush=True)
        device = "cpu"
    elif small:
        raise RuntimeError(f"{small}: decode on the CPU (decode_device: cpu, for {', '.join(CPU_CODECS)}) or "
                           f"re-encode the shards as H.264 (`shard-videos INPUT {shards.root} --codec h264`)")
    check_decodable(shards, device)
    return device


def nvdec_too_small(shards: Shards) -> str | None:
    """Why NVDEC cannot decode the shards' first clip (too small for its codec), or None."""
    side = NVDEC_MIN_SIDE.get(shards.codec)
    if side is None:
        return None
    meta = first_sample_meta(Path(shards.tars[0]), shards.indexes[0])
    width, height = int(meta.get("width", side)), int(meta.get("height", side))
    if min(width, height) >= side:
        return None
    return (f"the shards in {shards.root} hold {width}x{height} {shards.codec} video (first clip), and NVDEC decodes "
            f"{shards.codec} only from {side}x{side}")


def cpu_decodes(codec: str) -> bool:
    """Whether DALI's CPU decoders read shards of this codec (video codecs in CPU_CODECS, and JPEG frames)."""
    return codec in CPU_CODECS or codec == JPEG


def check_decodable(shards: Shards, decode_device: str) -> None:
    """Fail before training when the CPU decoder cannot read the shards' codec."""
    if decode_device == "cpu" and not cpu_decodes(shards.codec):
        why = "no CUDA GPU is available" if not torch.cuda.is_available() else "decode_device is 'cpu'"
        what = "several codecs (--codec copy)" if shards.codec == "mixed" else shards.codec
        raise RuntimeError(
            f"the shards in {shards.root} hold {what} video, but decoding runs on the CPU ({why}) and DALI's CPU "
            f"decoder reads only {', '.join(CPU_CODECS)} and JPEG frames. Shard them again: "
            f"`shard-videos INPUT {shards.root} --codec vp9` (or --frames jpeg), or decode on a GPU "
            f"(decode_device: gpu).")
