"""The `train` loop's own cost: `train` itself on batches held in memory, against the model alone.

    bench loop SHARDS --config configs/synth-tiny-pretrain.yaml

A few batches are decoded once and replayed, so decoding is out of the comparison (on a 2-core CPU it shares the
cores with the model); what is left between `train` and `bench model` is what the loop adds: the schedule, the
loss and finiteness bookkeeping, the stop-signal check, the log lines and metrics. Rounds alternate (loop, model
alone, loop, ...) and the median ratio is reported.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

from train.bench.machine import describe
from train.bench.model import bench_model
from train.distributed import resolve_device
from train.task import make_loader
from train.config import TrainConfig
from train.run_folder import read_metrics


class MemoryLoader:
    """`batches` replayed in order, as many times as asked: len() batches an epoch."""

    def __init__(self, batches: list[dict], per_epoch: int):
        self.batches, self.per_epoch = batches, per_epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.per_epoch))


def loop_round(cfg: TrainConfig, loader: MemoryLoader, steps: int, warmup: int) -> float:
    """Clips/s of `train` over `steps` steps after `warmup` (one log line after the warm-up, one at the end)."""
    run = dataclasses.replace(cfg.run, max_steps=warmup + steps, log_every=warmup if steps % warmup == 0 else 1,
                              checkpoint_every=10**9, picture_every=0)
    from train.run import train

    with tempfile.TemporaryDirectory() as out:
        assert train(dataclasses.replace(cfg, run=run), out, live=False, loader=loader) == 0
        records = read_metrics(Path(out) / "metrics.jsonl")
    timed = [r for r in records if r["step"] > warmup]
    seconds = sum(r["step_s"] * run.log_every for r in timed)
    return sum(r["clips_per_s"] * r["step_s"] * run.log_every for r in timed) / seconds


def bench_loop(cfg: TrainConfig, steps: int = 200, warmup: int = 10, rounds: int = 2, batches: int = 4) -> dict:
    device = resolve_device(cfg.run.device)
    data, _ = make_loader(cfg.data, cfg.run.loader, device)
    stream = iter(data)
    held = [next(stream) for _ in range(batches)]
    del stream, data  # stop the decoding threads: only the loop and the model run from here
    loader = MemoryLoader(held, per_epoch=(warmup + steps) * cfg.optim.accum_steps)
    pairs = []
    for _ in range(rounds):
        loop = loop_round(cfg, loader, steps, warmup)
        alone = bench_model(cfg, steps, warmup, optimizer=True, verbose=False)["clips_per_s"]
        pairs.append({"loop_clips_per_s": round(loop, 2), "model_clips_per_s": alone, "ratio": round(loop / alone, 4)})
    ratio = statistics.median(p["ratio"] for p in pairs)
    result = {"size": cfg.model.size, "batch_size": cfg.data.batch_size, "steps": steps, "rounds": pairs,
              "ratio": ratio, "overhead": round(1 - ratio, 4), "machine": describe()}
    print(f"train loop on batches in memory vs the model alone ({cfg.model.size}, batch {cfg.data.batch_size}, "
          f"{steps} steps, {rounds} rounds): " + ", ".join(f"{p['loop_clips_per_s']} vs {p['model_clips_per_s']}"
                                                           for p in pairs)
          + f" clips/s; median ratio {ratio:.3f} (loop overhead {100 * (1 - ratio):.1f}%) on {result['machine']}")
    return result
