"""``--time-limit``: plan the epochs from the measured step time so the schedule ends in time.

Stopping a run at the deadline would cut its learning-rate schedule mid-way, the worst
point to stop a cosine. Instead, before each training phase, a few forward/backward steps
on a copy of the model measure the step time; the phase gets as many epochs as fit in what
is left of the budget (at most ``--epochs``), after a reserve for the evaluation that
follows training; the schedule is then planned over exactly those epochs.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from imgcls.runtime import autocast

PROBE_STEPS = 3  # timed steps after one warm-up step
INFERENCE_SPEEDUP = 3.0  # a forward pass alone costs about a third of forward + backward


@dataclass
class PhasePlan:
    """What the budget planned for one phase, and the measurements behind it."""

    phase: str
    seconds_per_step: float
    steps_per_epoch: int
    epoch_seconds: float
    remaining_seconds: float
    reserve_seconds: float
    asked_epochs: int
    planned_epochs: int


@dataclass
class Budget:
    """The run's time budget: ``limit_s`` seconds from ``started`` (a ``time.perf_counter``)."""

    limit_s: float
    started: float = field(default_factory=time.perf_counter)
    plans: list[PhasePlan] = field(default_factory=list)

    @property
    def remaining_s(self) -> float:
        return self.limit_s - (time.perf_counter() - self.started)

    def to_dict(self) -> dict:
        return {"limit_minutes": self.limit_s / 60, "plans": [asdict(plan) for plan in self.plans]}


def phase_epochs(remaining_s: float, epoch_s: float, reserve_s: float, asked: int, at_least: int = 0) -> int:
    """Epochs of a phase that fit: ``floor((remaining - reserve) / epoch_s)``, between
    ``at_least`` and ``asked``. Pure arithmetic, the rule the tests check."""
    if epoch_s <= 0:
        return asked
    fit = math.floor(max(remaining_s - reserve_s, 0.0) / epoch_s)
    return max(at_least, min(asked, fit))


def evaluation_reserve(seconds_per_step: float, batch_size: int, images: int) -> float:
    """Seconds the evaluation after training needs: one forward pass over ``images`` (val
    and test) at the measured speed, plus the same again for calibration, the report's
    Grad-CAM gallery and its latency measurement."""
    per_image = seconds_per_step / max(batch_size, 1) / INFERENCE_SPEEDUP
    return 2.0 * images * per_image + 5.0


def measure_step_seconds(model: torch.nn.Module, criterion, images: torch.Tensor, targets: torch.Tensor,
                         device: torch.device, amp: torch.dtype | None, forward=None) -> float:
    """Seconds of one training step (forward, loss, backward) on ``images`` (N, 3, H, W), timed
    on a copy of ``model`` so that neither the weights nor the BatchNorm statistics move.

    ``forward``: how to call the copy (default: ``copy(images)``).
    """
    probe = copy.deepcopy(model)
    probe.train()
    call = forward or (lambda net, x: net(x))
    timings = []
    for step in range(PROBE_STEPS + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with autocast(device, amp):
            loss = criterion(call(probe, images), targets)
        loss.backward()
        probe.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first step pays for allocations and kernel selection
            timings.append(time.perf_counter() - started)
    del probe
    return sorted(timings)[len(timings) // 2]
