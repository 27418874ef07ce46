"""The DALI loader on JPEG-frame shards with nvJPEG ('mixed' decoding) and GPU augmentation: run where CUDA is
present. Shards as in test_loader_video_shards_gpu.py: built here with PyAV, or prebuilt under $TUBEMAE_TEST_SHARDS/jpeg
(`.ci/gpu-checks` builds them: `shard-videos VIDEOS OUT/jpeg --frames jpeg`)."""

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from batches import take, with_a_resume

from pipeline.config import DataConfig
from pipeline.loader import DaliLoader

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("TUBEMAE_TEST_SHARDS")
    if prebuilt:
        root = Path(prebuilt) / "jpeg"
        if not (root / "manifest.json").is_file():
            pytest.fail(f"TUBEMAE_TEST_SHARDS: no shards in {root} (see this file's docstring)")
        return root
    from shard_tools import cli
    from shard_tools.synthetic import make_collection

    root = tmp_path_factory.mktemp("gpu_frames")
    make_collection(root / "videos", num_classes=3, clips_per_class=4, num_frames=40, size=(144, 176), seed=0)
    assert cli.main([str(root / "videos"), str(root / "jpeg"), "--frames", "jpeg", "--workers", "4"]) == 0
    return root / "jpeg"


def config(root: Path, **changes) -> DataConfig:
    base = dict(shards=str(root), split="train", num_frames=8, sampling_rate=2, input_size=32, patch_size=8,
                batch_size=4, num_threads=4, shuffle_buffer=8, mask_ratio=0.75)
    return DataConfig(**{**base, **changes})


def test_nvjpeg_matches_cpu_decoding(jpeg):
    cfg = config(jpeg, mode="eval", test_num_segment=2, test_num_crop=3)
    gpu = list(DaliLoader(dataclasses.replace(cfg, decode_device="gpu")))
    cpu = list(DaliLoader(dataclasses.replace(cfg, decode_device="cpu")))  # CPU decode, GPU resize
    assert len(gpu) == len(cpu) > 0
    for g, c in zip(gpu, cpu):
        assert g["video"].is_cuda and c["video"].is_cuda and g["key"] == c["key"]
        assert (g["video"] - c["video"]).abs().mean() < 0.05  # chroma upsampling may differ by a level or two


@pytest.mark.parametrize("load", [0.0, 1.0])
def test_window_decoding_on_the_gpu_gives_the_pixels_of_whole_frames(jpeg, load):
    cfg = config(jpeg, num_sample=2, flip=True, decode_device="gpu", hw_decoder_load=load)
    window = take(DaliLoader(cfg), 3)
    whole = take(DaliLoader(dataclasses.replace(cfg, roi_decode=False)), 3)
    for a, b in zip(window, whole):
        assert a["key"] == b["key"] and (a["video"] - b["video"]).abs().max() < 0.05


def test_exact_resume_and_finetune_graph_on_the_gpu(jpeg):
    cfg = config(jpeg, mode="finetune", rand_augment_n=2, erase_prob=0.5, dtype="bfloat16", flip=True,
                 decode_pipelines=2)
    for x, y in zip(*with_a_resume(lambda: DaliLoader(cfg), 5, 2)):
        assert x["video"].is_cuda and x["video"].dtype == torch.bfloat16
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])
