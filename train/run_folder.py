"""The run folder: its lock, the resolved config, the metrics (JSON lines, plus TensorBoard when installed) and the
summary. Nothing in it changes before the run is accepted (`accept`): a refused run leaves the folder as it was.

    runs/<name>/
      config.yaml           the resolved TrainConfig (every key, defaults included)
      lock                  'pid host' of the process training into this folder, while it runs
      metrics.jsonl         one JSON object per log line (step, epoch, loss, grad norm, lr, clips/s, data wait, ...)
      checkpoint-<step>.pt  the newest checkpoints (train/checkpointer.py)
      pictures/             reconstruction pictures; loss.png at the end
      summary.json          what the run did, written when it ends
      tensorboard/          event files, when the `tensorboard` package is installed
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import yaml

from model import write_atomically

METRICS, SUMMARY, CONFIG = "metrics.jsonl", "summary.json", "config.yaml"


class RunLocked(RuntimeError):
    """Another live process trains into the same folder."""


class RunFolderError(RuntimeError):
    """The run folder cannot be made or written; the message names it and why."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, in order; blank lines and a last line cut short by a kill are skipped. A
    missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # blank, or cut short by a run that was killed or is still writing
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True


class RunFolder:
    def __init__(self, path: str | Path, warn=print):
        self.path = Path(path)
        self.lock_path = self.path / "lock"
        self.metrics_path = self.path / METRICS
        self._warn = warn
        self._locked = self._created = self._accepted = False
        self._metrics = self._board = None

    def lock(self) -> None:
        """Make the folder if needed and take its lock; a live holder on this host refuses, a dead one is taken over
        with a warning. RunFolderError, naming the folder, when it cannot be made or written."""
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        except OSError as e:  # a read-only place, a parent that is a file, ...
            reason = (e.strerror or str(e)).lower()
            raise RunFolderError(f"{self.path}: cannot write the run folder there ({reason}): choose another "
                                 f"--out") from None

    def _take_lock(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self._locked = True
            return
        raise RunLocked(f"{self.lock_path}: could not take the lock")

    def _take_over_stale(self) -> None:
        try:
            pid, host = self.lock_path.read_text().split()[:2]
        except (OSError, ValueError):
            pid, host = "0", socket.gethostname()  # unreadable or half-written: treat as stale
        if host != socket.gethostname():
            raise RunLocked(f"{self.path} is in use by process {pid} on host {host} (lock file {self.lock_path}); "
                            f"if that run is dead, delete the lock file")
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            raise RunLocked(f"{self.path} is in use by process {pid} (lock file {self.lock_path}): wait for it, "
                            f"stop it, or choose another --out")
        self._warn(f"taking over a stale lock: process {pid} that held {self.path} is no longer running")
        self.lock_path.unlink(missing_ok=True)

    def accept(self, config: dict, start_step: int | None = None) -> None:
        """The run goes ahead: write the resolved config. A training run starting at `start_step` drops the metrics
        records of the later steps (those after the checkpoint it resumes from, or all of a run killed before its
        first checkpoint): it logs them again."""
        self._accepted = True
        write_atomically(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        if start_step is not None and self.metrics_path.is_file():
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= start_step]
            write_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def summary(self) -> dict | None:
        """summary.json of a run that ended, or None."""
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None

    def write_summary(self, summary: dict) -> None:
        write_atomically(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")

    def log(self, record: dict) -> None:
        """Append one metrics record (flushed, so a killed run keeps every line it logged)."""
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a")
            self._board = _tensorboard(self.path / "tensorboard")
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._board is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._board.add_scalar(key, value, record["step"])

    def close(self) -> None:
        """Close the metrics, give the lock back; a folder this run made and never used is removed again."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False
        if self._created and not self._accepted and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


def _tensorboard(path: Path):
    """A SummaryWriter when `tensorboard` is installed (pip install 'tubemae[tensorboard]'), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))
