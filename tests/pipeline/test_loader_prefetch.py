"""The loader's prefetch thread: it runs ahead by a bounded number of batches and ends when its loader is left
behind mid-epoch, or when the epoch is over."""

import gc
import threading
import time

from synthetic_shards import synthetic_shards

import pytest

from pipeline.config import DataConfig
from pipeline.loader import DaliLoader, batches_ahead


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic_shards(tmp_path_factory.mktemp("feeder"), num_classes=2, clips_per_class=4, num_frames=16)


def feeders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tubemae-feeder"]


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_the_prefetch_thread_runs_a_bounded_way_ahead_and_ends_with_its_loader(shards):
    cfg = DataConfig(shards=str(shards), split="train", num_frames=4, sampling_rate=2, input_size=32, patch_size=8,
                     batch_size=1, num_threads=1, shuffle_buffer=1, prefetch=1)
    loader = DaliLoader(cfg)
    assert not feeders()
    it = iter(loader)
    next(it)
    assert len(feeders()) == 1
    # it stops reading once prefetch batches wait in its queue and prefetch per decode graph are scheduled
    ahead = batches_ahead(cfg)
    assert wait_until(lambda: loader._reader_pos == 1 + ahead) and ahead < len(loader) - 1
    time.sleep(0.3)
    assert loader._reader_pos == 1 + ahead
    del it, loader  # left behind mid-epoch: collected, and its thread ends
    gc.collect()
    assert wait_until(lambda: not feeders())
    finished = DaliLoader(cfg)
    assert len(list(finished)) == 8 and wait_until(lambda: not feeders())  # the epoch's end ends it
