"""Multi-view evaluation (train/evaluate.py): softmax averaged over a video's views, merged across ranks, metrics
and confusion matrix against a hand-computed example, the report files, two ranks under torchrun, and `predict`
on the real DALI eval loader."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluate_worker as worker
from train.distributed import Env
from train.evaluate import Predictions, evaluate, merge, metrics, predict, write_report
from train.pictures import save_accuracy_curve, save_confusion

ROOT = Path(__file__).resolve().parents[2]
ONE_PROCESS = Env(0, 1, 0, torch.device("cpu"))


class Logits(nn.Module):
    """Each row's 'video' (C x 1 x 1 x 1) is its logits; records the train/eval mode of every forward."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes: list[bool] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.scale * video.flatten(1)


def batch_of(rows: list[tuple[str, int, list[float]]]) -> dict:
    """An eval batch from (key, label, logits) rows; views numbered per key in order of appearance."""
    views, seen = [], {}
    for key, _, _ in rows:
        views.append(seen.get(key, 0))
        seen[key] = views[-1] + 1
    return {"video": torch.tensor([logits for _, _, logits in rows])[:, :, None, None, None],
            "label": torch.tensor([label for _, label, _ in rows]), "key": [key for key, _, _ in rows],
            "view": torch.tensor(views)}


def softmax(logits) -> np.ndarray:
    e = np.exp(np.asarray(logits, dtype=float))
    return e / e.sum(axis=-1, keepdims=True)


def test_softmax_not_logits_is_averaged_over_views():
    views = [[10.0, 0.0], [0.0, 2.0], [0.0, 2.0]]  # one sure vote for class 0, two moderate ones for class 1
    assert np.mean(views, axis=0).argmax() == 0  # averaging logits would say class 0
    pred = evaluate(Logits(), [batch_of([("v", 1, views[0])]), batch_of([("v", 1, v) for v in views[1:]])],
                    ONE_PROCESS, expected_views=3)
    np.testing.assert_allclose(pred.probs[0], softmax(views).mean(axis=0), rtol=1e-6)
    assert pred.predicted.tolist() == [1] and pred.views.tolist() == [3] and pred.labels.tolist() == [1]
    assert pred.probs.dtype == np.float64 and pred.labels.dtype == np.int64


