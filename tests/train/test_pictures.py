import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import ModelConfig
from model.layers import IMAGENET_MEAN, IMAGENET_STD, patchify
from model.videomae import VideoMAEPretrain, cube_target
from train.pictures import CLIP_GAP, GREY, enlargement, reconstruct, save_loss_curve, save_reconstruction

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None, None]


def tiny(norm_target: bool = True) -> ModelConfig:
    return ModelConfig(size="tiny", num_frames=4, input_size=32, patch_size=8, norm_target=norm_target)


def clips(cfg: ModelConfig, batch: int, num_masked: int, seed: int = 0):
    """Random [0, 1] pixels (B x 3 x T x H x W), the normalised video, and a mask with `num_masked` per row."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
    scores = torch.rand(batch, cfg.num_tokens, generator=g)
    mask = torch.zeros(batch, cfg.num_tokens, dtype=torch.bool)
    mask.scatter_(1, scores.argsort(dim=1)[:, :num_masked], True)
    return pixels, (pixels - MEAN) / STD, mask


def masked_index(mask: torch.Tensor) -> torch.Tensor:
    """B x n token indices of the masked tokens, in token order (as the model returns them)."""
    return torch.stack([row.nonzero().flatten() for row in mask])


def pixel_mask(mask: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """B x T x H x W bool: the pixels of each masked cube, written out cube by cube from its (t, h, w) index."""
    t_, h_, w_ = cfg.grid
    tub, p = cfg.tubelet_size, cfg.patch_size
    out = torch.zeros(mask.shape[0], cfg.num_frames, cfg.input_size, cfg.input_size, dtype=torch.bool)
    for b, token in mask.nonzero().tolist():
        t, h, w = token // (h_ * w_), token // w_ % h_, token % w_
        out[b, t * tub:(t + 1) * tub, h * p:(h + 1) * p, w * p:(w + 1) * p] = True
    return out


@pytest.mark.parametrize("norm_target", [True, False])
def test_reconstruct_inverts_the_target(norm_target):
    cfg = tiny(norm_target)
    pixels, video, mask = clips(cfg, batch=2, num_masked=24)
    index = masked_index(mask)
    rows = torch.arange(2)[:, None]
    pred = cube_target(patchify(video, cfg.patch_size, cfg.tubelet_size)[rows, index], norm_target)  # perfect

    out = reconstruct(video, mask, pred, index, cfg)
    expected = pixels.permute(0, 2, 3, 4, 1)  # B x T x H x W x 3
    for name in ("original", "seen", "reconstruction"):
        assert out[name].shape == expected.shape
    torch.testing.assert_close(out["original"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["reconstruction"], expected, atol=1e-4, rtol=0)

    hidden = pixel_mask(mask, cfg)
    assert (out["seen"][hidden] == GREY).all()
    torch.testing.assert_close(out["seen"][~hidden], expected[~hidden], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_target", [True, False])
def test_reconstruct_uses_the_prediction(norm_target):
    """A zero prediction is each cube's per-channel mean (norm_target) or black. It covers every token here, as
    with V2 dual masking the decoder also predicts visible ones: those are pasted back from the original."""
    cfg = tiny(norm_target)
    pixels, video, mask = clips(cfg, batch=2, num_masked=20, seed=1)
    index = torch.arange(cfg.num_tokens).expand(2, -1)
    out = reconstruct(video, mask, torch.zeros(2, index.shape[1], cfg.cube_dim), index, cfg)["reconstruction"]

    hidden = pixel_mask(mask, cfg)
    expected = pixels.permute(0, 2, 3, 4, 1)
    torch.testing.assert_close(out[~hidden], expected[~hidden], atol=1e-5, rtol=0)
    if norm_target:
        cube_means = patchify(pixels, cfg.patch_size, cfg.tubelet_size).mean(-1)  # B x N x C
        one = torch.zeros_like(mask)
        b, token = mask.nonzero()[0].tolist()
        one[b, token] = True
        cube = out[pixel_mask(one, cfg)]  # its 2 * 8 * 8 pixels x 3
        torch.testing.assert_close(cube, cube_means[b, token].expand_as(cube), atol=1e-5, rtol=0)
    else:
        assert (out[hidden] == 0).all()


def forward(cfg, batch: int):
    """A seeded model's output on `clips`: (pixels, video, mask, result)."""
    torch.manual_seed(0)
    model = VideoMAEPretrain(cfg).eval()
    pixels, video, mask = clips(cfg, batch=batch, num_masked=24)
    with torch.no_grad():
        return pixels, video, mask, model(video, mask)


def test_save_reconstruction_of_a_forward(tmp_path):
    cfg = tiny()
    pixels, video, mask, result = forward(cfg, batch=3)

    path = save_reconstruction(tmp_path / "pictures" / "step_10.png", video, mask, result["pred"],
                               result["index"], cfg, max_clips=2, max_frames=3)
    image = Image.open(path)
    assert image.format == "PNG"
    assert image.size == (3 * 32, 2 * 3 * 32 + CLIP_GAP)  # 3 frames wide; 2 clips of 3 rows, one gap
    sheet = torch.from_numpy(np.array(image.convert("RGB"))).float() / 255
    first = pixels[0, :, 0].permute(1, 2, 0)  # clip 0, frame 0: top-left tile
    torch.testing.assert_close(sheet[:32, :32], first, atol=1 / 255, rtol=0)
    assert (sheet[3 * 32:3 * 32 + CLIP_GAP] == 1).all()  # the white gap between the clips


def test_save_loss_curve(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / (s + 1), "lr": 1e-4 * min(1, s / 5)} for s in range(20)]
    lines.insert(3, {"step": 3, "eval_acc": 0.1})  # no loss: ignored
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    path = save_loss_curve(tmp_path / "plots" / "loss.png", metrics)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (800, 450)


@pytest.mark.parametrize("content", ["", '{"step": 1, "lr": 0.1}\n{"epoch": 2}\n'])
def test_save_loss_curve_without_losses_names_the_file(tmp_path, content):
    metrics = tmp_path / "empty_metrics.jsonl"
    metrics.write_text(content)
    with pytest.raises(ValueError, match="empty_metrics.jsonl"):
        save_loss_curve(tmp_path / "loss.png", metrics)
    assert not (tmp_path / "loss.png").exists()


def test_small_frames_are_drawn_enlarged_pixel_for_pixel(tmp_path):
    cfg = tiny()
    _, video, mask, result = forward(cfg, batch=1)
    args = (video, mask, result["pred"], result["index"], cfg)
    plain = np.array(Image.open(save_reconstruction(tmp_path / "plain.png", *args, max_frames=2)))
    scale = enlargement(32)
    big = np.array(Image.open(save_reconstruction(tmp_path / "big.png", *args, max_frames=2, scale=scale)))
    assert scale == 3 and enlargement(96) == 1 and enlargement(224) == 1
    assert big.shape[:2] == (3 * plain.shape[0], 3 * plain.shape[1])
    assert (big[::3, ::3] == plain).all() and (big[1::3, 2::3] == plain).all()  # nearest neighbour, no blur
