"""The `train` command on real VP9 shards (tiny model, 8x32x32 clips): the loss goes down, a kill -9 and resume
ends with the weights of an uninterrupted run, SIGTERM leaves a loadable checkpoint, a second run on the same
folder is refused, a non-finite loss stops the run naming the step."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from model import build_from_checkpoint
from train import task
from train.checkpointer import saved_in as list_checkpoints
from train.cli import main as train_main
from train.config import load_train_config
from train.run import train
from train.run_folder import RunFolder, RunLocked

from synthetic_shards import synthetic_shards

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "train"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("data"))


def write_config(tmp_path: Path, shards: Path, **run) -> Path:
    """A tiny pre-training config: 16 clips, batch 2 -> 8 steps per epoch."""
    settings = {"log_every": 1, "checkpoint_every": 3, **run}
    text = f"""
mode: pretrain
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 2,
        num_threads: 1, shuffle_buffer: 4, mask_ratio: 0.75}}
model: {{size: tiny}}
optim: {{epochs: 3, warmup_epochs: 1, base_lr: 0.5, min_lr: 0.001, warmup_lr: 0.001}}
run: {json.dumps(settings)}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_tiny_model_pretrains_and_its_loss_goes_down(shards, tmp_path):
    config = write_config(tmp_path, shards)
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    seen = losses(run)
    assert len(seen) == 24  # 3 epochs x 8 steps, logged every step
    assert sum(seen[-6:]) / 6 < 0.9 * sum(seen[:6]) / 6, seen
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 25))
    assert records[0]["epoch"] == 0 and records[-1]["epoch"] == 2
    assert all(0 <= r["data_wait"] <= 1 and r["clips_per_s"] > 0 for r in records)
    assert records[0]["lr"] == pytest.approx(0.001 * 2 / 256)  # warm-up starts at warmup_lr x batch / 256
    assert max(r["lr"] for r in records) == pytest.approx(0.5 * 2 / 256)  # the peak at the end of warm-up
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000021.pt", "checkpoint-00000024.pt"]
    model = build_from_checkpoint(run / "checkpoint-00000024.pt")  # a TubeMAE checkpoint the model stage reads
    assert model.cfg.size == "tiny" and model.cfg.patch_size == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["checkpoint"].endswith("checkpoint-00000024.pt")
    assert (run / "pictures" / "loss.png").stat().st_size > 0
    assert (run / "pictures" / "reconstruction-00000024.png").stat().st_size > 0
    resolved = load_train_config(run / "config.yaml")  # the resolved config reads back as the same config
    assert resolved == load_train_config(config)


