"""`train` in modes finetune and eval on real VP9 shards (tiny model, 8x32x32 clips): the classifier starts from a
pre-training checkpoint (or from scratch), validates, keeps best.pt, tests with several views per video, and
`mode: eval` of best.pt gives the figures the run's own test gave; mixup / CutMix and layer-wise lr decay."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ModelConfig, VideoMAEPretrain, save_checkpoint
from train.optim import build_optimizer, make_schedule
from train.config import ConfigError, FinetuneConfig, load_train_config
from train.finetune import ClassifierLoss, build_classifier
from train.run import train

from synthetic_shards import synthetic_shards

CLASSES, TRAIN_CLIPS, VAL_CLIPS = 4, 16, 8
GEOMETRY = dict(size="tiny", num_frames=8, input_size=32, patch_size=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = synthetic_shards(tmp_path_factory.mktemp("data"), "--val-fraction", "0.34", num_classes=CLASSES,
                           clips_per_class=6, seed=3)
    counts = json.loads((out / "manifest.json").read_text())
    assert counts["classes"] and len(counts["classes"]) == CLASSES
    return out


def config_text(shards: Path, **finetune) -> str:
    settings = {"val_split": "val", "val_every": 2, "test_split": "val", "mixup": 0.8, "cutmix": 1.0, **finetune}
    return f"""
mode: finetune
data: {{shards: {shards}, num_frames: 8, sampling_rate: 2, input_size: 32, patch_size: 8, batch_size: 4,
        num_threads: 1, shuffle_buffer: 4, rand_augment_n: 2, test_num_segment: 2, test_num_crop: 2}}
