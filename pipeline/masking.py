"""Token masks for MAE pre-training and random erasing for fine-tuning: torch functions both loaders call.

Masks are drawn on the training device right after the DALI graph, not inside it: they do not depend on the
pixels, DALI has no argsort (an in-graph exact count needs an O(N^2) rank trick or a Python operator), one torch
function then serves both loaders, and the cost is invisible next to a training step: under 1 ms for 64 x 1568 tube
masks on 2 CPU cores (`bench masks --batch-size 64`), a few kernels on a GPU. The generator's
state is saved with the loader's state, so a resumed run draws the same masks.

Tokens are in (t, h, w) order: N = T' x H' x W' with T' = num_frames / tubelet_size, H' = W' = input / patch.
True = masked (hidden from the encoder).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat


def _exact_count(rows: int, size: int, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """(rows, size) bool with exactly `count` True per row, positions uniformly random."""
    noise = torch.rand(rows, size, generator=generator, device=device)
    chosen = noise.argsort(dim=1)[:, :count]
    return torch.zeros(rows, size, dtype=torch.bool, device=device).scatter_(1, chosen, True)


def tube_mask(rows: int, time_slots: int, grid: int, ratio: float, generator: torch.Generator,
              device=None) -> torch.Tensor:
    """VideoMAE tube masking: int(ratio * H'W') spatial positions per sample, the same in every time slot."""
    spatial = _exact_count(rows, grid * grid, int(ratio * grid * grid), generator, device)  # (B, H'W')
    return repeat(spatial, "b hw -> b (t hw)", t=time_slots)


def random_mask(rows: int, time_slots: int, grid: int, ratio: float, generator: torch.Generator,
                device=None) -> torch.Tensor:
    """MAE-ST masking: int(ratio * N) cubes chosen independently over space and time."""
    size = time_slots * grid * grid
    return _exact_count(rows, size, int(ratio * size), generator, device)


def frame_mask(rows: int, time_slots: int, grid: int, ratio: float, generator: torch.Generator,
               device=None) -> torch.Tensor:
    """Whole time slots masked: int(ratio * T') slots per sample (an ablation in the VideoMAE paper)."""
    slots = _exact_count(rows, time_slots, int(ratio * time_slots), generator, device)  # (B, T')
    return repeat(slots, "b t -> b (t hw)", hw=grid * grid)


def running_cell_mask(rows: int, time_slots: int, grid: int, generator: torch.Generator,
                      device=None) -> torch.Tensor:
    """VideoMAE V2 decoder mask: in every 2x2 cell two of four tokens, the pattern shifting by one position per
    time slot from a random phase per sample. True = not reconstructed by the decoder."""
    cell = torch.tensor([True, True, False, False], device=device)
    phase = torch.randint(0, 4, (rows, 1, 1), generator=generator, device=device)
    shift = phase + torch.arange(time_slots, device=device)[None, :, None]  # (B, T', 1)
    position = (torch.arange(4, device=device)[None, None, :] + shift) % 4  # V2: queue[(i + ptr) % 4]
    cells = rearrange(cell[position], "b t (i j) -> b t i j", i=2)  # (B, T', 2, 2)
    tiled = repeat(cells, "b t i j -> b t (h i) (w j)", h=grid // 2, w=grid // 2)
    return rearrange(tiled, "b t h w -> b (t h w)")


MASKS = {"tube": tube_mask, "random": random_mask, "frame": frame_mask}


def draw_masks(cfg, rows: int, generator: torch.Generator, device=None) -> dict[str, torch.Tensor]:
    """The batch's mask entries for a `DataConfig`: {'mask'} and, with V2 dual masking, {'decoder_mask'}."""
    time_slots = cfg.num_frames // cfg.tubelet_size
    out = {"mask": MASKS[cfg.mask_type](rows, time_slots, cfg.grid_size, cfg.mask_ratio, generator, device)}
    if cfg.decoder_mask == "running_cell":
        out["decoder_mask"] = running_cell_mask(rows, time_slots, cfg.grid_size, generator, device)
    return out


def random_erase(video: torch.Tensor, prob: float, generator: torch.Generator, attempts: int = 10,
                 area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 1 / 0.3)
                 ) -> torch.Tensor:
    """Random erasing in 'pixel' mode, each frame on its own as in VideoMAE fine-tuning: with probability `prob`
    a box of `area` fraction and log-uniform `aspect` is filled with standard normal noise.

    video: (B, C, T, H, W) normalised floats; returns a new tensor.
    """
    b, _, t, h, w = video.shape
    device = video.device
    draws = torch.rand(b, t, attempts, 5, generator=generator, device=device)
    target = h * w * (area[0] + draws[..., 0] * (area[1] - area[0]))
    log_low, log_high = torch.log(torch.tensor(aspect, device=device))
    ratio = torch.exp(log_low + draws[..., 1] * (log_high - log_low))
    box_h = torch.round(torch.sqrt(target * ratio)).long()
    box_w = torch.round(torch.sqrt(target / ratio)).long()
    fits = (box_h < h) & (box_w < w)  # (B, T, attempts)
    first = fits.float().argmax(dim=-1, keepdim=True)  # first attempt that fits
    box_h, box_w = box_h.gather(-1, first)[..., 0], box_w.gather(-1, first)[..., 0]
    top = (draws[..., 2].gather(-1, first)[..., 0] * (h - box_h + 1)).long()
    left = (draws[..., 3].gather(-1, first)[..., 0] * (w - box_w + 1)).long()
    erase = fits.any(-1) & (torch.rand(b, t, generator=generator, device=device) < prob)  # (B, T)
    rows = torch.arange(h, device=device)[None, None, :, None]
    cols = torch.arange(w, device=device)[None, None, None, :]
    inside = ((rows >= top[..., None, None]) & (rows < (top + box_h)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + box_w)[..., None, None]))
    inside &= erase[..., None, None]  # (B, T, H, W)
    noise = torch.randn(video.shape, generator=generator, device=device, dtype=video.dtype)
    return torch.where(inside[:, None], noise, video)
