"""Benchmark records: `bench ... --record [FILE]` appends one JSON object a line (default
docs/benchmarks/records.jsonl, the repository's record of every figure BENCHMARKS.md quotes).

A record holds what the figure is and where it came from: bench, device (the GPU's name, or the CPU model with
its cores), date (UTC), commit (with '+dirty' for uncommitted changes), command (as typed), config, model,
batch_size, num_frames, input_size, mask_ratio, shards (format: the video codec or jpeg, frame size, frame step,
JPEG quality), clips_per_s, and for model and e2e also mfu and data_wait (e2e); `result` keeps everything the
bench printed as JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PROJECT_ROOT
from pipeline.shards import find_shards, first_sample_meta, read_manifest
from train.bench.machine import machine
from train.config import TrainConfig

DEFAULT = PROJECT_ROOT / "docs" / "benchmarks" / "records.jsonl"


def commit() -> str | None:
    """The checkout's commit, '+dirty' when tracked files differ from it; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def shard_format(root: str, split: str) -> dict | None:
    """What a shard folder holds: codec (or jpeg), frame size of its first clip, frame step, JPEG quality."""
    try:
        shards = find_shards(root, split)
    except (OSError, ValueError):
        return None
    meta = first_sample_meta(Path(shards.tars[0]), shards.indexes[0])
    frames = read_manifest(Path(root)).get("frames") or {}
    return {"path": str(root), "format": shards.codec, "width": meta.get("width"), "height": meta.get("height"),
            "frame_step": shards.frame_step, "quality": frames.get("quality")}


def record_rows(bench: str, cfg: TrainConfig, result: dict, config_path: str | None,
                argv: list[str] | None = None) -> list[dict]:
    """One record per measured setting of `result` (bench decode and a loader comparison measure several);
    `argv`: the command's arguments after `bench` (default: this process's)."""
    info = machine()
    device = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores)"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    base = {"bench": bench, "device": device, "date": date,
            "commit": commit(), "command": shlex.join(["bench", *(sys.argv[1:] if argv is None else argv)]),
            "config": config_path, "model": cfg.model.size if bench in ("model", "e2e", "loop") else None,
            "batch_size": cfg.data.batch_size, "num_frames": cfg.data.num_frames, "input_size": cfg.data.input_size,
            "mask_ratio": cfg.data.mask_ratio}
    rows = result["rows"] if isinstance(result.get("rows"), list) else [result]
    rows = rows + result.get("by_last_frame", [])  # bench decode: ms per clip against the last frame index
    out = []
    for row in rows:
        shards = row.get("shards", cfg.data.shards if bench in ("loader", "decode", "e2e", "loop") else None)
        out.append({**base, "shards": shard_format(shards, cfg.data.split) if shards else None,
                    "clips_per_s": row.get("clips_per_s", row.get("samples_per_s")), "mfu": row.get("mfu"),
                    "data_wait": row.get("data_wait_fraction"), "result": row})
    return out


def append(path: str | Path, rows: list[dict]) -> Path:
    """Append the rows to the records file (made with its folder if missing), flushed to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path
