"""Which frames and which pixels of a clip go into a training sample: the one definition both loaders call.

Every function here is deterministic: randomness comes in as uniform draws in [0, 1), made by DALI's random
operators in the DALI graph (so pipeline checkpoints restore them) and by a numpy Generator in the reference
loader. Boxes are (y0, x0, height, width) in pixels of the decoded frame (fractional for the eval views).

Each mode follows the official VideoMAE datasets (MCG-NJU/VideoMAE kinetics.py, ssv2.py), so fine-tuned
accuracies compare with the paper's:

| sampler | pretrain | finetune | eval |
| --- | --- | --- | --- |
| random | `random_window`: stride r | `dense_window`: linspace over T r frames | `uniform_windows`: stride r |
| segment | `segment_indices` | `segment_indices`: random frame of each n // T | `segment_windows`: starts, midpoints |

Eval crops (`eval_crop_boxes`): short side resized to input_size without antialias, squares along the long side.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.config import DataConfig

RRC_ATTEMPTS = 10
SPACE_DRAWS = 1 + 4 * RRC_ATTEMPTS  # per view: flip, then 4 draws per random-resized-crop attempt


def space_draws(cfg: DataConfig) -> int:
    """Uniform draws per view: flip and crop, then in fine-tuning 2 per RandAugment op (which op, which sign)."""
    return SPACE_DRAWS + 2 * cfg.rand_augment_ops

# Offsets of the multi-scale crop, in quarters of the slack (width - crop, height - crop): the corners, the
# centre, the edge midpoints and the four inner quarter points.
FIXED_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                 (1, 1), (3, 1), (1, 3), (3, 3))


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2^31) for one consumer of randomness, e.g. (config seed, rank, purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] % 2 ** 31)


def _pick(u: float, n: int) -> int:
    """Index in [0, n) from a uniform draw in [0, 1)."""
    return min(int(u * n), n - 1)


# --- time -------------------------------------------------------------------------------------------------

def evenly_spaced(slack: int, count: int) -> list[int]:
    """`count` offsets from 0 to `slack` as the official test views take them, int(k * (slack / (count - 1)));
    one view takes the middle (the official code divides by zero there)."""
    if count == 1:
        return [slack // 2]
    step = slack / (count - 1)
    return [int(k * step) for k in range(count)]


def random_window(num_available: int, u: float, num_frames: int, sampling_rate: int) -> np.ndarray:
    """`num_frames` indices `sampling_rate` apart from a random start (VideoMAE pre-training sampling).

    The start is uniform over the positions where the whole span `num_frames * sampling_rate` fits. A clip
    shorter than that starts at 0 and repeats the last frame it reaches on the stride grid.
    """
    num_available = max(num_available, 1)
    span = num_frames * sampling_rate
    start = _pick(u, max(num_available - span + 1, 1))
    last = start + (num_available - 1 - start) // sampling_rate * sampling_rate
    return np.minimum(start + sampling_rate * np.arange(num_frames), last).astype(np.int32)


def dense_window(num_available: int, u: float, num_frames: int, sampling_rate: int) -> np.ndarray:
    """`num_frames` points of linspace(start, start + span, num_frames), span = num_frames * sampling_rate,
    truncated, the end point clipped to start + span - 1 (VideoMAE fine-tuning on Kinetics, UCF101, HMDB51:
    about, not exactly, `sampling_rate` apart). The start is uniform in [0, n - span - 1].

    A clip of at most `span` frames: n // sampling_rate points of linspace(0, n), the rest n, all clipped to
    the last frame n - 1 (so a clip shorter than `sampling_rate` frames gives its last frame only).
    """
    num_available = max(num_available, 1)
    span = num_frames * sampling_rate
    if num_available <= span:
        spread = np.linspace(0, num_available, num_available // sampling_rate)
        points = np.concatenate([spread, np.full(num_frames - len(spread), num_available)])
        return np.clip(points, 0, num_available - 1).astype(np.int32)
    start = _pick(u, num_available - span)
    points = np.linspace(start, start + span, num_frames)
    return np.clip(points, start, start + span - 1).astype(np.int32)


def segment_indices(num_available: int, u: np.ndarray, num_frames: int) -> np.ndarray:
    """One random frame per segment (TSN sampling, VideoMAE fine-tuning on SSv2): segment k holds frames
    [k L, (k + 1) L - 1] with L = n // num_frames; the last n - num_frames L frames are never taken.

    A clip shorter than `num_frames` has segments of n / num_frames frames: index int(n (k + u_k) / T), where
    the official code takes frame 0 every time.
    """
    num_available = max(num_available, 1)
    u = np.asarray(u[:num_frames])  # (num_frames,)
    length = num_available // num_frames
    if length:
        firsts = np.arange(num_frames) * length  # (num_frames,) each segment's first frame
        return (firsts + np.minimum((u * length).astype(np.int64), length - 1)).astype(np.int32)
    points = (np.arange(num_frames) + u) * num_available / num_frames
    return np.minimum(points.astype(np.int64), num_available - 1).astype(np.int32)


def uniform_windows(num_available: int, num_frames: int, sampling_rate: int, num_clips: int) -> np.ndarray:
    """`num_clips` windows evenly spaced over the clip, concatenated: (num_clips * num_frames,) indices.

    Each window is `num_frames` consecutive entries of the strided sequence 0, r, 2r, ... padded with its last
    entry to `num_frames`, starting at `evenly_spaced` offsets (the official Kinetics test views).
    """
    num_available = max(num_available, 1)
    strided = np.arange(0, num_available, sampling_rate)
    slack = max(len(strided) - num_frames, 0)
    windows = [strided[np.minimum(s + np.arange(num_frames), len(strided) - 1)]
               for s in evenly_spaced(slack, num_clips)]
    return np.concatenate(windows).astype(np.int32)


def segment_windows(num_available: int, num_frames: int, num_clips: int) -> np.ndarray:
    """Test views of the segment sampler: view k of K takes the point k / K of each of `num_frames` equal
    segments of n / num_frames frames, int(n (t K + k) / (T K)): segment starts for K = 1, then midpoints for
    K = 2 (the official SSv2 test, which offers no K > 2). (K * num_frames,) indices, view by view.
    """
    num_available = max(num_available, 1)
    points = np.arange(num_frames)[None, :] * num_clips + np.arange(num_clips)[:, None]  # (K, T), in n / (T K)
    return (points * num_available // (num_frames * num_clips)).reshape(-1).astype(np.int32)


# --- space ------------------------------------------------------------------------------------------------

def multiscale_crop_box(height: int, width: int, u_size: float, u_offset: float, input_size: int,
                        scales: tuple[float, ...], max_distort: int) -> tuple[int, int, int, int]:
    """VideoMAE's multi-scale crop: side lengths from `scales` of the short side (within 3 px of `input_size`
    snaps to it), height and width scale at most `max_distort` steps apart, placed at one of 13 fixed offsets.
    """
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    sizes = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [(sizes[i], sizes[j]) for i in range(len(sizes)) for j in range(len(sizes))
             if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[_pick(u_size, len(pairs))]
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    step_x, step_y = (width - crop_w) // 4, (height - crop_h) // 4
    qx, qy = FIXED_OFFSETS[_pick(u_offset, len(FIXED_OFFSETS))]
    return qy * step_y, qx * step_x, crop_h, crop_w


def random_resized_box(height: int, width: int, u: np.ndarray, scale: tuple[float, float],
                       ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """Random resized crop (Inception style): area fraction in `scale`, aspect ratio log-uniform in `ratio`,
    up to 10 attempts (4 draws each), then a centre crop with the ratio clamped."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(RRC_ATTEMPTS):
        u_area, u_ratio, u_y, u_x = u[4 * attempt: 4 * attempt + 4]
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_low + u_ratio * (log_high - log_low))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _pick(u_y, height - h + 1), _pick(u_x, width - w + 1), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def eval_crop_boxes(height: int, width: int, input_size: int, num_crops: int) -> list[tuple[float, ...]]:
    """The official test views of a frame: resized (bilinear, no antialias) to short side `input_size` and long
    side int(input_size * long / short), then `num_crops` squares of `input_size` along the long side at
    `evenly_spaced` offsets. Returned as the boxes (y0, x0, h, w) of the original frame those squares cover
    (fractional), so a ROI resize of each box to `input_size` without antialias gives the same pixels.
    """
    short, long = min(height, width), max(height, width)
    resized_long = input_size * long // short
    scale_long, scale_short = long / resized_long, short / input_size  # original pixels per resized pixel
    boxes = []
    for start in evenly_spaced(resized_long - input_size, num_crops):
        along, extent = start * scale_long, input_size * scale_long
        boxes.append((along, 0.0, extent, input_size * scale_short) if height >= width
                     else (0.0, along, input_size * scale_short, extent))
    return boxes


