"""Parity with the reference implementation in Hugging Face transformers (random weights, small configs).

The official checkpoints correspond to `use_mean_pooling=False` (pre-training) and LayerNorm eps 1e-6. Hugging
Face builds `decoder.norm` and `fc_norm` with LayerNorm's default eps 1e-5 whatever `layer_norm_eps` says; the
official code uses 1e-6 there too, so the reference's two norms are set to 1e-6 before comparing.
"""

import pytest
import torch

from model import ModelConfig, VideoMAEClassifier, VideoMAEPretrain, load_weights

transformers = pytest.importorskip("transformers")

TINY = dict(size="tiny", num_frames=4, input_size=64)


def hf_config(**extra):
    cfg = ModelConfig(**TINY)
    return transformers.VideoMAEConfig(
        image_size=cfg.input_size, patch_size=cfg.patch_size, num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size, hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, decoder_hidden_size=cfg.decoder_dim,
        decoder_num_hidden_layers=cfg.decoder_depth, decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=cfg.decoder_mlp_dim, layer_norm_eps=1e-6, qkv_bias=True, **extra)


def randomise(model):
    """Random values in every parameter (biases, norms, mask token too) so that none can go unchecked."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05 if param.ndim > 1 else 0.2)
    return model.eval()


def batch(batch_size=3, ratio=0.75):
    cfg = ModelConfig(**TINY)
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch_size, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
    t, h, w = cfg.grid
    spatial = torch.stack([torch.randperm(h * w, generator=g) < int(ratio * h * w) for _ in range(batch_size)])
    return video, spatial.repeat(1, t)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_pretraining_loss_and_predictions_match_transformers(norm_pix_loss):
    reference = randomise(transformers.VideoMAEForPreTraining(
        hf_config(use_mean_pooling=False, norm_pix_loss=norm_pix_loss)))
    reference.decoder.norm.eps = 1e-6
    model = VideoMAEPretrain(ModelConfig(**TINY, norm_target=norm_pix_loss)).eval()
    report = load_weights(model, reference.state_dict(), strict=True)
    assert report.layout == "huggingface" and not report.unexpected and not report.skipped
    video, mask = batch()
    with torch.no_grad():
        expected = reference(video.transpose(1, 2), bool_masked_pos=mask)  # HF takes B x T x C x H x W
        out = model(video, mask)
    torch.testing.assert_close(out["pred"], expected.logits)
    torch.testing.assert_close(out["loss"], expected.loss)


def test_classifier_logits_match_transformers():
    reference = randomise(transformers.VideoMAEForVideoClassification(
        hf_config(use_mean_pooling=True, num_labels=7)))
    reference.fc_norm.eps = 1e-6
    model = VideoMAEClassifier(ModelConfig(**TINY), 7).eval()
    report = load_weights(model, reference.state_dict(), strict=True)
    assert len(report.loaded) == len(model.state_dict())
    video, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(video), reference(video.transpose(1, 2)).logits)


def test_classifier_from_transformers_pretraining_checkpoint(tmp_path):
    """A Hugging Face pre-training folder (save_pretrained, safetensors) initialises a classifier's encoder."""
    reference = randomise(transformers.VideoMAEForPreTraining(hf_config(use_mean_pooling=False)))
    reference.save_pretrained(tmp_path)
    model = VideoMAEClassifier(ModelConfig(**TINY), 5)
    report = load_weights(model, tmp_path)
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert not report.unexpected
    assert "encoder.norm.weight" in report.skipped and "mask_token" in report.skipped
    hf = reference.videomae.encoder.layer[1].attention.attention
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight,
                               torch.cat([hf.query.weight, hf.key.weight, hf.value.weight]))
    torch.testing.assert_close(model.blocks[1].attn.v_bias, hf.value.bias)


def test_hub_files_with_q_bias_and_v_bias_load_the_same():
    """Files on the Hub (written by older transformers) store attention.attention.q_bias / v_bias and no key
    bias; transformers 5 writes query.bias / key.bias / value.bias. Both give the same model."""
    reference = randomise(transformers.VideoMAEForVideoClassification(
        hf_config(use_mean_pooling=True, num_labels=7)))
    modern = reference.state_dict()
    hub = {}
    for key, value in modern.items():
        if key.endswith("attention.attention.key.bias"):
            continue
        hub[key.replace("attention.attention.query.bias", "attention.attention.q_bias")
               .replace("attention.attention.value.bias", "attention.attention.v_bias")] = value
    assert any(k.endswith(".q_bias") for k in hub) and not any(k.endswith("query.bias") for k in hub)
    a, b = VideoMAEClassifier(ModelConfig(**TINY), 7), VideoMAEClassifier(ModelConfig(**TINY), 7)
    load_weights(a, modern, strict=True)
    report = load_weights(b, hub, strict=True)
    assert report.layout == "huggingface"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    query_bias = modern["videomae.encoder.layer.0.attention.attention.query.bias"]
    torch.testing.assert_close(b.blocks[0].attn.q_bias, query_bias)