model: {{size: tiny, drop_path: 0.1}}
optim: {{epochs: 4, warmup_epochs: 1, base_lr: 0.2, min_lr: 0.001, warmup_lr: 0.001, betas: [0.9, 0.999]}}
finetune: {json.dumps(settings)}
run: {{log_every: 2, checkpoint_every: 100}}
"""


def load(tmp_path: Path, shards: Path, *overrides: str, **finetune):
    path = tmp_path / "finetune.yaml"
    path.write_text(config_text(shards, **finetune))
    return load_train_config(path, list(overrides))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    model = VideoMAEPretrain(ModelConfig(**GEOMETRY))
    path = tmp_path_factory.mktemp("pretrained") / "pretrain.pt"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, shards, pretrained):
    """One fine-tuning run from the pre-training checkpoint: (run folder, printed text)."""
    tmp = tmp_path_factory.mktemp("finetune")
    cfg = load(tmp, shards, weights=str(pretrained))
    out = tmp / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train(cfg, out, live=False) == 0
    return out, printed.getvalue()


def test_finetune_starts_from_the_pretrained_encoder(finetuned, pretrained, shards, tmp_path):
    out, printed = finetuned
    assert f"weights from {pretrained}" in printed
    taken = printed.split("weights from", 1)[1].splitlines()[0]
    assert "new: fc_norm, head" in taken and "decoder" in taken.split("not used:")[1]
    cfg = load(tmp_path, shards, weights=str(pretrained))
    model = build_classifier(cfg, CLASSES, torch.device("cpu"), say=lambda text: None)
    start = torch.load(pretrained, weights_only=True)["model"]
    for name, value in model.state_dict().items():
        if name.startswith(("blocks.", "patch_embed.")):
            assert torch.equal(value, start[f"encoder.{name}"]), name
    assert torch.load(out / "best.pt", weights_only=True)["tubemae"]["kind"] == "classifier"


def test_finetune_validates_keeps_best_and_tests_every_view(finetuned):
    out, printed = finetuned
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_top1" in r]
    assert [r["epoch"] for r in val] == [2, 4]  # every val_every = 2 epochs, the last one included
    assert all(r["val_videos"] == VAL_CLIPS for r in val)
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val"]["val_top1"] == max(r["val_top1"] for r in val)
    report = json.loads((out / "eval-val.json").read_text())
    assert report["num_videos"] == VAL_CLIPS and report["views_per_video"] == 4  # 2 clips x 2 crops
    assert len(report["confusion"]) == CLASSES and sum(map(sum, report["confusion"])) == VAL_CLIPS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["top1"] == report["top1"] and summary["best_val_top1"] == best["val"]["val_top1"]
    assert (out / "pictures" / "accuracy.png").is_file() and (out / "eval-val-confusion.png").is_file()
    assert "val: top-1" in printed


def test_eval_mode_reproduces_the_run_s_own_test(finetuned, shards, tmp_path):
    out, _ = finetuned
    final = sorted(out.glob("checkpoint-*.pt"))[-1]
    cfg = load(tmp_path, shards, "mode=eval", "data.split=val", f"finetune.weights={final}")
    assert train(cfg, tmp_path / "eval", live=False) == 0
    ours = json.loads((tmp_path / "eval" / "eval-val.json").read_text())
    theirs = json.loads((out / "eval-val.json").read_text())
    assert ours["top1"] == theirs["top1"] and ours["confusion"] == theirs["confusion"]


def test_eval_refuses_weights_that_are_not_a_classifier(shards, pretrained, tmp_path):
    cfg = load(tmp_path, shards, "mode=eval", "data.split=val", f"finetune.weights={pretrained}")
    with pytest.raises(ConfigError, match="not a classifier"):
        train(cfg, tmp_path / "eval", live=False)


def test_finetune_from_scratch_says_so(shards, tmp_path, capsys):
    cfg = load(tmp_path, shards, "run.max_steps=2", val_split=None, test_split=None, mixup=0.0, cutmix=0.0)
    assert train(cfg, tmp_path / "scratch", live=False) == 0
    assert "from scratch" in capsys.readouterr().out
    assert not (tmp_path / "scratch" / "best.pt").exists()


def test_cutmix_cuts_one_box_through_every_frame():
    loss = ClassifierLoss(FinetuneConfig(mixup=0.0, cutmix=1.0, label_smoothing=0.1), num_classes=3)
    video = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 6, 16, 16).contiguous()  # clip i is all i
    seen = {}

    def model(mixed):
        seen["video"] = mixed
        return torch.zeros(len(mixed), 3, requires_grad=True)

    np.random.seed(0)  # timm draws lambda and the box with numpy
    loss(model, {"video": video, "label": torch.tensor([0, 1, 2, 0])})
    mixed = seen["video"]
    assert torch.equal(video, torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 6, 16, 16))  # input kept
    assert mixed.shape == video.shape
    pasted = mixed[0] == 3.0  # clip 0 gets a box of its partner, the last clip
    assert pasted.any() and not pasted.all()
    assert (pasted == pasted[:1, :1]).all()  # the same box in every channel and every frame
    rows, cols = pasted[0, 0].any(dim=1), pasted[0, 0].any(dim=0)
    assert torch.equal(pasted[0, 0], rows[:, None] & cols[None, :])  # a box in H x W ...
    assert not rows.all() and not cols.all()  # ... cut in both, not a band of frames or rows


def test_layer_decay_scales_the_lr_from_the_head_down(shards, tmp_path):
    from model import VideoMAEClassifier

    cfg = load(tmp_path, shards)
    model = VideoMAEClassifier(cfg.model, CLASSES)
    optimizer = build_optimizer(cfg.optim, model, layer_decay=0.5)
    schedule = make_schedule(cfg.optim, 4, 4)
    lr = schedule.apply(optimizer, 4)
    by_name = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    depth = cfg.model.depth  # tiny: 2 blocks -> head 1, block 1 0.5, block 0 0.25, embedding 0.125
    assert by_name["head.weight"] == pytest.approx(lr)
    assert by_name["blocks.0.attn.qkv.weight"] == pytest.approx(lr * 0.5 ** depth)
    assert by_name["patch_embed.proj.weight"] == pytest.approx(lr * 0.5 ** (depth + 1))


def test_mixup_needs_an_even_batch(shards, tmp_path):
    with pytest.raises(ConfigError, match="must be even"):
        load(tmp_path, shards, "data.batch_size=3")
    load(tmp_path, shards, "data.batch_size=3", "finetune.mixup=0", "finetune.cutmix=0")


def test_finetune_resumes_where_it_stopped(shards, pretrained, tmp_path):
    out = tmp_path / "run"
    first = load(tmp_path, shards, "run.max_steps=4", weights=str(pretrained), val_every=1, test_split=None)
    assert train(first, out, live=False) == 0  # 4 steps = one epoch: validated once, best.pt written
    best = torch.load(out / "best.pt", weights_only=True)["val"]["val_top1"]
    more = load(tmp_path, shards, "run.max_steps=8", weights=str(pretrained), val_every=1, test_split=None)
    assert train(more, out, resume="auto", live=False) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"]) == (8, 4)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_top1" in r] == [1, 2]
    assert summary["best_val_top1"] >= best  # the best so far came back with the checkpoint


def test_finetune_checkpoints_carry_the_class_names_into_the_hugging_face_export(finetuned, shards, tmp_path,
                                                                                monkeypatch):
    """The names come from the checkpoint itself, not from the manifest of shards that may have moved."""
    pytest.importorskip("transformers")
    import pipeline.shards
    from train.export import main as export_main

    out, _ = finetuned
    names = json.loads((shards / "manifest.json").read_text())["classes"]
    for checkpoint in (out / "best.pt", sorted(out.glob("checkpoint-*.pt"))[-1]):
        assert torch.load(checkpoint, weights_only=True)["classes"] == names

    def moved(root):
        raise FileNotFoundError(f"{root}: moved away")

    monkeypatch.setattr(pipeline.shards, "read_manifest", moved)
    assert export_main([str(out), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(names)}
    assert config["label2id"] == {name: i for i, name in enumerate(names)}
