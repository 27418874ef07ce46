"""What the user sees while `train` runs: a rich live display on a terminal, plain log lines otherwise.

Both show, every `run.log_every` steps: step and epoch of total, loss, gradient norm (before clipping), lr, clips/s,
the share of step time spent waiting for data, step time, GPU memory and the time left. A resumed run's progress
starts at its step. Messages (resume, warnings, where files went) print above the live display. Only rank 0 shows
anything. The number formats that tables and messages share are here too.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def percent(fraction: float) -> str:
    """0.6125 -> '61.2%'."""
    return f"{100 * fraction:.1f}%"


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 75 -> '1m15s'."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def figures(r: dict) -> str:
    """The figures of a metrics record that both displays show: 'loss ... | grad norm ... | lr ... | ...'."""
    memory = f" | mem {r['gpu_memory_gib']:.1f} GiB" if r.get("gpu_memory_gib") is not None else ""
    return (f"loss {r['loss']:.4f} | grad norm {r['grad_norm']:.3g} | lr {r['lr']:.2e} | {r['clips_per_s']:.1f} "
            f"clips/s | data wait {100 * r['data_wait']:.0f}% | step {1000 * r['step_s']:.0f} ms{memory}")


def format_record(r: dict) -> str:
    """One line from a metrics record."""
    return (f"step {r['step']}/{r['total_steps']} | epoch {r['epoch'] + 1}/{r['epochs']} | {figures(r)} | "
            f"eta {duration(r['eta_s'])}")


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
        self._progress.update(self._task, completed=record["step"],
                              description=f"epoch {record['epoch'] + 1}/{record['epochs']} | {figures(record)}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
