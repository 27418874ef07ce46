"""What a benchmark ran on: CPU model and cores, torch version and threads, GPU name. Printed beside every figure."""

from __future__ import annotations

import contextlib
import os
import platform

import torch


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": gpu}


def describe(info: dict | None = None) -> str:
    """One line, e.g. 'Intel Xeon ..., 2 cores, no GPU, torch 2.14.1'."""
    info = info or machine()
    return f"{info['cpu']}, {info['cpu_cores']} cores, {info['gpu'] or 'no GPU'}, torch {info['torch']}"
