"""The run folder: its lock, the resolved config, and the metrics (JSON lines, plus TensorBoard when installed).

    runs/<name>/
      config.yaml           the resolved TrainConfig (every key, defaults included)
      lock                  'pid host' of the process training into this folder, while it runs
      metrics.jsonl         one JSON object per log line (step, epoch, loss, lr, clips/s, data wait, ...)
      checkpoint-<step>.pt  the newest checkpoints (train/checkpoint.py)
      pictures/             reconstruction pictures; loss.png at the end
      tensorboard/          event files, when the `tensorboard` package is installed
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import yaml


class RunLocked(RuntimeError):
    """Another live process trains into the same folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True


class RunFolder:
    def __init__(self, path: Path, warn=print):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path / "lock"
        self._locked = False
        self._warn = warn
        self._metrics = None
        self._board = None

    def lock(self) -> None:
        """Take the folder's lock; a live holder on this host refuses, a dead one is taken over with a warning."""
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

    def unlock(self) -> None:
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False

    def write_config(self, plain: dict) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

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
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._board is not None:
            self._board.close()
            self._board = None
        self.unlock()


def _tensorboard(path: Path):
    """A SummaryWriter when `tensorboard` is installed (pip install 'tubemae[tensorboard]'), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def keep_metrics_until(path: Path, step: int) -> None:
    """On resume from `step`: drop the records of later steps, which the resumed run logs again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:  # a line cut short by a kill
        return float("inf")
