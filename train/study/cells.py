"""The design of the study: its two sizes, the ways to start a fine-tuning, the masks, and the cells (table rows)."""

from __future__ import annotations

from dataclasses import dataclass

# `default` is the study the README shows (about 90 minutes on a 2-core CPU, two runs at a time); `quick` checks the
# plumbing in a few minutes (its figures mean nothing). Fine-tuning steps per label fraction: the same for every
# start, enough that fine-tuning from scratch has stopped rising on the validation clips (results.json `curves`).
SIZES = {
    "default": dict(digits=None, clips_per_digit=2, fractions=(0.01, 0.05, 0.1), seeds=(0, 1, 2),
                    pretrain_steps=2000, finetune_steps={0.01: 1000, 0.05: 2000, 0.1: 2000}, motion_steps=1000,
                    evaluations=10),
    "quick": dict(digits=120, clips_per_digit=2, fractions=(0.05, 0.1), seeds=(0, 1),
                  pretrain_steps=2, finetune_steps={0.05: 2, 0.1: 2}, motion_steps=2, evaluations=1),
}
ABLATION_FRACTION = 0.05  # the masking ablations and the motion-only row use this label fraction
DEFAULT_JOBS = 2  # runs at a time
DEFAULT_THREADS = 1  # torch threads per run
MAIN_MASK = ("tube", 0.9)
ABLATION_MASKS = (("tube", 0.75), ("random", 0.9))
# how each way to start the fine-tuning is drawn in the plots: colour and label
STARTS = {"pretrained": ("tab:blue", "pre-trained, then fine-tuned"),
          "untrained": ("tab:purple", "untrained control (same starting weights)"),
          "scratch": ("tab:orange", "from scratch (the classifier's own initialisation)")}


@dataclass(frozen=True)
class Cell:
    """One table row: a way to start the fine-tuning, at one label fraction, for one labelling of the clips."""
    start: str  # "pretrained", "untrained" (the pre-training model's initial weights) or "scratch"
    fraction: float
    mask: tuple[str, float] | None = None  # the pre-training mask (type, ratio), for start == "pretrained"
    label: str = "digit"  # what the classifier tells: the digit, or the direction of the motion

    @property
    def name(self) -> str:
        mask = f"-{self.mask[0]}-{self.mask[1]}" if self.mask else ""
        return f"{self.label}-{fraction_name(self.fraction)}-{self.start}{mask}"


def fraction_name(fraction: float) -> str:
    """0.1 -> '010': a label fraction in folder names."""
    return f"{round(100 * fraction):03d}"


def study_cells(fractions: tuple[float, ...]) -> list[Cell]:
    """Pre-trained (tube 0.9), the untrained control and scratch at every fraction; the other masks, and the
    motion-only task, at ABLATION_FRACTION."""
    cells = [Cell(start, f, MAIN_MASK if start == "pretrained" else None)
             for f in fractions for start in STARTS]
    cells += [Cell("pretrained", ABLATION_FRACTION, mask) for mask in ABLATION_MASKS]
    return cells + [Cell(start, ABLATION_FRACTION, MAIN_MASK if start == "pretrained" else None, "direction")
                    for start in STARTS]


def pretrain_masks() -> tuple[tuple[str, float], ...]:
    return (MAIN_MASK, *ABLATION_MASKS)


def pretrain_name(mask: tuple[str, float], seed: int) -> str:
    return f"pretrain-{mask[0]}-{mask[1]}-s{seed}"
