"""End to end: a loader feeding pre-training steps, against the same steps on synthetic tensors (the ceiling).

    bench e2e data/shards --size base --batch-size 16 --loader dali

Per timed step the host clock is split into waiting for the next batch and running the step, so the result says
how close the data path keeps the model to its ceiling (`saturation` = end-to-end / model-only samples per
second) and where the gap is (`data_wait_fraction`). On a GPU the steps run asynchronously: a loader that keeps
up shows a wait near zero; the clock stops after a final synchronisation.
"""

from __future__ import annotations

import time

import torch

from model import ModelConfig, VideoMAEPretrain
from pipeline.config import DataConfig
from train.bench_loader import forever, make_loader
from train.bench_model import bench_model, make_train_step
from train.machine import describe, machine


def bench_end_to_end(shards: str, size: str = "tiny", loader: str = "dali", split: str = "train",
                     batch_size: int = 8, num_frames: int = 16, sampling_rate: int = 4, input_size: int = 224,
                     mask_ratio: float = 0.9, num_sample: int = 1, num_threads: int = 2, decode_pipelines: int = 1,
                     decode_device: str = "auto", dtype: str | None = None, compile: bool = False, steps: int = 10,
                     warmup: int = 3, device: str | None = None, verbose: bool = True) -> dict:
    """Samples per second of `steps` training steps fed by `loader`, then of the model alone on the same shapes."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bf16" if device.startswith("cuda") else "fp32")
    cfg = DataConfig(shards=shards, split=split, mode="pretrain", num_frames=num_frames,
                     sampling_rate=sampling_rate, input_size=input_size, mask_ratio=mask_ratio,
                     num_sample=num_sample, batch_size=batch_size, num_threads=num_threads,
                     decode_device=decode_device, decode_pipelines=decode_pipelines)
    data, decode = make_loader(cfg, loader, device)
    model = VideoMAEPretrain(ModelConfig(size=size, num_frames=num_frames, input_size=input_size)).to(device)
    step = make_train_step(model.train(), dtype, compile, optimizer=True)
    stream = forever(data)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    num_masked = None
    for _ in range(warmup):
        batch = next(stream)
        num_masked = num_masked or int(batch["mask"][0].sum())  # the batch contract: the same in every row
        step(batch["video"], batch["mask"], num_masked=num_masked)
    sync()
    samples, waited = 0, 0.0
    started = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(stream)
        waited += time.perf_counter() - before
        step(batch["video"], batch["mask"], num_masked=num_masked)
        samples += len(batch["video"])
    sync()
    seconds = time.perf_counter() - started
    del data, stream, batch  # stop the loader's threads before the ceiling is measured
    rows = batch_size * num_sample
    ceiling = bench_model(size, rows, num_frames, input_size, mask_ratio, device, dtype, steps, warmup, compile,
                          optimizer=True, verbose=False)
    e2e = samples / seconds
    result = {"loader": loader, "decode": decode, "size": size, "batch_size": batch_size,
              "num_sample": num_sample, "num_frames": num_frames, "input_size": input_size,
              "mask_ratio": mask_ratio, "dtype": dtype, "compile": compile, "threads": num_threads,
              "steps": steps, "seconds": round(seconds, 3), "samples_per_s": round(e2e, 3),
              "model_only_samples_per_s": ceiling["clips_per_s"],
              "saturation": round(e2e / ceiling["clips_per_s"], 3),
              "data_wait_fraction": round(waited / seconds, 3), **machine()}
    if verbose:
        print(f"e2e {loader} (decode {decode}) -> {size} {num_frames}x{input_size}x{input_size} mask {mask_ratio} "
              f"batch {rows} {dtype}: {e2e:.2f} samples/s end to end, {ceiling['clips_per_s']:.2f} model alone "
              f"(saturation {result['saturation']:.2f}, waiting for data {100 * waited / seconds:.0f}% of the "
              f"time) on {describe()}")
    return result
