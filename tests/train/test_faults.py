"""Faults on the read and write side, on real VP9 shards (8 tiny clips, one tar): a full disk while a checkpoint is
written, a shard truncated or deleted between epochs, a clip that fails to decode under on_error: skip, a clip
damaged in the middle, and the one rule every command follows on an expected error (pipeline/errors.py).
docs/errors.md cites these tests."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import pipeline.loader
from pipeline.config import DataConfig
from pipeline.errors import RunFailed, run_command
from pipeline.loader import DaliLoader
from pipeline.shards import DamagedShard, find_shards
from shard_tools import cli as shard_cli
from train import checkpointer
from train.bench import cli as bench_cli
from train.cli import main as train_main
from train.config import load_train_config

from synthetic_shards import synthetic_shards

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = synthetic_shards(tmp_path_factory.mktemp("data"), clips_per_class=2, workers=0)
    assert len(list(out.glob("*.tar"))) == 1
    return out


def copy_of(shards: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shard folder and its one tar."""
    root = tmp_path / "shards"
    shutil.copytree(shards, root)
    return root, root / "train-000000.tar"


def write_config(tmp_path: Path, shards: Path, **run) -> Path:
    """A tiny pre-training config: 8 clips, batch 2 -> 4 steps per epoch."""
    settings = {"log_every": 1, "checkpoint_every": 2, **run}
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
mode: pretrain
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 2,
        num_threads: 1, shuffle_buffer: 4, mask_ratio: 0.75}}
model: {{size: tiny}}
optim: {{epochs: 2, warmup_epochs: 1}}
run: {json.dumps(settings)}
""")
    return path


def data_config(root: Path, **changes) -> DataConfig:
    return DataConfig(**{**dict(shards=str(root), split="train", num_frames=8, sampling_rate=2, input_size=32,
                                patch_size=8, batch_size=2, num_threads=1, shuffle_buffer=4, mask_ratio=0.75),
                         **changes})


def video_member(tar: Path, sample: int) -> tuple[str, int, int]:
    """(key, offset, size) of the video member of the `sample`-th sample, from the tar's DALI index."""
    fields = tar.with_suffix(".idx").read_text().split("\n")[1 + sample].split()
    at = next(i for i in range(0, len(fields), 4) if fields[i] == "webm")
    return fields[at + 3].rsplit(".", 1)[0], int(fields[at + 1]), int(fields[at + 2])


def overwrite(tar: Path, offset: int, data: bytes) -> None:
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(data)


def error_lines(err: str, prog: str) -> list[str]:
    """The lines a command printed about its error (DALI and FFmpeg may add their own warnings)."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith(f"{prog}: ")]


# --- disk full while writing a checkpoint ----------------------------------------------------------------------

class FullDisk:
    """A file whose device fills up after `room` bytes: every later write raises ENOSPC, as on a full disk."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one_and_fails_the_run(shards, tmp_path, monkeypatch,
                                                                                   capsys):
    config, run = write_config(tmp_path, shards, max_steps=4), tmp_path / "run"
    real, calls = torch.save, []

    def save_on_a_filling_disk(obj, f, *args, **kwargs):  # the second checkpoint (step 4) finds the disk full
        calls.append(1)
        return real(obj, FullDisk(f, room=8192) if len(calls) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_filling_disk)
    assert train_main(["--config", str(config), "--out", str(run)]) == 1  # a failed run, not bad input
    lines = error_lines(capsys.readouterr().err, "train")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"train: {run / 'checkpoint-00000004.pt'}: cannot write the checkpoint (no space "
                               f"left on device)"), lines[0]
    assert f"the last good checkpoint is {run / 'checkpoint-00000002.pt'}" in lines[0]
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == ["checkpoint-00000002.pt"]  # no .tmp
    kept = checkpointer.read(run / "checkpoint-00000002.pt")
    checkpointer.check_resumable(run / "checkpoint-00000002.pt", kept, "pretrain", load_train_config(config).model, 1)
    assert kept["train_state"]["step"] == 2
    assert not (run / "lock").exists()


# --- a shard that changes under a running train ---------------------------------------------------------------

