"""The design of the study: its two sizes, the ways to start a fine-tuning, the masks, and the cells (table rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# the two sizes: `default` is the study the README shows (about 70 minutes on a 2-core CPU), `quick` checks the
# plumbing in under a minute (its figures mean nothing)
SIZES = {
    "default": dict(train_per_class=200, test_per_class=50, frames=32, fractions=(0.1, 1.0), seeds=3,
                    pretrain_steps=2000, finetune_steps=1000),
    "quick": dict(train_per_class=4, test_per_class=2, frames=20, fractions=(0.5, 1.0), seeds=3,
                  pretrain_steps=2, finetune_steps=2),
}
DEFAULT_THREADS = 2
# how each way to start the fine-tuning is drawn in the plots: colour and label
STARTS = {"pretrained": ("tab:blue", "pretrained"), "untrained": ("tab:purple", "untrained pre-training model"),
          "scratch": ("tab:orange", "from scratch")}
MASKS = (("tube", 0.9), ("random", 0.9), ("frame", 0.9), ("tube", 0.5), ("tube", 0.75))  # first: the main cells


@dataclass(frozen=True)
class Cell:
    """One table row: a way to start the fine-tuning (or the single-frame baseline) at one label fraction."""
    start: str  # "pretrained", "untrained" (the pre-training model's initial weights), "scratch" or "single-frame"
    fraction: float
    mask_type: str | None = None  # pre-training mask, for start == "pretrained"
    mask_ratio: float | None = None

    @property
    def name(self) -> str:
        pct = f"fraction-{fraction_name(self.fraction)}"
        return f"{self.start}-{self.mask_type}-{self.mask_ratio}-{pct}" if self.start == "pretrained" else \
            f"{self.start}-{pct}"


def fraction_name(fraction: float) -> str:
    """0.1 -> '010': a label fraction in folder names."""
    return f"{round(100 * fraction):03d}"


def study_cells(fractions: tuple[float, ...]) -> list[Cell]:
    """Pre-trained (tube 0.9), the untrained control and scratch at every fraction, the other masks at the
    smallest, the single-frame baseline at fraction 1."""
    tube, ratio = MASKS[0]
    cells = [c for f in fractions for c in (Cell("pretrained", f, tube, ratio), Cell("untrained", f),
                                            Cell("scratch", f))]
    cells += [Cell("pretrained", min(fractions), kind, r) for kind, r in MASKS[1:]]
    return cells + [Cell("single-frame", 1.0)]


def pretrain_name(mask_type: str, mask_ratio: float, seed: int) -> str:
    return f"pretrain-{mask_type}-{mask_ratio}-s{seed}"


def cell_shards(out: Path, cell: Cell) -> Path:
    name = "still" if cell.start == "single-frame" else f"fraction-{fraction_name(cell.fraction)}"
    return out / "shards" / name
