"""`train --config configs/X.yaml [--set section.key=value ...] [--out DIR] [--resume auto|PATH]`, and the
subcommands `train export`, `train study` and `train bench` (the `bench` command).

--config takes a YAML file, or the name of a config shipped with TubeMAE (`configs/X.yaml`, found from any folder
once installed). Expected failures (a bad config or --set item, missing or damaged shards, a checkpoint that
cannot be used, a locked or unwritable run folder, a clip that fails to decode) print one line naming the file or
key and the fix, exit code 2; a run that started and could not go on (disk full while writing a checkpoint) one
line and exit code 1; `--debug` shows the traceback instead (the rule all commands share: `pipeline/errors.py`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pipeline.errors import run_command

# the subcommands, each a module with main(argv), looked up by name: the trainer imports none of them
SUBCOMMANDS = {"export": "train.export", "study": "train.study.cli", "bench": "train.bench.cli"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train", description="VideoMAE pre-training, fine-tuning and evaluation (config `mode`): shards -> DALI "
                                  "-> ViT.",
        epilog="Also: `train export CHECKPOINT --out DIR` (Hugging Face or official layout), `train study --out "
               "DIR` (the data-efficiency study) and `train bench ...` (= `bench ...`); each takes --help.")
    p.add_argument("--config", required=True, help="a YAML file, or a shipped config: configs/NAME.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.batch_size=16 (repeatable)")
    p.add_argument("--out", help="run folder (default: run.out_dir, else runs/<config name>)")
    p.add_argument("--resume", help="'auto': continue from the newest good checkpoint in the run folder; or a path")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    args = parser().parse_args(argv)
    return run_command("train", lambda: run(args), args.debug, expected_errors)


def run(args: argparse.Namespace) -> int:
    from train.config import load_train_config
    from train.run import train

    cfg = load_train_config(args.config, args.overrides)
    out = args.out or cfg.run.out_dir or str(Path("runs") / Path(args.config).stem)
    return train(cfg, out, args.resume)


def expected_errors() -> tuple[type[Exception], ...]:
    """The trainer's error types whose message is meant for the user (beside those `pipeline.errors` knows)."""
    from pipeline.loader import DecodeError
    from train.checkpointer import CheckpointError
    from train.config import ConfigError
    from train.run_folder import RunFolderError, RunLocked

    return ConfigError, CheckpointError, RunLocked, RunFolderError, DecodeError


if __name__ == "__main__":
    sys.exit(main())
