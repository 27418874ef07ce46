"""This process's rank and the world size, from torch.distributed when it is initialised: both loaders split the
shards by them. Kept apart from the loaders so that importing one loader never imports the other (or DALI)."""

from __future__ import annotations

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
