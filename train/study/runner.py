"""The study's runs: every pre-training and fine-tuning, each a `train` run of a shipped config
(configs/study-digits-pretrain.yaml, configs/study-digits-finetune.yaml) into DIR/runs/<run>/, `jobs` of them at a
time in worker processes; a fine-tuning starts once the pre-training it starts from has finished. A run that
finished is not run again, an unfinished one resumes."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import train as trainer
from train.study.cells import MAIN_MASK, pretrain_masks, pretrain_name, study_cells
from train.study.data import StudyError, finetune_shards, train_clips


@dataclass(frozen=True)
class Job:
    name: str  # DIR/runs/<name>
    config: str  # a shipped config
    overrides: tuple[str, ...]
    steps: int  # about this many optimizer steps
    after: str | None = None  # the run whose checkpoint this one starts from


def plan(out: Path, size: dict) -> list[Job]:
    """Every run of the study, seed after seed, each seed's pre-trainings first."""
    jobs = []
    for seed in size["seeds"]:
        for mask in pretrain_masks():
            jobs.append(Job(pretrain_name(mask, seed), "study-digits-pretrain.yaml", (
                f"data.shards={out / 'shards' / 'digit-all'}", f"data.mask_type={mask[0]}",
                f"data.mask_ratio={mask[1]}", f"run.seed={seed}"), size["pretrain_steps"]))
        for cell in study_cells(size["fractions"]):
            after = pretrain_name(cell.mask, seed) if cell.start == "pretrained" else None
            weights = {"pretrained": out / "runs" / str(after), "untrained": untrained_path(out, seed),
                       "scratch": "null"}[cell.start]
            steps = size["motion_steps"] if cell.label == "direction" else size["finetune_steps"][cell.fraction]
            jobs.append(Job(f"{cell.name}-s{seed}", "study-digits-finetune.yaml", (
                f"data.shards={finetune_shards(out, cell.label, cell.fraction, seed)}", f"finetune.weights={weights}",
                f"run.seed={seed}"), steps, after))
    return jobs


def job_config(job: Job, evaluations: int):
    """The job's config with the epochs that give about `job.steps` steps (a tenth of them warm-up), validated
    about `evaluations` times."""
    config = trainer.shipped_config(job.config)
    cfg = trainer.load_train_config(config, list(job.overrides))
    per_epoch = max(train_clips(Path(cfg.data.shards)) // cfg.data.batch_size, 1)
    epochs = max(1, round(job.steps / per_epoch))
    extra = [f"optim.epochs={epochs}", f"optim.warmup_epochs={epochs / 10}"]
    if cfg.mode == "finetune":
        extra.append(f"finetune.val_every={max(1, epochs // evaluations)}")
    return trainer.load_train_config(config, [*job.overrides, *extra])


def run_job(job: Job, runs: Path, logs: Path, evaluations: int, threads: int) -> dict:
    """`train` of the job into runs/<name> (resumed when a killed study left it unfinished), its output in
    logs/<name>.log; returns its summary.json plus `wall_s`, the seconds the whole run took."""
    import torch

    folder, timing = runs / job.name, runs / f"{job.name}.wall.json"
    summary = folder / "summary.json"
    if summary.is_file() and timing.is_file():
        return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}
    torch.set_num_threads(threads)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{job.name}.log"
    started = time.perf_counter()
    with log.open("a") as f, contextlib.redirect_stdout(f):
        code = trainer.train(job_config(job, evaluations), folder, resume="auto", live=False)
    if code != 0:
        raise StudyError(f"{folder}: train exited with status {code}; the reason is at the end of {log} (run "
                         f"`train study` again to resume from its last checkpoint)")
    timing.write_text(json.dumps({"wall_s": round(time.perf_counter() - started, 1)}) + "\n")
    return {**json.loads(summary.read_text()), **json.loads(timing.read_text())}


def run_all(out: Path, size: dict, jobs: int, threads: int, say) -> dict:
    """Every run, `jobs` at a time; returns {run name: summary}. A failed run stops the study after the runs in
    flight end (they finish, so nothing is lost)."""
    todo, found, started = plan(out, size), {}, time.perf_counter()
    total, runs = len(todo), out / "runs"
    for seed in size["seeds"]:
        untrained_weights(out, size, seed)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no DALI or torch state shared
    with futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        running: dict[futures.Future, Job] = {}
        while todo or running:
            ready = [job for job in todo if job.after is None or job.after in found]
            for job in ready[:jobs - len(running)]:
                todo.remove(job)
                running[pool.submit(run_job, job, runs, out / "logs", size["evaluations"], threads)] = job
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                found[job.name] = future.result()
                say(f"study: [{len(found)}/{total}] {job.name}: {found[job.name]['steps']} steps, "
                    f"{outcome(found[job.name], runs / job.name)} ({found[job.name]['wall_s']:.0f} s; "
                    f"{(time.perf_counter() - started) / 60:.1f} min since this command started)")
    return found


def outcome(summary: dict, folder: Path) -> str:
    if "test" in summary:
        return f"test top-1 {100 * summary['test']['top1']:.1f}%"
    losses = [r["loss"] for r in trainer.read_metrics(folder / "metrics.jsonl") if "loss" in r]
    return f"final loss {losses[-1]:.3f}" if losses else "no loss logged"


def untrained_path(out: Path, seed: int) -> Path:
    return out / "runs" / f"untrained-s{seed}.pt"


def untrained_weights(out: Path, size: dict, seed: int) -> Path:
    """The tube 0.9 pre-training run's model of `seed` before its first step (the same weights its run starts
    from), as a checkpoint: fine-tuned, it tells what pre-training learned from what its initialisation gives."""
    import torch

    from model import save_checkpoint

    path = untrained_path(out, seed)
    if not path.is_file():
        job = next(j for j in plan(out, size) if j.name == pretrain_name(MAIN_MASK, seed))
        save_checkpoint(path, trainer.build_model(job_config(job, size["evaluations"]), torch.device("cpu")))
    return path


def first_pretraining(out: Path, size: dict) -> Path:
    """The run folder of the first seed's tube 0.9 pre-training."""
    return out / "runs" / pretrain_name(MAIN_MASK, size["seeds"][0])

