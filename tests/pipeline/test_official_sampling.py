"""The official VideoMAE fine-tuning and test sampling (MCG-NJU/VideoMAE at 14ef8d8: kinetics.py, ssv2.py,
functional.py), restated here in this file's own words, against pipeline/sampling.py.

Each `official_*` function below says what the official code computes for one clip of n frames; the official
random draws (numpy `randint`) come in as arguments, and each test walks every value they can take.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import DataConfig
from pipeline.reference import resize_box
from pipeline.sampling import (crop_boxes, dense_window, eval_crop_boxes, frame_indices, random_window,
                               segment_indices, segment_windows, space_draws, uniform_windows)

T, R = 16, 4  # the official scripts' num_frames and (Kinetics, UCF101) sampling_rate
CLIP_LENGTHS = [1, 3, 4, 5, 10, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 66, 100, 129, 301]


def draw_for(choice: int, choices: int) -> float:
    """The uniform draw that `pipeline.sampling` turns into `choice` of `choices` (the middle of its bin)."""
    return (choice + 0.5) / choices


# --- Kinetics / UCF101 / HMDB51 fine-tuning: linspace over a random window ---------------------------------------

def official_dense(n: int, window_end: int, frames=T, rate=R) -> list[int]:
    """kinetics.py, training (num_segment 1). A clip longer than frames * rate draws the window's end from
    [frames * rate, n - 1]; `frames` points spread from the window's first frame to its end (end included),
    truncated to whole frames, none past the frame before the end. A shorter clip spreads n // rate points over
    0..n, fills up with n, and keeps every index below n."""
    span = frames * rate
    if n <= span:
        points = list(np.linspace(0, n, n // rate)) + [n] * (frames - n // rate)
        return [min(int(p), n - 1) for p in points]
    first = window_end - span
    return [min(int(p), window_end - 1) for p in np.linspace(first, window_end, frames)]


@pytest.mark.parametrize("n", CLIP_LENGTHS)
def test_dense_window_is_the_official_linspace_for_every_start(n):
    span = T * R
    if n <= span:  # no random choice: the same frames whatever the draw
        expected = official_dense(n, window_end=None)
        for u in (0.0, 0.4, 0.999):
            assert dense_window(n, u, T, R).tolist() == expected
        return
    starts = set()
    for window_end in range(span, n):  # every value of the official draw
        got = dense_window(n, draw_for(window_end - span, n - span), T, R)
        assert got.tolist() == official_dense(n, window_end)
        starts.add(int(got[0]))
    assert starts == set(range(n - span))  # start in [0, n - 65]


def test_dense_window_is_not_an_exact_stride_and_handles_short_clips():
    assert dense_window(100, 0.0, T, R).tolist() == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]
    assert dense_window(64, 0.7, T, R).tolist() == dense_window(65, 0.7, T, R).tolist()  # 65: the one start 0
    assert dense_window(10, 0.5, T, R).tolist() == [0] + [9] * 15  # 10 // 4 = 2 points over 0..10, then 10 -> 9
    assert dense_window(3, 0.5, T, R).tolist() == [2] * 16  # no point: the last frame only
    long = dense_window(1000, 0.999, T, R)
    assert long[-1] - long[0] == 63 and long[-1] == 998  # the end point n - 1 of the last window is clipped off


# --- SSv2 fine-tuning: one random frame per n // T segment, the tail unused -----------------------------------

def official_segments(n: int, picks: list[int], frames=T) -> list[int]:
    """ssv2.py, training (num_segment = num_frames, clip_len 1): n // frames frames per segment; segment k takes
    its frame `picks[k]` (the official randint(n // frames)); the frames after frames * (n // frames) are never
    taken. A clip shorter than `frames` takes frame 0 every time."""
    length = n // frames
    return [k * length + picks[k] for k in range(frames)] if length else [0] * frames


@pytest.mark.parametrize("n", [16, 17, 31, 32, 33, 47, 100, 257])
def test_segment_indices_are_the_official_segments(n):
    length = n // T
    rng = np.random.default_rng(n)
    for _ in range(20):
        picks = rng.integers(0, length, T).tolist()
        u = np.array([draw_for(p, length) for p in picks])
        assert segment_indices(n, u, T).tolist() == official_segments(n, picks)
    every_draw = np.linspace(0, 1, 200, endpoint=False)[:, None] * np.ones(T)
    taken = set(np.concatenate([segment_indices(n, u, T) for u in every_draw]).tolist())
    assert taken == set(range(T * length))  # every frame of the segments, and no tail frame


def test_segment_indices_of_a_clip_shorter_than_the_segments():
    # where the official code repeats frame 0, each of the 16 segments of n / 16 frames gives one of its frames
    for n in (1, 5, 10, 15):
        for u in np.random.default_rng(n).random((20, T)):
            got = segment_indices(n, u, T)
            k = np.arange(T)
            assert (k * n // T <= got).all() and (got < (k + 1) * n / T).all() and got.max() < n  # in segment k
            assert (np.diff(got) >= 0).all()
    assert official_segments(10, [0] * T) == [0] * T


# --- test views -------------------------------------------------------------------------------------------

def official_ssv2_test(n: int, views: int, frames=T) -> list[list[int]]:
    """ssv2.py, test: with segments of n / frames frames (not rounded), the segment midpoints and the segment
    starts, each truncated, padded with the last start up to frames * views indices, sorted; view k takes every
    second index from the k-th. Only 1 or 2 views give clips of `frames` frames."""
    tick = n / frames
    chosen = [int(tick / 2 + tick * x) for x in range(frames)] + [int(tick * x) for x in range(frames)]
    chosen += [chosen[-1]] * (frames * views - len(chosen))
    chosen.sort()
    return [chosen[k::2] for k in range(views)]


@pytest.mark.parametrize("n", CLIP_LENGTHS + [48, 250, 1001])
@pytest.mark.parametrize("views", [1, 2])
def test_segment_windows_are_the_official_ssv2_test_views(n, views):
    got = segment_windows(n, T, views).reshape(views, T)
    assert got.tolist() == official_ssv2_test(n, views)


def test_segment_windows_take_starts_then_midpoints():
    assert segment_windows(64, T, 2).reshape(2, T)[:, :3].tolist() == [[0, 4, 8], [2, 6, 10]]
    assert segment_windows(64, T, 4).reshape(4, T)[:, 1].tolist() == [4, 5, 6, 7]  # more views: quarter points


def official_kinetics_test(n: int, views: int, frames=T, rate=R) -> list[list[int]]:
    """kinetics.py, test: every rate-th frame, padded with the last to `frames`; view k starts at
    int(k * step), step = (length - frames) / (views - 1) (at least 0), and takes `frames` consecutive ones."""
    strided = list(range(0, n, rate))
    strided += [strided[-1]] * (frames - len(strided))
    step = max((len(strided) - frames) / (views - 1), 0)
    return [strided[int(k * step):int(k * step) + frames] for k in range(views)]


@pytest.mark.parametrize("n", CLIP_LENGTHS + [250, 1001])
@pytest.mark.parametrize("views", [2, 3, 5, 10])
def test_uniform_windows_are_the_official_kinetics_test_views(n, views):
    got = uniform_windows(n, T, R, views).reshape(views, T)
    assert got.tolist() == official_kinetics_test(n, views)


# --- test crops: short side resized first, then squares along the long side -----------------------------------

def official_test_crops(frames: torch.Tensor, size: int, crops: int) -> list[torch.Tensor]:
    """functional.py resize_clip then kinetics.py / ssv2.py test: (T, 3, H, W) frames resized bilinearly,
    without antialias (cv2 INTER_LINEAR), so that the short side is `size` and the long side
    int(size * long / short) (left alone when the short side is `size` already); crop k of the long side starts
    at int(k * (long - size) / (crops - 1)) of the resized frame."""
    height, width = frames.shape[-2:]
    if min(height, width) != size:
        if width < height:
            height, width = int(size * height / width), size
        else:
            height, width = size, int(size * width / height)
        frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    step = (max(height, width) - size) / (crops - 1)
    starts = [int(k * step) for k in range(crops)]
    if height >= width:
        return [frames[..., s:s + size, :] for s in starts]
    return [frames[..., :, s:s + size] for s in starts]


@pytest.mark.parametrize("height, width, size, crops", [
    (240, 320, 224, 3), (320, 240, 224, 3), (64, 80, 32, 3), (64, 80, 24, 4), (90, 50, 32, 2), (77, 77, 32, 3),
    (224, 400, 224, 3), (40, 60, 56, 3),  # short side already the crop size; smaller than the crop (upscaled)
])
def test_eval_crops_give_the_official_resized_crops(height, width, size, crops):
    frames = torch.from_numpy(np.random.default_rng(height * width).integers(0, 256, (2, 3, height, width))).float()
    boxes = eval_crop_boxes(height, width, size, crops)
    assert len(boxes) == crops
    for (y0, x0, h, w), expected in zip(boxes, official_test_crops(frames, size, crops)):
        assert 0 <= y0 and y0 + h <= height + 1e-6 and 0 <= x0 and x0 + w <= width + 1e-6
        got = resize_box(frames, np.array([y0, x0, y0 + h, x0 + w]), size, antialias=False)
        assert (got - expected).abs().max() < 0.01  # the same bilinear samples (float32 rounding apart)


def test_eval_crop_boxes_in_original_pixels():
    # 240 x 320 -> 224 x 298 (298.67 truncated): crops start at 0, 37, 74 of the resized frame
    boxes = eval_crop_boxes(240, 320, 224, 3)
    scale = 320 / 298
    assert boxes == [(0.0, k * 37 * scale, 224 * 240 / 224, 224 * scale) for k in range(3)]
    assert eval_crop_boxes(320, 240, 224, 1) == [(37 * scale, 0.0, 224 * scale, 240.0)]  # one crop: the middle


# --- the config picks the official rule of each mode -----------------------------------------------------------

def test_config_picks_the_official_rule_of_each_mode_and_sampler():
    u = np.random.default_rng(1).random(T)
    n = 300

    def indices(**changes):
        return frame_indices(DataConfig(**changes), n, u).tolist()

    assert indices(mode="pretrain") == random_window(n, u[0], T, R).tolist()
    assert indices(mode="finetune") == dense_window(n, u[0], T, R).tolist()
    assert indices(mode="eval", test_num_segment=5) == uniform_windows(n, T, R, 5).tolist()
    for mode in ("pretrain", "finetune"):
        assert indices(mode=mode, sampler="segment") == segment_indices(n, u, T).tolist()
    assert indices(mode="eval", sampler="segment", test_num_segment=2) == segment_windows(n, T, 2).tolist()
    cfg = DataConfig(mode="eval", test_num_segment=2, test_num_crop=3)
    corners, flips = crop_boxes(cfg, 240, 320, np.zeros((cfg.num_views, space_draws(cfg))))
    expected = [(y, x, y + h, x + w) for y, x, h, w in eval_crop_boxes(240, 320, 224, 3)] * 2
    assert np.allclose(corners, expected) and not flips.any()  # view v = clip v // 3, crop v % 3
