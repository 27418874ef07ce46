"""Multi-view evaluation across two ranks, for test_evaluate.py beside it: the same videos on both ranks, their views
split between them (rank 0 views 0 and 1, rank 1 view 2 of every video), in different numbers of batches.

    torchrun --standalone --nproc-per-node 2 tests/train/evaluate_worker.py OUT_DIR

writes OUT_DIR/rank<r>.json: the Predictions of evaluate() for a plain model and for the same model under FSDP2
(whose forward all-gathers weights, so a rank that stopped early would leave the other waiting), and the error
each rank raised when rank 1 alone meets an unlabelled clip.
"""

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

NUM_VIDEOS, NUM_VIEWS, NUM_CLASSES = 5, 3, 4
VIEW_SHAPE = (3, 2, 4, 4)  # C x T x H x W
RANK_VIEWS = {0: [0, 1], 1: [2]}
RANK_BATCH = {0: 3, 1: 2}  # rows per batch: rank 0 has 10 rows in 4 batches, rank 1 has 5 rows in 3
UNLABELLED = "val-00000003"  # on rank 1 only, in the error run


def all_views() -> tuple[list[str], list[int], torch.Tensor]:
    """keys, labels and the views (NUM_VIDEOS x NUM_VIEWS x C x T x H x W) of the test videos."""
    generator = torch.Generator().manual_seed(7)
    keys = [f"val-{i:08d}" for i in range(NUM_VIDEOS)]
    labels = [i % NUM_CLASSES for i in range(NUM_VIDEOS)]
    return keys, labels, torch.randn(NUM_VIDEOS, NUM_VIEWS, *VIEW_SHAPE, generator=generator)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    width = torch.Size(VIEW_SHAPE).numel()
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.GELU(), nn.Linear(16, NUM_CLASSES))


def loader_of(views: list[int], batch_size: int, unlabelled: str | None = None) -> list[dict]:
    """Eval batches (ARCHITECTURE.md section 2) holding the given views of every video, video after video."""
    keys, labels, video = all_views()
    rows = [(key, -1 if key == unlabelled else label, view, video[i, view])
            for i, (key, label) in enumerate(zip(keys, labels)) for view in views]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batches.append({"video": torch.stack([row[3] for row in chunk]),
                        "label": torch.tensor([row[1] for row in chunk], dtype=torch.int64),
                        "key": [row[0] for row in chunk],
                        "view": torch.tensor([row[2] for row in chunk], dtype=torch.int64)})
    return batches


def as_json(pred) -> dict:
    return {"keys": pred.keys, "labels": pred.labels.tolist(), "probs": pred.probs.tolist(),
            "views": pred.views.tolist()}


def sharded_model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def main(out_dir: Path) -> None:
    faulthandler.dump_traceback_later(90, exit=True)  # a hang prints every rank's stack and fails the test
    from train.distributed import setup, teardown
    from train.evaluate import evaluate

    env = setup("cpu")
    loader = loader_of(RANK_VIEWS[env.rank], RANK_BATCH[env.rank])
    result = {"batches": len(loader),
              "plain": as_json(evaluate(tiny_model(), loader, env, expected_views=NUM_VIEWS)),
              "fsdp": as_json(evaluate(sharded_model(), loader, env, expected_views=NUM_VIEWS))}
    bad = loader_of(RANK_VIEWS[env.rank], RANK_BATCH[env.rank], UNLABELLED if env.rank == 1 else None)
    try:
        evaluate(tiny_model(), bad, env)
        result["error"] = None
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(result))
    teardown(env)
    # FSDP's device mesh keeps the gloo group and its worker threads alive after destroy_process_group; a worker
    # thread that frees the last collective's tensors while the interpreter shuts down aborts the process
    # ("terminate called without an active exception", the race of pytorch/pytorch PR 179291). The results are
    # written: leave without the interpreter's shutdown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
