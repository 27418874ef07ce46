from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from train.yaml_config import ConfigError, apply_overrides, from_dict, load, to_dict


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


# --- the train command's config -------------------------------------------------------------------------------

from train.config import load_train_config  # noqa: E402
from train.optim import make_schedule  # noqa: E402


def test_shared_keys_are_stated_once_and_checked():
    cfg = load_train_config(None, ["data.num_frames=8", "model.input_size=112", "model.size=tiny"])
    assert (cfg.data.num_frames, cfg.model.num_frames) == (8, 8)
    assert (cfg.data.input_size, cfg.model.input_size) == (112, 112)
    assert cfg.data.patch_size == cfg.model.patch_size == 16
    assert load_train_config(None, ["model.size=giant"]).data.patch_size == 14  # the size's patch reaches data
    assert load_train_config(None, ["run.seed=7"]).data.seed == 7
    with pytest.raises(ConfigError, match=r"data.num_frames \(8\) and model.num_frames \(16\) disagree"):
        load_train_config(None, ["data.num_frames=8", "model.num_frames=16"])
    with pytest.raises(ConfigError, match=r"data.drop_last must be true for training"):
        load_train_config(None, ["data.drop_last=false"])
    with pytest.raises(ConfigError, match=r"key 'mode' must be one of \['pretrain', 'finetune', 'eval'\], got 'pretrian'; did you mean 'pretrain'"):
        load_train_config(None, ["mode=pretrian"])
    with pytest.raises(ConfigError, match=r"unknown key 'optim.base_rl'; did you mean 'optim.base_lr'"):
        load_train_config(None, ["optim.base_rl=1e-3"])
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs must be in \[0, optim.epochs = 10\]"):
        load_train_config(None, ["optim.epochs=10", "optim.warmup_epochs=20"])
    with pytest.raises(ConfigError, match=r"run.log_every must be >= 1"):
        load_train_config(None, ["run.log_every=0"])
    with pytest.raises(ConfigError, match=r"data.mode \('eval'\) and mode \('pretrain'\) disagree"):
        load_train_config(None, ["data.mode=eval"])


def test_bad_yaml_files_are_one_line_naming_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  batch_size: 8\n    mask_ratio: 0.9\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line 3 column 15: not valid YAML") as error:
        load_train_config(broken)
    assert "\n" not in str(error.value)
    listed = tmp_path / "list.yaml"
    listed.write_text("- data\n- model\n")
    with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping .* got a list"):
        load_train_config(listed)
    section = tmp_path / "section.yaml"
    section.write_text("data: 3\n")
    with pytest.raises(ConfigError, match=r"section.yaml: 'data' must be a mapping"):
        load_train_config(section)


def test_effective_batch_and_the_schedule():
    cfg = load_train_config(None, ["data.batch_size=8", "data.num_sample=2", "optim.accum_steps=4",
                                   "optim.epochs=10", "optim.warmup_epochs=2", "optim.base_lr=1e-3",
                                   "optim.min_lr=1e-5", "optim.warmup_lr=1e-6"])
    assert cfg.effective_batch == 64
    schedule = make_schedule(cfg.optim, steps_per_epoch=5, batch_per_step=cfg.effective_batch * 4)  # 4 ranks
    assert schedule.peak_lr == pytest.approx(1e-3)  # 1e-3 x 256 / 256
    assert (schedule.warmup_steps, schedule.total_steps) == (10, 50)
    lrs = [schedule.lr(step) for step in range(50)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[9] == pytest.approx(1e-3)  # warm-up: both ends included
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine decay after warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[30] == pytest.approx((1e-3 + 1e-5) / 2)  # the half-way point
    assert lrs[-1] > 1e-5 and schedule.lr(50) == pytest.approx(1e-5)
    group = {"lr_scale": 0.5}
    optimizer = type("Opt", (), {"param_groups": [group]})()
    assert schedule.apply(optimizer, 9) == pytest.approx(1e-3) and group["lr"] == pytest.approx(5e-4)


def test_errors_of_a_set_item_name_the_item_not_the_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("data:\n  batch_size: 8\noptim:\n  base_lr: 1.0e-3\n")
    cases = {"data.batch_size=abc": "key 'data.batch_size' must be an integer, got 'abc' (str)",
             "data.mask_ratoi=0.5": "unknown key 'data.mask_ratoi'; did you mean 'data.mask_ratio'?",
             "optim.min_lr=0.1": "optim.min_lr (0.1) must not exceed optim.base_lr (0.001) (in section 'optim')"}
    for item, says in cases.items():
        with pytest.raises(ConfigError) as raised:
            load_train_config(path, ["run.seed=3", item])
        assert str(raised.value) == f"--set {item}: {says}"
    path.write_text("data:\n  batch_size: abc\n")  # the file's own mistake still names the file
    with pytest.raises(ConfigError, match=rf"^{path}: key 'data.batch_size' must be an integer"):
        load_train_config(path, ["run.seed=3"])


def test_an_optional_key_says_what_its_value_must_be():
    with pytest.raises(ConfigError, match=r"'model.pos_embed_grid' must be a list of 3 items, got \[1, 2\] \(list\); "
                                          r"null is allowed too"):
        load_train_config(None, ["model.pos_embed_grid=[1, 2]"])
