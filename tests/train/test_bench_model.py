"""train/bench: the model-only benchmark runs the training step, counts the right FLOPs and reports the machine;
`bench` builds its settings through TrainConfig, so a bad value is one line and exit status 2."""

import json

import pytest
import torch

import train.loop as engine
from model import ModelConfig, pretrain_flops
from train.bench import cli as bench_cli
from train.bench.machine import describe
from train.bench.model import bench_model, peak_tflops
from train.config import load_train_config

SMALL = ["model.size=tiny", "data.batch_size=2", "data.num_frames=4", "data.input_size=64", "data.mask_ratio=0.75"]


def test_bench_model_runs_and_reports(capsys):
    result = bench_model(load_train_config(None, SMALL), steps=2, warmup=1, optimizer=True)
    cfg = ModelConfig(size="tiny", num_frames=4, input_size=64)
    assert result["visible_tokens"] == 2 * (16 - 12)
    assert result["gflops_per_clip"] == round(pretrain_flops(cfg, 24)["total"] / 1e9, 2)
    assert result["clips_per_s"] > 0 and result["mfu"] == "unknown"  # no MFU on a CPU
    assert result["precision"] == "fp32" and result["optimizer"]
    printed = capsys.readouterr().out
    assert "machine:" in printed and result["cpu"] in printed and "clips/s" in printed
    dual = bench_model(load_train_config(None, SMALL + ["data.decoder_mask=running_cell"]), steps=1, warmup=0,
                       verbose=False)
    assert dual["gflops_per_clip"] == round(pretrain_flops(cfg, 24, num_decoded=16)["total"] / 1e9, 2)


def test_bench_model_times_the_engine_step(monkeypatch):
    calls = []
    real_step = engine.train_step

    def counting_step(model, optimizer, batches, loss_of, precision, *args):
        calls.append((type(optimizer).__name__, len(batches), loss_of.counts, precision))
        return real_step(model, optimizer, batches, loss_of, precision, *args)

    monkeypatch.setattr(engine, "train_step", counting_step)
    bench_model(load_train_config(None, SMALL + ["optim.accum_steps=2"]), steps=2, warmup=1, optimizer=True,
                verbose=False)
    assert calls == [("AdamW", 2, (24, None), "fp32")] * 3
    calls.clear()
    bench_model(load_train_config(None, SMALL), steps=1, warmup=0, verbose=False)  # forward + backward only
    assert calls == [("SkipStep", 1, (24, None), "fp32")]


def test_bench_model_command_prints_json_from_config_and_aliases(tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text("model: {size: small}\ndata: {num_frames: 4, input_size: 64}\n")
    args = ["model", "--config", str(config), "--size", "tiny", "--batch-size", "2", "--set", "data.mask_ratio=0.5",
            "--steps", "1", "--warmup", "0", "--json"]
    assert bench_cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["size"], result["rows"], result["num_frames"], result["mask_ratio"]) == ("tiny", 2, 4, 0.5)
    assert describe(result) == describe()  # the machine it ran on


@pytest.mark.parametrize("args, names", [
    (["model", "--set", "data.mask_ratio=1.5"], ["mask_ratio", "1.5"]),
    (["model", "--set", "data.mask_ratio=1.0"], ["mask_ratio"]),
    (["model", "--set", "data.num_frames=15"], ["num_frames", "tubelet_size"]),
    (["model", "--batch-size", "0"], ["batch_size"]),
    (["masks", "--set", "data.batch_size=0"], ["batch_size"]),
    (["e2e", "data/shards", "--set", "data.mask_ratio=1.5"], ["mask_ratio"]),
    (["loader", "data/shards", "--loader", "pyav"], ["run.loader"]),
    (["model", "--set", "model.size=huge2"], ["model.size", "huge"]),
    (["model", "--set", "data.mask_ratio=["], ["data.mask_ratio", "YAML"]),
    (["model", "--steps", "0"], ["--steps"]),
])
def test_bench_config_errors_are_one_line(args, names, capsys):
    assert bench_cli.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: ")
    assert all(name in lines[0] for name in names), lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 autocast runs on a GPU")
def test_bench_precision_follows_run_precision(capsys):
    assert bench_cli.main(["model", "--set", "run.precision=bf16"]) == 2
    assert "run.precision" in capsys.readouterr().err


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40", 181.0), ("Quadro RTX 5000", None)])
def test_peak_table(name, peak):
    assert peak_tflops(name) == peak
