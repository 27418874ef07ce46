"""Mask generators and random erasing (pipeline/masking.py), shared by both loaders."""

import pytest
import torch
from einops import rearrange

from pipeline.config import DataConfig
from pipeline.masking import draw_masks, frame_mask, random_erase, random_mask, running_cell_mask, tube_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ratio", [0.9, 0.75, 0.5])
def test_tube_mask_exact_count_repeated_over_time(ratio):
    mask = tube_mask(16, time_slots=8, grid=14, ratio=ratio, generator=gen())
    assert mask.shape == (16, 8 * 196) and mask.dtype == torch.bool
    per_slot = rearrange(mask, "b (t hw) -> b t hw", t=8)
    assert (per_slot.sum(-1) == int(ratio * 196)).all()  # 176 at 0.9, 147 at 0.75
    assert (per_slot == per_slot[:, :1]).all()  # the same spatial mask in every time slot
    assert not (per_slot[0, 0] == per_slot[1, 0]).all()  # each sample draws its own


def test_tube_mask_count_rounds_down_as_videomae():
    # VideoMAE masks int(ratio * H'W') positions: 0.75 * 49 = 36.75 -> 36 (round() would give 37)
    per_slot = rearrange(tube_mask(8, time_slots=2, grid=7, ratio=0.75, generator=gen()), "b (t hw) -> b t hw", t=2)
    assert (per_slot.sum(-1) == 36).all()


def test_random_and_frame_masks_have_exact_counts_and_their_structure():
    mask = random_mask(8, 8, 14, 0.9, gen())
    assert (mask.sum(1) == int(0.9 * 1568)).all()
    per_slot = rearrange(mask, "b (t hw) -> b t hw", t=8)
    assert not (per_slot == per_slot[:, :1]).all()  # not tubes
    mask = rearrange(frame_mask(8, 8, 14, 0.5, gen()), "b (t hw) -> b t hw", t=8)
    assert ((mask.all(-1) | ~mask.any(-1))).all()  # whole time slots
    assert (mask.all(-1).sum(-1) == 4).all()


def test_masks_are_uniform_over_positions():
    mask = tube_mask(4000, 1, 4, 0.5, gen())
    rate = mask.float().mean(0)
    assert ((rate - 0.5).abs() < 0.04).all()


def test_running_cell_mask_keeps_two_of_each_cell_and_shifts_in_time():
    mask = running_cell_mask(6, time_slots=4, grid=4, generator=gen())
    cells = rearrange(mask, "b (t h i w j) -> b t (h w) (i j)", t=4, h=2, i=2, w=2, j=2)
    assert (cells.sum(-1) == 2).all()
    assert (cells == cells[:, :, :1]).all()  # the same pattern in every cell of a slot
    pattern = cells[:, :, 0]  # (B, T, 4)
    assert (pattern[:, 1:] == pattern[:, :-1].roll(-1, dims=-1)).all()  # shifts by one position per slot
    assert len({tuple(p.tolist()) for p in pattern[:, 0]}) > 1  # random phase per sample
    # VideoMAE V2's Cell: queue (1, 1, 0, 0), slot t of a sample with pointer p shows queue[(i + p + t + 1) % 4]
    queue = torch.tensor([True, True, False, False])
    sequences = [torch.stack([queue[(torch.arange(4) + p + t + 1) % 4] for t in range(4)]) for p in range(4)]
    assert all(any(torch.equal(row, seq) for seq in sequences) for row in pattern)


def test_draw_masks_from_config_is_seeded():
    cfg = DataConfig(num_frames=4, input_size=32, patch_size=8, mask_ratio=0.75, decoder_mask="running_cell")
    a, b = draw_masks(cfg, 3, gen(1)), draw_masks(cfg, 3, gen(1))
    assert set(a) == {"mask", "decoder_mask"} and a["mask"].shape == (3, cfg.num_tokens)
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["decoder_mask"], b["decoder_mask"])
    assert not torch.equal(a["mask"], draw_masks(cfg, 3, gen(2))["mask"])


def test_random_erasing_erases_boxes_per_frame_with_the_given_probability():
    video = torch.full((64, 3, 4, 32, 32), 5.0)
    out = random_erase(video, 0.25, gen())
    changed = (out != 5.0).any(1)  # (B, T, H, W)
    erased = changed.any(-1).any(-1)
    assert 0.15 < erased.float().mean() < 0.35
    for b, t in erased.nonzero()[:20]:  # each erased region is one box filling between 2% and 1/3 of the frame
        rows, cols = changed[b, t].any(1).nonzero(), changed[b, t].any(0).nonzero()
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.015 * 1024 <= area <= 1024 / 3 + 40
    assert torch.equal(video, torch.full_like(video, 5.0))  # the input is left alone
    assert torch.equal(random_erase(video, 0.0, gen()), video)
