"""The shards of one split on disk (ARCHITECTURE.md section 1): tar and index paths, sample counts, codec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

VIDEO_EXTENSIONS = "mp4;webm;mkv;avi"
CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI's CPU video decoder reads; NVDEC reads more
CODEC_ALIASES = {"libvpx": "vp8", "libvpx-vp9": "vp9", "avc": "h264", "avc1": "h264", "libx264": "h264",
                 "h265": "hevc", "libx265": "hevc", "mjpg": "mjpeg"}


@dataclass(frozen=True)
class Shards:
    root: Path
    split: str
    tars: list[str]
    indexes: list[str]
    sizes: list[int]  # samples per tar, from the index headers
    codec: str

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)


def find_shards(root: str | Path, split: str) -> Shards:
    """Locate `<split>-NNNNNN.tar` and their `.idx` files under `root` and read the codec."""
    root = Path(root)
    tars = sorted(root.glob(f"{split}-[0-9]*.tar"))
    if not tars:
        found = sorted({p.name.split("-")[0] for p in root.glob("*-[0-9]*.tar")})
        hint = f"; splits present: {', '.join(found)}" if found else "; make shards with `shard-videos INPUT OUTPUT`"
        raise FileNotFoundError(f"no shards '{split}-*.tar' in {root}{hint}")
    indexes, sizes = [], []
    for tar in tars:
        index = tar.with_suffix(".idx")
        if not index.is_file():
            raise FileNotFoundError(f"{index} is missing: every shard needs its DALI index; rebuild the shards "
                                    f"with `shard-videos` or run `wds2idx {tar} {index}`")
        header = index.read_text().split("\n", 1)[0].split()
        if len(header) != 2 or not header[1].isdigit():
            raise ValueError(f"{index}: not a DALI webdataset index (first line {' '.join(header)!r})")
        indexes.append(str(index))
        sizes.append(int(header[1]))
    return Shards(root, split, [str(t) for t in tars], indexes, sizes, read_codec(root, tars[0], indexes[0]))


def read_codec(root: Path, tar: Path, index: str) -> str:
    """Codec of the shards: manifest.json's `codec`, else the first sample's `.json` member."""
    codec = None
    manifest = root / "manifest.json"
    if manifest.is_file():
        codec = json.loads(manifest.read_text()).get("codec")
    if not codec or codec == "copy":
        codec = first_sample_meta(tar, index).get("codec")
    if not codec:
        raise ValueError(f"cannot tell the codec of the shards in {root}: neither manifest.json nor the first "
                         f"sample's .json has a 'codec'")
    codec = str(codec).lower()
    return CODEC_ALIASES.get(codec, codec)


def first_sample_meta(tar: Path, index: str) -> dict:
    """The `.json` member of the first sample, located through the index (no tar scan)."""
    lines = Path(index).read_text().split("\n")
    stride = 4 if lines[0].startswith("v1.2") else 3  # v1.2 adds each member's file name
    fields = lines[1].split()
    for i in range(0, len(fields) - 2, stride):
        ext, offset, size = fields[i], int(fields[i + 1]), int(fields[i + 2])
        if ext == "json":
            with open(tar, "rb") as f:
                f.seek(offset)
                return json.loads(f.read(size))
    raise ValueError(f"{tar}: the first sample has no .json member")


def resolve_decode_device(requested: str) -> str:
    """'cpu' or 'gpu' from the config's 'auto' | 'cpu' | 'gpu'."""
    has_gpu = torch.cuda.is_available()
    if requested == "gpu" and not has_gpu:
        raise RuntimeError("decode_device is 'gpu' but CUDA is not available; set decode_device to 'cpu' or 'auto'")
    if requested == "auto":
        return "gpu" if has_gpu else "cpu"
    return requested


def check_decodable(shards: Shards, decode_device: str) -> None:
    """Fail before training when the CPU decoder cannot read the shards' codec."""
    if decode_device == "cpu" and shards.codec not in CPU_CODECS:
        why = "no CUDA GPU is available" if not torch.cuda.is_available() else "decode_device is 'cpu'"
        what = "several codecs (--codec copy)" if shards.codec == "mixed" else shards.codec
        raise RuntimeError(
            f"the shards in {shards.root} hold {what} video, but decoding runs on the CPU ({why}) and DALI's CPU "
            f"decoder reads only {', '.join(CPU_CODECS)}. Re-encode them: "
            f"`shard-videos INPUT {shards.root} --codec vp9`, or decode on a GPU (decode_device: gpu).")