@pytest.mark.parametrize("change, on_error", [("truncated", "raise"), ("deleted", "skip")])
def test_a_shard_changed_between_epochs_is_named_at_the_next_epoch(shards, tmp_path, change, on_error):
    """One shard: named, also with on_error: skip, which has no other shard to go on with."""
    root, tar = copy_of(shards, tmp_path)
    loader = DaliLoader(data_config(root, on_error=on_error))
    assert sum(len(batch["key"]) for batch in loader) == 8  # epoch 1 on intact shards
    if change == "truncated":
        os.truncate(tar, tar.stat().st_size * 7 // 10)
    else:
        tar.unlink()
    with pytest.raises(DamagedShard) as raised:
        next(iter(loader))
    message = str(raised.value)
    assert message.startswith(f"{tar} ") and f"`shard-videos verify {root}`" in message and "\n" not in message
    assert {"truncated": "truncated or rewritten while the run was reading it",
            "deleted": "was deleted while the run was reading"}[change] in message


def test_on_error_skip_leaves_out_a_shard_changed_between_epochs_and_counts_its_clips(tmp_path, capsys):
    root = synthetic_shards(tmp_path, "--shard-size", "60k", num_frames=16, seed=2, workers=0)
    tars = sorted(root.glob("train-*.tar"))
    assert len(tars) >= 2
    loader = DaliLoader(data_config(root, on_error="skip", drop_last=False))
    assert sum(len(batch["key"]) for batch in loader) == 16
    lost = find_shards(root, "train").sizes[0]
    tars[0].unlink()
    second = [key for batch in loader for key in batch["key"]]
    assert len(second) == 16 - lost and len(set(second)) == len(second)
    assert len(loader.skipped) == lost and loader.skipped[0].source == str(tars[0])
    assert f"leaving out {tars[0]} ({lost} of this rank's clips per epoch)" in capsys.readouterr().err
    assert sum(len(batch["key"]) for batch in loader) == 16 - lost  # and the epochs after


def test_the_reference_loader_names_a_shard_changed_between_epochs(shards, tmp_path):
    from pipeline.reference import ReferenceLoader

    root, tar = copy_of(shards, tmp_path)
    loader = ReferenceLoader(data_config(root), num_workers=0)
    assert sum(len(batch["key"]) for batch in loader) == 8
    os.truncate(tar, tar.stat().st_size // 2)
    with pytest.raises(DamagedShard, match=rf"^{tar} is now .* truncated or rewritten .*shard-videos verify"):
        next(iter(loader))


def test_a_shard_truncated_mid_epoch_is_named(shards, tmp_path):
    """The reader reads the tars with read(), not mmap (`dont_use_mmap` in pipeline/graph.py): a tar truncated
    mid-epoch fails a read (DALI blames the index) and the loader names the shard, where a mapped tar would kill
    the process with SIGBUS before any check could run."""
    # 32 clips: more than DALI reads ahead
    root = synthetic_shards(tmp_path, clips_per_class=8, num_frames=16, seed=1, workers=0)
    tar = root / "train-000000.tar"
    batches = iter(DaliLoader(data_config(root, shuffle_buffer=1)))
    next(batches)
    os.truncate(tar, tar.stat().st_size // 10)
    with pytest.raises(DamagedShard, match=rf"^{tar} is now .* truncated or rewritten .*shard-videos verify"):
        while True:
            next(batches)  # not `for`: iter() would check the sizes first


def test_train_stops_naming_a_shard_truncated_after_its_first_epoch(shards, tmp_path, monkeypatch, capsys):
    root, tar = copy_of(shards, tmp_path)
    run, epochs = tmp_path / "run", []
    real = DaliLoader.__iter__

    def iterate(loader):  # truncate the shard as the second epoch starts, as a failing copy or disk would
        epochs.append(1)
        if len(epochs) == 2:
            os.truncate(tar, tar.stat().st_size // 2)
        return real(loader)

    monkeypatch.setattr(pipeline.loader.DaliLoader, "__iter__", iterate)
    config = write_config(tmp_path, root)
    assert train_main(["--config", str(config), "--out", str(run), "--set", "data.on_error=skip"]) == 2
    lines = error_lines(capsys.readouterr().err, "train")
    assert len(lines) == 1 and lines[0].startswith(f"train: {tar} is now "), lines
    assert f"`shard-videos verify {root}`" in lines[0] and "--resume auto" in lines[0]
    assert [p.name for p in checkpointer.saved_in(run)] == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]


def test_train_with_skip_goes_on_without_a_shard_deleted_after_its_first_epoch(tmp_path, monkeypatch):
    root = synthetic_shards(tmp_path, "--shard-size", "30k", clips_per_class=2, num_frames=16, seed=4, workers=0)
    tars = sorted(root.glob("train-*.tar"))
    lost = find_shards(root, "train").sizes[0]
    assert len(tars) >= 2 and lost < 4
    run, epochs = tmp_path / "run", []
    real = DaliLoader.__iter__

    def iterate(loader):  # delete the first shard as the second epoch starts
        epochs.append(1)
        if len(epochs) == 2:
            tars[0].unlink()
        return real(loader)

    monkeypatch.setattr(pipeline.loader.DaliLoader, "__iter__", iterate)
    config = write_config(tmp_path, root, max_steps=6)
    assert train_main(["--config", str(config), "--out", str(run), "--set", "data.on_error=skip"]) == 0
    assert json.loads((run / "summary.json").read_text())["skipped_clips"] == lost
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and records[-1]["skipped"] == lost


# --- clips that fail to decode, clips damaged in the middle -------------------------------------------------

def test_a_clip_that_fails_to_decode_stops_train_in_one_line_or_with_skip_is_counted(shards, tmp_path, capsys):
    root, tar = copy_of(shards, tmp_path)
    key, offset, size = video_member(tar, 2)
    overwrite(tar, offset + 64, b"\x07" * (size - 64))  # same size: only decoding can tell
    config = write_config(tmp_path, root, max_steps=4)  # one epoch: the bad clip is met once
    assert train_main(["--config", str(config), "--out", str(tmp_path / "stopped")]) == 2
    lines = error_lines(capsys.readouterr().err, "train")
    assert len(lines) == 1 and f"cannot decode {key} (shard {tar}, offset {offset})" in lines[0], lines
    assert "shard-videos verify" in lines[0] and "on_error: skip" in lines[0]

    run = tmp_path / "run"
    assert train_main(["--config", str(config), "--out", str(run), "--set", "data.on_error=skip"]) == 0
    assert f"skipped {key}" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["skipped_clips"] == 1
    counts = [json.loads(line)["skipped"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(counts) == 4 and counts == sorted(counts) and counts[-1] == 1, counts


def test_a_clip_damaged_in_the_middle_decodes_and_only_verify_names_it(shards, tmp_path, capsys):
    """The stated limit: the loader checks sizes, not contents; FFmpeg conceals the damage, so the clip trains.
    `shard-videos verify` finds it by its shard's sha256."""
    root, tar = copy_of(shards, tmp_path)
    key, offset, size = video_member(tar, 3)
    overwrite(tar, offset + size // 2 - 1024, bytes(range(256)) * 8)  # 2 KB in the middle of the clip
    find_shards(root, "train")  # sizes unchanged: nothing to see at start
    keys = [k for batch in DaliLoader(data_config(root)) for k in batch["key"]]
    assert sorted(keys) == sorted(f"train-{i:08d}" for i in range(8)) and key in keys
    capsys.readouterr()
    assert shard_cli.main(["verify", str(root), "--threads", "1"]) == 1
    assert "FAILED train-000000.tar -: sha256 differs from manifest.json" in capsys.readouterr().err


# --- one rule for every command -------------------------------------------------------------------------------

def truncated_copy(shards: Path, tmp_path: Path) -> Path:
    root, tar = copy_of(shards, tmp_path)
    os.truncate(tar, tar.stat().st_size // 2)
    return root


@pytest.mark.parametrize("prog", ["shard-videos", "bench", "train"])
def test_every_command_ends_an_expected_error_in_one_line_or_a_traceback_with_debug(shards, tmp_path, capsys,
                                                                                    prog):
    root = truncated_copy(shards, tmp_path)
    main, argv = {"shard-videos": (shard_cli.main, [str(tmp_path / "missing"), str(tmp_path / "out")]),
                  "bench": (bench_cli.main, ["loader", str(root)]),
                  "train": (train_main, ["--config", str(write_config(tmp_path, root)), "--out",
                                         str(tmp_path / "run")])}[prog]
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err, prog)
    assert len(lines) == 1, lines
    assert ("does not exist" if prog == "shard-videos" else "shorter than its index") in lines[0]
    with pytest.raises(Exception):
        main(argv + ["--debug"])


def test_run_command_exit_status_and_bugs(capsys):
    def fails(error):
        def command():
            raise error
        return command

    assert run_command("x", fails(RunFailed("disk full"))) == 1
    assert run_command("x", lambda: DataConfig(batch_size=0)) == 2  # a ValueError of pipeline/config.py
    assert capsys.readouterr().err.splitlines() == ["x: disk full", "x: batch_size must be >= 1, got 0"]
    with pytest.raises(RunFailed):
        run_command("x", fails(RunFailed("disk full")), debug=True)
    with pytest.raises(RuntimeError):  # raised inside torch: a bug to report, with its traceback
        run_command("x", lambda: torch.zeros(2) @ torch.zeros(3))
    with pytest.raises(ValueError):  # raised outside the project's packages (here, in tests/)
        run_command("x", fails(ValueError("not ours")))
