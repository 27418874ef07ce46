"""Loader throughput: the DALI path against the reference loader on the same shards and settings.

    bench loader data/shards --loader dali --input-size 224 --threads 2
    bench loader data/shards --loader reference --input-size 224 --threads 2
    bench decode data/shards --decode-pipelines 1 2 4 7 --threads 4 8    which decoding setting is fastest

`bench_loader(...)` returns the figures as a dict; `bench_decode(...)` runs it over decode devices, pipelines
and threads; `bench_masks(...)` times drawing one batch of masks.
"""

from __future__ import annotations

import time

import torch

from pipeline.config import DataConfig
from pipeline.loader import DaliLoader
from pipeline.masking import draw_masks
from pipeline.shards import CPU_CODECS, check_decodable, find_shards
from train.machine import describe


def make_loader(cfg: DataConfig, loader: str, device: str):
    """(loader, what decodes) for 'dali' or 'reference'."""
    if loader == "dali":
        data = DaliLoader(cfg, device=device)
        return data, data.decode_device
    if loader == "reference":
        from pipeline.reference import ReferenceLoader  # needs PyAV, which a GPU box may lack

        return ReferenceLoader(cfg, device=device), "cpu (PyAV)"
    raise ValueError(f"loader must be 'dali' or 'reference', got {loader!r}")


def forever(data):
    """Batches of epoch after epoch."""
    while True:
        yield from data


def bench_loader(shards: str, loader: str = "dali", split: str = "train", mode: str = "pretrain",
                 decode_device: str = "auto", batch_size: int = 8, num_frames: int = 16, sampling_rate: int = 4,
                 input_size: int = 224, num_sample: int = 1, num_threads: int = 2, decode_pipelines: int = 1,
                 batches: int = 20, warmup: int = 3, device: str | None = None, verbose: bool = True) -> dict:
    """Clips decoded per second and training samples produced per second (clips x num_sample).

    Runs `warmup` batches untimed, then `batches` timed ones, starting new epochs as needed; on a GPU the
    clock stops after the last batch is on the device.
    """
    cfg = DataConfig(shards=shards, split=split, mode=mode, num_frames=num_frames, sampling_rate=sampling_rate,
                     input_size=input_size, num_sample=num_sample, batch_size=batch_size, num_threads=num_threads,
                     decode_device=decode_device, decode_pipelines=decode_pipelines,
                     patch_size=16 if input_size % 16 == 0 else 8)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    data, decode = make_loader(cfg, loader, device)
    setup_s = time.perf_counter() - started
    stream = forever(data)
    for _ in range(warmup):
        next(stream)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    clips = samples = 0
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        samples += len(batch["video"])
        clips += len(batch["video"]) // cfg.num_views
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {"loader": loader, "decode": decode, "mode": mode, "input_size": input_size, "num_frames": num_frames,
              "sampling_rate": sampling_rate, "batch_size": batch_size, "num_sample": num_sample,
              "threads": num_threads, "decode_pipelines": decode_pipelines if loader == "dali" else None,
              "batches": batches, "seconds": seconds, "setup_seconds": setup_s,
              "clips_per_s": clips / seconds, "samples_per_s": samples / seconds, "machine": describe()}
    if verbose:
        print(f"{loader:9s} decode={decode:10s} {mode} {num_frames}x{input_size}x{input_size} "
              f"rate={sampling_rate} batch={batch_size} num_sample={num_sample} threads={num_threads}"
              f"{f' pipelines={decode_pipelines}' if loader == 'dali' else ''}: "
              f"{result['clips_per_s']:.1f} clips/s, {result['samples_per_s']:.1f} samples/s "
              f"({batches} batches in {seconds:.1f} s, setup {setup_s:.1f} s) on {result['machine']}")
    return result


def bench_decode(shards: str, split: str = "train", decode_pipelines: tuple[int, ...] = (1, 2, 4, 7),
                 num_threads: tuple[int, ...] = (2,), verbose: bool = True, **settings) -> dict:
    """`bench_loader` of the DALI path for every decode device these shards and this machine allow (NVDEC when
    CUDA is present, the CPU when the codec is one it reads) x `decode_pipelines` x `num_threads`; the fastest
    setting by clips/s is what `decode_device`, `decode_pipelines` and `num_threads` should be set to.

    `settings` are passed on to `bench_loader` (batch_size, input_size, mode, batches, ...).
    """
    found = find_shards(shards, split)
    codec = found.codec
    devices = (["gpu"] if torch.cuda.is_available() else []) + (["cpu"] if codec in CPU_CODECS else [])
    if not devices:  # no GPU, and a codec the CPU decoder cannot read
        check_decodable(found, "cpu")
    rows = [bench_loader(shards, "dali", split, decode_device=device, decode_pipelines=pipelines,
                         num_threads=threads, verbose=verbose, **settings)
            for device in devices for pipelines in decode_pipelines for threads in num_threads]
    fastest = max(rows, key=lambda row: row["clips_per_s"])
    result = {"codec": codec, "devices": devices, "rows": rows,
              "fastest": {key: fastest[key] for key in ("decode", "decode_pipelines", "threads", "clips_per_s")}}
    if verbose:
        unread = "" if "cpu" in devices else f" (the CPU decoder cannot read {codec})"
        print(f"fastest of {len(rows)} settings on {codec} shards{unread}: decode_device: {fastest['decode']}, "
              f"decode_pipelines: {fastest['decode_pipelines']}, num_threads: {fastest['threads']} "
              f"({fastest['clips_per_s']:.1f} clips/s)")
    return result


def bench_masks(cfg: DataConfig, rows: int, repeats: int = 100, device: str | None = None) -> float:
    """Microseconds to draw one batch of masks on `device` (the DALI path draws them there)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device=device).manual_seed(0)
    draw_masks(cfg, rows, generator, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        draw_masks(cfg, rows, generator, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e6
