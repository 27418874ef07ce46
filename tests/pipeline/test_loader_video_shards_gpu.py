"""The DALI graph with NVDEC ('mixed' decoding) and GPU augmentation: run where CUDA is present.

Shards come from `shard-videos` (run here when PyAV is installed), or, on a GPU machine without PyAV, from
folders built beforehand and named by TUBEMAE_TEST_SHARDS. Clips are 176x144: NVDEC refuses HEVC under 144x144
and VP9 under 128x128 (pipeline/shards.py NVDEC_MIN_SIDE).

    .venv/bin/shard-videos synth data/gpu_videos --classes 3 --clips-per-class 4 --frames 40 --height 144 --width 176
    for c in vp9 h264 hevc; do .venv/bin/shard-videos data/gpu_videos data/gpu_shards/$c --codec $c; done
    TUBEMAE_TEST_SHARDS=data/gpu_shards pytest -m gpu tests/pipeline/test_loader_video_shards_gpu.py
"""

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from batches import with_a_resume
from einops import rearrange

from pipeline.config import DataConfig
from pipeline.loader import DaliLoader

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """codec -> shard folder (split 'train')."""
    prebuilt = os.environ.get("TUBEMAE_TEST_SHARDS")
    if prebuilt:
        folders = {codec: Path(prebuilt) / codec for codec in ("vp9", "h264", "hevc")}
        missing = [str(p) for p in folders.values() if not (p / "manifest.json").is_file()]
        if missing:
            pytest.fail(f"TUBEMAE_TEST_SHARDS: no shards in {', '.join(missing)} (see this file's docstring)")
        return folders
    try:
        from shard_tools import cli
        from shard_tools.synthetic import make_collection
    except ImportError as error:
        pytest.fail(f"cannot build test shards here ({error}); build them where PyAV is installed and set "
                    f"TUBEMAE_TEST_SHARDS (see this file's docstring)")
    root = tmp_path_factory.mktemp("gpu_shards")
    make_collection(root / "videos", num_classes=3, clips_per_class=4, num_frames=40, size=(144, 176), seed=0)
    folders = {}
    for codec in ("vp9", "h264", "hevc"):
        assert cli.main([str(root / "videos"), str(root / codec), "--codec", codec, "--workers", "4"]) in (0, None)
        folders[codec] = root / codec
    return folders


def num_samples(root: Path) -> int:
    return sum(int(p.read_text().split()[1]) for p in root.glob("train-*.idx"))


def config(root: Path, **changes) -> DataConfig:
    base = dict(shards=str(root), split="train", num_frames=8, sampling_rate=2, input_size=32, patch_size=8,
                batch_size=4, num_threads=4, shuffle_buffer=8, mask_ratio=0.75)
    return DataConfig(**{**base, **changes})


def test_nvdec_matches_cpu_decoding_on_vp9(shards):
    cfg = config(shards["vp9"], mode="eval", test_num_segment=2, test_num_crop=3)
    gpu = list(DaliLoader(dataclasses.replace(cfg, decode_device="gpu")))
    cpu = list(DaliLoader(dataclasses.replace(cfg, decode_device="cpu")))  # CPU decode, GPU resize
    assert len(gpu) == len(cpu) > 0
    for g, c in zip(gpu, cpu):
        assert g["video"].is_cuda and c["video"].is_cuda and g["view"].is_cuda and g["key"] == c["key"]
        assert (g["video"] - c["video"]).abs().mean() < 0.05  # colour conversion may differ by a level or two


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_nvdec_reads_codecs_the_cpu_cannot(shards, codec):
    loader = DaliLoader(config(shards[codec], num_sample=2, flip=True, decode_pipelines=2))
    assert loader.decode_device == "gpu"
    keys = []
    for batch in loader:
        video, mask = batch["video"], batch["mask"]
        assert video.is_cuda and mask.is_cuda and batch["label"].is_cuda
        assert video.shape[1:] == (3, 8, 32, 32) and video.dtype == torch.float32 and video.std() > 0.1
        slots = rearrange(mask, "b (t hw) -> b t hw", t=4)
        assert (slots.sum(-1) == 12).all() and (slots == slots[:, :1]).all()
        keys += batch["key"][0::2]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == num_samples(shards[codec])


def test_exact_resume_on_the_gpu(shards):
    cfg = config(shards["h264"], num_sample=2, flip=True, decode_pipelines=2)
    for x, y in zip(*with_a_resume(lambda: DaliLoader(cfg), 5, 2)):
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"]) and torch.equal(x["mask"], y["mask"])


def test_finetune_graph_on_the_gpu(shards):
    cfg = config(shards["h264"], mode="finetune", rand_augment_n=2, erase_prob=0.5, dtype="bfloat16")
    batch = next(iter(DaliLoader(cfg)))
    assert batch["video"].is_cuda and batch["video"].dtype == torch.bfloat16 and batch["video"].shape[0] == 4
