"""The training step (train/loop.py `train_step`) and the classification loss, on small models where every number
can be worked out: what trainers most often get wrong. Gradient accumulation divides by the micro-batches, backward
runs outside autocast, clipping bounds the norm the optimizer sees while the norm before clipping is reported, an
infinite loss counts as not finite as NaN does, label smoothing stays on without mixup."""

import pytest
import torch
from torch import nn

from train.config import FinetuneConfig
from train.finetune import ClassifierLoss
from train.loop import Interval, train_step


def mse(model: nn.Module, batch: dict) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(6, 3)


def batch(rows: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(rows, 6, generator=g), "y": torch.randn(rows, 3, generator=g)}


def test_two_accumulated_batches_give_the_step_of_both_joined():
    """SGD, not AdamW: Adam's update hardly changes when every gradient is scaled, SGD's doubles."""
    first, second = batch(4, 1), batch(4, 2)
    joined = {key: torch.cat([first[key], second[key]]) for key in first}
    accumulated, whole = linear(), linear()
    out = train_step(accumulated, torch.optim.SGD(accumulated.parameters(), lr=0.5), [first, second], mse)
    reference = train_step(whole, torch.optim.SGD(whole.parameters(), lr=0.5), [joined], mse)
    for a, b in zip(accumulated.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["loss"], reference["loss"])  # the mean over the micro-batches
    torch.testing.assert_close(out["grad_norm"], reference["grad_norm"])


class RecordAutocast(torch.autograd.Function):
    """The identity, recording whether autocast is on while its backward runs."""
    seen: list[bool] = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        RecordAutocast.seen.append(torch.is_autocast_enabled("cpu"))
        return grad


def test_backward_runs_outside_autocast():
    """The PyTorch AMP recipe: autocast around the forward and the loss only (bf16 autocast also runs on the CPU)."""
    model = linear()
    RecordAutocast.seen = []

    def loss_of(model, batch):
        assert torch.is_autocast_enabled("cpu")  # the forward does run under it
        return RecordAutocast.apply(mse(model, batch).float())

    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [batch(4, 1), batch(4, 2)], loss_of,
               precision="bf16")
    assert RecordAutocast.seen == [False, False]


def total_norm(parameters) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters])))


@pytest.mark.parametrize("clip_grad", [None, 0.05])
def test_clipping_bounds_the_norm_at_the_optimizer_step_and_the_norm_before_clipping_is_reported(clip_grad):
    model, data = linear(), [batch(8, 3)]
    probe = linear()
    mse(probe, data[0]).backward()
    before = total_norm(probe.parameters())  # the same model and batch: the norm train_step will meet
    assert before > 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    at_step = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: at_step.append(total_norm(model.parameters())))
    out = train_step(model, optimizer, data, mse, clip_grad=clip_grad)
    assert float(out["grad_norm"]) == pytest.approx(before, rel=1e-5)  # logged: the norm before clipping
    assert at_step[0] == pytest.approx(before if clip_grad is None else clip_grad, rel=1e-4)


@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")])
def test_the_first_step_with_a_loss_that_is_not_finite_is_kept_until_the_log(poison):
    """What stops the run at the next log line or checkpoint (test_train_command.py runs one into a NaN)."""
    interval = Interval(torch.device("cpu"))
    for step, loss in enumerate([1.0, poison, 2.0, poison], start=1):
        interval.add(step, {"loss": torch.tensor(loss), "grad_norm": torch.tensor(1.0)}, clips=2, waited=0.0)
    assert int(interval.first_bad) == 2 and interval.steps == 4 and interval.clips == 8


def test_label_smoothing_without_mixup_is_not_plain_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    target = torch.tensor([0, 2])
    loss = ClassifierLoss(FinetuneConfig(mixup=0.0, cutmix=0.0, label_smoothing=0.3), num_classes=3)
    found = loss(lambda video: logits, {"video": torch.zeros(2, 3, 2, 4, 4), "label": target})
    log_p = torch.log_softmax(logits, dim=-1)
    smoothed = (0.7 * -log_p[[0, 1], target] + 0.3 * -log_p.mean(dim=-1)).mean()  # (1 - e) CE + e uniform
    torch.testing.assert_close(found, smoothed)
    assert not torch.allclose(found, nn.functional.cross_entropy(logits, target))
    plain = ClassifierLoss(FinetuneConfig(mixup=0.0, cutmix=0.0, label_smoothing=0.0), num_classes=3)
    torch.testing.assert_close(plain(lambda video: logits, {"video": None, "label": target}),
                               nn.functional.cross_entropy(logits, target))
