"""How the commands (`shard-videos`, `bench`, `train`) end on an error: one rule for all three.

    expected error (bad input or config, a missing file, a damaged shard or clip)   one line `prog: ...`, exit 2
    failed run (RunFailed: the run started and could not go on, e.g. disk full)      one line `prog: ...`, exit 1
    --debug, or any other error (a bug, or an error raised inside torch or DALI)     the traceback

Here, in `pipeline/`, because it is the one stage every command already imports (`shard-videos verify` reads
shards through `pipeline.shards`); it imports nothing, so `shard-videos` does not load DALI or torch for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "model", "train", "shard_tools")


class RunFailed(RuntimeError):
    """The run started and could not go on for a reason outside its input and settings (disk full); exit 1."""


def run_command(prog: str, command: Callable[[], int], debug: bool = False,
                expected: tuple | Callable[[], tuple] = ()) -> int:
    """`command()`'s exit status; an expected error (see `is_expected`; `expected`: the command's own error types,
    or a function returning them, called only on an error) ends as one line on stderr and exit 2 (1 for
    RunFailed); with `debug`, or for any other error, the exception propagates."""
    try:
        return command()
    except Exception as error:
        if debug or not is_expected(error, expected() if callable(expected) else expected):
            raise
        print(f"{prog}: {one_line(error)}", file=sys.stderr, flush=True)
        return exit_status(error)


def is_expected(error: BaseException, expected: tuple = ()) -> bool:
    """Errors meant for the user: a missing file, RunFailed, the `expected` types, and ValueError / RuntimeError
    raised by this project's own code (one raised inside torch or DALI keeps its traceback: a bug to report)."""
    if isinstance(error, (FileNotFoundError, RunFailed, *expected)):
        return True
    return isinstance(error, (ValueError, RuntimeError)) and raised_in_project(error)


def raised_in_project(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    where = Path(frame.tb_frame.f_code.co_filename).resolve()
    return PROJECT_ROOT in where.parents and where.relative_to(PROJECT_ROOT).parts[0] in PACKAGES


def exit_status(error: BaseException) -> int:
    return 1 if isinstance(error, RunFailed) else 2


def first_line(error: BaseException) -> str:
    """The first line of an error raised by a library (torch, transformers), to quote inside our own message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