def test_predict_runs_in_eval_mode_and_gives_each_module_its_mode_back():
    model = nn.Sequential(Logits(), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a submodule the caller keeps in eval mode
    loader = [batch_of([("a", 0, [1.0, 0.0]), ("a", 0, [0.0, 1.0])])]
    part = predict(model, loader, "cpu")
    assert model[0].modes == [False]
    assert model.training and model[0].training and not model[1].training
    assert part["a"][0] == 0 and part["a"][2] == 2
    np.testing.assert_allclose(part["a"][1], softmax([[1.0, 0.0], [0.0, 1.0]]).sum(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="cannot evaluate b: its label is -1"):
        predict(model, [batch_of([("b", -1, [1.0, 0.0])])], "cpu")
    assert model.training and model[0].training and not model[1].training  # also after an error


# --- metrics on a hand-computed example ---------------------------------------------------------------------------

SHARES = [0.30, 0.25, 0.20, 0.12, 0.08, 0.05]  # the probabilities of the 1st, 2nd, ... most probable class


def ranked(order: list[int]) -> list[float]:
    """A probability row over 6 classes in which order[0] is the most probable, order[1] the next, ..."""
    row = [0.0] * 6
    for share, cls in zip(SHARES, order):
        row[cls] = share
    return row


def hand_example() -> Predictions:
    rows = [("v0", 0, [0, 1, 2, 3, 4, 5]),  # right
            ("v1", 0, [1, 0, 2, 3, 4, 5]),  # predicted 1, true class second: a top-5 hit
            ("v2", 1, [1, 2, 0, 3, 4, 5]),  # right
            ("v3", 2, [0, 1, 3, 4, 5, 2]),  # predicted 0, true class last: a top-5 miss
            ("v4", 2, [2, 0, 1, 3, 4, 5])]  # right
    return Predictions([key for key, _, _ in rows], np.array([label for _, label, _ in rows]),
                       np.array([ranked(order) for _, _, order in rows]), np.full(5, 3))


def test_metrics_of_a_hand_computed_example():
    names = ["run", "jump", "swim", "sit", "walk", "clap"]
    found = metrics(hand_example(), names)
    assert found["top1"] == pytest.approx(3 / 5)
    assert found["top5"] == pytest.approx(4 / 5)  # k = 5 of 6 classes
    assert found["num_videos"] == 5 and found["views_per_video"] == 3
    assert found["per_class"]["run"] == {"accuracy": 0.5, "videos": 2}
    assert found["per_class"]["jump"] == {"accuracy": 1.0, "videos": 1}
    assert found["per_class"]["swim"] == {"accuracy": 0.5, "videos": 2}
    assert found["per_class"]["sit"] == {"accuracy": None, "videos": 0}
    assert found["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # over classes with videos
    assert found["confusion"] == [[1, 1, 0, 0, 0, 0],  # rows: true class; columns: predicted
                                  [0, 1, 0, 0, 0, 0],
                                  [1, 0, 1, 0, 0, 0],
                                  [0] * 6, [0] * 6, [0] * 6]
    json.dumps(found)  # plain Python values


def test_metrics_with_fewer_than_five_classes_and_bad_labels():
    pred = Predictions(["a", "b"], np.array([0, 2]), np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]), np.array([2, 1]))
    found = metrics(pred)
    assert found["top1"] == 0.5 and found["top5"] == 1.0  # top-3 of 3 classes holds every label
    assert list(found["per_class"]) == ["0", "1", "2"] and found["views_per_video"] == 1.5
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        metrics(pred, ["x", "y"])
    pred.labels[1] = -1
    with pytest.raises(ValueError, match=r"^cannot evaluate b: its label is -1 \(unlabelled\)$"):
        metrics(pred)
    pred.labels[1] = 3
    with pytest.raises(ValueError, match="b: label 3 but the model has 3 classes"):
        metrics(pred)


# --- merging parts and counting views -----------------------------------------------------------------------------

def random_loader(views: list[int], labels=(0, 1, 2), batch_size: int = 2, seed: int = 0) -> list[dict]:
    """Eval batches of the given views of videos k0, k1, k2 (random logits over 4 classes, the same per seed)."""
    logits = np.random.default_rng(seed).normal(0, 2, (3, 3, 4))  # video x view x class
    rows = [(f"k{i}", labels[i], logits[i, v].tolist()) for i in range(3) for v in views]
    return [batch_of(rows[s:s + batch_size]) for s in range(0, len(rows), batch_size)]


def assert_same(a: Predictions, b: Predictions) -> None:
    assert a.keys == b.keys and a.labels.tolist() == b.labels.tolist() and a.views.tolist() == b.views.tolist()
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-12)


def test_merge_of_views_split_across_parts_equals_one_part():
    whole = merge([predict(Logits(), random_loader([0, 1, 2]), "cpu")])
    first, second = predict(Logits(), random_loader([0, 1]), "cpu"), predict(Logits(), random_loader([2]), "cpu")
    assert first["k0"][2] == 2 and second["k0"][2] == 1
    assert_same(merge([first, second]), whole)
    assert_same(merge([second, first]), whole)
    assert whole.keys == ["k0", "k1", "k2"] and whole.views.tolist() == [3, 3, 3]
    assert not np.allclose(merge([first]).probs, whole.probs)  # the third view counts
    relabelled = predict(Logits(), random_loader([2], labels=(0, 2, 2)), "cpu")
    with pytest.raises(ValueError, match="k1: label 1 on one rank and 2 on another"):
        merge([first, relabelled])


def test_a_video_with_other_than_the_expected_views_is_an_error_naming_it():
    loader = random_loader([0, 1, 2])[:-1]  # the last batch holds k2's third view alone
    pred = evaluate(Logits(), loader, ONE_PROCESS)
    assert pred.views.tolist() == [3, 3, 2]
    with pytest.raises(ValueError, match=r"k2 got 2 views, expected 3 .*1 of 3 videos differ"):
        evaluate(Logits(), loader, ONE_PROCESS, expected_views=3)


def test_two_ranks_holding_parts_of_each_videos_views_equal_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(Path(worker.__file__)), str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["batches"] for r in ranks] == [4, 3]  # the ranks run different numbers of batches
    single = evaluate(worker.tiny_model(), worker.loader_of([0, 1, 2], 4), ONE_PROCESS, expected_views=3)
    assert len(single.keys) == worker.NUM_VIDEOS
    for rank in ranks:
        for run in ("plain", "fsdp"):  # FSDP: the forward is collective; the ranks still finish together
            got = rank[run]
            assert got["keys"] == single.keys and got["labels"] == single.labels.tolist()
            assert got["views"] == [3] * worker.NUM_VIDEOS
            np.testing.assert_allclose(got["probs"], single.probs, rtol=1e-5, atol=1e-7, err_msg=run)
        assert worker.UNLABELLED in rank["error"]  # rank 1 read the unlabelled clip; both ranks stop with it
    assert ranks[0]["error"].startswith("RuntimeError: evaluation stopped: rank 1 failed: ValueError: cannot")
    assert ranks[1]["error"].startswith("ValueError: cannot evaluate val-00000003: its label is -1")


