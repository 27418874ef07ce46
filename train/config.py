"""YAML files and `--set a.b=c` overrides -> typed dataclasses.

Each stage owns its config dataclass (pipeline/config.py, model/config.py); this module only maps plain data
onto them. Unknown keys and ill-typed values fail here, naming the key (and the closest valid name); range
checks live in each dataclass's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

from model.config import SIZES, ModelConfig
from pipeline.config import DataConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or out of range; the message names the key."""


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "", source: str = "config") -> T:
    """Build dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"{source}: unknown key '{name}'{hint}")
        kwargs[key] = _convert(hints[key], value, name, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        where = f" (in section '{prefix.rstrip('.')}')" if prefix else ""
        raise ConfigError(f"{source}: {e}{where}") from e


def _convert(tp: Any, value: Any, name: str, source: str) -> Any:
    """Check `value` against annotation `tp`, converting lists to tuples and ints to floats where declared."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key '{name}' must be {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{name}.", source=source)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, name, source)
            except ConfigError as e:
                errors.append(e)
        raise bad(" or ".join(_type_name(o) for o in options))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: key '{name}' must be one of {list(choices)}, got {value!r}{hint}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad(f"a list of {len(args)} items")
            items = [_convert(a, v, f"{name}[{i}]", source) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{name}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise bad("a path")
        return Path(value)
    raise ConfigError(f"{source}: key '{name}' has an unsupported annotation {tp!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML (`0.75`, `true`, `[1, 2]`, `null`)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.mask_ratio=0.75")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{'.'.join(keys[:i + 1])}' is a value, not a section")
            node[key] = child = dict(child)
            node = child
        node[keys[-1]] = parse_yaml(raw) if raw.strip() else ""
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML file `path` (or start from defaults), apply `--set` overrides and build `cls`."""
    data, source = read_yaml(path) if path is not None else ({}, "--set")
    return from_dict(cls, apply_overrides(data, overrides or []), source=source)


def read_yaml(path: str | Path) -> tuple[dict[str, Any], str]:
    """(the mapping in YAML file `path`, its name); a missing file, a parse error (with its line) or a top level
    that is not a mapping is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}, str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...), "
                          f"got a {type(data).__name__}")
    return data, str(path)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (lists, not tuples; str, not Path) for YAML and checkpoints."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(dataclasses.asdict(config))


# --- the `train` command's config -------------------------------------------------------------------------------

@dataclass
class OptimConfig:
    """AdamW and its schedule: linear warm-up from warmup_lr, then per-step cosine decay to min_lr.

    base_lr, min_lr and warmup_lr are per 256 clips: each is multiplied by effective batch / 256, the effective
    batch counting ranks, accumulation steps and `data.num_sample` views per clip (as the official code scales)."""
    epochs: int = 800
    warmup_epochs: float = 40.0
    base_lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05  # not on norms, biases and tokens (model.param_groups)
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max global gradient norm; None = no clipping (official pre-training)
    accum_steps: int = 1  # batches per optimizer step

    def __post_init__(self):
        for key in ("epochs", "accum_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"optim.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"optim.warmup_epochs must be in [0, optim.epochs = {self.epochs}], "
                             f"got {self.warmup_epochs}")
        for key in ("base_lr", "min_lr", "warmup_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise ValueError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if self.min_lr > self.base_lr:
            raise ValueError(f"optim.min_lr ({self.min_lr}) must not exceed optim.base_lr ({self.base_lr})")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be in [0, 1), got {list(self.betas)}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"optim.clip_grad must be > 0 or null, got {self.clip_grad}")


@dataclass
class RunConfig:
    """Where and how a run executes, what it writes and how often."""
    out_dir: Optional[str] = None  # default runs/<config file name>; `train --out DIR` overrides
    seed: int = 0  # model init and the loader's draws (data.seed follows it)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on the CPU
    compile: bool = False  # torch.compile the model (one graph per mask ratio)
    loader: Literal["dali", "reference"] = "dali"  # reference: webdataset + PyAV + DataLoader, for comparison
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; fsdp shards parameters (ViT-L and larger)
    max_steps: Optional[int] = None  # stop after this many optimizer steps (the schedule still spans all epochs)
    log_every: int = 10  # steps between log lines (the only time the loop waits for the GPU)
    checkpoint_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_checkpoints: int = 2  # newest checkpoints kept in the run folder
    picture_every: int = 0  # steps between reconstruction pictures; 0 = only at the end
    picture_clips: int = 4  # clips in a reconstruction picture

    def __post_init__(self):
        for key in ("log_every", "checkpoint_every", "keep_checkpoints", "picture_clips"):
            if getattr(self, key) < 1:
                raise ValueError(f"run.{key} must be >= 1, got {getattr(self, key)}")
        if self.picture_every < 0:
            raise ValueError(f"run.picture_every must be >= 0, got {self.picture_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"run.max_steps must be >= 1 or null, got {self.max_steps}")


# keys that two sections carry: a config states each in either section (or in both, equal)
SHARED_KEYS = {"num_frames": ("data", "model"), "input_size": ("data", "model"), "patch_size": ("data", "model"),
               "tubelet_size": ("data", "model"), "seed": ("run", "data")}


@dataclass
class TrainConfig:
    mode: Literal["pretrain"] = "pretrain"  # data.mode follows it
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        for key, (first, second) in SHARED_KEYS.items():
            a, b = getattr(getattr(self, first), key), getattr(getattr(self, second), key)
            if a != b:
                raise ValueError(f"{first}.{key} ({a}) and {second}.{key} ({b}) disagree: state it once, in "
                                 f"either section")
        if self.data.mode != self.mode:
            raise ValueError(f"data.mode ({self.data.mode!r}) and mode ({self.mode!r}) disagree: set mode only")
        if not self.data.drop_last:
            raise ValueError("data.drop_last must be true for training: every rank takes the same number of full "
                             "batches (an epoch's short last batch is left out, as in the official code)")

    @property
    def effective_batch(self) -> int:
        """Training clips (views) per optimizer step on one rank; times the world size for the run's batch."""
        return self.data.batch_size * self.data.num_sample * self.optim.accum_steps


def share_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Copy each shared key to the section that does not state it, and `mode` to data.mode (plain dicts)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    sections = {name: data.setdefault(name, {}) for name in ("data", "model", "run")}
    if not all(isinstance(s, dict) for s in sections.values()):
        return data  # from_dict names the section that is not a mapping
    if "patch_size" not in sections["data"] and "patch_size" not in sections["model"]:
        size = sections["model"].get("size", ModelConfig.size)
        if size in SIZES:
            sections["model"]["patch_size"] = SIZES[size].patch_size
    for key, names in SHARED_KEYS.items():
        stated = [sections[n][key] for n in names if key in sections[n]]
        for name in names:
            if stated and key not in sections[name]:
                sections[name][key] = stated[0]
    if "mode" in data and "mode" not in sections["data"]:
        sections["data"]["mode"] = data["mode"]
    sections["data"].setdefault("drop_last", True)  # training takes full batches only (TrainConfig checks it)
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """`train --config PATH --set a.b=c ...` -> TrainConfig, every key and value checked."""
    data, source = read_yaml(path) if path is not None else ({}, "--set")
    return from_dict(TrainConfig, share_keys(apply_overrides(data, overrides or [])), source=source)
