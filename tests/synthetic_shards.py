"""Test shards: the generator's synthetic motion clips, packed by `shard-videos` as VP9 (DALI's CPU decoder reads it)."""

from __future__ import annotations

from pathlib import Path

from shard_tools import cli as shard_cli
from shard_tools.synthetic import make_collection


def synthetic_shards(root: Path, *shard_args: str, num_classes: int = 4, clips_per_class: int = 4,
                     num_frames: int = 24, seed: int = 0, workers: int = 1) -> Path:
    """Clips of 64x48 under root/videos, sharded into root/shards (`shard_args`: more shard-videos options)."""
    videos, out = Path(root) / "videos", Path(root) / "shards"
    make_collection(videos, num_classes=num_classes, clips_per_class=clips_per_class, num_frames=num_frames,
                    size=(48, 64), seed=seed)
    args = [str(videos), str(out), "--codec", "vp9", "--workers", str(workers), *shard_args]
    assert shard_cli.main(args) == 0
    return out
