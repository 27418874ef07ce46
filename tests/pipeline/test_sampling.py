"""The shared definitions of frame indices and crop boxes (pipeline/sampling.py) and the config checks."""

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.sampling import (FIXED_OFFSETS, SPACE_DRAWS, crop_boxes, eval_crop_boxes, frame_indices,
                               multiscale_crop_box, random_resized_box, random_window, segment_indices,
                               space_draws, uniform_windows)

REPO = Path(__file__).resolve().parents[2]

rng = np.random.default_rng(0)


def test_random_window_is_strided_and_covers_every_start():
    starts = set()
    for u in np.linspace(0, 1, 200, endpoint=False):
        idx = random_window(100, u, num_frames=16, sampling_rate=4)
        assert len(idx) == 16 and np.all(np.diff(idx) == 4) and idx[-1] < 100
        starts.add(int(idx[0]))
    assert starts == set(range(100 - 64 + 1))  # VideoMAE: start uniform in [0, n - T * rate]


def test_short_clip_is_padded_with_its_last_strided_frame():
    idx = random_window(10, 0.7, num_frames=8, sampling_rate=4)
    assert idx.tolist() == [0, 4, 8, 8, 8, 8, 8, 8]
    assert random_window(1, 0.3, 4, 2).tolist() == [0, 0, 0, 0]


def test_segment_sampler_takes_one_frame_per_segment():
    for _ in range(50):
        idx = segment_indices(50, rng.random(8), 8)  # segments of 50 // 8 = 6 frames; frames 48, 49 unused
        assert np.all(idx >= 6 * np.arange(8)) and np.all(idx <= 6 * np.arange(8) + 5)


def test_uniform_windows_span_the_clip_evenly():
    idx = uniform_windows(100, num_frames=4, sampling_rate=2, num_clips=3).reshape(3, 4)
    # the strided sequence has 50 entries; windows of 4 start at 0, 23 and 46 of it
    assert idx[:, 0].tolist() == [0, 46, 92] and np.all(np.diff(idx, axis=1) == 2)
    short = uniform_windows(5, num_frames=4, sampling_rate=2, num_clips=2).reshape(2, 4)
    assert short.tolist() == [[0, 2, 4, 4], [0, 2, 4, 4]]


def test_multiscale_crop_follows_scales_distortion_and_fixed_offsets():
    height, width, size = 240, 320, 224
    scales = (1, 0.875, 0.75, 0.66)
    allowed = [224 if abs(int(240 * s) - 224) < 3 else int(240 * s) for s in scales]  # 240 -> 240, 210, 180, 158
    seen_pairs, small_crop_positions = set(), set()
    for u_size, u_offset in rng.random((2000, 2)):
        y, x, h, w = multiscale_crop_box(height, width, u_size, u_offset, size, scales, max_distort=1)
        assert h in allowed and w in allowed and abs(allowed.index(h) - allowed.index(w)) <= 1
        step_x, step_y = (width - w) // 4, (height - h) // 4
        assert any((x, y) == (qx * step_x, qy * step_y) for qx, qy in FIXED_OFFSETS)
        assert y + h <= height and x + w <= width
        seen_pairs.add((h, w))
        if (h, w) == (158, 158):
            small_crop_positions.add((y, x))
    assert len(seen_pairs) == 10 and len(small_crop_positions) == 13  # 4 + 3 + 3 pairs within one step


