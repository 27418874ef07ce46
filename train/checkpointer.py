"""Checkpoints, one door for all: saving a run's state, finding the newest good checkpoint of a run folder, and
reading any checkpoint file with one clear line when it cannot be used. Resume, `finetune.weights`, `mode: eval`
and `train export` all read through `read`.

A file `checkpoint-<step>.pt` in the run folder is a TubeMAE checkpoint (ARCHITECTURE.md section 4, so
`model.load_weights` and the official code read its weights) with the trainer's entries beside `model`:

| key | content |
| --- | --- |
| `optimizer` | AdamW state (full, on rank 0, also under FSDP) |
| `scaler` | fp16 GradScaler state, or None |
| `train_state` | step, epoch in progress, clips seen, clips skipped, best validation top-1 (`TrainState`) |
| `ranks` | one entry per rank: its loader's state (reader position, random draws) and its torch RNG state |
| `rng` | rank 0's Python and numpy RNG states |
| `config` | the resolved TrainConfig as plain data |
| `classes` | fine-tuning: the class names, in label-index order (from the shards' manifest.json) |

Rank 0 writes it with `model.write_atomically` (temporary file, fsync, rename, fsync the folder), so a kill at any
moment leaves the previous checkpoints intact; the newest `keep` are kept, and a `.pt.tmp` left by a kill is removed
at the next save. A write that fails (disk full) leaves no partial file and stops the run with one line naming the
file, the reason and the last good checkpoint (CheckpointWriteError, exit status 1). `--resume auto` takes the
newest checkpoint that can be resumed and names each one it had to pass over.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import read_checkpoint, save_checkpoint
from model.checkpoint import HF_FILES
from pipeline.errors import RunFailed, one_line
from train import distributed

NAME = re.compile(r"checkpoint-(\d{8})\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what is wrong."""


