from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from train.config import ConfigError, apply_overrides, from_dict, load, to_dict


@dataclass
class Inner:
    mask_ratio: float = 0.9
    scales: tuple[float, ...] = (1.0, 0.875)
    mask_type: Literal["tube", "random"] = "tube"

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class Outer:
    num_frames: int = 16
    name: Optional[str] = None
    root: Path = Path(".")
    data: Inner = field(default_factory=Inner)


def test_nested_types_are_converted():
    cfg = from_dict(Outer, {"num_frames": 8, "root": "x/y", "data": {"mask_ratio": 0.5, "scales": [1, 0.5]}})
    assert cfg.num_frames == 8 and cfg.root == Path("x/y")
    assert cfg.data.mask_ratio == 0.5
    assert all(isinstance(s, float) for s in cfg.data.scales)
    assert cfg.data.scales == (1.0, 0.5) and isinstance(cfg.data.scales, tuple)


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'data.mask_ratoi'.*did you mean 'data.mask_ratio'"):
        from_dict(Outer, {"data": {"mask_ratoi": 0.5}})


@pytest.mark.parametrize("data, pattern", [
    ({"num_frames": "16"}, r"'num_frames' must be an integer"),
    ({"num_frames": True}, r"'num_frames' must be an integer"),
    ({"data": {"scales": 1.0}}, r"'data.scales' must be a list"),
    ({"data": {"mask_type": "tubes"}}, r"'data.mask_type' must be one of .*did you mean 'tube'"),
    ({"data": {"mask_ratio": 1.5}}, r"mask_ratio must be in \(0, 1\).*section 'data'"),
])
def test_bad_values_name_the_key(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Outer, data)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_frames: 8\ndata:\n  mask_ratio: 0.75\n")
    cfg = load(Outer, path, ["data.mask_type=random", "name=run1", "data.scales=[1, 0.66]"])
    assert (cfg.num_frames, cfg.name, cfg.data.mask_ratio, cfg.data.mask_type) == (8, "run1", 0.75, "random")
    assert cfg.data.scales == (1.0, 0.66)
    assert to_dict(cfg)["data"]["scales"] == [1.0, 0.66]
    with pytest.raises(ConfigError, match=r"unknown key 'data.ratio'"):
        load(Outer, path, ["data.ratio=0.5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["data.mask_ratio"])
    with pytest.raises(ConfigError, match="not found"):
        load(Outer, tmp_path / "missing.yaml")
