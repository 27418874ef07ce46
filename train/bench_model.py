"""Model-only throughput: forward + backward (+ optimizer step) of VideoMAE pre-training on synthetic tensors.

The ceiling the data path has to feed. Reports clips/s and, from model/flops.py, achieved TFLOP/s and model FLOPs
utilisation against the GPU's dense bf16 peak. Command line: `bench model --size base`.
"""

from __future__ import annotations

import time

import torch

from model import ModelConfig, VideoMAEPretrain, param_groups, pretrain_flops, tube_num_masked
from pipeline.masking import running_cell_mask, tube_mask
from train.machine import machine

# dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (SXM parts unless named)
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops(gpu_name: str) -> float | None:
    """Dense bf16 peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3'; None when not in the table."""
    for key, value in PEAK_BF16_TFLOPS.items():  # longer, more specific names come first
        if key in gpu_name:
            return value
    return None


def make_train_step(model: VideoMAEPretrain, dtype: str = "fp32", compile: bool = False, optimizer: bool = False):
    """One pre-training step as the benchmarks time it: forward under bf16 autocast (dtype 'bf16'), backward, and
    with `optimizer` an AdamW step (the official betas and weight decay). Returns step(video, mask, ...) -> loss."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    device = next(model.parameters()).device
    forward = torch.compile(model, fullgraph=True) if compile else model
    opt = None
    if optimizer:
        opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1.5e-4, betas=(0.9, 0.95),
                                fused=device.type == "cuda")

    def step(video, mask, decoder_mask=None, *, num_masked=None, num_decoded=None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = forward(video, mask, decoder_mask, num_masked=num_masked, num_decoded=num_decoded)["loss"]
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def bench_model(size: str = "tiny", batch_size: int = 2, num_frames: int = 16, input_size: int = 224,
                mask_ratio: float = 0.9, device: str = "cpu", dtype: str = "fp32", steps: int = 10,
                warmup: int = 3, compile: bool = False, optimizer: bool = False, dual_masking: bool = False,
                use_checkpoint: bool = False, verbose: bool = True) -> dict:
    """Time `steps` pre-training steps after `warmup` ones; returns the settings, the machine and the figures."""
    info = machine()
    cfg = ModelConfig(size=size, num_frames=num_frames, input_size=input_size, use_checkpoint=use_checkpoint)
    dev = torch.device(device)
    model = VideoMAEPretrain(cfg).to(dev).train()
    train_step = make_train_step(model, dtype, compile, optimizer)
    num_masked = tube_num_masked(cfg, mask_ratio)
    num_decoded = cfg.num_tokens // 2 if dual_masking else None
    video = torch.randn(batch_size, 3, num_frames, input_size, input_size, device=dev)
    generator = torch.Generator(device=dev).manual_seed(0)
    time_slots, grid, _ = cfg.grid

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        mask = tube_mask(batch_size, time_slots, grid, mask_ratio, generator, dev)  # a new mask every step
        decoder_mask = running_cell_mask(batch_size, time_slots, grid, generator, dev) if dual_masking else None
        train_step(video, mask, decoder_mask, num_masked=num_masked, num_decoded=num_decoded)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - start
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start

    clips_per_s = steps * batch_size / elapsed
    flops = pretrain_flops(cfg, num_masked, num_decoded)
    achieved = clips_per_s * flops["total"] / 1e12
    peak = peak_tflops(info["gpu"]) if dev.type == "cuda" and dtype == "bf16" else None
    result = {
        "size": size, "batch_size": batch_size, "num_frames": num_frames, "input_size": input_size,
        "mask_ratio": mask_ratio, "visible_tokens": cfg.num_tokens - num_masked, "dual_masking": dual_masking,
        "device": str(dev), "dtype": dtype, "compile": compile, "optimizer": optimizer,
        "use_checkpoint": use_checkpoint, "steps": steps, "warmup": warmup, "warmup_s": round(warmup_s, 2),
        "step_ms": round(1000 * elapsed / steps, 2), "clips_per_s": round(clips_per_s, 3),
        "gflops_per_clip": round(flops["total"] / 1e9, 2), "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak if peak is not None else "unknown",
        "mfu": round(achieved / peak, 4) if peak else "unknown",
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
        **info,
    }
    if verbose:
        where = f"{info['gpu']}" if dev.type == "cuda" else f"{info['cpu']} ({info['torch_threads']} threads)"
        print(f"machine: {where}, {info['cpu_cores']} CPU cores, torch {info['torch']}")
        print(f"model {size} {num_frames}x{input_size}x{input_size} mask {mask_ratio} batch {batch_size} {dtype}"
              f"{' compiled' if compile else ''}: {result['clips_per_s']} clips/s, {result['step_ms']} ms/step, "
              f"{result['achieved_tflops']} TFLOP/s, MFU {result['mfu']}")
    return result