def test_random_resized_crop_respects_area_and_ratio():
    for _ in range(500):
        y, x, h, w = random_resized_box(240, 320, rng.random(40), (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= y and y + h <= 240 and 0 <= x and x + w <= 320
        if (h, w) != (240, 320):
            assert 0.08 * 0.9 <= h * w / (240 * 320) <= 1.0
            assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # no attempt fits (every area draw at the top of a huge range): centre crop with the ratio clamped
    box = random_resized_box(100, 400, np.ones(40) * 0.999, (0.99, 1.0), (3 / 4, 4 / 3))
    assert box == (0, (400 - 133) // 2, 100, 133)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_crop_boxes_are_the_drawn_boxes_as_corners_on_a_non_square_frame(mode):
    height, width = 240, 320
    cfg = DataConfig(mode=mode, num_sample=200, input_size=112, rrc_ratio=(1.25, 2.0))  # finetune: wider than tall
    u = rng.random((cfg.num_views, space_draws(cfg)))
    corners, _ = crop_boxes(cfg, height, width, u)
    assert corners.shape == (cfg.num_views, 4) and corners.dtype == np.float32
    y0, x0, y1, x1 = corners.T  # documented order: (y0, x0, y1, x1)
    assert (0 <= y0).all() and (y0 < y1).all() and (y1 <= height).all()
    assert (0 <= x0).all() and (x0 < x1).all() and (x1 <= width).all()
    box_h, box_w = y1 - y0, x1 - x0
    if mode == "pretrain":  # sides from the scales of the short side, at most max_distort steps apart
        sizes = [int(240 * s) for s in cfg.scales]  # 240, 210, 180, 158
        steps = [abs(sizes.index(h) - sizes.index(w)) for h, w in zip(box_h, box_w)]
        assert max(steps) <= cfg.max_distort and (box_h != box_w).any()
        drawn = [multiscale_crop_box(height, width, v[1], v[2], 112, cfg.scales, cfg.max_distort) for v in u]
    else:  # area fraction in rrc_scale, aspect ratio width / height in rrc_ratio (up to rounding)
        assert ((box_w / box_h >= 1.25 * 0.98) & (box_w / box_h <= 2.0 * 1.02)).all()
        assert ((box_h * box_w >= 0.08 * height * width * 0.95) & (box_h * box_w <= height * width)).all()
        drawn = [random_resized_box(height, width, v[1:], cfg.rrc_scale, cfg.rrc_ratio) for v in u]
    assert corners.tolist() == [[y, x, y + h, x + w] for y, x, h, w in drawn]


def test_eval_crops_slide_along_the_long_side_of_the_resized_frame():
    # 240 x 320 resized to 32 x 42 (42.67 truncated): crops at 0, 5, 10 of 42, i.e. 320 / 42 original pixels each
    boxes = eval_crop_boxes(240, 320, 32, 3)
    assert [round(x, 3) for _, x, _, _ in boxes] == [0, round(5 * 320 / 42, 3), round(10 * 320 / 42, 3)]
    assert all((y, h, w) == (0, 240, 32 * 320 / 42) for y, _, h, w in boxes)
    assert eval_crop_boxes(320, 240, 240, 1) == [(40, 0, 240, 240)]  # short side at size already: no resize


def test_config_level_views_and_flips():
    cfg = DataConfig(mode="eval", test_num_segment=2, test_num_crop=3, num_frames=4, sampling_rate=2)
    boxes, flips = crop_boxes(cfg, 240, 320, np.zeros((cfg.num_views, SPACE_DRAWS)))
    assert boxes.shape == (6, 4) and not flips.any()
    # view v = clip v // 3, crop v % 3: crops at 0, 37, 74 of the frame resized to 224 x 298
    assert np.allclose(boxes[:, 1], np.array([0, 37, 74, 0, 37, 74]) * 320 / 298)
    assert frame_indices(cfg, 100, np.zeros(4)).shape == (8,)
    train = DataConfig(flip=True, num_sample=4)
    u = rng.random((4, SPACE_DRAWS))
    boxes, flips = crop_boxes(train, 240, 320, u)
    assert boxes.shape == (4, 4) and flips.tolist() == (u[:, 0] < 0.5).astype(int).tolist()
    assert not crop_boxes(DataConfig(flip=False), 240, 320, np.zeros((1, SPACE_DRAWS)))[1].any()


def test_imagenet_statistics_are_the_published_rgb_values_defined_once():
    from model import layers
    from pipeline import config

    # written out here, not imported: a swapped (BGR) order in the one definition shows
    assert config.IMAGENET_MEAN == (0.485, 0.456, 0.406) and config.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert layers.IMAGENET_MEAN is config.IMAGENET_MEAN and layers.IMAGENET_STD is config.IMAGENET_STD
    for package in ("pipeline", "model", "shard_tools", "train"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path != REPO / "pipeline" / "config.py":
                text = path.read_text()
                assert "0.485" not in text and "0.229" not in text, \
                    f"{path.relative_to(REPO)} spells out the ImageNet statistics: import them from pipeline.config"


@pytest.mark.parametrize("changes, key", [
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"num_frames": 15}, "num_frames"),
    ({"input_size": 100}, "input_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"scales": (1.0, 1.5)}, "scales"),
    ({"rrc_scale": (0.5, 0.1)}, "rrc_scale"),
    ({"decoder_mask": "running_cell", "input_size": 48, "patch_size": 16}, "decoder_mask"),
])
def test_config_rejects_out_of_range_values_by_name(changes, key):
    with pytest.raises(ValueError, match=key):
        DataConfig(**changes)


def test_config_derived_sizes():
    cfg = DataConfig()
    assert (cfg.grid_size, cfg.num_tokens, cfg.num_views) == (14, 8 * 14 * 14, 1)
    assert math.isclose(cfg.rrc_ratio[0], 0.75)
