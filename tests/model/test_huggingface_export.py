"""Export to Hugging Face `transformers`: the folder loads in VideoMAEForPreTraining / ForVideoClassification with
our outputs, loads back into TubeMAE, and `train export` writes it from a checkpoint file or a run folder.

transformers builds `decoder.norm` and `fc_norm` with LayerNorm eps 1e-5 whatever the config says (TubeMAE and the
official code: 1e-6), so outputs are compared as loaded at 1e-5, then with those two set to 1e-6 at 1e-6.
"""

import json
import sys

import pytest
import torch
from safetensors import safe_open

from model import (ModelConfig, VideoMAEClassifier, VideoMAEPretrain, export_huggingface, load_weights,
                   save_checkpoint)
from model.layers import LN_EPS
from train.cli import main as train_main

transformers = pytest.importorskip("transformers")

SMALL = dict(size="tiny", num_frames=8, input_size=32, patch_size=8)  # token grid 4 x 4 x 4
# widths that are not the usual ratios (as VideoMAE V2 giant's mlp_ratio 48/11), four heads, two decoder blocks
ODD = dict(SMALL, embed_dim=96, num_heads=4, mlp_dim=200, decoder_dim=48, decoder_depth=2, decoder_mlp_dim=90)
CLASSES = ["archery", "bowling", "juggling"]


def randomise(model, seed=0):
    """Random values in every parameter (biases, norms, mask token too) so that none can go unchecked."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05 if param.ndim > 1 else 0.2)
    return model.eval()


def batch(cfg, batch_size=2, ratio=0.75):
    """A random video (B x 3 x T x H x W) and a tube mask (B x N, the same spatial cubes masked in every slot)."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch_size, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
    t, h, w = cfg.grid
    spatial = torch.stack([torch.randperm(h * w, generator=g) < int(ratio * h * w) for _ in range(batch_size)])
    return video, spatial.repeat(1, t)


