"""torch.compile: one graph (fullgraph, no breaks) for the tiny model, no recompilation across masks of one ratio."""

import torch
import torch._dynamo

from model import ModelConfig, VideoMAEPretrain

TINY = dict(size="tiny", num_frames=4, input_size=64)  # token grid 2 x 4 x 4


def tube_mask(batch, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.stack([torch.randperm(16, generator=g) < int(ratio * 16) for _ in range(batch)])
    return spatial.repeat(1, 2)


def run(model, video, mask, **kwargs):
    out = model(video, mask, **kwargs)
    out["loss"].backward()
    return out["loss"].detach(), [p.grad.clone() for p in model.parameters()]


def test_compiles_to_one_graph_without_recompiling():
    """Inductor (C++ on the CPU), forward and backward; then a second mask of the same ratio reuses the graph."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = VideoMAEPretrain(ModelConfig(**TINY))
    compiled = torch.compile(model, fullgraph=True)
    video = torch.randn(2, 3, 4, 64, 64)
    num_masked = 2 * int(0.75 * 16)
    first, second = tube_mask(2, 0.75, seed=0), tube_mask(2, 0.75, seed=1)
    assert not torch.equal(first, second)

    loss, grads = run(compiled, video, first, num_masked=num_masked)
    model.zero_grad()
    with torch._dynamo.config.patch(error_on_recompile=True):
        loss2, grads2 = run(compiled, video, second, num_masked=num_masked)
    model.zero_grad()
    eager_loss, eager_grads = run(model, video, second, num_masked=num_masked)
    torch.testing.assert_close(loss2, eager_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads2, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]


def test_dual_masking_traces_as_one_graph():
    """Graph capture only (aot_eager backend, forward and backward): V2 decoder masks, two of them."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = VideoMAEPretrain(ModelConfig(**TINY))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    video = torch.randn(2, 3, 4, 64, 64)
    mask = tube_mask(2, 0.75, seed=0)
    cell = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool).repeat(2, 2)  # 4 x 4, half of each 2x2 cell
    decoder_masks = [torch.stack([cell, cell.T]).flatten().repeat(2, 1),
                     torch.stack([~cell, cell]).flatten().repeat(2, 1)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for decoder_mask in decoder_masks:
            run(compiled, video, mask, decoder_mask=decoder_mask, num_masked=24, num_decoded=16)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
