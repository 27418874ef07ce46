"""What the user sees while `train` runs: a rich live display on a terminal, plain log lines otherwise.

Both show, every `run.log_every` steps: step and epoch of total, loss, lr, clips/s, the share of step time spent
waiting for data, step time, GPU memory and the time left. Messages (resume, warnings, where files went) print
above the live display. Only rank 0 shows anything.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_record(r: dict) -> str:
    """One line from a metrics record."""
    memory = f" | mem {r['gpu_memory_gib']:.1f} GiB" if r.get("gpu_memory_gib") is not None else ""
    return (f"step {r['step']}/{r['total_steps']} | epoch {r['epoch'] + 1}/{r['epochs']} | loss {r['loss']:.4f} | "
            f"lr {r['lr']:.2e} | {r['clips_per_s']:.1f} clips/s | data wait {100 * r['data_wait']:.0f}% | "
            f"step {1000 * r['step_s']:.0f} ms{memory} | eta {_duration(r['eta_s'])}")


class Display:
    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, live: bool | None = None):
        self.enabled = enabled
        self.console = Console(file=sys.stdout)
        self.live = enabled and (self.console.is_terminal if live is None else live)
        self._progress = None
        if self.live:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                                      console=self.console, transient=False)
            self._task = self._progress.add_task("starting", total=total_steps, completed=start_step)
            self._progress.start()

    def set_total(self, total_steps: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total_steps)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            print(text, flush=True)  # plain lines, never wrapped: logs are read by tools as much as by people
        else:
            self._progress.console.print(text, markup=False, highlight=False)

    def update(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            print(format_record(record), flush=True)
            return
        memory = f" | mem {record['gpu_memory_gib']:.1f} GiB" if record.get("gpu_memory_gib") is not None else ""
        self._progress.update(self._task, completed=record["step"], description=(
            f"epoch {record['epoch'] + 1}/{record['epochs']} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"{record['clips_per_s']:.1f} clips/s | wait {100 * record['data_wait']:.0f}% | "
            f"{1000 * record['step_s']:.0f} ms/step{memory}"))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
