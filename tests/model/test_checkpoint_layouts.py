"""Checkpoints: TubeMAE and official layouts round trip, classifier from pre-training, errors name the key."""

import argparse
import datetime

import pytest
import torch

from model import (ModelConfig, VideoMAEClassifier, VideoMAEPretrain, build_from_checkpoint, export_official,
                   load_weights, save_checkpoint)

TINY = dict(size="tiny", num_frames=4, input_size=64)


def fresh(kind="pretrain", seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig(**TINY, **overrides)
    return VideoMAEPretrain(cfg) if kind == "pretrain" else VideoMAEClassifier(cfg, 5)


def assert_same_state(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for key in keys or sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_tubemae_round_trip(tmp_path, kind):
    model = fresh(kind)
    save_checkpoint(tmp_path / "ckpt.pth", torch.compile(model), epoch=3)  # wrappers are seen through
    obj = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert obj["tubemae"]["kind"] == kind and obj["epoch"] == 3
    assert obj["tubemae"]["config"]["input_size"] == 64
    rebuilt = build_from_checkpoint(tmp_path / "ckpt.pth")
    assert type(rebuilt) is type(model) and rebuilt.cfg == model.cfg
    assert_same_state(model, rebuilt)


@pytest.mark.parametrize("kind, key", [("pretrain", "model"), ("classifier", "module")])
def test_official_export_round_trip(tmp_path, kind, key):
    model = fresh(kind)
    export_official(tmp_path / "official.pth", model)
    obj = torch.load(tmp_path / "official.pth", weights_only=True)
    assert list(obj) == [key]
    names = set(obj[key])
    if kind == "pretrain":
        assert {"encoder.patch_embed.proj.weight", "encoder.blocks.1.attn.q_bias", "encoder.norm.weight",
                "encoder_to_decoder.weight", "mask_token", "decoder.blocks.0.mlp.fc2.weight",
                "decoder.head.weight"} <= names
    else:
        assert {"patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "fc_norm.weight", "head.bias"} <= names
        assert "norm.weight" not in names
    other = fresh(kind, seed=1)
    report = load_weights(other, tmp_path / "official.pth", strict=True)
    assert report.layout == "official" and len(report.loaded) == len(names)
    assert_same_state(model, other)


def test_official_file_with_args_and_ddp_prefix(tmp_path):
    """Official files store argparse `args` beside the weights; DDP-saved ones prefix `module.`."""
    model = fresh("classifier")
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"module": sd, "args": argparse.Namespace(lr=1e-3), "epoch": 29}, tmp_path / "ft.pth")
    other = fresh("classifier", seed=1)
    load_weights(other, tmp_path / "ft.pth", strict=True)
    assert_same_state(model, other)


def test_classifier_from_pretraining_checkpoint(tmp_path):
    pretrain = fresh("pretrain")
    export_official(tmp_path / "pt.pth", pretrain)
    classifier = fresh("classifier", seed=1)
    head_before = classifier.head.weight.clone()
    report = load_weights(classifier, tmp_path / "pt.pth")
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert not report.unexpected
    assert {"encoder.norm.weight", "encoder_to_decoder.weight", "mask_token", "decoder.head.weight"} \
        <= set(report.skipped)
    assert "decoder.blocks.*" in str(report)
    enc = pretrain.encoder.state_dict()
    for key, value in classifier.state_dict().items():
        if key.startswith(("patch_embed.", "blocks.")):
            torch.testing.assert_close(value, enc[key], rtol=0, atol=0)
    torch.testing.assert_close(classifier.head.weight, head_before)  # the head stays new


def test_pretrain_from_finetuned_takes_the_encoder():
    classifier = fresh("classifier")
    pretrain = fresh("pretrain", seed=1)
    report = load_weights(pretrain, {"module": classifier.state_dict()})
    assert set(report.skipped) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "encoder.norm.weight" in report.missing and "mask_token" in report.missing
    torch.testing.assert_close(pretrain.encoder.blocks[0].attn.qkv.weight, classifier.blocks[0].attn.qkv.weight)


def test_shape_mismatch_names_the_key_and_exclude_starts_a_new_head():
    source = VideoMAEClassifier(ModelConfig(**TINY), 7).state_dict()
    target = fresh("classifier")  # 5 classes
    with pytest.raises(ValueError, match=r"'head.weight' has shape \(7, 128\) .* \(5, 128\).*exclude"):
        load_weights(target, source)
    report = load_weights(target, source, exclude=("head.",))
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    small = VideoMAEPretrain(ModelConfig(size="tiny", num_frames=4, input_size=64, embed_dim=64, num_heads=2))
    with pytest.raises(ValueError, match="'encoder.patch_embed.proj.weight'"):
        load_weights(small, fresh("pretrain").state_dict())


def test_unexpected_and_missing_keys_are_reported_by_name():
    sd = fresh("pretrain").state_dict()
    sd["encoder.blocks.7.attn.qkv.weight"] = torch.zeros(3)
    del sd["decoder.norm.bias"]
    report = load_weights(fresh("pretrain", seed=1), {"model": sd})
    assert report.unexpected == ["encoder.blocks.7.attn.qkv.weight"]
    assert report.missing == ["decoder.norm.bias"]
    assert "encoder.blocks.7.attn.qkv.weight" in str(report) and "decoder.norm.bias" in str(report)
    with pytest.raises(ValueError, match="strict load failed"):
        load_weights(fresh("pretrain"), {"model": sd}, strict=True)


def test_untrusted_pickle_is_refused(tmp_path):
    torch.save({"model": fresh("pretrain").state_dict(), "saved": datetime.date(2024, 1, 1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_weights(fresh("pretrain"), tmp_path / "odd.pth")
    load_weights(fresh("pretrain"), tmp_path / "odd.pth", trust_pickle=True, strict=True)


def test_grid_change_is_noted(tmp_path):
    save_checkpoint(tmp_path / "pt.pth", fresh("pretrain"))
    bigger = VideoMAEClassifier(ModelConfig(size="tiny", num_frames=4, input_size=96), 5)
    report = load_weights(bigger, tmp_path / "pt.pth")
    assert any("pos_embed_grid=[2, 4, 4]" in note for note in report.notes)
    told = VideoMAEClassifier(ModelConfig(size="tiny", num_frames=4, input_size=96, pos_embed_grid=(2, 4, 4)), 5)
    assert not load_weights(told, tmp_path / "pt.pth").notes
