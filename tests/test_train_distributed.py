"""`torchrun --nproc-per-node 2 -m train` on the CPU (gloo): each rank reads its own clips, DDP keeps the replicas
equal, and the result equals one process training on both ranks' batches at once (fp32 rounding)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.loader import DaliLoader
from test_train import ROOT, shards, write_config  # noqa: F401 (fixture)
from train.build import build_model, build_optimizer
from train.config import load_train_config
from train.engine import PretrainLoss, train_step
from train.schedule import make_schedule

STEPS = 6  # 4 steps per epoch on each rank (8 clips, batch 2): crosses an epoch boundary

# Runs the real command on every rank, recording the clips each step trained on and the rank's final weights.
RECORDER = textwrap.dedent("""
    import faulthandler, sys, torch
    import train.engine as engine, train.main as main
    faulthandler.dump_traceback_later(200, exit=True)  # a hang shows every rank's stack instead of a bare timeout
    from train.cli import main as cli
    seen, real_step, real_finish = [], engine.train_step, main.finish

    def step(model, optimizer, batches, *args, **kwargs):
        seen.append([key for batch in batches for key in batch["key"]])
        return real_step(model, optimizer, batches, *args, **kwargs)

    def finish(run, *args):
        torch.save({"keys": seen, "weights": run.model.state_dict()}, f"{sys.argv[1]}/rank{run.env.rank}.pt")
        return real_finish(run, *args)

    engine.train_step, main.finish = step, finish
    sys.exit(cli(sys.argv[2:]))
""")


def torchrun(tmp_path: Path, config: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(out), "--config", str(config), "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)


def one_process_on_both_ranks_batches(config: Path) -> dict[str, torch.Tensor]:
    """The same steps in one process: rank 0's and rank 1's batches of each step concatenated into one batch."""
    cfg = load_train_config(config)
    loaders = [DaliLoader(cfg.data, device="cpu", shard_id=r, num_shards=2) for r in range(2)]
    model = build_model(cfg, torch.device("cpu"))
    optimizer = build_optimizer(cfg.optim, model)
    schedule = make_schedule(cfg.optim, len(loaders[0]), 2 * cfg.data.batch_size)
    step = 0
    while step < STEPS:
        for first, second in zip(*loaders):
            batch = {key: torch.cat([first[key], second[key]]) for key in ("video", "mask")}
            schedule.apply(optimizer, step)
            train_step(model, optimizer, [batch], PretrainLoss())
            step += 1
            if step == STEPS:
                break
    return model.state_dict()


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_clips_and_match_one_process(shards, tmp_path):
    config = write_config(tmp_path, shards, max_steps=STEPS, checkpoint_every=1000)
    out = tmp_path / "run"
    done = torchrun(tmp_path, config, out)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in ranks:
        assert len(r["keys"]) == STEPS
    for a, b in zip(ranks[0]["keys"], ranks[1]["keys"]):  # each step: the ranks' clips are disjoint
        assert not set(a) & set(b)
    first_epoch = [key for keys in ranks[0]["keys"][:4] + ranks[1]["keys"][:4] for key in keys]
    assert len(set(first_epoch)) == 16  # one epoch over both ranks: every clip once
    w0, w1 = ranks[0]["weights"], ranks[1]["weights"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps the replicas identical
    saved = torch.load(out / f"checkpoint-{STEPS:08d}.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], w0[k]) for k in w0)
    assert len(saved["ranks"]) == 2 and saved["ranks"][0]["loader"]["fingerprint"]["shard_id"] == 0
    reference = one_process_on_both_ranks_batches(config)
    for key, value in reference.items():
        torch.testing.assert_close(w0[key], value, rtol=1e-4, atol=1e-5, msg=key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_saves_whole_weights(shards, tmp_path):
    config = write_config(tmp_path, shards, max_steps=STEPS, checkpoint_every=1000)
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        done = torchrun(tmp_path, config, out, f"run.parallel={parallel}")
        assert done.returncode == 0, done.stdout + done.stderr
        runs[parallel] = torch.load(out / f"checkpoint-{STEPS:08d}.pt", weights_only=True)
    ddp, fsdp = runs["ddp"]["model"], runs["fsdp"]["model"]
    assert ddp.keys() == fsdp.keys()
    for key in ddp:  # gathered whole from the shards, equal to DDP's up to the order of reductions
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    assert runs["fsdp"]["optimizer"]["state"].keys() == runs["ddp"]["optimizer"]["state"].keys()
