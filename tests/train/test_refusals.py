"""What a new user meets first, on real VP9 shards (8 tiny clips): a run that is refused, or a finished run resumed,
changes nothing in its folder; weights that are not a checkpoint, an unwritable --out, a batch larger than the split
and a bad --set item each end in one line that says what is wrong and what works; `train bench` is `bench`."""

import json
import os
from pathlib import Path

import pytest

from train.cli import main as train_main

from synthetic_shards import synthetic_shards
from unusable_checkpoints import unusable_checkpoints


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("data"), clips_per_class=2, workers=0)


def write_config(folder: Path, shards: Path, mode: str = "pretrain", **sections) -> Path:
    """A tiny config: 8 clips, batch 2 -> 4 steps per epoch."""
    text = f"""
mode: {mode}
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 2,
        num_threads: 1, shuffle_buffer: 4, mask_ratio: 0.75, rand_augment_n: 0}}
model: {{size: tiny}}
optim: {{epochs: 1, warmup_epochs: 0}}
run: {{log_every: 2, checkpoint_every: 2}}
finetune: {{val_split: null, test_split: null, mixup: 0.0, cutmix: 0.0}}
"""
    for section, values in sections.items():
        text += f"{section}: {json.dumps(values)}\n"
    path = folder / f"{mode}.yaml"
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(err: str, prog: str = "train") -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory) -> tuple[Path, Path]:
    """(config, run folder) of a pre-training run that ran to its end."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, shards)
    assert train_main(["--config", str(config), "--out", str(folder / "run")]) == 0
    return config, folder / "run"


def test_a_finished_run_resumed_is_a_no_op_that_says_so(finished, capsys):
    config, run = finished
    before = snapshot(run)
    assert json.loads((run / "summary.json").read_text())["clips_per_s"] > 0
    capsys.readouterr()
    assert train_main(["--config", str(config), "--out", str(run), "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"{run} finished at step 4" in out and "nothing to do" in out, out
    assert snapshot(run) == before


@pytest.mark.parametrize("why", ["holds a checkpoint", "another model", "fine-tuning on pre-training"])
def test_a_refused_run_changes_nothing_in_the_folder(finished, shards, tmp_path, capsys, why):
    config, run = finished
    before = snapshot(run)
    args = {"holds a checkpoint": ["--config", str(config)],
            "another model": ["--config", str(config), "--resume", "auto", "--set", "model.embed_dim=64", "--set",
                              "model.num_heads=2"],
            "fine-tuning on pre-training": ["--config", str(write_config(tmp_path, shards, "finetune")), "--resume",
                                            "auto", "--set", "model.drop_path=0.1"]}[why]
    assert train_main([*args, "--out", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    expected = {"holds a checkpoint": "already holds checkpoint-00000004.pt", "another model": "another model",
                "fine-tuning on pre-training": "a pretrain checkpoint, and this run trains a classifier"}[why]
    assert expected in line, line
    if why == "fine-tuning on pre-training":
        assert "drop_path" not in line  # the real difference, not the settings it explains
    assert snapshot(run) == before


def test_a_refused_run_leaves_no_folder_behind(shards, tmp_path, capsys):
    config = write_config(tmp_path, shards)
    out = tmp_path / "new" / "run"
    assert train_main(["--config", str(config), "--out", str(out), "--set", "data.batch_size=16"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "has 8 clips per rank" in line and "set data.batch_size to 8 or less" in line, line
    assert "drop_last" not in line  # training requires it: no suggestion to turn it off
    assert not out.exists()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """finetune.weights a user may give by mistake, each with what its one line says."""
    folder = tmp_path_factory.mktemp("weights")
    found = unusable_checkpoints(folder, num_frames=8, input_size=32, patch_size=8)
    run = folder / "run"
    run.mkdir()
    (run / "checkpoint-00000004.pt").write_bytes(found["truncated"][0].read_bytes())
    return {**found, "a run folder, newest truncated": (run, "none of the 1 ")}


# every kind in mode eval, which reaches the weights without building loaders; two in finetune: the same reading path
@pytest.mark.parametrize("mode, kind", [*(("eval", kind) for kind in ("truncated", "a run folder, newest truncated",
                                                                       "text", "random bytes", "a YAML config")),
                                        ("finetune", "truncated"), ("finetune", "a YAML config")])
def test_weights_that_are_not_a_checkpoint_are_one_line(shards, weights, tmp_path, capsys, mode, kind):
    path, says = weights[kind]
    overrides = ["--set", f"finetune.weights={path}"]
    assert train_main(["--config", str(write_config(tmp_path, shards, mode)), "--out", str(tmp_path / "run"),
                       *overrides]) == 2
    line = one_line(capsys.readouterr().err)
    assert says in line and str(path) in line and "trust_pickle" not in line, line
    assert len(line) < 400


@pytest.mark.parametrize("where", ["a parent that is a file", "an existing file", "a read-only folder"])
def test_an_unwritable_out_is_one_line(shards, tmp_path, capsys, where):
    (tmp_path / "file").write_text("")
    (tmp_path / "locked").mkdir(mode=0o500)
    if where == "a read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out = {"a parent that is a file": tmp_path / "file" / "run", "an existing file": tmp_path / "file",
           "a read-only folder": tmp_path / "locked" / "run"}[where]
    assert train_main(["--config", str(write_config(tmp_path, shards)), "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"train: {out}: cannot write the run folder there") and "--out" in line, line


def test_more_picture_clips_than_a_batch_holds_are_refused(shards, tmp_path, capsys):
    config = write_config(tmp_path, shards, run={"picture_clips": 3})
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "run.picture_clips (3) is more than a batch holds" in line and "= 2" in line, line


def test_train_bench_is_the_bench_command(capsys):
    assert train_main(["bench", "masks", "--batch-size", "2", "--set", "data.num_frames=4", "--set",
                       "data.input_size=32"]) == 0
    assert capsys.readouterr().out.startswith("tube masks for 2 x 8 tokens")
