"""End to end: a loader feeding training steps, against the same steps on a fixed synthetic batch (the ceiling).

    bench e2e data/shards [--config X.yaml] [--set model.size=base --set data.batch_size=32 ...] [--rounds 3]

Both kinds of round run the step `train` runs (the schedule's lr, then `train.loop.train_step`, with the real
AdamW update) on one model and optimizer. Rounds alternate: `steps` steps fed by the loader, then `steps` steps on a
fixed synthetic batch of the same shape, each timed after untimed warm-up steps and, on a GPU, between two
synchronisations. Per round the ratio of end-to-end to model-alone samples/s is recorded; `saturation` is the
median ratio over the rounds, so one noisy pair of measurements cannot decide it. Per end-to-end step the host
clock is split into waiting for the next batch and running the step (`data_wait_fraction`, also a median): on a
GPU the steps run asynchronously, so a loader that keeps up shows a wait near zero.

The loader lives through all rounds. While the model runs alone, the loader's threads keep decoding the few
batches it prefetches (data.prefetch per decode pipeline, DataLoader's prefetch for the reference loader), on the
CPU competing with the model for cores, which makes CPU figures conservative; those batches are used up by the
warm-up of the next end-to-end round, before its clock starts.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from train.bench.loader import forever
from train.bench.machine import describe, machine
from train.bench.model import Stepper, make_stepper, utilisation
from train.distributed import resolve_device
from train.config import TrainConfig
from train.task import make_loader, mask_counts


def decoded_ahead(cfg: TrainConfig, loader: str) -> int:
    """Batches a loader decodes ahead of the training step (the reference loader's DataLoader: 2 per worker)."""
    if loader == "dali":
        from pipeline.loader import batches_ahead  # DALI: imported where the DALI loader is measured

        return batches_ahead(cfg.data)
    return 2 * cfg.data.num_threads


def loader_round(stepper: Stepper, stream, counts, accum: int, warmup: int, steps: int) -> dict:
    """`steps` steps fed by the loader after `warmup` untimed ones: samples, seconds and seconds waiting."""
    for _ in range(warmup):
        stepper([next(stream) for _ in range(accum)], counts)
    state = {"samples": 0, "waited": 0.0}

    def step():
        before = time.perf_counter()
        batches = [next(stream) for _ in range(accum)]
        state["waited"] += time.perf_counter() - before
        stepper(batches, counts)
        state["samples"] += sum(len(b["video"]) for b in batches)

    seconds = stepper.timed(step, steps)
    return {"samples": state["samples"], "seconds": seconds, "waited": state["waited"]}


def model_round(stepper: Stepper, fixed: list[dict], counts, warmup: int, steps: int) -> dict:
    """`steps` steps on the fixed synthetic batches after `warmup` untimed ones."""
    for _ in range(warmup):
        stepper(fixed, counts)
    seconds = stepper.timed(lambda: stepper(fixed, counts), steps)
    return {"samples": steps * sum(len(b["video"]) for b in fixed), "seconds": seconds}


def synthetic_like(batch: dict) -> dict:
    """Noise of the batch's video shape and dtype, with copies of its masks: the model-alone input."""
    out = {"video": torch.randn_like(batch["video"]), "mask": batch["mask"].clone()}
    if batch.get("decoder_mask") is not None:
        out["decoder_mask"] = batch["decoder_mask"].clone()
    return out


def bench_end_to_end(cfg: TrainConfig, steps: int = 10, warmup: int = 3, rounds: int = 3,
                     verbose: bool = True) -> dict:
    """Alternate `rounds` end-to-end and model-alone rounds of `steps` training steps; figures are medians."""
    if min(steps, rounds) < 1 or warmup < 0:
        raise ValueError(f"steps and rounds must be >= 1 and warmup >= 0, got {steps}, {rounds}, {warmup}")
    device = resolve_device(cfg.run.device)
    stepper = make_stepper(cfg, device, optimizer=True)
    data, decode = make_loader(cfg.data, cfg.run.loader, device)
    stream = forever(data)
    accum = cfg.optim.accum_steps
    first = next(stream)
    counts = mask_counts(first)  # the batch contract: the same in every row and batch
    fixed = [synthetic_like(first)] * accum
    drain = max(warmup, math.ceil(decoded_ahead(cfg, cfg.run.loader) / accum))
    measured = []
    for r in range(rounds):
        e2e = loader_round(stepper, stream, counts, accum, drain, steps)
        alone = model_round(stepper, fixed, counts, warmup, steps)
        measured.append(round_figures(e2e, alone))
        if verbose:
            m = measured[-1]
            print(f"round {r + 1}/{rounds}: {m['e2e_samples_per_s']:.2f} samples/s end to end, "
                  f"{m['model_samples_per_s']:.2f} model alone, ratio {m['ratio']:.3f}, "
                  f"waiting for data {100 * m['data_wait_fraction']:.0f}% of the time")
    result = e2e_figures(cfg, decode, stepper, steps, warmup, measured)
    result["achieved_tflops"], result["peak_tflops"], result["mfu"] = utilisation(
        cfg, counts, result["samples_per_s"], stepper)
    if verbose:
        print_e2e(result)
    return result


def round_figures(e2e: dict, alone: dict) -> dict:
    e2e_rate, alone_rate = e2e["samples"] / e2e["seconds"], alone["samples"] / alone["seconds"]
    return {"e2e_samples_per_s": round(e2e_rate, 3), "model_samples_per_s": round(alone_rate, 3),
            "ratio": round(e2e_rate / alone_rate, 4), "data_wait_fraction": round(e2e["waited"] / e2e["seconds"], 4),
            "e2e_samples": e2e["samples"], "e2e_seconds": round(e2e["seconds"], 4),
            "model_samples": alone["samples"], "model_seconds": round(alone["seconds"], 4)}


def e2e_figures(cfg: TrainConfig, decode: str, stepper: Stepper, steps: int, warmup: int,
                measured: list[dict]) -> dict:
    def median(key: str) -> float:
        return round(statistics.median(m[key] for m in measured), 4)

    d = cfg.data
    return {"loader": cfg.run.loader, "decode": decode, "size": cfg.model.size, "batch_size": d.batch_size,
            "num_sample": d.num_sample, "accum_steps": cfg.optim.accum_steps, "num_frames": d.num_frames,
            "input_size": d.input_size, "mask_type": d.mask_type, "mask_ratio": d.mask_ratio,
            "precision": stepper.precision, "compile": cfg.run.compile, "threads": d.num_threads,
            "decode_pipelines": d.decode_pipelines if cfg.run.loader == "dali" else None, "steps": steps,
            "warmup": warmup, "rounds": measured, "samples_per_s": median("e2e_samples_per_s"),
            "model_only_samples_per_s": median("model_samples_per_s"), "saturation": median("ratio"),
            "data_wait_fraction": median("data_wait_fraction"), **machine()}


def print_e2e(r: dict) -> None:
    rows = r["batch_size"] * r["num_sample"]
    print(f"e2e {r['loader']} (decode {r['decode']}) -> {r['size']} {r['num_frames']}x{r['input_size']}x"
          f"{r['input_size']} mask {r['mask_ratio']} batch {rows} {r['precision']}"
          f"{' compiled' if r['compile'] else ''}, median of {len(r['rounds'])} rounds: {r['samples_per_s']:.2f} "
          f"samples/s end to end, {r['model_only_samples_per_s']:.2f} model alone (saturation "
          f"{r['saturation']:.2f}, waiting for data {100 * r['data_wait_fraction']:.0f}% of the time, MFU end to "
          f"end {r['mfu']}) on {describe(r)}")
