"""The data path alone: a loader's clips/s, the fastest decode setting, and the time to draw a batch of masks.

    bench loader data/shards [--config X.yaml] [--loader reference] [--mode finetune] [--set data.num_threads=8]
    bench decode data/shards --decode-pipelines 1 2 4 7 --threads 4 8      which decoding setting is fastest
    bench masks [--set data.batch_size=64 --set data.mask_type=random]

Each takes a `TrainConfig` (its `data` section, run.loader and run.device); `mode` swaps data.mode, since a
pre-training config also measures the fine-tuning and evaluation graphs on the same shards.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from pipeline.config import DataConfig
from pipeline.masking import draw_masks
from pipeline.shards import CPU_CODECS, check_decodable, find_shards
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
    clock stops after the last batch is on the device.
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
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        samples += len(batch["video"])
        clips += len(batch["video"]) // data_cfg.num_views
    sync(device)
    seconds = time.perf_counter() - started
    d = data_cfg
    result = {"loader": loader, "decode": decode, "mode": mode, "input_size": d.input_size,
              "num_frames": d.num_frames, "sampling_rate": d.sampling_rate, "batch_size": d.batch_size,
              "num_sample": d.num_sample, "threads": d.num_threads,
              "decode_pipelines": d.decode_pipelines if loader == "dali" else None, "batches": batches,
              "seconds": seconds, "setup_seconds": setup_s, "clips_per_s": clips / seconds,
              "samples_per_s": samples / seconds, "machine": describe()}
    if verbose:
        print(f"{loader:9s} decode={decode:10s} {mode} {d.num_frames}x{d.input_size}x{d.input_size} "
              f"rate={d.sampling_rate} batch={d.batch_size} num_sample={d.num_sample} threads={d.num_threads}"
              f"{f' pipelines={d.decode_pipelines}' if loader == 'dali' else ''}: "
              f"{result['clips_per_s']:.1f} clips/s, {result['samples_per_s']:.1f} samples/s "
              f"({batches} batches in {seconds:.1f} s, setup {setup_s:.1f} s) on {result['machine']}")
    return result


def bench_decode(cfg: TrainConfig, decode_pipelines: tuple[int, ...] = (1, 2, 4, 7),
                 num_threads: tuple[int, ...] | None = None, mode: str = "pretrain", batches: int = 20,
                 warmup: int = 3, verbose: bool = True) -> dict:
    """`bench_loader` of the DALI path for every decode device these shards and this machine allow (NVDEC when
    CUDA is present, the CPU when the codec is one it reads) x `decode_pipelines` x `num_threads` (default
    data.num_threads); the fastest setting by clips/s is what data.decode_device, data.decode_pipelines and
    data.num_threads should be set to."""
    found = find_shards(cfg.data.shards, cfg.data.split)
    codec = found.codec
    devices = (["gpu"] if torch.cuda.is_available() else []) + (["cpu"] if codec in CPU_CODECS else [])
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
