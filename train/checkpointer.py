"""What a training checkpoint holds, and how a run resumes from one.

A file `checkpoint-<step>.pt` in the run folder is a TubeMAE checkpoint (ARCHITECTURE.md section 4, so
`model.load_weights` and the official code read its weights) with the trainer's entries beside `model`:

| key | content |
| --- | --- |
| `optimizer` | AdamW state (full, on rank 0, also under FSDP) |
| `scaler` | fp16 GradScaler state, or None |
| `train_state` | step, epoch in progress, clips seen, clips skipped (`engine.TrainState`) |
| `ranks` | one entry per rank: its loader's state (reader position, random draws) and its torch RNG state |
| `rng` | rank 0's Python and numpy RNG states |
| `config` | the resolved TrainConfig as plain data |

Written by rank 0 through `model.checkpoint._save` (temporary file, fsync, rename, fsync the folder), so a kill at
any moment leaves the previous checkpoints intact; the newest `keep` are kept. A write that fails (disk full) leaves
no partial file (`_save` removes its temporary file) and stops the run with one line naming the file, the reason and
the last good checkpoint (CheckpointWriteError, exit status 1). `--resume auto` takes the newest
checkpoint that loads and names each one it had to pass over.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import re
from pathlib import Path

import numpy as np
import torch

from model import save_checkpoint
from model.checkpoint import read_checkpoint
from pipeline.errors import RunFailed, first_line

NAME = re.compile(r"checkpoint-(\d{8})\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what is wrong."""


class CheckpointWriteError(CheckpointError, RunFailed):
    """A checkpoint could not be written (disk full): the run stops, exit status 1; the earlier ones are intact."""


def path_for(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints in the run folder, oldest first."""
    found = [p for p in Path(run_dir).glob("checkpoint-*.pt") if NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(NAME.fullmatch(p.name)[1]))


def save(run_dir: Path, model, weights: dict, optimizer_state: dict, scaler, state, ranks: list[dict],
         config: dict, keep: int) -> Path:
    """Write the checkpoint of `state.step` (rank 0 only) and delete all but the newest `keep`.
    CheckpointWriteError when the file cannot be written (disk full): the earlier checkpoints are left as they are."""
    path = path_for(run_dir, state.step)
    try:
        save_checkpoint(path, model, state_dict=weights, optimizer=optimizer_state,
                        scaler=scaler.state_dict() if scaler is not None else None,
                        train_state=dataclasses.asdict(state), ranks=ranks,
                        rng=host_rng_state(), config=config)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        cause = os_error_in(error)
        if cause is None:
            raise
        raise CheckpointWriteError(write_failure(path, cause)) from error
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError that `error` is, or that it was raised while handling (torch.save wraps a failed write)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def write_failure(path: Path, cause: OSError) -> str:
    """One line: the file, why it could not be written, the checkpoint a resume would use."""
    reason = (cause.strerror or str(cause)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    earlier = [p for p in list_checkpoints(path.parent) if p != path]
    last = f"the last good checkpoint is {earlier[-1]}" if earlier else "no checkpoint was written before it"
    fix = "free space on the device" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder"
    return (f"{path}: cannot write the checkpoint ({reason}): stopping; {last} ({fix}, then continue with "
            f"--resume auto)")


def rank_entry(loader) -> dict:
    """This rank's part of a checkpoint: its loader's state (None for loaders without exact resume) and RNG."""
    entry = {"loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
             "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        entry["cuda_rng"] = torch.cuda.get_rng_state()
    return entry


def read(path: Path, model_config) -> dict:
    """The checkpoint at `path`, checked to be a training checkpoint of this model; CheckpointError otherwise."""
    try:
        obj = read_checkpoint(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # a truncated or foreign file: torch says why in its first line
        raise CheckpointError(f"{path}: cannot be read ({first_line(e)}); it may be truncated") from None
    missing = [k for k in ("model", "tubemae", "optimizer", "train_state", "ranks") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not a TubeMAE training checkpoint (no {', '.join(missing)}); to start from "
                              f"its weights use them as an initialisation instead of --resume")
    saved = obj["tubemae"]["config"]
    ours = dataclasses.asdict(model_config)
    differ = [k for k in ours if k in saved and saved[k] != ours[k] and k != "use_checkpoint"]
    if differ:
        shown = ", ".join(f"{k}: {saved[k]} in the file, {ours[k]} here" for k in differ[:4])
        raise CheckpointError(f"{path}: written for another model ({shown}); resume with the config it was "
                              f"written with")
    return obj


def find_resumable(run_dir: Path, model_config, warn) -> tuple[Path, dict] | None:
    """The newest checkpoint in `run_dir` that reads, passing over (and naming, through `warn`) those that do
    not; None when the folder holds none. CheckpointError when every one fails."""
    found, reasons = list_checkpoints(run_dir), []
    for path in reversed(found):
        try:
            return path, read(path, model_config)
        except CheckpointError as e:
            warn(f"passing over {e}")
            reasons.append(str(e))
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {run_dir} can be resumed; the newest: "
                              f"{reasons[0]}")
    return None


def restore_rng(obj: dict, rank: int) -> None:
    entry = obj["ranks"][rank]
    torch.set_rng_state(entry["torch_rng"])
    if "cuda_rng" in entry and torch.cuda.is_available():
        torch.cuda.set_rng_state(entry["cuda_rng"])
    random.setstate(obj["rng"]["python"])
    name, keys, pos, has_gauss, cached = obj["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def host_rng_state() -> dict:
    """Python's and numpy's global RNG states as plain data (a checkpoint is read with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
