"""`train --config configs/X.yaml [--set section.key=value ...] [--out DIR] [--resume auto|PATH]`.

Expected failures (a bad config, missing or damaged shards, a checkpoint that cannot be resumed, a locked run
folder, a clip that fails to decode) print one line naming the file or key and the fix, exit code 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train", description="VideoMAE pre-training: shards -> DALI -> ViT MAE.")
    p.add_argument("--config", required=True, help="a YAML file in configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.batch_size=16 (repeatable)")
    p.add_argument("--out", help="run folder (default: run.out_dir, else runs/<config name>)")
    p.add_argument("--resume", help="'auto': continue from the newest good checkpoint in the run folder; or a path")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from train.config import load_train_config
    from train.main import train

    try:
        cfg = load_train_config(args.config, args.overrides)
        out = args.out or cfg.run.out_dir or str(Path("runs") / Path(args.config).stem)
        return train(cfg, out, args.resume)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if args.debug or not _expected(e):
            raise
        print(f"train: {e}", file=sys.stderr)
        return 2


def _expected(error: Exception) -> bool:
    """Errors of ours carry a message meant for the user: those of our types, and ValueError / RuntimeError raised
    by this project's own code. One raised inside torch or DALI is shown with its traceback (a bug to report)."""
    from pipeline.loader import DecodeError
    from train.checkpoint import CheckpointError
    from train.config import ConfigError
    from train.rundir import RunLocked

    if isinstance(error, (ConfigError, CheckpointError, RunLocked, DecodeError, FileNotFoundError)):
        return True
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    raised_in = Path(frame.tb_frame.f_code.co_filename).resolve() if frame is not None else None
    return raised_in is not None and raised_in.parent.parent == PROJECT_ROOT and raised_in.parent.name in PACKAGES


PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "model", "train", "shard_tools")


if __name__ == "__main__":
    sys.exit(main())
