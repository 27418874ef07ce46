"""YAML files and `--set a.b=c` overrides -> typed dataclasses, for any dataclass (train/config.py composes the
stages' dataclasses into TrainConfig).

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
from typing import Any, Literal, TypeVar, Union

import yaml

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
        return _convert_union(tp, value, name, source)
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


def _convert_union(tp: Any, value: Any, name: str, source: str) -> Any:
    """The first option of Union `tp` that `value` converts to; Optional[X] says what X needs."""
    options = [o for o in typing.get_args(tp) if o is not type(None)]
    if value is None and len(options) < len(typing.get_args(tp)):
        return None
    if len(options) == 1:  # Optional[X]: X's own message says what is wrong
        try:
            return _convert(options[0], value, name, source)
        except ConfigError as e:
            raise ConfigError(f"{e}; null is allowed too") from None
    for option in options:
        try:
            return _convert(option, value, name, source)
        except ConfigError:
            continue
    expected = " or ".join(_type_name(o) for o in typing.get_args(tp))
    raise ConfigError(f"{source}: key '{name}' must be {expected}, got {value!r} ({type(value).__name__})")


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
