"""The DALI loader on JPEG-frame shards (`shard-videos --frames jpeg`) against VP9 shards of the same real clips:
same frame indices, crops, flips and masks, pixels within JPEG loss; the frame step; one decode per clip for all
its views; every random choice applied alike to all frames of a clip; exact resume; bad input named in one line.

Clips as in test_loader_video_shards.py (64x80, 40 frames; input 32, patch 8, 8 frames) so the module runs in seconds."""

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import with_a_resume
from shard_samples import rewrite_first_sample
from test_loader_video_shards import STATIC, config, epoch_of, write_static_clip

import pipeline.loader as loader_module
from pipeline.config import IMAGENET_MEAN, IMAGENET_STD
from pipeline.loader import DaliLoader, DecodeError
from pipeline.reference import ReferenceLoader
from shard_tools import cli as shard_cli
from shard_tools.synthetic import make_collection
from train.bench import cli as bench_cli

NUM_CLIPS = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """kind -> {'root', 'split'}: 'vp9', 'jpeg' (q90, every frame) and 'step2' (q90, every 2nd frame) shards of the
    same clips: moving synthetic objects, and two clips whose frames are all one picture."""
    root = tmp_path_factory.mktemp("frames")
    videos = root / "videos"
    make_collection(videos, num_classes=2, clips_per_class=3, num_frames=40, size=(64, 80), seed=2)
    (videos / STATIC).mkdir()
    for seed in range(2):
        write_static_clip(videos / STATIC / f"static{seed}.avi", seed)
    out = {}
    for kind, args in {"vp9": ["--codec", "vp9"], "jpeg": ["--frames", "jpeg"],
                       "step2": ["--frames", "jpeg", "--frame-step", "2"]}.items():
        assert shard_cli.main([str(videos), str(root / kind), "--workers", "1", *args]) == 0
        out[kind] = {"root": root / kind, "split": "train"}
    out["static_label"] = json.loads((root / "jpeg" / "manifest.json").read_text())["classes"].index(STATIC)
    return out


def levels(video: torch.Tensor) -> torch.Tensor:
    """Normalised (B, C, T, S, S) views back to 0..255 pixel levels."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (video * std + mean) * 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row of (B, C, T, S, S) pixel levels, in dB."""
    return 10 * torch.log10(255 ** 2 / ((a - b) ** 2).mean(dim=(1, 2, 3, 4)))


MODES = {"pretrain": dict(num_sample=2, flip=True),
         "finetune": dict(mode="finetune", rand_augment_n=2, erase_prob=0.0, flip=True),
         "eval": dict(mode="eval", test_num_segment=2, test_num_crop=3, batch_size=3)}


@pytest.mark.parametrize("mode", MODES)
def test_jpeg_frames_give_the_video_paths_clips_frames_crops_and_flips(shards, mode):
    video = epoch_of(DaliLoader(config(shards["vp9"], **MODES[mode])))
    jpeg = epoch_of(DaliLoader(config(shards["jpeg"], **MODES[mode])))
    assert len(video) == len(jpeg) == len(DaliLoader(config(shards["jpeg"], **MODES[mode])))
    same, flipped = [], []
    for v, j in zip(video, jpeg):
        assert v["key"] == j["key"] and torch.equal(v["label"], j["label"]) and set(v) == set(j)
        assert j["video"].shape == v["video"].shape and j["video"].dtype == torch.float32
        for key in ("mask", "view"):
            assert key not in v or torch.equal(v[key], j[key])
        same.append(psnr(levels(v["video"]), levels(j["video"])))
        flipped.append(psnr(levels(v["video"]).flip(-1), levels(j["video"])))
    same, flipped = torch.cat(same), torch.cat(flipped)
    print(f"\n[{mode}] PSNR of q90 JPEG frames against the VP9 path's frames, per view: min {same.min():.1f} dB, "
          f"median {same.median():.1f} dB; the same views mirrored: median {flipped.median():.1f} dB")  # -s shows it
    # JPEG q90 against VP9 (crf 28) after the same resize to 32 x 32: about 40 dB; a view from other frames, another
    # crop or the other flip drops to ~15-25 dB (the objects move; the same view mirrored shows how far). In
    # fine-tuning, RandAugment's posterize, solarize and equalize turn small level differences into large ones on
    # some views (down to 21 dB), still well above the mirrored view's.
    assert same.median() > 36 and (same > flipped + 5).all()
    assert mode == "finetune" or same.min() > 30


def test_batches_are_views_of_the_decoded_frames_without_a_copy(shards):
    cfg = config(shards["jpeg"], num_sample=2)
    batch = next(iter(DaliLoader(cfg)))
    video = batch["video"]  # (B*V, C, T, S, S) over memory laid out (T, B, V, C, S, S) by the decode graph
    rows, size = len(video), cfg.input_size
    assert video.shape == (rows, 3, 8, size, size)
    assert video.stride() == (3 * size * size, size * size, rows * 3 * size * size, size, 1)


def test_a_frame_step_reads_the_stored_frame_at_or_before_each_index(shards, monkeypatch):
    """Every 2nd frame stored: index i is stored frame i // 2, i.e. frame 2 (i // 2) of the clip. The same JPEG
    encoder on the same frames writes the same bytes, so it matches the every-frame shards read at those frames."""
    cfg = config(shards["step2"], sampling_rate=2, flip=True)
    step2 = epoch_of(DaliLoader(cfg))
    real = loader_module.frame_indices
    monkeypatch.setattr(loader_module, "frame_indices", lambda *args: real(*args) // 2 * 2)
    every = epoch_of(DaliLoader(dataclasses.replace(cfg, shards=str(shards["jpeg"]["root"]))))
    for a, b in zip(step2, every):
        assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])
    monkeypatch.setattr(loader_module, "frame_indices", real)  # without the step: other frames for odd starts
    plain = epoch_of(DaliLoader(dataclasses.replace(cfg, shards=str(shards["jpeg"]["root"]))))
    assert any(not torch.equal(a["video"], b["video"]) for a, b in zip(step2, plain))


@pytest.mark.parametrize("changes, words", [(dict(sampling_rate=3), "cannot serve data.sampling_rate 3"),
                                            (dict(sampler="segment"), "data.sampler 'segment' may take any frame")])
def test_a_sampling_the_frame_step_cannot_serve_is_refused_in_one_line(shards, capsys, changes, words):
    cfg = config(shards["step2"], **changes)
    for start in (lambda: DaliLoader(cfg), lambda: ReferenceLoader(cfg)):
        with pytest.raises(ValueError, match=words):
            start()
    sets = [f"--set=data.{k}={v}" for k, v in changes.items()]
    assert bench_cli.main(["loader", str(shards["step2"]["root"]), "--set=data.split=train", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: ") and words in err and "frame step 2" in err and "\n" not in err


def test_num_sample_views_decode_each_clip_once(shards, monkeypatch):
    fed = []
    real = loader_module.frame_inputs

    def counting(cfg, clips):
        flat = real(cfg, clips)
        fed.append((len(clips["jpegs"]), len(flat["jpegs"])))
        return flat

    monkeypatch.setattr(loader_module, "frame_inputs", counting)
    batches = epoch_of(DaliLoader(config(shards["jpeg"], num_sample=3, flip=True)))
    assert sum(clips for clips, _ in fed) == NUM_CLIPS
    assert all(frames == 8 * clips for clips, frames in fed)  # T frames per clip, whatever num_sample
    for batch in batches:
        views = batch["video"].view(-1, 3, *batch["video"].shape[1:])  # (B, 3 views, C, T, S, S)
        assert all(not torch.equal(clip[0], clip[1]) or not torch.equal(clip[1], clip[2]) for clip in views)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_every_random_choice_is_the_same_for_all_frames_of_a_clip(shards, mode):
    """Clips of one picture in every frame: the same crop, flip and RandAugment ops on every frame give the same
    output frame T times; a choice drawn per frame would not."""
    stronger = {"rand_augment_n": 4, "rand_augment_m": 9} if mode == "finetune" else {}
    cfg = config(shards["jpeg"], **{**MODES[mode], **stronger})
    seen = 0
    for batch in epoch_of(DaliLoader(cfg)):
        static = batch["video"][batch["label"] == shards["static_label"]]  # (views, C, T, S, S)
        assert torch.equal(static, static[:, :, :1].expand_as(static))
        seen += len(static)
    assert seen == 2 * (2 if mode == "pretrain" else 1)


@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_exact_resume(shards, mode):
    cfg = config(shards["jpeg"], mode=mode, num_sample=2, flip=True, decode_pipelines=2, rand_augment_n=2,
                 erase_prob=0.5)
    for x, y in zip(*with_a_resume(lambda: DaliLoader(cfg), 7, 3)):  # crosses an epoch end (4 batches each)
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])
        assert all(torch.equal(x[k], y[k]) for k in ("mask", "label") if k in x)


def test_decoding_only_the_crop_window_gives_the_pixels_of_whole_frames(shards):
    """Within one grey level: the resize samples at the same positions, offset by the window's corner, and rounds
    a few of them the other way (2 in 100,000 values in pre-training; none in eval)."""
    for mode in ("pretrain", "eval"):
        cfg = config(shards["jpeg"], **MODES[mode])
        window = epoch_of(DaliLoader(cfg))
        whole = epoch_of(DaliLoader(dataclasses.replace(cfg, roi_decode=False)))
        for a, b in zip(window, whole):
            assert a["key"] == b["key"]
            difference = (levels(a["video"]) - levels(b["video"])).abs()
            assert difference.max() < 1.01 and (difference > 0.01).float().mean() < 1e-3


def test_the_reference_loader_reads_jpeg_frames_as_the_dali_path(shards):
    cfg = config(shards["jpeg"], mode="eval", test_num_segment=2, test_num_crop=3, batch_size=3)
    dali = {(k, v): clip for b in epoch_of(DaliLoader(cfg)) for k, v, clip in zip(b["key"], b["view"].tolist(),
                                                                                  b["video"])}
    matched = 0
    for batch in ReferenceLoader(cfg, num_workers=0):
        for key, view, clip in zip(batch["key"], batch["view"].tolist(), batch["video"]):
            assert (levels(clip[None]) - levels(dali[key, view][None])).abs().mean() < 1.0  # JPEG decoders' rounding
            matched += 1
    assert matched == len(dali) == NUM_CLIPS * 6


# --- bad input ------------------------------------------------------------------------------------------------

def damaged(shards, tmp_path, how: str) -> tuple[dict, str]:
    """A copy of the JPEG-frame shards whose first sample is damaged; returns (shards, its key)."""
    root = tmp_path / how
    shutil.copytree(shards["jpeg"]["root"], root)

    def change(members):
        meta = json.loads(members["json"])
        data, offsets = members["jpegs"], meta["frame_offsets"]
        if how == "corrupt_jpeg":  # every stored frame loses its start-of-image marker and headers
            data = b"".join(bytes(64) + data[a + 64:b] for a, b in zip(offsets[:-1], offsets[1:]))
        elif how == "missing_frame":
            data, meta["frame_offsets"] = data[:offsets[-2]], offsets[:-1]
        else:  # offsets past the member's end
            meta["frame_offsets"] = offsets[:-1] + [offsets[-1] + 512]
        return {**members, "jpegs": data, "json": json.dumps(meta).encode()}

    return {"root": root, "split": "train"}, rewrite_first_sample(root, change)


@pytest.mark.parametrize("how, words", [("corrupt_jpeg", "cannot decode"),
                                        ("missing_frame", "cannot read its frames: its .json lists 39 frames"),
                                        ("past_end", "past the end of its .jpegs member")])
def test_a_damaged_clip_is_named_in_one_line_or_skipped_and_counted(shards, tmp_path, capsys, how, words):
    bad, key = damaged(shards, tmp_path, how)
    tar = Path(bad["root"]) / "train-000000.tar"
    with pytest.raises(DecodeError, match=rf"{key} \(shard {tar}, offset \d+\).*on_error: skip") as raised:
        epoch_of(DaliLoader(config(bad, shuffle_buffer=1)))
    assert words in str(raised.value)
    loader = DaliLoader(config(bad, on_error="skip"))
    keys = [k for b in epoch_of(loader) for k in b["key"]]
    assert key not in keys and len(keys) == NUM_CLIPS - 1
    assert [s.key for s in loader.skipped] == [key] and key in loader.summary()
    capsys.readouterr()
    assert bench_cli.main(["loader", str(bad["root"]), "--set=data.split=train", "--set=data.input_size=32",
                           "--set=data.num_frames=8", "--set=data.sampling_rate=2", "--batch-size=2",
                           "--set=data.shuffle_buffer=1", "--batches=4", "--warmup=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bench: ") and key in err and str(tar) in err
