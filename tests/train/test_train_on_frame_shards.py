"""`train` pre-trains and fine-tunes from JPEG-frame shards: their batches (views of frames laid out time-major in
memory, not contiguous) go through the engine, mixup / CutMix, validation and the multi-view test."""

import json

from test_finetune import config_text
from test_train_command import write_config

from shard_tools import cli as shard_cli
from shard_tools.synthetic import make_collection
from train.cli import main as train_main


def test_pretraining_then_fine_tuning_from_jpeg_frame_shards(tmp_path):
    make_collection(tmp_path / "videos", num_classes=4, clips_per_class=3, num_frames=24, size=(48, 64), seed=0)
    shards = tmp_path / "jpeg"
    assert shard_cli.main([str(tmp_path / "videos"), str(shards), "--frames", "jpeg", "--val-fraction", "0.34",
                           "--workers", "1"]) == 0
    config = write_config(tmp_path, shards, max_steps=3)
    assert train_main(["--config", str(config), "--out", str(tmp_path / "pretrain")]) == 0
    finetune = tmp_path / "finetune.yaml"
    finetune.write_text(config_text(shards, weights=str(tmp_path / "pretrain" / "checkpoint-00000003.pt"),
                                    val_every=1))
    assert train_main(["--config", str(finetune), "--out", str(tmp_path / "finetune"), "--set", "run.max_steps=2",
                       "--set", "optim.epochs=1"]) == 0
    summary = json.loads((tmp_path / "finetune" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_val_top1"] is not None
    assert summary["test"]["num_videos"] == 4 and 0 <= summary["test"]["top1"] <= 1
