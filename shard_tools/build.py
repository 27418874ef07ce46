"""A sharding run: order the clips, transcode them in worker processes, write shards in order, resume.

The sample order is a seeded shuffle per split, and the main process writes results in that order whatever
the workers' timing, so the same inputs and seed give byte-identical output. After each finished shard a line
goes to `progress.jsonl` (the journal); `--resume` replays the journal, skips the clips of finished shards and
goes on with the same key and shard numbering. `manifest.json` is written last.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import struct
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import av
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from pipeline import frames
from shard_tools.encode import CODECS
from shard_tools.inputs import SPLIT_ORDER, Clip, Collection, InputError, load_collection
from shard_tools.tarshard import ShardWriter, sample_bytes
from shard_tools.transcode import Result, Settings, process_clip

FORMAT = "tubemae-shards/1"
JOURNAL, MANIFEST, REJECTED = "progress.jsonl", "manifest.json", "rejected.jsonl"
OUR_FILES = re.compile(r"^([a-z]+-\d{6}\.(tar|idx)|manifest\.json|rejected\.jsonl|progress\.jsonl)(\.tmp)?$")
TAR_END = 10240  # at most: two zero blocks, padded to a tar record


@dataclass(frozen=True)
class RunConfig:
    input: str
    out: str
    labels: str | None = None
    split_id: int = 1
    unlabelled: bool = False
    skip_missing: bool = False
    val_fraction: float = 0.0
    seed: int = 0
    shard_size: int = 10**9
    settings: Settings = field(default_factory=Settings)
    workers: int = 1  # 0 = in this process
    resume: bool = False
    overwrite: bool = False


@dataclass
class Outcome:
    manifest: dict
    rejected: list[dict]
    seconds: float  # wall time of this run
    processed: int  # clips processed in this run (not counting those resumed from the journal)
    already_complete: bool = False


def build(config: RunConfig, console: Console | None = None) -> Outcome:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(config.out)
    collection = load_collection(config.input, config.labels, config.split_id, config.unlabelled,
                                 config.skip_missing, config.val_fraction, config.seed)
    order = shuffled(collection.clips, config.seed)
    header = run_header(config, collection, order)
    entries = prepare_output(out, config, header)
    if entries is None:  # --resume on a finished run
        manifest = json.loads((out / MANIFEST).read_text())
        rejected = [json.loads(line) for line in (out / REJECTED).read_text().splitlines() if line]
        return Outcome(manifest, rejected, time.perf_counter() - started, 0, already_complete=True)

    writer = OrderedShardWriter(out, config.shard_size, collection, entries)
    todo = order[writer.consumed:]
    if entries:
        console.print(f"resuming: {len(entries)} finished shard(s) cover the first {writer.consumed} of {len(order)} "
                      f"inputs")
    with progress_bar(console) as progress:
        task = progress.add_task("sharding", total=len(todo), rejected=0)
        rejected = 0
        for position, (clip, result) in enumerate(ordered_results(todo, config.settings, config.workers),
                                                  start=writer.consumed):
            writer.add(position, clip, result)
            rejected += result.reason is not None
            progress.update(task, advance=1, rejected=rejected)
        writer.finish(len(order))

    rejected_lines = sorted(
        [{"path": entry, "reason": f"missing: {source} names it, but no such video is under {collection.root}"}
         for source, entry in collection.missing] + writer.all_rejected(), key=lambda r: r["path"])
    write_atomically(out / REJECTED, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected_lines))
    manifest = make_manifest(header, collection, writer.entries, rejected_lines)
    write_atomically(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return Outcome(manifest, rejected_lines, time.perf_counter() - started, len(todo))


def shuffled(clips: list[Clip], seed: int) -> list[Clip]:
    """Clips split by split (train, val, test, all), each split in a seeded random order."""
    order = []
    for split in SPLIT_ORDER:
        group = sorted((c for c in clips if c.split == split), key=lambda c: c.source)
        random.Random(f"{seed}:{split}").shuffle(group)
        order += group
    return order


def run_header(config: RunConfig, collection: Collection, order: list[Clip]) -> dict:
    """Everything the output depends on; a resumed run must match it."""
    listing = "\n".join(f"{c.split}\t{c.label}\t{c.source}" + "".join(f"\t{k}={v}" for k, v in c.extra) for c in order)
    return {
        "input": str(Path(config.input).resolve()),
        "labels": str(Path(config.labels).resolve()) if config.labels else None,
        "layout": collection.layout,
        "split_id": config.split_id if collection.layout in ("ucf101", "hmdb51") else None,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "shard_size": config.shard_size,
        **asdict(config.settings),
        "libav": f"PyAV {av.__version__}, libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}",
        "inputs_sha256": hashlib.sha256(listing.encode()).hexdigest(),
    }


def prepare_output(out: Path, config: RunConfig, header: dict) -> list[dict] | None:
    """Check the output folder; returns the journal entries to resume from ([] for a fresh run), or None when
    `--resume` finds the run already finished."""
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if present and config.overwrite:
        foreign = [name for name in present if not OUR_FILES.match(name)]
        if foreign:
            raise InputError(f"--overwrite: {out} holds files shard-videos did not write (e.g. {foreign[0]}); "
                             f"choose an empty folder")
        for name in present:
            (out / name).unlink()
        present = []
    journal = out / JOURNAL
    if present and not config.resume:
        raise InputError(f"output folder {out} is not empty; pass --resume to continue an interrupted run, "
                         f"--overwrite to replace its shards, or choose another folder")
    if present and not journal.is_file():
        raise InputError(f"--resume: {out} has no {JOURNAL}, so it is not a shard-videos run to resume")
    out.mkdir(parents=True, exist_ok=True)
    if not present:
        write_atomically(journal, json.dumps({"header": header}) + "\n")
        return []

    lines = journal.read_text().split("\n")
    first = json.loads(lines[0])["header"]
    if first != header:
        changed = sorted(k for k in header if first.get(k) != header[k])
        raise InputError(f"--resume: {out} was made with different inputs or settings ({', '.join(changed)}); "
                         f"use the same command, or --overwrite")
    entries, kept = [], [lines[0]]
    for line in lines[1:]:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line, torn by a kill mid-write (or the empty string after the last newline)
        kept.append(line)
    if (out / MANIFEST).is_file():
        return None
    finished = set()
    for entry in entries:
        tar = out / entry["name"]
        if not tar.is_file() or tar.stat().st_size != entry["bytes"] or not (out / entry["index"]).is_file():
            raise InputError(f"--resume: {tar} is listed as finished in {journal} but is missing or has the wrong "
                             f"size; start again with --overwrite")
        finished |= {entry["name"], entry["index"]}
    for name in present:  # unfinished shards, and finished ones written after the last journal line
        if name not in finished and OUR_FILES.match(name) and name != JOURNAL:
            (out / name).unlink()
    write_atomically(journal, "\n".join(kept) + "\n")
    return entries


class OrderedShardWriter:
    """Puts accepted clips, in the order given, into shards of at most `shard_size` bytes (one clip more when a
    single clip is larger), one series of shards per split, and journals each finished shard."""

    def __init__(self, out: Path, shard_size: int, collection: Collection, entries: list[dict]):
        self.out, self.shard_size, self.collection = out, shard_size, collection
        self.entries = entries
        self.consumed = entries[-1]["consumed"] if entries else 0
        self.next_key = Counter()
        self.next_shard = Counter()
        for entry in entries:
            self.next_key[entry["split"]] += entry["samples"]
            self.next_shard[entry["split"]] += 1
        self.split: str | None = None
        self.shard: ShardWriter | None = None
        self.shard_stats: dict = {}
        self.pending_rejected: list[dict] = []

    def add(self, position: int, clip: Clip, result: Result) -> None:
        if clip.split != self.split:
            self.close_shard(position)
            self.split = clip.split
        if result.reason is not None:
            self.pending_rejected.append({"path": clip.source, "reason": result.reason})
            return
        key = f"{clip.split}-{self.next_key[clip.split]:08d}"
        label_index = self.collection.label_index(clip)
        meta = {"source": clip.source, "label": clip.label, "label_index": label_index, **dict(clip.extra),
                **result.meta}
        members = [(result.extension, result.video),
                   ("json", json.dumps(meta, ensure_ascii=False).encode()),
                   ("frames", struct.pack("<i", meta["num_frames"])),
                   ("label", struct.pack("<i", label_index))]
        if self.shard and self.shard.size + sample_bytes(members) + TAR_END > self.shard_size:
            self.close_shard(position)
        if self.shard is None:
            number = self.next_shard[clip.split]
            self.shard = ShardWriter(self.out, f"{clip.split}-{number:06d}")
            self.shard_stats = {"classes": Counter(), "codecs": Counter(), "containers": Counter(), "frames": 0,
                                "seconds": 0.0, "sources": []}
            self.next_shard[clip.split] += 1
        self.shard.add(key, members)
        self.next_key[clip.split] += 1
        stats = self.shard_stats
        stats["classes"][clip.label if clip.label is not None else ""] += 1
        stats["codecs"][meta["codec"]] += 1
        stats["containers"][result.extension] += 1
        stats["frames"] += meta["num_frames"]
        stats["seconds"] += meta["duration"]
        stats["sources"].append(clip.source)

    def close_shard(self, consumed: int) -> None:
        if self.shard is None:
            return
        size, sha256 = self.shard.finish()
        stats = self.shard_stats
        entry = {"split": self.split, "name": self.shard.tar_path.name, "index": self.shard.index_path.name,
                 "samples": len(self.shard.keys), "bytes": size, "sha256": sha256, "consumed": consumed,
                 "first_key": self.shard.keys[0], "last_key": self.shard.keys[-1],
                 "classes": dict(sorted(stats["classes"].items())), "codecs": dict(stats["codecs"]),
                 "containers": dict(stats["containers"]), "frames": stats["frames"],
                 "seconds": round(stats["seconds"], 3), "sources": stats["sources"],
                 "rejected": self.pending_rejected}
        append_line(self.out / JOURNAL, json.dumps(entry, ensure_ascii=False))
        self.entries.append(entry)
        self.shard, self.pending_rejected = None, []

    def finish(self, total: int) -> None:
        self.close_shard(total)

    def all_rejected(self) -> list[dict]:
        return [r for entry in self.entries for r in entry["rejected"]] + self.pending_rejected


def ordered_results(clips: list[Clip], settings: Settings, workers: int,
                    function: Callable[[str, Settings], Result] = process_clip) -> Iterator[tuple[Clip, Result]]:
    """(clip, result) in the order of `clips`, computed by `workers` processes (0: in this process).

    A worker that dies (a crash inside libav) breaks the pool: the clips that were in flight then run again one
    at a time, each in a fresh process, and the one that kills its process again is rejected."""
    if workers == 0:
        for clip in clips:
            yield clip, function(str(clip.path), settings)
        return
    context = multiprocessing.get_context("spawn")  # fork is unsafe once DALI, torch or libav threads exist
    window = 4 * workers
    source = iter(clips)
    pending: deque = deque()
    pool = ProcessPoolExecutor(workers, mp_context=context)

    def refill():
        while len(pending) < window:
            clip = next(source, None)
            if clip is None:
                return
            try:
                future = pool.submit(function, str(clip.path), settings)
            except BrokenProcessPool as broken:  # a worker died since the last result: fail this clip's future
                future = Future()  # too, so that it runs again with the others that were in flight
                future.set_exception(broken)
            pending.append((clip, future))

    try:
        refill()
        while pending:
            clip, future = pending[0]
            try:
                result = future.result()
            except BrokenProcessPool:
                stranded = [c for c, _ in pending]
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                for clip in stranded:
                    yield clip, run_alone(clip, settings, function, context)
                pool = ProcessPoolExecutor(workers, mp_context=context)
                refill()
                continue
            pending.popleft()
            refill()
            yield clip, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_alone(clip: Clip, settings: Settings, function, context) -> Result:
    with ProcessPoolExecutor(1, mp_context=context) as solo:
        try:
            return solo.submit(function, str(clip.path), settings).result()
        except BrokenProcessPool:
            return Result(reason="undecodable: reading it killed the worker process (a crash inside the decoder)")


def make_manifest(header: dict, collection: Collection, entries: list[dict], rejected: list[dict]) -> dict:
    splits = {}
    for split in SPLIT_ORDER:
        mine = [e for e in entries if e["split"] == split]
        if not mine:
            continue
        per_class = Counter()
        for entry in mine:
            per_class.update(entry["classes"])
        splits[split] = {"clips": sum(e["samples"] for e in mine), "shards": len(mine),
                         "bytes": sum(e["bytes"] for e in mine), "frames": sum(e["frames"] for e in mine),
                         "seconds": round(sum(e["seconds"] for e in mine), 3),
                         "per_class": {name: per_class[name] for name in collection.classes if per_class[name]}}
    codecs = sorted({c for e in entries for c in e["codecs"]})
    containers = sorted({c for e in entries for c in e["containers"]})
    settings = {k: v for k, v in header.items() if k != "inputs_sha256"}
    if header["frames"]:
        codecs, containers = [frames.JPEG], [frames.EXTENSION]
    elif header["codec"] != "copy":
        codecs, containers = [header["codec"]], [CODECS[header["codec"]].extension]
    return {
        "format": FORMAT,
        "settings": settings,
        "inputs_sha256": header["inputs_sha256"],
        "codec": codecs[0] if len(codecs) == 1 else "mixed",
        "container": containers[0] if len(containers) == 1 else "mixed",
        "frames": {"format": header["frames"], "quality": header["quality"], "frame_step": header["frame_step"]}
        if header["frames"] else None,
        "classes": collection.classes,
        "splits": splits,
        "shards": [{k: e[k] for k in ("name", "index", "split", "samples", "bytes", "sha256", "first_key",
                                      "last_key")} for e in entries],
        "rejected": {"total": len(rejected),
                     "by_reason": dict(sorted(Counter(r["reason"].split(":")[0] for r in rejected).items()))},
        "unused_by_split_file": collection.unused,
    }


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} clips/s" if task.speed else "-- clips/s", style="progress.data.speed")


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("rejected [red]{task.fields[rejected]}"), console=console)