def hf_load(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("arch, norm_target", [(SMALL, True), (ODD, False)], ids=["tiny", "odd-widths"])
def test_pretraining_export_matches_transformers(tmp_path, arch, norm_target):
    model = randomise(VideoMAEPretrain(ModelConfig(**arch, norm_target=norm_target)))
    export_huggingface(tmp_path, model)
    reference = hf_load(transformers.VideoMAEForPreTraining, tmp_path)
    config = reference.config
    assert (config.use_mean_pooling, config.layer_norm_eps, config.norm_pix_loss) == (False, LN_EPS, norm_target)
    assert config.architectures == ["VideoMAEForPreTraining"] and config.decoder_intermediate_size == arch.get(
        "decoder_mlp_dim", 256)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:  # the Hub layout, which transformers 4 and 5 read
        names = set(f.keys())
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in names
    assert not any(name.endswith(("key.bias", "query.bias")) for name in names)

    video, mask = batch(model.cfg)
    with torch.no_grad():
        out = model(video, mask)
        expected = reference(video.transpose(1, 2), bool_masked_pos=mask)  # HF takes B x T x C x H x W
        torch.testing.assert_close(out["pred"], expected.logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["loss"], expected.loss, rtol=1e-5, atol=1e-5)
        reference.decoder.norm.eps = LN_EPS
        expected = reference(video.transpose(1, 2), bool_masked_pos=mask)
    torch.testing.assert_close(out["pred"], expected.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss"], expected.loss, rtol=1e-6, atol=1e-6)


def test_classifier_export_matches_transformers(tmp_path):
    model = randomise(VideoMAEClassifier(ModelConfig(**SMALL), len(CLASSES)))
    export_huggingface(tmp_path, model, class_names=CLASSES)
    reference = hf_load(transformers.VideoMAEForVideoClassification, tmp_path)
    assert reference.config.use_mean_pooling and reference.config.id2label == dict(enumerate(CLASSES))
    assert reference.config.label2id["juggling"] == 2
    video, _ = batch(model.cfg)
    with torch.no_grad():
        logits = model(video)
        torch.testing.assert_close(logits, reference(video.transpose(1, 2)).logits, rtol=1e-5, atol=1e-5)
        reference.fc_norm.eps = LN_EPS
        torch.testing.assert_close(logits, reference(video.transpose(1, 2)).logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_exported_folder_loads_back(tmp_path, kind):
    build = (lambda: VideoMAEPretrain(ModelConfig(**SMALL))) if kind == "pretrain" else \
        (lambda: VideoMAEClassifier(ModelConfig(**SMALL), 4))
    model = randomise(build())
    export_huggingface(tmp_path, model)
    back = randomise(build(), seed=1)
    report = load_weights(back, tmp_path, strict=True)
    assert report.layout == "huggingface" and len(report.loaded) == len(model.state_dict())
    video, mask = batch(model.cfg)
    with torch.no_grad():
        if kind == "pretrain":
            torch.testing.assert_close(back(video, mask)["pred"], model(video, mask)["pred"], rtol=0, atol=0)
        else:
            torch.testing.assert_close(back(video), model(video), rtol=0, atol=0)


def test_what_transformers_cannot_hold_is_refused(tmp_path, monkeypatch):
    resampled = VideoMAEClassifier(ModelConfig(**SMALL, pos_embed_grid=(2, 4, 4)), 3)
    with pytest.raises(ValueError, match=r"resampled from grid \(2, 4, 4\) to \(4, 4, 4\)"):
        export_huggingface(tmp_path / "a", resampled)
    with pytest.raises(ValueError, match="2 class names for a classifier of 3 classes"):
        export_huggingface(tmp_path / "b", VideoMAEClassifier(ModelConfig(**SMALL), 3), class_names=["a", "b"])
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'tubemae\[hf\]'"):
        export_huggingface(tmp_path / "c", VideoMAEPretrain(ModelConfig(**SMALL)))
    assert not any(tmp_path.iterdir())  # nothing written


def test_export_command(tmp_path, capsys):
    """`train export` from a checkpoint file and from a run folder (its newest checkpoint), both formats."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"classes": CLASSES}))
    run = tmp_path / "run"
    older, newest = (randomise(VideoMAEClassifier(ModelConfig(**SMALL), 3), seed) for seed in (0, 1))
    save_checkpoint(run / "checkpoint-00000008.pt", older, config={"data": {"shards": "elsewhere"}})
    save_checkpoint(run / "checkpoint-00000016.pt", newest, config={"data": {"shards": str(shards)}})

    assert train_main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint-00000016.pt" in printed and str(tmp_path / "hf") in printed
    assert "VideoMAEForVideoClassification.from_pretrained(" in printed
    reference = hf_load(transformers.VideoMAEForVideoClassification, tmp_path / "hf")
    assert reference.config.id2label == dict(enumerate(CLASSES))  # from the manifest of its training shards
    video, _ = batch(newest.cfg)
    with torch.no_grad():
        torch.testing.assert_close(newest(video), reference(video.transpose(1, 2)).logits, rtol=1e-5, atol=1e-5)

    older_file = run / "checkpoint-00000008.pt"
    assert train_main(["export", str(older_file), "--out", str(tmp_path / "off"), "--format", "official"]) == 0
    assert "checkpoint.pth" in capsys.readouterr().out
    back = VideoMAEClassifier(ModelConfig(**SMALL), 3)
    load_weights(back, tmp_path / "off" / "checkpoint.pth", strict=True)
    for name, value in older.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_export_command_errors_are_one_line(tmp_path, capsys):
    torch.save({"model": VideoMAEPretrain(ModelConfig(**SMALL)).state_dict()}, tmp_path / "official.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "empty-run").mkdir()
    cases = {"missing.pt": "no such file", "official.pth": "not a TubeMAE checkpoint (no 'tubemae' entry)",
             "notes.txt": "not a TubeMAE checkpoint", "empty-run": "no checkpoint-<step>.pt in this folder"}
    for name, message in cases.items():
        assert train_main(["export", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"train export: {tmp_path / name}") and message in err, err
    assert not (tmp_path / "out").exists()
