"""`bench SUBCOMMAND [SHARDS] [--config X.yaml] [--set a.b=c ...]`: settings come from the same `TrainConfig` as
`train`, so the same keys, checks and messages apply; a bad value, missing or damaged shards, a clip that fails to
decode end in one line, `bench: ...`, and exit status 2 (`pipeline/errors.py`; `--debug` shows the traceback).

--size, --batch-size, --compile and --loader are short for --set model.size=, data.batch_size=, run.compile=true
and run.loader=; SHARDS is data.shards. Later --set items win over earlier ones and over these.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pipeline.errors import run_command
from train.bench import __doc__ as COMMANDS
from train.bench.e2e import bench_end_to_end
from train.bench.loop import bench_loop
from train.bench import records
from train.bench.loader import bench_decode, bench_loader, bench_masks, compare_loaders, data_config
from train.bench.model import bench_model
from train.distributed import resolve_device, resolve_precision
from train.config import TrainConfig, load_train_config
from train.yaml_config import parse_yaml

ALIASES = {"size": "model.size", "batch_size": "data.batch_size", "loader": "run.loader"}
MODES = ["pretrain", "finetune", "eval"]


def add_command(commands, name: str, help: str, shards: bool = False, model: bool = False
                ) -> argparse.ArgumentParser:
    """A subcommand with the options every bench command shares."""
    p = commands.add_parser(name, help=help, description=help)
    if shards:
        p.add_argument("shards", help="a folder written by shard-videos (data.shards)")
    p.add_argument("--record", nargs="?", const=str(records.DEFAULT), metavar="FILE",
                   help=f"append the figures, with date, machine, commit and command, to FILE as JSON lines "
                        f"(default {records.DEFAULT.relative_to(records.PROJECT_ROOT)})")
    p.add_argument("--config", help="a YAML config as `train` takes (default: TrainConfig's defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key, e.g. --set data.mask_ratio=0.75 (repeatable)")
    p.add_argument("--batch-size", metavar="N", help="--set data.batch_size=N")
    if model:
        p.add_argument("--size", metavar="NAME", help="--set model.size=NAME")
        p.add_argument("--compile", action="store_true", help="--set run.compile=true")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors")
    return p


def counts(p: argparse.ArgumentParser, name: str, default: int, help: str) -> None:
    p.add_argument(f"--{name}", type=int, default=default, help=f"{help} (default {default})")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bench", description=COMMANDS.split("\n")[0],
                                   epilog=COMMANDS.split("\n", 1)[1] + "\n" + __doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, shards: bool = False, model: bool = False) -> argparse.ArgumentParser:
        return add_command(commands, name, help, shards, model)

    model = add("model", "training steps of VideoMAE pre-training on synthetic tensors: the ceiling", model=True)
    model.add_argument("--optimizer", action="store_true", help="include the AdamW update (default: skipped)")
    counts(model, "steps", 10, "timed steps")
    counts(model, "warmup", 3, "untimed steps first")

    loader = add("loader", "clips/s of the DALI path or the reference loader on the same shards", shards=True)
    loader.add_argument("more_shards", nargs="*", metavar="SHARDS",
                        help="more shard folders, measured with the same settings and compared with the first")
    loader.add_argument("--loader", metavar="NAME", help="--set run.loader=NAME (dali or reference)")
    loader.add_argument("--mode", choices=MODES, default="pretrain", help="which graph (data.mode)")
    counts(loader, "batches", 20, "timed batches")
    counts(loader, "warmup", 3, "untimed batches first")
    counts(loader, "rounds", 1, "rounds over the shard folders in turn; the median round counts")

    decode = add("decode", "the DALI path over decode devices, pipelines and threads: which is fastest",
                 shards=True)
    decode.add_argument("--threads", type=int, nargs="+", help="data.num_threads to try (default: the config's)")
    decode.add_argument("--decode-pipelines", type=int, nargs="+", default=[1, 2, 4, 7],
                        help="data.decode_pipelines to try (an H100 has 7 NVDEC engines; default 1 2 4 7)")
    decode.add_argument("--mode", choices=MODES, default="pretrain", help="which graph (data.mode)")
    decode.add_argument("--last-frames", type=int, nargs="+", metavar="K",
                        help="last frame indices of the decoder-alone windows (default: 6 from 0 to the last frame)")
    counts(decode, "batches", 20, "timed batches per setting")
    counts(decode, "warmup", 3, "untimed batches first")

    masks = add("masks", "time to draw one batch of masks on the training device")
    counts(masks, "repeats", 100, "batches drawn")

    e2e = add("e2e", "a loader feeding training steps, against the model alone, in alternating rounds",
              shards=True, model=True)
    e2e.add_argument("--loader", metavar="NAME", help="--set run.loader=NAME (dali or reference)")
    counts(e2e, "steps", 10, "timed steps per round of each kind")
    counts(e2e, "warmup", 3, "untimed steps before each timed run")
    counts(e2e, "rounds", 3, "end-to-end and model-alone rounds")

    loop = add("loop", "the train command on batches held in memory, against the model alone: the loop's cost",
               shards=True, model=True)
    counts(loop, "steps", 200, "timed steps per round of each kind")
    counts(loop, "warmup", 10, "untimed steps before each timed run")
    counts(loop, "rounds", 2, "loop and model-alone rounds")
    return root


def overrides(a: argparse.Namespace) -> list[str]:
    """The `--set` items the arguments stand for, then the explicit ones."""
    out = [f"data.shards={json.dumps(a.shards)}"] if getattr(a, "shards", None) is not None else []
    out += [f"{key}={getattr(a, name)}" for name, key in ALIASES.items() if getattr(a, name, None) is not None]
    out += ["run.compile=true"] if getattr(a, "compile", False) else []
    return out + a.overrides


def settings(a: argparse.Namespace) -> TrainConfig:
    """The checked config; also checks what the subcommand derives from it (device, precision, data.mode)."""
    items = overrides(a)
    for item in items:
        try:
            parse_yaml(item.partition("=")[2])
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    cfg = load_train_config(a.config, items)
    device = resolve_device(cfg.run.device)
    if a.command in ("model", "e2e", "loop"):
        resolve_precision(cfg.run.precision, device)
    if a.command in ("loader", "decode"):
        data_config(cfg, a.mode)
    for name in ("steps", "batches", "rounds", "repeats"):
        if getattr(a, name, 1) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(a, name)}")
    if getattr(a, "warmup", 0) < 0:
        raise ValueError(f"--warmup must be >= 0, got {a.warmup}")
    return cfg


def run(cfg: TrainConfig, a: argparse.Namespace) -> dict:
    if a.command == "model":
        return bench_model(cfg, a.steps, a.warmup, a.optimizer)
    if a.command == "loader" and (a.more_shards or a.rounds > 1):
        return compare_loaders(cfg, [cfg.data.shards, *a.more_shards], mode=a.mode, batches=a.batches,
                               warmup=a.warmup, rounds=a.rounds)
    if a.command == "loader":
        return bench_loader(cfg, mode=a.mode, batches=a.batches, warmup=a.warmup)
    if a.command == "decode":
        return bench_decode(cfg, tuple(a.decode_pipelines), tuple(a.threads or ()), a.mode, a.batches, a.warmup,
                            last_frames=tuple(a.last_frames or ()))
    if a.command == "masks":
        return bench_masks(cfg, a.repeats)
    if a.command == "loop":
        return bench_loop(cfg, a.steps, a.warmup, a.rounds)
    return bench_end_to_end(cfg, a.steps, a.warmup, a.rounds)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parser().parse_args(argv)
    return run_command("bench", lambda: bench(a, argv), a.debug)


def bench(a: argparse.Namespace, argv: list[str]) -> int:
    cfg = settings(a)
    result = run(cfg, a)
    if a.json:
        print(json.dumps(result))
    if a.record:
        rows = records.record_rows(a.command, cfg, result, a.config, argv)
        print(f"recorded {len(rows)} row(s) in {records.append(a.record, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