def resize_antialias(cfg: DataConfig) -> bool:
    """Whether crops are resized with antialiasing: the official pre-training resizes with PIL (antialiased),
    fine-tuning with torch `interpolate` and the test with cv2 linear (neither antialiased)."""
    return cfg.mode == "pretrain"


def rand_augment_choices(u: np.ndarray, num_ops: int) -> np.ndarray:
    """RandAugment's random choices from 2 draws per op: (n, 2) int32 rows of (op index in [0, num_ops),
    negate the magnitude 0/1). u: (2 n,) uniform draws."""
    u = np.asarray(u).reshape(-1, 2)
    ops = np.minimum((u[:, 0] * num_ops).astype(np.int64), num_ops - 1)
    return np.stack([ops, u[:, 1] < 0.5], axis=1).astype(np.int32)


# --- per sample, from the config ---------------------------------------------------------------------------

def frame_indices(cfg: DataConfig, num_available: int, u_time: np.ndarray) -> np.ndarray:
    """Frame indices to decode for one clip: (num_frames,), or (test_num_segment * num_frames,) in eval, by
    sampler and mode as the module's table says."""
    if cfg.mode == "eval":
        if cfg.sampler == "segment":
            return segment_windows(num_available, cfg.num_frames, cfg.test_num_segment)
        return uniform_windows(num_available, cfg.num_frames, cfg.sampling_rate, cfg.test_num_segment)
    if cfg.sampler == "segment":
        return segment_indices(num_available, u_time, cfg.num_frames)
    window = random_window if cfg.mode == "pretrain" else dense_window
    return window(num_available, float(u_time[0]), cfg.num_frames, cfg.sampling_rate)


