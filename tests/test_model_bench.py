"""train/bench_model.py: the model-only benchmark runs, counts the right FLOPs and reports the machine."""

import pytest

from model import ModelConfig, pretrain_flops
from train.bench_model import bench_model, peak_tflops


def test_bench_model_runs_and_reports(capsys):
    result = bench_model(size="tiny", batch_size=2, num_frames=4, input_size=64, mask_ratio=0.75, steps=2,
                         warmup=1, optimizer=True)
    cfg = ModelConfig(size="tiny", num_frames=4, input_size=64)
    assert result["visible_tokens"] == 2 * (16 - 12)
    assert result["gflops_per_clip"] == round(pretrain_flops(cfg, 24)["total"] / 1e9, 2)
    assert result["clips_per_s"] > 0 and result["mfu"] == "unknown"  # no MFU on a CPU
    printed = capsys.readouterr().out
    assert "machine:" in printed and result["cpu"] in printed and "clips/s" in printed
    dual = bench_model(size="tiny", batch_size=2, num_frames=4, input_size=64, mask_ratio=0.75, steps=1,
                       warmup=0, dual_masking=True, verbose=False)
    assert dual["gflops_per_clip"] == round(pretrain_flops(cfg, 24, num_decoded=16)["total"] / 1e9, 2)


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40", 181.0), ("Quadro RTX 5000", None)])
def test_peak_table(name, peak):
    assert peak_tflops(name) == peak