# --- pictures and report ------------------------------------------------------------------------------------------

def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 100


def test_save_confusion_draws_up_to_fifty_classes(tmp_path):
    path = save_confusion(tmp_path / "pictures" / "confusion.png", [[3, 1, 0], [0, 2, 2], [1, 0, 4]],
                          ["run", "jump", "swim"])
    assert path == tmp_path / "pictures" / "confusion.png" and is_png(path)
    assert save_confusion(tmp_path / "big.png", np.eye(60, dtype=int), [f"c{i}" for i in range(60)]) is None
    assert not (tmp_path / "big.png").exists()


def test_save_accuracy_curve_from_metrics_jsonl(tmp_path):
    metrics_path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "epoch": 0, "loss": 2.0}, {"val_top1": 0.25, "val_top5": 0.75, "step": 4, "epoch": 0},
             {"step": 5, "epoch": 1, "loss": 1.5}, {"val_top1": 0.5, "val_top5": 1.0, "step": 8, "epoch": 1}]
    metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"val_top1": 0.')  # cut short
    path = save_accuracy_curve(tmp_path / "accuracy.png", metrics_path)
    assert path == tmp_path / "accuracy.png" and is_png(path)
    metrics_path.write_text(json.dumps(lines[0]) + "\n")
    assert save_accuracy_curve(tmp_path / "none.png", metrics_path) is None
    assert not (tmp_path / "none.png").exists()


def test_write_report(tmp_path):
    names = ["run", "jump", "swim", "sit", "walk", "clap"]
    found = write_report(tmp_path, hand_example(), names, prefix="eval-val")
    assert json.loads((tmp_path / "eval-val.json").read_text()) == found
    assert found["confusion"][2] == [1, 0, 1, 0, 0, 0]
    records = [json.loads(line) for line in (tmp_path / "eval-val-predictions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["v0", "v1", "v2", "v3", "v4"]
    assert records[3] == {"key": "v3", "label": 2, "label_name": "swim", "predicted": 0, "predicted_name": "run",
                          "views": 3, "top5": [[0, 0.3], [1, 0.25], [3, 0.2], [4, 0.12], [5, 0.08]]}
    assert is_png(tmp_path / "eval-val-confusion.png")


# --- the real eval loader -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from synthetic_shards import synthetic_shards

    return synthetic_shards(tmp_path_factory.mktemp("data"), num_classes=3, clips_per_class=2)


def labels_in_shards(root: Path) -> dict[str, int]:
    """key -> label index, read from the .label members of the tars (ARCHITECTURE.md section 1)."""
    labels = {}
    for shard in sorted(root.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".label"):
                    labels[member.name.rsplit(".", 1)[0]] = int.from_bytes(tar.extractfile(member).read(), "little",
                                                                           signed=True)
    return labels


def test_predict_on_the_dali_eval_loader_sees_every_video_with_all_its_views(shards):
    from pipeline.config import DataConfig
    from pipeline.loader import DaliLoader

    split = sorted({p.name.rsplit("-", 1)[0] for p in shards.glob("*.tar")})[0]
    cfg = DataConfig(shards=str(shards), split=split, mode="eval", num_frames=8, sampling_rate=2, input_size=32,
                     patch_size=8, batch_size=4, num_threads=1, test_num_segment=2, test_num_crop=2)
    loader = DaliLoader(cfg, device="cpu")
    assert len(loader) == 2  # 6 videos in batches of 4: the last one is short
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 32 * 32, 3))
    part = predict(model, loader, "cpu")
    truth = labels_in_shards(shards)
    assert len(truth) == 6 and sorted(part) == sorted(truth)
    assert all(part[key][0] == truth[key] and part[key][2] == 4 for key in part)
    assert all(part[key][1].shape == (3,) and part[key][1].sum() == pytest.approx(4.0) for key in part)
    pred = evaluate(model, loader, ONE_PROCESS, expected_views=cfg.num_views)  # a second epoch: the same again
    assert pred.keys == sorted(truth) and pred.views.tolist() == [4] * 6
    np.testing.assert_allclose(pred.probs, np.stack([part[key][1] / 4 for key in pred.keys]), rtol=1e-6)