class CheckpointWriteError(CheckpointError, RunFailed):
    """A checkpoint could not be written (disk full): the run stops, exit status 1; the earlier ones are intact."""


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint stores besides the weights, optimizer and loader."""
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    clips: int = 0  # training clips (views) seen on this rank
    skipped: int = 0  # clips the loader dropped for failing to decode (on_error: skip)
    best_top1: float = -1.0  # fine-tuning: the best validation top-1 so far (best.pt), -1 before the first


# --- reading --------------------------------------------------------------------------------------------------

def read(path: str | Path) -> dict:
    """The object in a checkpoint file (TubeMAE, official, Hugging Face) or a Hugging Face folder; CheckpointError,
    one line naming the file and what it is, when it cannot be read (missing, truncated, a text or YAML file)."""
    try:
        return read_checkpoint(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such file" if not Path(path).exists() else one_line(e)) from None
    except (ValueError, OSError, ImportError) as e:
        raise CheckpointError(one_line(e)) from None


def saved_in(folder: str | Path) -> list[Path]:
    """The checkpoint-<step>.pt files of a run folder, oldest first."""
    found = [p for p in Path(folder).glob("checkpoint-*.pt") if NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(NAME.fullmatch(p.name)[1]))


def newest_good(folder: str | Path, warn, check=None) -> tuple[Path, dict] | None:
    """The newest checkpoint of `folder` that reads (and passes `check(path, obj)`, which raises CheckpointError),
    naming through `warn` each one passed over; None when the folder holds none; CheckpointError when none will do."""
    found, reasons = saved_in(folder), []
    for path in reversed(found):
        try:
            obj = read(path)
            if check is not None:
                check(path, obj)
            return path, obj
        except CheckpointError as e:
            warn(f"passing over {e}")
            reasons.append(str(e))
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {folder} will do; the newest: {reasons[0]}")
    return None


def weights_of(source: str | Path, warn) -> tuple[Path, dict]:
    """(file, its object) for weights named on the command line (finetune.weights, `train export`): a run folder of
    `train` stands for its newest good checkpoint; any other folder is a Hugging Face `save_pretrained` folder."""
    path = Path(source)
    found = newest_good(path, warn) if path.is_dir() else None
    if found is None and path.is_dir() and not any((path / name).is_file() for name in HF_FILES):
        raise CheckpointError(f"{path}: no checkpoint-<step>.pt in this folder, nor a Hugging Face model "
                              f"({' or '.join(HF_FILES)}); pass a checkpoint file (e.g. best.pt)")
    return found if found is not None else (path, read(path))


def check_resumable(path: Path, obj: dict, kind: str, model_config, world: int) -> None:
    """CheckpointError unless `obj` is a training checkpoint of a `kind` model of `model_config`, by `world` ranks.
    The kind is checked first: it is the difference that explains the others."""
    missing = [k for k in ("model", "tubemae", "optimizer", "train_state", "ranks") if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not a TubeMAE training checkpoint (no {', '.join(missing)}); to start from "
                              f"its weights use them as an initialisation (finetune.weights) instead of --resume")
    if obj["tubemae"]["kind"] != kind:
        raise CheckpointError(f"{path}: a {obj['tubemae']['kind']} checkpoint, and this run trains a {kind}: start "
                              f"from its weights with finetune.weights instead, in a new run folder")
    saved, ours = obj["tubemae"]["config"], dataclasses.asdict(model_config)
    differ = [k for k in ours if k in saved and saved[k] != ours[k] and k != "use_checkpoint"]
    if differ:
        shown = ", ".join(f"{k}: {saved[k]} in the file, {ours[k]} here" for k in differ[:4])
        raise CheckpointError(f"{path}: written for another model ({shown}); resume with the config it was "
                              f"written with")
    if len(obj["ranks"]) != world:
        raise CheckpointError(f"{path}: written by {len(obj['ranks'])} ranks, this run has {world}: resume with "
                              f"the same number of processes")


# --- a run's checkpoints ----------------------------------------------------------------------------------------

class Checkpointer:
    """The checkpoints of one run: every stateful part of it (model, optimizer, scaler, every rank's loader and RNG,
    the TrainState) saved together and restored together. All ranks call `save` and `resume`."""

    def __init__(self, folder: Path, env: distributed.Env, keep: int, warn, *, model, optimizer, scaler, loader,
                 state: TrainState, entries: dict):
        self.folder, self.env, self.keep, self.warn = Path(folder), env, keep, warn
        self.model, self.optimizer, self.scaler, self.loader, self.state = model, optimizer, scaler, loader, state
        self.entries = entries  # stored as they are: config, classes

    def saved(self) -> list[Path]:
        return saved_in(self.folder)

    def save(self) -> Path:
        """checkpoint-<step>.pt of the current state; then all but the newest `keep`, and any `.pt.tmp` a kill left,
        are removed. CheckpointWriteError when it cannot be written; the earlier checkpoints are left as they are."""
        weights, optimizer_state = distributed.full_state(self.model, self.optimizer)
        ranks = distributed.gather(self.rank_entry(), self.env)
        self.state.skipped = sum(len(r["loader"]["skipped"]) for r in ranks if r["loader"] is not None)
        path = self.folder / f"checkpoint-{self.state.step:08d}.pt"
        if self.env.is_main:
            self.write(path, weights, optimizer=optimizer_state, ranks=ranks, rng=host_rng_state(),
                       scaler=self.scaler.state_dict() if self.scaler is not None else None,
                       train_state=dataclasses.asdict(self.state))
            for old in self.saved()[:-self.keep] + list(self.folder.glob("*.pt.tmp")):
                old.unlink(missing_ok=True)
        return path

    def write(self, path: Path, weights: dict, **extra) -> None:
        """A TubeMAE checkpoint of the model with `weights`, this run's entries and `extra` (rank 0 only)."""
        try:
            save_checkpoint(path, self.model, state_dict=weights, **self.entries, **extra)
        except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
            cause = os_error_in(error)
            if cause is None:
                raise
            raise CheckpointWriteError(write_failure(path, cause)) from error

    def rank_entry(self) -> dict:
        """This rank's part of a checkpoint: its loader's state (None for loaders without exact resume) and RNG."""
        loader = self.loader
        entry = {"loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
                 "torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            entry["cuda_rng"] = torch.cuda.get_rng_state()
        return entry

    def resume(self, how: str | None, check) -> Path | None:
        """Restore every part from a checkpoint: `how` 'auto' (the newest that passes `check`), a file, or None (a
        folder that holds checkpoints is then refused). Returns the file resumed from, or None for a fresh start."""
        found = self.saved()
        if how is None:
            if found:
                raise CheckpointError(f"{self.folder} already holds {found[-1].name}: continue it with --resume "
                                      f"auto, or choose another --out")
            return None
        if how == "auto":
            hit = newest_good(self.folder, self.warn, check)
            if hit is None:
                return None
            path, obj = hit
        else:
            path, obj = Path(how), read(how)
            check(path, obj)
        self.load(obj)
        return path

    def load(self, obj: dict) -> None:
        distributed.load_full_state(self.model, self.optimizer, obj["model"], obj["optimizer"])
        if self.scaler is not None and obj.get("scaler"):
            self.scaler.load_state_dict(obj["scaler"])
        for key, value in obj["train_state"].items():
            setattr(self.state, key, value)
        entry = obj["ranks"][self.env.rank]
        if entry["loader"] is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(entry["loader"])
        else:
            self.warn(f"the loader has no exact resume: the data after step {self.state.step} differs from an "
                      f"uninterrupted run")
        restore_rng(entry, obj["rng"])


def os_error_in(error: BaseException) -> OSError | None:
    """The OSError that `error` is, or that it was raised while handling (torch.save wraps a failed write)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def write_failure(path: Path, cause: OSError) -> str:
    """One line: the file, why it could not be written, the checkpoint a resume would use."""
    reason = (cause.strerror or str(cause)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    earlier = [p for p in saved_in(path.parent) if p != path]
    last = f"the last good checkpoint is {earlier[-1]}" if earlier else "no checkpoint was written before it"
    fix = "free space on the device" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder"
    return (f"{path}: cannot write the checkpoint ({reason}): stopping; {last} ({fix}, then continue with "
            f"--resume auto)")


def restore_rng(entry: dict, host: dict) -> None:
    torch.set_rng_state(entry["torch_rng"])
    if "cuda_rng" in entry and torch.cuda.is_available():
        torch.cuda.set_rng_state(entry["cuda_rng"])
    random.setstate(host["python"])
    name, keys, pos, has_gauss, cached = host["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def host_rng_state() -> dict:
    """Python's and numpy's global RNG states as plain data (a checkpoint is read with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
