"""train/checkpointer.py, the one door for checkpoints: a checkpoint is written to a temporary file, fsynced, then
renamed (an error while writing the next leaves no file under its name), the newest `keep` stay, a `.pt.tmp` left by
a kill goes at the next save; every part of a run's state comes back on resume; any file that is not a usable
checkpoint is one line saying what it is, whichever command reads it."""

import os
from pathlib import Path

import pytest
import torch

from model import ModelConfig, VideoMAEClassifier, VideoMAEPretrain, save_checkpoint
from train import checkpointer
from train.checkpointer import Checkpointer, CheckpointError, TrainState
from train.distributed import Env

from unusable_checkpoints import unusable_checkpoints

GEOMETRY = dict(size="tiny", num_frames=4, input_size=16, patch_size=8)
ONE_PROCESS = Env(0, 1, 0, torch.device("cpu"))


class Loader:
    """A loader with exact resume: its state is what it was given."""

    def __init__(self, position: int = 0):
        self.position = position

    def state_dict(self) -> dict:
        return {"position": self.position, "skipped": []}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def a_checkpointer(folder: Path, keep: int = 2, state: TrainState | None = None, seed: int = 0,
                   loader: Loader | None = None) -> Checkpointer:
    torch.manual_seed(seed)
    model = VideoMAEPretrain(ModelConfig(**GEOMETRY))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 4, 16, 16), torch.arange(8)[None] < 6)["loss"].backward()
    optimizer.step()  # an optimizer with state
    return Checkpointer(folder, ONE_PROCESS, keep, warn=lambda text: None, model=model, optimizer=optimizer,
                        scaler=None, loader=loader or Loader(), state=state or TrainState(),
                        entries={"config": {"mode": "pretrain"}})


def test_a_checkpoint_is_written_to_a_temporary_file_fsynced_then_renamed(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("rename", Path(source).name, Path(target).name))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    a_checkpointer(tmp_path, state=TrainState(step=3)).save()
    name = "checkpoint-00000003.pt"
    assert events == [("fsync", f"{name}.tmp"), ("rename", f"{name}.tmp", name), ("fsync", tmp_path.name)]


def test_an_error_while_writing_the_next_checkpoint_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    saver = a_checkpointer(tmp_path, state=TrainState(step=1))
    first = saver.save()
    good = first.read_bytes()
    real_save = torch.save

    def fails_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a zip archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", fails_half_way)
    saver.state.step = 2
    with pytest.raises(checkpointer.CheckpointWriteError, match=r"checkpoint-00000002.pt: cannot write the "
                       r"checkpoint \(no space left on device\).*last good checkpoint is .*checkpoint-00000001.pt"):
        saver.save()
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001.pt"]
    assert first.read_bytes() == good


def test_the_newest_are_kept_and_a_temporary_file_left_by_a_kill_goes_at_the_next_save(tmp_path):
    (tmp_path / "checkpoint-00000002.pt.tmp").write_bytes(b"PK\x03\x04 cut short by kill -9")
    (tmp_path / "best.pt.tmp").write_bytes(b"PK\x03\x04")
    saver = a_checkpointer(tmp_path, keep=2)
    for step in (1, 3, 4):
        saver.state.step = step
        saver.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    assert [p.name for p in checkpointer.saved_in(tmp_path)] == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]


def test_resume_restores_every_part_of_the_state(tmp_path):
    state = TrainState(step=7, epoch=2, clips=30, skipped=1, best_top1=0.625)
    saver = a_checkpointer(tmp_path, state=state, loader=Loader(position=11))
    saver.save()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)  # what the run draws next
    torch.manual_seed(123)
    saver.save()  # the same step again: the RNG state at the save is the one above
    fresh = a_checkpointer(tmp_path, seed=1)
    torch.manual_seed(999)
    found = fresh.resume("auto", check=lambda path, obj: None)
    assert found == tmp_path / "checkpoint-00000007.pt"
    assert fresh.state == state
    assert fresh.loader.position == 11
    assert torch.equal(torch.rand(3), expected_draw)
    for a, b in zip(fresh.model.parameters(), saver.model.parameters()):
        assert torch.equal(a, b)
    assert fresh.optimizer.state_dict()["state"][0]["step"] == saver.optimizer.state_dict()["state"][0]["step"]


def test_a_folder_with_checkpoints_is_refused_without_resume(tmp_path):
    a_checkpointer(tmp_path, state=TrainState(step=5)).save()
    with pytest.raises(CheckpointError, match=r"already holds checkpoint-00000005.pt: continue it with --resume auto"):
        a_checkpointer(tmp_path).resume(None, check=lambda path, obj: None)


@pytest.fixture
def broken_files(tmp_path) -> dict[str, tuple[Path, str]]:
    return unusable_checkpoints(tmp_path, num_frames=4, input_size=16, patch_size=8)


@pytest.mark.parametrize("kind", ["truncated", "text", "random bytes", "a YAML config", "missing"])
def test_a_file_that_is_not_a_usable_checkpoint_is_one_line_saying_what_it_is(broken_files, kind):
    path, says = broken_files[kind]
    with pytest.raises(CheckpointError) as raised:
        checkpointer.read(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and says in message and "\n" not in message, message
    assert "trust_pickle" not in message and len(message) < 300


def test_the_newest_good_checkpoint_passes_over_a_truncated_one(tmp_path):
    saver = a_checkpointer(tmp_path)
    for step in (2, 4):
        saver.state.step = step
        saver.save()
    newest = tmp_path / "checkpoint-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    passed = []
    path, obj = checkpointer.newest_good(tmp_path, passed.append)
    assert path == tmp_path / "checkpoint-00000002.pt" and obj["train_state"]["step"] == 2
    assert len(passed) == 1 and passed[0].startswith(f"passing over {newest}: cannot be read")
    (tmp_path / "checkpoint-00000002.pt").write_text("mode: pretrain\n")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints in .* will do; the newest: .*00004.pt: "
                                              r"cannot be read"):
        checkpointer.newest_good(tmp_path, passed.append)


def test_resume_refusal_names_pretrain_against_finetune_before_other_settings(tmp_path):
    """A fine-tuning config (drop_path 0.1) resumed on a pre-training run's checkpoint (drop_path 0): the kind is the
    difference that explains the others."""
    a_checkpointer(tmp_path, state=TrainState(step=3)).save()
    obj = checkpointer.read(tmp_path / "checkpoint-00000003.pt")
    finetune = ModelConfig(**GEOMETRY, drop_path=0.1)
    with pytest.raises(CheckpointError) as raised:
        checkpointer.check_resumable(tmp_path / "checkpoint-00000003.pt", obj, "classifier", finetune, 1)
    assert "a pretrain checkpoint, and this run trains a classifier" in str(raised.value)
    assert "drop_path" not in str(raised.value) and "finetune.weights" in str(raised.value)


def test_weights_of_a_run_folder_are_its_newest_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step, seed in ((8, 0), (16, 1)):
        save_checkpoint(run / f"checkpoint-{step:08d}.pt", VideoMAEClassifier(ModelConfig(**GEOMETRY), 3))
    path, obj = checkpointer.weights_of(run, warn=lambda text: None)
    assert path == run / "checkpoint-00000016.pt" and obj["tubemae"]["kind"] == "classifier"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint-<step>.pt in this folder"):
        checkpointer.weights_of(tmp_path / "empty", warn=lambda text: None)