def crop_boxes(cfg: DataConfig, height: int, width: int, u_space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes (num_views, 4) as (y0, x0, y1, x1) float32 and horizontal flips (num_views,) int32.

    `u_space` is (num_views, space_draws(cfg)). In eval, view v = temporal clip v // test_num_crop, crop
    v % test_num_crop.
    """
    if cfg.mode == "eval":
        boxes = eval_crop_boxes(height, width, cfg.input_size, cfg.test_num_crop) * cfg.test_num_segment
        flips = [0] * len(boxes)
    else:
        boxes, flips = [], []
        for u in u_space:
            if cfg.mode == "pretrain":
                boxes.append(multiscale_crop_box(height, width, u[1], u[2], cfg.input_size, cfg.scales,
                                                 cfg.max_distort))
            else:
                boxes.append(random_resized_box(height, width, u[1:], cfg.rrc_scale, cfg.rrc_ratio))
            flips.append(int(cfg.flip and u[0] < 0.5))
    corners = np.array([(y, x, y + h, x + w) for y, x, h, w in boxes], dtype=np.float32)
    return corners, np.array(flips, dtype=np.int32)


def augment_choices(cfg: DataConfig, u_space: np.ndarray, num_ops: int) -> np.ndarray:
    """(num_views, rand_augment_n, 2) int32: each view's RandAugment ops and signs (fine-tuning)."""
    return np.stack([rand_augment_choices(u[SPACE_DRAWS:space_draws(cfg)], num_ops) for u in u_space])
