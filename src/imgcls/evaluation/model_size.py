"""How big and how fast a trained model is: parameters, optimiser state, MB, FLOPs, latency.

Latency only means something next to the machine it was measured on, so the hardware
description lives here too.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imgcls.models.classifier import apply_freeze

MB = 1e6  # decimal megabytes, as file managers and seed 001's results table report them


def parameter_summary(model: nn.Module, freeze: str) -> dict[str, int]:
    """Total, trainable and frozen parameters as the fine-tuning phase left them
    (``--freeze``), without changing the model's own ``requires_grad`` flags."""
    saved = [p.requires_grad for p in model.parameters()]
    try:
        apply_freeze(model, freeze)  # type: ignore[arg-type]
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    finally:
        for param, flag in zip(model.parameters(), saved):
            param.requires_grad_(flag)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def optimizer_state_size(optimizer_state: dict | None) -> dict[str, float]:
    """Numbers held by the optimiser (AdamW: two moments per trained weight) and their MB.
    Scalar entries such as Adam's ``step`` counters are not state worth counting."""
    numel = nbytes = 0
    for per_param in (optimizer_state or {}).get("state", {}).values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                numel += value.numel()
                nbytes += value.numel() * value.element_size()
    return {"numel": numel, "mb": nbytes / MB}


def weights_mb(state_dict: dict) -> float:
    """Size of the weights and buffers alone: what an exported model file weighs."""
    return sum(t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor)) / MB


def flops_per_image(model: nn.Module, image_size: int) -> int:
    """Floating-point operations of one forward pass of one image (a multiply-add counts 2),
    from PyTorch's own operator-level counter."""
    device = next(model.parameters()).device
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return int(counter.get_total_flops())


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_runs(model: nn.Module, batch: torch.Tensor, budget_s: float, min_runs: int, max_runs: int) -> list[float]:
    device = batch.device
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        started = time.perf_counter()
        model(batch)
        _synchronise(device)
        times.append(time.perf_counter() - started)
    return times


@torch.inference_mode()
def measure_latency(model: nn.Module, image_size: int, budget_s: float = 2.0, batch_size: int = 16) -> dict:
    """Median and 90th-percentile milliseconds for one image, and images/s at ``batch_size``.

    Warm-up runs come first (allocator, cuDNN autotuning, lazy init); the clock then runs
    for about ``budget_s`` seconds in all (half each), with at least 5 and 2 runs.
    """
    device = next(model.parameters()).device
    model.eval()
    single = torch.randn(1, 3, image_size, image_size, device=device)
    batch = torch.randn(batch_size, 3, image_size, image_size, device=device)
    for _ in range(3):
        model(single)
    model(batch)
    _synchronise(device)
    times = sorted(_timed_runs(model, single, budget_s / 2, min_runs=5, max_runs=200))
    batch_times = _timed_runs(model, batch, budget_s / 2, min_runs=2, max_runs=50)
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch1_ms_median": 1000 * statistics.median(times),
        "batch1_ms_p90": 1000 * times[min(len(times) - 1, int(0.9 * len(times)))],
        "runs": len(times),
        "throughput_batch": batch_size,
        "throughput_images_s": batch_size / statistics.median(batch_times),
    }


def model_size(model: nn.Module, image_size: int, freeze: str, latency_budget_s: float = 2.0,
               model_file: Path | None = None, optimizer_state: dict | None = None) -> dict:
    """Seed 001's size table for one model (plus FLOPs and measured latency): ``model_file``
    is its ``.safetensors`` file, ``optimizer_state`` the run's saved optimiser state."""
    return {
        "parameters": parameter_summary(model, freeze),
        "optimizer_state": optimizer_state_size(optimizer_state),
        "weights_mb": weights_mb(model.state_dict()),
        "checkpoint_mb": model_file.stat().st_size / MB if model_file is not None and model_file.is_file() else None,
        "image_size": image_size,
        "flops_per_image": flops_per_image(model, image_size),
        "latency": measure_latency(model, image_size, budget_s=latency_budget_s) if latency_budget_s > 0 else None,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_summary(device: torch.device | str) -> dict[str, str]:
    """The machine in a few words: accelerator, CPU, cores, and the software versions."""
    device = torch.device(device)
    accelerator = "CPU only"
    if device.type == "cuda":
        accelerator = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        accelerator = "Apple GPU (MPS)"
    return {
        "device": str(device),
        "accelerator": accelerator,
        "cpu": _cpu_name(),
        "cpu_cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }
