"""The shipped configs: every configs/*.yaml loads, and the paper recipes keep the official VideoMAE values.

RECIPES holds, per recipe file, the values read from the official scripts (MCG-NJU/VideoMAE at 14ef8d8,
scripts/<dataset>/videomae_vit_<size>_patch16_224_tubemasking_ratio_<r>_epoch_<n>/pretrain.sh, and the defaults of
run_mae_pretraining.py); HMDB51 and the UCF101 ViT-S have no official script, so their rows hold the values their
files adapt (each file's header says from what). An edit that changes a recipe fails here: change the row too,
with the reason, or use `--set` for a one-off run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from train.config import load_train_config
from train.optim import make_schedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))

# file: (size, gpus in the official launch line, per-GPU batch, mask_ratio, sampling_rate, base_lr, epochs)
RECIPES = {
    # scripts/kinetics/videomae_vit_base_..._epoch_800: 8 nodes x 8 GPUs x 32; --epochs 801 (a workaround) = 800
    "k400-vit-b-pretrain.yaml": ("base", 64, 32, 0.9, 4, 1.5e-4, 800),
    # scripts/kinetics/videomae_vit_small_..._epoch_1600: 4 nodes x 8 GPUs x 32
    "k400-vit-s-pretrain.yaml": ("small", 32, 32, 0.9, 4, 1.5e-4, 1600),
    # scripts/ssv2/videomae_vit_base_..._epoch_800: 8 nodes x 8 GPUs x 32
    "ssv2-vit-b-pretrain.yaml": ("base", 64, 32, 0.9, 2, 1.5e-4, 800),
    # scripts/ssv2/videomae_vit_small_..._epoch_2400: launch line --nnodes=8 (its comment says 32 GPUs)
    "ssv2-vit-s-pretrain.yaml": ("small", 64, 32, 0.9, 2, 1.5e-4, 2400),
    # scripts/ucf101/videomae_vit_base_..._ratio_0.75_epoch_3200: 1 node x 8 GPUs x 24, --lr 3e-4
    "ucf101-vit-b-pretrain.yaml": ("base", 8, 24, 0.75, 4, 3e-4, 3200),
    # no official script: the UCF101 ViT-B values with a ViT-S model
    "ucf101-vit-s-pretrain.yaml": ("small", 8, 24, 0.75, 4, 3e-4, 3200),
    # no official script: the UCF101 values; stride 2 and 4800 epochs from the paper's HMDB51 setting
    "hmdb51-vit-b-pretrain.yaml": ("base", 8, 24, 0.75, 2, 3e-4, 4800),
    "hmdb51-vit-s-pretrain.yaml": ("small", 8, 24, 0.75, 2, 3e-4, 4800),
}

# file: (clips per optimizer step over the official GPUs, peak lr = base_lr x clips / 256), worked out by hand
OFFICIAL_LR = {
    "k400-vit-b-pretrain.yaml": (2048, 1.2e-3),  # 1.5e-4 x 2048 / 256
    "k400-vit-s-pretrain.yaml": (1024, 6e-4),  # 1.5e-4 x 1024 / 256
    "ssv2-vit-b-pretrain.yaml": (2048, 1.2e-3),
    "ssv2-vit-s-pretrain.yaml": (2048, 1.2e-3),
    "ucf101-vit-b-pretrain.yaml": (192, 2.25e-4),  # 3e-4 x 192 / 256
    "ucf101-vit-s-pretrain.yaml": (192, 2.25e-4),
    "hmdb51-vit-b-pretrain.yaml": (192, 2.25e-4),
    "hmdb51-vit-s-pretrain.yaml": (192, 2.25e-4),
}


# Fine-tuning: file: (size, official GPUs, per-GPU clips, base_lr, layer_decay, drop_path, head_dropout, epochs,
# min_lr, test clips x crops, flip), from scripts/<dataset>/..._epoch_<n>/finetune.sh and run_class_finetuning.py's
# defaults (warm-up 5 epochs from 0, mixup 0.8, CutMix 1.0, smoothing 0.1, RandAugment m7 n4, erasing 0.25, num_sample
# 2 in every script). HMDB51 and the UCF101 / HMDB51 ViT-S have no script: the UCF101 ViT-B values.
FINETUNE = {
    "k400-vit-b-finetune.yaml": ("base", 64, 6, 5e-4, 0.75, 0.1, 0.0, 75, 1e-6, (5, 3), True),
    "k400-vit-s-finetune.yaml": ("small", 32, 12, 5e-4, 0.75, 0.1, 0.0, 150, 1e-6, (5, 3), True),
    "ssv2-vit-b-finetune.yaml": ("base", 64, 6, 5e-4, 0.75, 0.1, 0.0, 30, 1e-6, (2, 3), False),
    "ssv2-vit-s-finetune.yaml": ("small", 32, 12, 1e-3, 0.7, 0.1, 0.0, 40, 1e-6, (2, 3), False),
    "ucf101-vit-b-finetune.yaml": ("base", 8, 16, 5e-4, 0.7, 0.2, 0.5, 100, 1e-5, (5, 3), True),
    "ucf101-vit-s-finetune.yaml": ("small", 8, 16, 5e-4, 0.7, 0.2, 0.5, 100, 1e-5, (5, 3), True),
    "hmdb51-vit-b-finetune.yaml": ("base", 8, 16, 5e-4, 0.7, 0.2, 0.5, 100, 1e-5, (5, 3), True),
    "hmdb51-vit-s-finetune.yaml": ("small", 8, 16, 5e-4, 0.7, 0.2, 0.5, 100, 1e-5, (5, 3), True),
}


def test_configs_are_found():
    assert len(ALL_CONFIGS) >= 18, [p.name for p in ALL_CONFIGS]
    assert set(RECIPES) | set(FINETUNE) <= {p.name for p in ALL_CONFIGS}
    assert set(OFFICIAL_LR) == set(RECIPES)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_train_config(path)
    assert cfg.mode == path.stem.rsplit("-", 1)[1]  # *-pretrain.yaml, *-finetune.yaml
    assert cfg.data.num_frames == cfg.model.num_frames and cfg.data.input_size == cfg.model.input_size


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_matches_official(name):
    size, gpus, per_gpu, mask_ratio, sampling_rate, base_lr, epochs = RECIPES[name]
    cfg = load_train_config(CONFIGS / name)
    text = (CONFIGS / name).read_text()

    assert cfg.model.size == size
    assert cfg.model.decoder_depth == 4  # --decoder_depth 4 in every ViT-S/B script
    assert cfg.model.norm_target is True  # normlize_target defaults to True
    assert cfg.model.drop_path == 0.0  # --drop_path default 0.0; no script sets it
    assert cfg.model.use_checkpoint is False  # only the ViT-H script passes --use_checkpoint

    assert cfg.data.split == "train"
    assert cfg.data.num_frames == 16 and cfg.data.input_size == 224
    assert cfg.model.patch_size == 16 and cfg.model.tubelet_size == 2
    assert cfg.data.mask_type == "tube"
    assert cfg.data.mask_ratio == mask_ratio
    assert cfg.data.sampling_rate == sampling_rate
    assert cfg.data.flip is False  # the official pre-training crop does not flip
    assert cfg.data.num_sample == 1  # VideoMAE (V1) draws one view per clip

    assert cfg.data.batch_size == per_gpu
    assert cfg.optim.accum_steps == 1
    assert cfg.effective_batch * gpus == OFFICIAL_LR[name][0]
    assert f"{gpus} GPUs" in text  # the header names the GPU count the batch assumes

    assert cfg.optim.epochs == epochs
    assert cfg.optim.warmup_epochs == 40
    assert cfg.optim.base_lr == base_lr
    assert cfg.optim.min_lr == 1e-5
    assert cfg.optim.warmup_lr == 0.0  # the official warm-up starts at 0 (--warmup_lr is never used)
    assert cfg.optim.weight_decay == 0.05
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.clip_grad is None


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_lr_at_official_gpu_count(name):
    _, gpus, *_ = RECIPES[name]
    clips, peak_lr = OFFICIAL_LR[name]
    cfg = load_train_config(CONFIGS / name)
    steps_per_epoch = 100
    schedule = make_schedule(cfg.optim, steps_per_epoch=steps_per_epoch, batch_per_step=cfg.effective_batch * gpus)

    assert schedule.peak_lr == pytest.approx(peak_lr, rel=1e-12)
    assert schedule.min_lr == pytest.approx(1e-5 * clips / 256, rel=1e-12)
    assert schedule.warmup_lr == 0.0
    assert schedule.warmup_steps == 40 * steps_per_epoch
    assert schedule.total_steps == RECIPES[name][6] * steps_per_epoch
    # the official cosine_scheduler: linspace(0, peak, warm-up steps), then cosine from peak down to min_lr
    assert schedule.lr(0) == 0.0
    assert schedule.lr(schedule.warmup_steps - 1) == pytest.approx(peak_lr, rel=1e-12)
    assert schedule.lr(schedule.warmup_steps) == pytest.approx(peak_lr, rel=1e-12)


def test_accumulation_keeps_the_official_lr_on_one_node():
    """The headers' advice: on one 8-GPU node, optim.accum_steps = official GPUs / 8 gives the same lr."""
    cfg = load_train_config(CONFIGS / "k400-vit-b-pretrain.yaml", ["optim.accum_steps=8"])
    schedule = make_schedule(cfg.optim, steps_per_epoch=10, batch_per_step=cfg.effective_batch * 8)
    assert schedule.peak_lr == pytest.approx(1.2e-3, rel=1e-12)


@pytest.mark.parametrize("name", sorted(FINETUNE))
def test_finetune_recipe_matches_official(name):
    size, gpus, per_gpu, base_lr, layer_decay, drop_path, head_dropout, epochs, min_lr, views, flip = FINETUNE[name]
    cfg = load_train_config(CONFIGS / name)
    assert cfg.mode == "finetune" and cfg.model.size == size
    assert cfg.data.num_frames == 16 and cfg.data.input_size == 224 and cfg.model.patch_size == 16
    assert cfg.data.batch_size == per_gpu and cfg.data.num_sample == 2
    assert (cfg.data.rand_augment_n, cfg.data.rand_augment_m, cfg.data.erase_prob) == (4, 7, 0.25)
    assert cfg.data.flip is flip
    assert cfg.data.sampler == ("segment" if name.startswith("ssv2") else "random")  # SSv2: a frame per segment
    assert (cfg.data.test_num_segment, cfg.data.test_num_crop) == views
    assert (cfg.model.drop_path, cfg.model.head_dropout, cfg.model.head_init_scale) == (drop_path, head_dropout, 1e-3)
    ft = cfg.finetune
    assert (ft.layer_decay, ft.mixup, ft.cutmix, ft.mixup_prob, ft.mixup_switch_prob, ft.label_smoothing) == (
        layer_decay, 0.8, 1.0, 1.0, 0.5, 0.1)
    assert ft.test_split is not None
    o = cfg.optim
    assert (o.epochs, o.warmup_epochs, o.base_lr, o.min_lr, o.warmup_lr) == (epochs, 5, base_lr, min_lr, 0.0)
    assert (o.weight_decay, o.betas, o.clip_grad, o.accum_steps) == (0.05, (0.9, 0.999), None, 1)
    # the official fine-tuning scales the lr by clips (batch x GPUs), not by their num_sample views
    schedule = make_schedule(cfg.optim, steps_per_epoch=10, batch_per_step=cfg.lr_batch * gpus)
    assert schedule.peak_lr == pytest.approx(base_lr * per_gpu * gpus / 256, rel=1e-12)
    assert f"{gpus} GPUs" in (CONFIGS / name).read_text()
