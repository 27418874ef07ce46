"""The data path alone: a loader's clips/s, the fastest decode setting, and the time to draw a batch of masks.

    bench loader data/shards [more/shards ...] [--config X.yaml] [--loader reference] [--mode finetune] [--rounds 3]
    bench decode data/shards --decode-pipelines 1 2 4 7 --threads 4 8      which decoding setting is fastest, and
                                                                           ms per clip against the last frame index
    bench masks [--set data.batch_size=64 --set data.mask_type=random]

Each takes a `TrainConfig` (its `data` section, run.loader and run.device); `mode` swaps data.mode, since a
pre-training config also measures the fine-tuning and evaluation graphs on the same shards. With several shard
folders, `bench loader` measures each with the same settings, in alternating rounds, and gives the first one's
clips/s against each other's (e.g. JPEG-frame shards against video shards of the same clips).
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch

from pipeline import frames as jpeg_frames
from pipeline.config import DataConfig
from pipeline.masking import draw_masks
from pipeline.shards import check_decodable, cpu_decodes, find_shards, first_samples
from train.bench.machine import describe
from train.distributed import resolve_device
from train.task import make_loader
from train.config import TrainConfig


def forever(data):
    """Batches of epoch after epoch."""
    while True:
        yield from data


def data_config(cfg: TrainConfig, mode: str = "pretrain", **changes) -> DataConfig:
    """cfg.data in `mode` with `changes` (decode_device=..., num_threads=...), checked again."""
    return dataclasses.replace(cfg.data, mode=mode, **changes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_loader(cfg: TrainConfig, loader: str | None = None, mode: str = "pretrain", batches: int = 20,
                 warmup: int = 3, verbose: bool = True, **changes) -> dict:
    """Clips decoded per second and training samples produced per second (clips x num_sample) by `loader`
    (default run.loader) on cfg.data in `mode`, with `changes` to it.

    Runs `warmup` batches untimed, then `batches` timed ones, starting new epochs as needed; on a GPU the
    clock stops after the last batch is on the device. `train_thread_ms_per_clip` is the CPU time the calling
    (training) thread spends inside the loader per clip: what the loader takes from the training loop's own
    thread, the rest of its work running on other threads.
    """
    loader = loader or cfg.run.loader
    data_cfg = data_config(cfg, mode, **changes)
    device = resolve_device(cfg.run.device)
    started = time.perf_counter()
    data, decode = make_loader(data_cfg, loader, device)
    setup_s = time.perf_counter() - started
    stream = forever(data)
    for _ in range(warmup):
        next(stream)
    sync(device)
    clips = samples = 0
    thread_s = 0.0
    started = time.perf_counter()
    for _ in range(batches):
        before = time.thread_time()
        batch = next(stream)
        thread_s += time.thread_time() - before
        samples += len(batch["video"])
        clips += len(batch["video"]) // data_cfg.num_views
    sync(device)
    seconds = time.perf_counter() - started
    d = data_cfg
    result = {"loader": loader, "decode": decode, "shards": d.shards, "mode": mode, "input_size": d.input_size,
              "num_frames": d.num_frames, "sampling_rate": d.sampling_rate, "batch_size": d.batch_size,
              "num_sample": d.num_sample, "threads": d.num_threads,
              "decode_pipelines": d.decode_pipelines if loader == "dali" else None, "batches": batches,
              "seconds": seconds, "setup_seconds": setup_s, "clips_per_s": clips / seconds,
              "samples_per_s": samples / seconds, "train_thread_ms_per_clip": 1000 * thread_s / clips,
              "machine": describe()}
    if verbose:
        print(f"{loader:9s} decode={decode:10s} {mode} {d.num_frames}x{d.input_size}x{d.input_size} "
              f"rate={d.sampling_rate} batch={d.batch_size} num_sample={d.num_sample} threads={d.num_threads}"
              f"{f' pipelines={d.decode_pipelines}' if loader == 'dali' else ''}: "
              f"{result['clips_per_s']:.1f} clips/s, {result['samples_per_s']:.1f} samples/s, training thread "
              f"{result['train_thread_ms_per_clip']:.2f} ms/clip ({batches} batches in {seconds:.1f} s, setup "
              f"{setup_s:.1f} s) from {d.shards} on {result['machine']}")
    return result


def compare_loaders(cfg: TrainConfig, folders: list[str], loader: str | None = None, mode: str = "pretrain",
                    batches: int = 20, warmup: int = 3, rounds: int = 1, verbose: bool = True) -> dict:
    """`bench_loader` on each shard folder with the same settings, `rounds` times in turn (A B A B ...: a shared
    machine's load then falls on both); per folder the round with the median clips/s, and the first folder's
    clips/s over each other's."""
    measured = {folder: [] for folder in folders}
    for _ in range(rounds):
        for folder in folders:
            measured[folder].append(bench_loader(cfg, loader, mode, batches, warmup, verbose, shards=folder))
    rows = [sorted(runs, key=lambda r: r["clips_per_s"])[(len(runs) - 1) // 2] for runs in measured.values()]
    for row, folder in zip(rows, folders):
        row["rounds_clips_per_s"] = [round(r["clips_per_s"], 2) for r in measured[folder]]
    ratios = {folder: rows[0]["clips_per_s"] / row["clips_per_s"] for folder, row in zip(folders[1:], rows[1:])}
    if verbose:
        for folder, row in zip(folders, rows):
            print(f"median of {rounds} round(s): {row['clips_per_s']:.1f} clips/s, training thread "
                  f"{row['train_thread_ms_per_clip']:.2f} ms/clip from {folder}")
        for folder, ratio in ratios.items():
            print(f"{folders[0]} delivers {ratio:.2f}x the clips/s of {folder}")
    return {"rows": rows, "ratios": ratios, "rounds": rounds}


def bench_decode(cfg: TrainConfig, decode_pipelines: tuple[int, ...] = (1, 2, 4, 7),
                 num_threads: tuple[int, ...] | None = None, mode: str = "pretrain", batches: int = 20,
                 warmup: int = 3, verbose: bool = True, last_frames: tuple[int, ...] | None = None) -> dict:
    """`bench_loader` of the DALI path for every decode device these shards and this machine allow (NVDEC when
    CUDA is present, the CPU when the codec is one it reads) x `decode_pipelines` x `num_threads` (default
    data.num_threads); the fastest setting by clips/s is what data.decode_device, data.decode_pipelines and
    data.num_threads should be set to. Then, per decode device, `decode_by_last_frame`."""
    found = find_shards(cfg.data.shards, cfg.data.split)
    codec = found.codec
    devices = (["gpu"] if torch.cuda.is_available() else []) + (["cpu"] if cpu_decodes(codec) else [])
    if not devices:  # no GPU, and a codec the CPU decoder cannot read
        check_decodable(found, "cpu")
    rows = [bench_loader(cfg, "dali", mode, batches, warmup, verbose, decode_device=device,
                         decode_pipelines=pipelines, num_threads=threads)
            for device in devices for pipelines in decode_pipelines
            for threads in (num_threads or (cfg.data.num_threads,))]
    fastest = max(rows, key=lambda row: row["clips_per_s"])
    result = {"codec": codec, "devices": devices, "rows": rows,
              "fastest": {key: fastest[key] for key in ("decode", "decode_pipelines", "threads", "clips_per_s")}}
    if verbose:
        unread = "" if "cpu" in devices else f" (the CPU decoder cannot read {codec})"
        print(f"fastest of {len(rows)} settings on {codec} shards{unread}: decode_device: {fastest['decode']}, "
              f"decode_pipelines: {fastest['decode_pipelines']}, num_threads: {fastest['threads']} "
              f"({fastest['clips_per_s']:.1f} clips/s)")
    result["by_last_frame"] = [decode_by_last_frame(cfg, device, last_frames, threads=fastest["threads"],
                                                    verbose=verbose) for device in devices]
    return result


WARMUP_RUNS = 3  # untimed windows before the sweep: the first runs of a new decode graph are up to 3x slower


def decode_by_last_frame(cfg: TrainConfig, decode_device: str, last_frames: tuple[int, ...] | None = None,
                         clips: int = 8, repeats: int = 3, threads: int | None = None, verbose: bool = True) -> dict:
    """Milliseconds per clip of the decoder alone for a window of data.num_frames frames data.sampling_rate apart
    that ends at frame k (those at frame 0 or later), for each k in `last_frames` (default: 6 points from the end
    of the first whole window, else from 0, to the shortest clip's last frame), over the split's first `clips`
    clips in one batch with `threads` threads (default data.num_threads), best of `repeats` after untimed warm-up runs.

    DALI's video decoder decodes every clip from frame 0 to its last requested frame, so its cost grows with k
    (`us_per_frame`, the slope of a least-squares line, and `fixed_ms`, its value at k = 0); JPEG frames decode
    only the frames asked for, whatever k."""
    from pipeline.graph import window_pipeline  # DALI: only where the decode graphs are measured

    d = dataclasses.replace(cfg.data, num_threads=threads or cfg.data.num_threads)
    found = find_shards(d.shards, d.split)
    samples = first_samples(found.tars[0], found.indexes[0], clips)
    metas = [json.loads(s["json"]) for s in samples]
    shortest = min(m["num_frames"] for m in metas)
    first_whole = (d.num_frames - 1) * d.sampling_rate
    first = first_whole if first_whole < shortest - 1 else 0
    last_frames = tuple(last_frames or np.linspace(first, shortest - 1, 6).astype(int).tolist())
    if max(last_frames) >= shortest:
        raise ValueError(f"--last-frames: the first {len(samples)} clips of {d.shards} have {shortest} frames or "
                         f"more; ask for last frames up to {shortest - 1}")
    pipe = window_pipeline(found.frames, decode_device, len(samples) * (d.num_frames if found.frames else 1),
                           d.num_threads)
    rows = []
    for k in (*last_frames[:1] * WARMUP_RUNS, *last_frames):  # the first runs are untimed (set-up, allocations)
        indices = k - d.sampling_rate * np.arange(d.num_frames, dtype=np.int32)[::-1]
        indices = indices[indices >= 0]
        if found.frames:
            jpegs = []
            for sample, meta in zip(samples, metas):
                member = sample[jpeg_frames.EXTENSION]
                offsets = jpeg_frames.frame_offsets(meta, len(member))
                stored = jpeg_frames.stored_indices(indices, meta["frame_step"])
                jpegs += [np.frombuffer(member[offsets[i]:offsets[i + 1]], np.uint8) for i in stored]
            inputs = {"jpegs": jpegs}
        else:
            video = [np.frombuffer(next(v for e, v in s.items() if e not in ("json", "frames", "label")), np.uint8)
                     for s in samples]
            inputs = {"encoded": video, "indices": [indices] * len(samples)}
        best = float("inf")
        for _ in range(repeats):
            for name, data in inputs.items():
                pipe.feed_input(name, data)
            started = time.perf_counter()
            pipe.run()
            best = min(best, time.perf_counter() - started)
        rows.append({"last_frame": int(k), "frames": len(indices), "ms_per_clip": round(1000 * best / len(samples), 3)})
    rows = rows[WARMUP_RUNS:]
    slope, fixed = np.polyfit([r["last_frame"] for r in rows], [r["ms_per_clip"] for r in rows], 1)
    result = {"decode": decode_device, "codec": found.codec, "clips": len(samples), "num_frames": d.num_frames,
              "sampling_rate": d.sampling_rate, "threads": d.num_threads, "rows": rows,
              "fixed_ms": round(float(fixed), 3), "us_per_frame": round(1000 * float(slope), 1)}
    if verbose:
        costs = ", ".join(f"{r['last_frame']}: {r['ms_per_clip']:.2f}" for r in rows)
        print(f"{found.codec} on {decode_device}, {d.num_frames} frames at stride {d.sampling_rate} ending at "
              f"frame k, {len(samples)} clips, {d.num_threads} threads: ms per clip by k {{{costs}}}; fit "
              f"{result['fixed_ms']:.2f} ms + {result['us_per_frame']:.0f} us per frame of k")
    return result


def bench_masks(cfg: TrainConfig, repeats: int = 100, verbose: bool = True) -> dict:
    """Microseconds to draw one batch's masks (batch_size x num_sample rows, data.mask_type, data.decoder_mask)
    on the training device, where both loaders draw them."""
    device = resolve_device(cfg.run.device)
    rows = cfg.data.batch_size * cfg.data.num_sample
    generator = torch.Generator(device=device).manual_seed(cfg.data.seed)
    draw_masks(cfg.data, rows, generator, device)
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        draw_masks(cfg.data, rows, generator, device)
    sync(device)
    micros = (time.perf_counter() - started) / repeats * 1e6
    result = {"mask_type": cfg.data.mask_type, "mask_ratio": cfg.data.mask_ratio,
              "decoder_mask": cfg.data.decoder_mask, "rows": rows, "tokens": cfg.data.num_tokens,
              "device": str(device), "us_per_batch": micros, "machine": describe()}
    if verbose:
        print(f"{cfg.data.mask_type} masks for {rows} x {cfg.data.num_tokens} tokens: {micros:.0f} us per batch on "
              f"{result['machine']}")
    return result