# `train` that kills itself with SIGKILL inside its 11th optimizer step: after the checkpoint of step 9, mid-way
# through an epoch, with nothing flushed or cleaned up (a deterministic kill -9 at a known step).
KILLED_AT_11 = """
import os, signal, sys
import train.loop as loop
from train.cli import main
real, calls = loop.train_step, []

def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 11:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

loop.train_step = step
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_then_resume_ends_with_the_weights_of_an_uninterrupted_run(shards, tmp_path):
    config = str(write_config(tmp_path, shards, max_steps=14))
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert subprocess.run(TRAIN + ["--config", config, "--out", str(whole)], cwd=ROOT).returncode == 0
    killer = tmp_path / "killed.py"
    killer.write_text(KILLED_AT_11)
    killed = subprocess.run([sys.executable, str(killer), "--config", config, "--out", str(broken)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(broken)] == ["checkpoint-00000006.pt", "checkpoint-00000009.pt"]
    assert (broken / "lock").exists()  # left behind by the killed process
    resumed = subprocess.run(TRAIN + ["--config", config, "--out", str(broken), "--resume", "auto"], cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "taking over a stale lock" in resumed.stdout, resumed.stdout
    assert "resumed from" in resumed.stdout and "checkpoint-00000009.pt" in resumed.stdout, resumed.stdout
    a, b = weights(whole / "checkpoint-00000014.pt"), weights(broken / "checkpoint-00000014.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    states = [torch.load(run / "checkpoint-00000014.pt", weights_only=True)["train_state"] for run in (whole, broken)]
    assert states[0] == states[1] and states[0]["epoch"] == 1 and states[0]["clips"] == 28  # step, epoch, clips, ...
    assert [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, 15))  # the steps redone after the kill are logged once
    assert losses(broken) == losses(whole)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_write_a_checkpoint_and_exit(shards, tmp_path, capsys, signum):
    config = str(write_config(tmp_path, shards, checkpoint_every=1000))
    run = tmp_path / "run"
    script = tmp_path / "signalled.py"  # the signal arrives during the 5th step, as a cluster's preemption would
    script.write_text(KILLED_AT_11.replace("len(calls) == 11", "len(calls) == 5")
                      .replace("signal.SIGKILL", f"signal.{signal.Signals(signum).name}"))
    done = subprocess.run([sys.executable, str(script), "--config", config, "--out", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signum, done.stdout + done.stderr
    saved = list_checkpoints(run)
    assert [p.name for p in saved] == ["checkpoint-00000005.pt"]  # the step in flight finishes, then it stops
    assert f"stopped by {signal.Signals(signum).name} after step 5" in done.stdout and saved[0].name in done.stdout
    assert build_from_checkpoint(saved[0]).cfg.size == "tiny"
    assert not (run / "lock").exists()
    resumed = train_main(["--config", config, "--out", str(run), "--resume", "auto", "--set", "run.max_steps=6"])
    printed = capsys.readouterr()
    assert resumed == 0 and "at step 5" in printed.out, printed.out + printed.err
    # the run ended mid-epoch and closed its loader: no prefetch thread is left to race the process's exit
    assert not [t for t in threading.enumerate() if t.name == "tubemae-feeder"]


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    first = RunFolder(tmp_path)
    first.lock()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "lock").write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        with pytest.raises(RunLocked, match=f"in use by process {sleeper.pid}"):
            RunFolder(tmp_path).lock()
    finally:
        sleeper.kill()
        sleeper.wait()
    warnings = []
    taker = RunFolder(tmp_path, warn=warnings.append)
    taker.lock()  # the holder is dead now: a stale lock
    assert "stale lock" in warnings[0] and str(sleeper.pid) in warnings[0]
    assert (tmp_path / "lock").read_text().split()[0] == str(os.getpid())


def test_a_non_finite_loss_stops_the_run_naming_the_step(shards, tmp_path, monkeypatch, capsys):
    cfg = load_train_config(write_config(tmp_path, shards), ["run.log_every=4"])
    calls = []
    real = task.PretrainLoss.__call__

    def poisoned(loss_of, model, batch):
        calls.append(1)
        loss = real(loss_of, model, batch)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(task.PretrainLoss, "__call__", poisoned)
    assert train(cfg, tmp_path / "run", live=False) == 1
    out = capsys.readouterr().out
    assert "not finite at step 5" in out  # steps are counted from 1, as in the log lines
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-00000003.pt"]
    assert "checkpoint-00000003.pt" in out


def test_resume_passes_over_a_truncated_checkpoint_and_refuses_another_model(shards, tmp_path, capsys):
    config = str(write_config(tmp_path, shards, max_steps=6))
    run = tmp_path / "run"
    assert train_main(["--config", config, "--out", str(run)]) == 0
    newest = run / "checkpoint-00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert train_main(["--config", config, "--out", str(run), "--resume", str(newest)]) == 2
    assert "checkpoint-00000006.pt: cannot be read" in capsys.readouterr().err
    assert train_main(["--config", config, "--out", str(run), "--resume", "auto",
                       "--set", "run.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "passing over" in out and "checkpoint-00000006.pt" in out and "resumed from" in out
    assert "checkpoint-00000003.pt" in out
    assert train_main(["--config", config, "--out", str(run), "--resume", "auto", "--set", "model.embed_dim=64",
                       "--set", "model.num_heads=2"]) == 2
    assert "written for another model" in capsys.readouterr().err
    assert train_main(["--config", config, "--out", str(run)]) == 2
    assert "already holds checkpoint-00000007.pt" in capsys.readouterr().err


def test_bench_loop_times_the_train_command_on_held_batches(shards, tmp_path, monkeypatch):
    from train.bench import loop

    cfg = load_train_config(write_config(tmp_path, shards))
    calls = []
    real = loop.loop_round
    monkeypatch.setattr(loop, "loop_round", lambda *a: calls.append(1) or real(*a))
    result = loop.bench_loop(cfg, steps=4, warmup=2, rounds=2, batches=2)
    assert len(calls) == 2 and len(result["rounds"]) == 2
    ratios = [r["ratio"] for r in result["rounds"]]
    assert result["ratio"] == pytest.approx(sum(ratios) / 2)  # the median of two
    for r in result["rounds"]:  # each ratio from unrounded figures; clips/s are printed to 0.01
        tolerance = 0.01 / r["model_clips_per_s"] + 1e-4
        assert r["ratio"] == pytest.approx(r["loop_clips_per_s"] / r["model_clips_per_s"], abs=tolerance)
    assert all(r["loop_clips_per_s"] > 0 for r in result["rounds"])
