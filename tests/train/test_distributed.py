"""`torchrun --nproc-per-node 2` on the CPU (gloo): each rank reads its own clips, DDP keeps the replicas equal, and
the result equals one process training on both ranks' batches at once (fp32 rounding), also with gradient
accumulation; FSDP2 pre-trains like DDP and fine-tunes like one process, sharding the units each model declares."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model import ModelConfig, VideoMAEPretrain, save_checkpoint
from pipeline.loader import DaliLoader
from test_train_command import ROOT, shards, write_config  # noqa: F401 (fixture)
from train.config import load_train_config
from train.finetune import ClassifierLoss, build_classifier
from train.loop import train_step
from train.optim import build_optimizer, make_schedule
from train.task import PretrainLoss, build_model

STEPS = 6  # 4 steps per epoch on each rank (8 clips, batch 2): crosses an epoch boundary

# Runs the real command on every rank, recording the clips each step trained on and the rank's final weights.
RECORDER = textwrap.dedent("""
    import faulthandler, sys, torch
    import train.loop as loop, train.run as run_module
    faulthandler.dump_traceback_later(200, exit=True)  # a hang shows every rank's stack instead of a bare timeout
    from train.cli import main as cli
    seen, real_step, real_finish = [], loop.train_step, run_module.finish

    def step(model, optimizer, batches, *args, **kwargs):
        seen.append([key for batch in batches for key in batch["key"]])
        return real_step(model, optimizer, batches, *args, **kwargs)

    def finish(run, *args):
        torch.save({"keys": seen, "weights": run.model.state_dict()}, f"{sys.argv[1]}/rank{run.env.rank}.pt")
        return real_finish(run, *args)

    loop.train_step, run_module.finish = step, finish
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


def one_process_on_both_ranks_batches(config: Path, keys=("video", "mask"), steps: int = STEPS) -> dict:
    """The same steps in one process: rank 0's and rank 1's batches of each step concatenated into one batch (each
    accumulated batch with its own); a pre-training or a fine-tuning config."""
    cfg = load_train_config(config)
    loaders = [DaliLoader(cfg.data, device="cpu", shard_id=r, num_shards=2) for r in range(2)]
    if cfg.mode == "pretrain":
        model, loss_of, layer_decay = build_model(cfg, torch.device("cpu")), PretrainLoss(), None
    else:
        model = build_classifier(cfg, 4, torch.device("cpu"), say=lambda text: None)
        loss_of, layer_decay = ClassifierLoss(cfg.finetune, 4), cfg.finetune.layer_decay
    optimizer = build_optimizer(cfg.optim, model, layer_decay)
    accum = cfg.optim.accum_steps
    schedule = make_schedule(cfg.optim, len(loaders[0]) // accum, 2 * cfg.lr_batch)
    step, batches = 0, []
    while step < steps:
        for first, second in zip(*loaders):
            batches.append({key: torch.cat([first[key], second[key]]) for key in keys})
            if len(batches) < accum:
                continue
            schedule.apply(optimizer, step)
            train_step(model, optimizer, batches, loss_of)
            step, batches = step + 1, []
            if step == steps:
                break
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(config, run folder, the torchrun) of pre-training with DDP on two ranks."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = write_config(tmp, shards, max_steps=STEPS, checkpoint_every=1000)
    return config, tmp / "run", torchrun(tmp, config, tmp / "run")


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_clips_and_match_one_process(ddp_run):
    config, out, done = ddp_run
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


def test_two_ranks_log_the_clips_per_second_of_the_whole_run(ddp_run):
    _, out, done = ddp_run
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == STEPS
    for r in records:  # one step a record (log_every 1): batch 2 on each of 2 ranks
        assert r["clips_per_s"] * r["step_s"] == pytest.approx(2 * 2)


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_saves_whole_weights(ddp_run, tmp_path):
    config, ddp_out, _ = ddp_run  # the DDP run is the config's own (run.parallel: ddp)
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = ddp_out if parallel == "ddp" else tmp_path / parallel
        if parallel == "fsdp":
            done = torchrun(tmp_path, config, out, f"run.parallel={parallel}")
            assert done.returncode == 0, done.stdout + done.stderr
        runs[parallel] = torch.load(out / f"checkpoint-{STEPS:08d}.pt", weights_only=True)
    ddp, fsdp = runs["ddp"]["model"], runs["fsdp"]["model"]
    assert ddp.keys() == fsdp.keys()
    for key in ddp:  # gathered whole from the shards, equal to DDP's up to the order of reductions
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    assert runs["fsdp"]["optimizer"]["state"].keys() == runs["ddp"]["optimizer"]["state"].keys()


@pytest.mark.slow
def test_two_ranks_with_accumulation_match_one_process(shards, tmp_path):
    """Gradients are all-reduced on the last accumulated batch of a step, never on an earlier one alone."""
    config = write_config(tmp_path, shards, max_steps=STEPS // 2, checkpoint_every=1000)
    config.write_text(config.read_text().replace("warmup_lr: 0.001}", "warmup_lr: 0.001, accum_steps: 2}"))
    assert load_train_config(config).optim.accum_steps == 2
    done = torchrun(tmp_path, config, tmp_path / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    saved = torch.load(tmp_path / "run" / f"checkpoint-{STEPS // 2:08d}.pt", weights_only=True)["model"]
    reference = one_process_on_both_ranks_batches(config, steps=STEPS // 2)
    for key, value in reference.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=1e-5, msg=key)


FINETUNE = """
mode: finetune
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 2,
        num_threads: 1, shuffle_buffer: 4, rand_augment_n: 1, test_num_segment: 1, test_num_crop: 1}}
model: {{size: tiny}}
optim: {{epochs: 2, warmup_epochs: 1, base_lr: 0.2, min_lr: 0.001, warmup_lr: 0.001, betas: [0.9, 0.999]}}
finetune: {{weights: {weights}, mixup: 0.0, cutmix: 0.0, label_smoothing: 0.1, val_split: null, test_split: train}}
run: {{log_every: 1, checkpoint_every: 1000, parallel: fsdp, max_steps: {steps}}}
"""


@pytest.mark.slow
def test_fsdp_fine_tunes_like_one_process(shards, tmp_path):
    """The classifier under FSDP2 (its blocks sharded), from pre-trained weights, then the multi-view test with
    both ranks in step."""
    torch.manual_seed(5)
    weights = tmp_path / "pretrain.pt"
    save_checkpoint(weights, VideoMAEPretrain(ModelConfig(size="tiny", num_frames=8, input_size=32, patch_size=8)))
    config = tmp_path / "finetune.yaml"
    steps = 3
    config.write_text(FINETUNE.format(shards=shards, weights=weights, steps=steps))
    out = tmp_path / "run"
    done = torchrun(tmp_path, config, out)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = torch.load(out / f"checkpoint-{steps:08d}.pt", weights_only=True)
    assert saved["tubemae"]["kind"] == "classifier" and len(saved["classes"]) == 4
    reference = one_process_on_both_ranks_batches(config, keys=("video", "label"), steps=steps)
    assert saved["model"].keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(saved["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    report = json.loads((out / "eval-train.json").read_text())
    assert report["num_videos"] == 16 and report["views_per_video"] == 1
