"""What a `train` run logs and draws, on real VP9 shards (tiny model): the gradient norm before clipping in every
metrics record and log line, the lr scaled by the batch counting accumulation steps, a reconstruction picture of as
many clips as run.picture_clips asks, and a resumed run's progress starting at its step."""

import contextlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import train.run
from train.cli import main as train_main
from train.pictures import CLIP_GAP, enlargement

from synthetic_shards import synthetic_shards

# 16 clips, batch 3 x 2 views = 6 rows: 5 batches per epoch, 2 optimizer steps of 2 accumulated batches
SETTINGS = """
mode: pretrain
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 3,
        num_sample: 2, num_threads: 1, shuffle_buffer: 4, mask_ratio: 0.75}}
model: {{size: tiny}}
optim: {{epochs: 2, warmup_epochs: 1, base_lr: 0.5, min_lr: 0.001, warmup_lr: 0.001, accum_steps: 2,
         clip_grad: 0.02}}
run: {{log_every: 1, checkpoint_every: 100, picture_clips: 5}}
"""


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory) -> tuple[Path, Path, str]:
    """(config, run folder, printed text) of a run with accumulation and clipping."""
    tmp = tmp_path_factory.mktemp("accumulated")
    config = tmp / "tiny.yaml"
    config.write_text(SETTINGS.format(shards=synthetic_shards(tmp / "data")))
    out = tmp / "run"
    printed = tmp / "printed.txt"
    with printed.open("w") as f, contextlib.redirect_stdout(f):
        assert train_main(["--config", str(config), "--out", str(out)]) == 0
    return config, out, printed.read_text()


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_gradient_norm_before_clipping_is_logged_and_shown(accumulated):
    _, run, printed = accumulated
    logged = records(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0.02 for r in logged)  # before clipping to optim.clip_grad
    lines = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and all(f"grad norm {r['grad_norm']:.3g}" in line for r, line in zip(logged, lines))


def test_a_trailing_group_of_fewer_batches_than_accum_steps_is_not_trained_on(accumulated):
    _, run, _ = accumulated
    assert [r["epoch"] for r in records(run)] == [0, 0, 1, 1]  # 5 batches an epoch: 2 steps, the fifth left out
    state = torch.load(run / "checkpoint-00000004.pt", weights_only=True)["train_state"]
    assert (state["step"], state["epoch"], state["clips"]) == (4, 1, 4 * 12)
    for r in records(run):  # a record covers one step (log_every 1) of 12 clips (views)
        assert r["clips_per_s"] * r["step_s"] == pytest.approx(12)


def test_the_lr_counts_accumulation_steps(accumulated):
    _, run, printed = accumulated
    peak = 0.5 * 3 * 2 * 2 / 256  # base_lr x batch x views x accumulation / 256
    assert max(r["lr"] for r in records(run)) == pytest.approx(peak)
    assert "12 clips per step (3 x 2 views x 2 accumulation x 1 ranks)" in printed
    assert records(run)[0]["clips_per_s"] > 0


def test_the_reconstruction_picture_holds_the_clips_asked_for(accumulated):
    _, run, _ = accumulated
    with Image.open(run / "pictures" / "reconstruction-00000004.png") as picture:
        # 5 clips of 3 rows of 32-pixel frames, gaps between them, drawn enlarged 3 times
        assert picture.height == enlargement(32) * (5 * 3 * 32 + 4 * CLIP_GAP) and enlargement(32) == 3


def test_a_resumed_run_shows_its_progress_from_the_step_it_resumed_at(accumulated, tmp_path, monkeypatch):
    config, run, _ = accumulated
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "checkpoint-00000004.pt").write_bytes((run / "checkpoint-00000004.pt").read_bytes())
    shown = []

    class Recorded(train.run.Display):
        def __init__(self, total_steps, start_step, *args, **kwargs):
            shown.append((total_steps, start_step))
            super().__init__(total_steps, start_step, *args, **kwargs)

    monkeypatch.setattr(train.run, "Display", Recorded)
    assert train_main(["--config", str(config), "--out", str(copy), "--resume", "auto"]) == 0  # it ends at once
    assert shown == [(4, 4)]
