import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present (see ../shared/GPU_CHECKS.md)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
