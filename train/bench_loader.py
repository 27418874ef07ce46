"""Loader throughput: the DALI path against the reference loader on the same shards and settings.

    python -m train.bench_loader data/shards --loader dali --input-size 224 --threads 2
    python -m train.bench_loader data/shards --loader reference --input-size 224 --threads 2

`bench_loader(...)` is what the `bench` command calls; it returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pipeline.config import DataConfig
from pipeline.loader import DaliLoader
from pipeline.masking import draw_masks


def machine() -> str:
    """CPU model, core count and GPU name, for every printed figure."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}"


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
    if loader == "dali":
        data = DaliLoader(cfg, device=device)
        decode = data.decode_device
    elif loader == "reference":
        from pipeline.reference import ReferenceLoader  # needs PyAV, which a GPU box may lack

        data = ReferenceLoader(cfg, device=device)
        decode = "cpu (PyAV)"
    else:
        raise ValueError(f"loader must be 'dali' or 'reference', got {loader!r}")
    setup_s = time.perf_counter() - started

    def batches_forever():
        while True:
            yield from data

    stream = batches_forever()
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
              "clips_per_s": clips / seconds, "samples_per_s": samples / seconds, "machine": machine()}
    if verbose:
        print(f"{loader:9s} decode={decode:10s} {mode} {num_frames}x{input_size}x{input_size} "
              f"rate={sampling_rate} batch={batch_size} num_sample={num_sample} threads={num_threads}: "
              f"{result['clips_per_s']:.1f} clips/s, {result['samples_per_s']:.1f} samples/s "
              f"({batches} batches in {seconds:.1f} s, setup {setup_s:.1f} s) on {result['machine']}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards")
    parser.add_argument("--loader", choices=["dali", "reference"], default="dali")
    parser.add_argument("--split", default="train")
    parser.add_argument("--mode", choices=["pretrain", "finetune", "eval"], default="pretrain")
    parser.add_argument("--decode-device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--sampling-rate", type=int, default=4)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-sample", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads or DataLoader workers")
    parser.add_argument("--decode-pipelines", type=int, default=1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--masks", action="store_true", help="also time drawing one batch of tube masks")
    args = parser.parse_args(argv)
    if args.masks:  # before the loader: its threads would share the cores
        cfg = DataConfig(input_size=args.input_size, num_frames=args.num_frames)
        rows = args.batch_size * args.num_sample
        print(f"tube masks for {rows} x {cfg.num_tokens} tokens: {bench_masks(cfg, rows):.0f} us per batch "
              f"on {machine()}")
    bench_loader(args.shards, args.loader, args.split, args.mode, args.decode_device, args.batch_size,
                 args.num_frames, args.sampling_rate, args.input_size, args.num_sample, args.threads,
                 args.decode_pipelines, args.batches, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
