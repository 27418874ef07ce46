"""`bench`: throughput figures, each printed with the machine it was measured on.

    bench model [--size base --batch-size 8 --compile --optimizer]   the model alone on synthetic tensors (the ceiling)
    bench loader SHARDS [--loader dali|reference]                    a loader alone: clips/s and samples/s
    bench decode SHARDS [--decode-pipelines 1 2 4 7 --threads 4 8]  NVDEC against CPU decoding: the fastest setting
    bench masks [--batch-size 64]                                    drawing one batch of masks on the device
    bench e2e SHARDS [--size tiny --loader dali]                     a loader feeding training steps vs the ceiling

Add --json for one machine-readable line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pipeline.config import DataConfig
from train.bench_e2e import bench_end_to_end
from train.bench_loader import bench_decode, bench_loader, bench_masks
from train.bench_model import bench_model
from train.machine import describe

HAS_GPU = torch.cuda.is_available()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, shards: bool) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        if shards:
            p.add_argument("shards", help="a folder written by shard-videos")
            p.add_argument("--split", default="train")
            p.add_argument("--sampling-rate", type=int, default=4)
            p.add_argument("--num-sample", type=int, default=1, help="views per decoded clip (repeated sampling)")
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--num-frames", type=int, default=16)
        p.add_argument("--input-size", type=int, default=224)
        p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
        return p

    def add_decoding(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=2, help="DALI threads or DataLoader workers")
        p.add_argument("--decode-device", choices=["auto", "cpu", "gpu"], default="auto")
        p.add_argument("--decode-pipelines", type=int, default=1, help="DALI decode graphs side by side")

    model = add("model", "forward + backward of VideoMAE pre-training on synthetic tensors", shards=False)
    model.add_argument("--size", default="tiny")
    model.add_argument("--mask-ratio", type=float, default=0.9)
    model.add_argument("--device", default="cuda" if HAS_GPU else "cpu")
    model.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16" if HAS_GPU else "fp32")
    model.add_argument("--steps", type=int, default=10)
    model.add_argument("--warmup", type=int, default=3)
    model.add_argument("--compile", action="store_true")
    model.add_argument("--optimizer", action="store_true", help="include an AdamW step")
    model.add_argument("--dual-masking", action="store_true", help="VideoMAE V2 running-cell decoder masks")
    model.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing")

    loader = add("loader", "clips/s of the DALI path or the reference loader on the same shards", shards=True)
    add_decoding(loader)
    loader.add_argument("--loader", choices=["dali", "reference"], default="dali")
    loader.add_argument("--mode", choices=["pretrain", "finetune", "eval"], default="pretrain")
    loader.add_argument("--batches", type=int, default=20)
    loader.add_argument("--warmup", type=int, default=3)

    decode = add("decode", "the DALI path over decode devices, pipelines and threads: which is fastest",
                 shards=True)
    decode.add_argument("--threads", type=int, nargs="+", default=[2], help="DALI threads to try")
    decode.add_argument("--decode-pipelines", type=int, nargs="+", default=[1, 2, 4, 7],
                        help="DALI decode graphs side by side to try (an H100 has 7 NVDEC engines)")
    decode.add_argument("--mode", choices=["pretrain", "finetune", "eval"], default="pretrain")
    decode.add_argument("--batches", type=int, default=20)
    decode.add_argument("--warmup", type=int, default=3)

    masks = add("masks", "time to draw one batch of masks on the training device", shards=False)
    masks.add_argument("--mask-type", choices=["tube", "random", "frame"], default="tube")
    masks.add_argument("--mask-ratio", type=float, default=0.9)

    e2e = add("e2e", "a loader feeding pre-training steps, against the model alone", shards=True)
    add_decoding(e2e)
    e2e.add_argument("--loader", choices=["dali", "reference"], default="dali")
    e2e.add_argument("--size", default="tiny")
    e2e.add_argument("--mask-ratio", type=float, default=0.9)
    e2e.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on a GPU, else fp32")
    e2e.add_argument("--compile", action="store_true")
    e2e.add_argument("--steps", type=int, default=10)
    e2e.add_argument("--warmup", type=int, default=3)
    return root


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.command == "model":
        result = bench_model(a.size, a.batch_size, a.num_frames, a.input_size, a.mask_ratio, a.device, a.dtype,
                             a.steps, a.warmup, a.compile, a.optimizer, a.dual_masking, a.use_checkpoint)
    elif a.command == "loader":
        result = bench_loader(a.shards, a.loader, a.split, a.mode, a.decode_device, a.batch_size, a.num_frames,
                              a.sampling_rate, a.input_size, a.num_sample, a.threads, a.decode_pipelines,
                              a.batches, a.warmup)
    elif a.command == "decode":
        result = bench_decode(a.shards, a.split, tuple(a.decode_pipelines), tuple(a.threads), mode=a.mode,
                              batch_size=a.batch_size, num_frames=a.num_frames, sampling_rate=a.sampling_rate,
                              input_size=a.input_size, num_sample=a.num_sample, batches=a.batches, warmup=a.warmup)
    elif a.command == "masks":
        cfg = DataConfig(num_frames=a.num_frames, input_size=a.input_size, mask_type=a.mask_type,
                         mask_ratio=a.mask_ratio)
        micros = bench_masks(cfg, a.batch_size)
        result = {"mask_type": a.mask_type, "rows": a.batch_size, "tokens": cfg.num_tokens, "us_per_batch": micros,
                  "machine": describe()}
        print(f"{a.mask_type} masks for {a.batch_size} x {cfg.num_tokens} tokens: {micros:.0f} us per batch on "
              f"{result['machine']}")
    else:
        result = bench_end_to_end(a.shards, a.size, a.loader, a.split, a.batch_size, a.num_frames, a.sampling_rate,
                                  a.input_size, a.mask_ratio, a.num_sample, a.threads, a.decode_pipelines,
                                  a.decode_device, a.dtype, a.compile, a.steps, a.warmup)
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
