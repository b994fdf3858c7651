"""The learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training Neural
Networks"; the form fastai made popular): train with a rate that grows exponentially from
``start_lr`` to ``end_lr`` over ``steps`` updates, record the loss, stop when it diverges.

Rule for the suggestion, written down: the rate at the minimum of the smoothed loss,
divided by 10 (fastai's ``lr_min``): at the minimum the loss is already on the edge of
blowing up, so a tenth of it still learns fast and stays stable. The smoothed loss is an
exponential moving average with bias correction (``beta = 0.98``); the test stops when it
exceeds ``diverge`` times its minimum.

scikit-learn and timm have no range test and fastai's is bound to its Learner, so the
test is written here; it is a loop over a step function, which keeps it testable on a
synthetic loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class RangeTest:
    """The test's record: one rate and loss per step, the suggestion and how it was chosen."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    stopped: str  # why it ended: "end of range" or "diverged at ..."
    phase: str = "head"

    def to_dict(self) -> dict:
        return asdict(self)


SUGGESTION_RULE = "rate at the minimum of the smoothed loss / 10 (fastai lr_min)"


def range_test(step: Callable[[float], float], start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
               beta: float = 0.98, diverge: float = 4.0, phase: str = "head") -> RangeTest:
    """Run ``step(lr) -> loss`` (one optimiser update at ``lr``) for rates growing
    exponentially from ``start_lr`` to ``end_lr``; stop at divergence or a non-finite loss.

    Raises ValueError for an empty or inverted range.
    """
    if not 0 < start_lr < end_lr or steps < 2:
        raise ValueError(f"range test: need 0 < start_lr < end_lr and steps >= 2 (got {start_lr}, {end_lr}, {steps})")
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, "end of range"
    for i in range(steps):
        lr = start_lr * factor**i
        loss = float(step(lr))
        if not math.isfinite(loss):
            stopped = f"loss not finite at lr {lr:.3g}"
            break
        average = beta * average + (1 - beta) * loss
        value = average / (1 - beta ** (i + 1))  # bias correction: early values are not pulled to 0
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if i > 5 and value > diverge * best:
            stopped = f"diverged at lr {lr:.3g} (smoothed loss > {diverge:g} x its minimum)"
            break
    return RangeTest(lrs, losses, smoothed, suggest(lrs, smoothed), SUGGESTION_RULE, stopped, phase)


def suggest(lrs: list[float], smoothed: list[float]) -> float:
    """The suggested rate (see the module docstring); raises ValueError with no points."""
    if not lrs:
        raise ValueError("range test: no step gave a finite loss")
    at_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    return lrs[at_min] / 10


def make_step(optimizer, compute_loss: Callable[[], torch.Tensor]) -> Callable[[float], float]:
    """A ``step(lr) -> loss`` for :func:`range_test`: one update of ``optimizer`` on the loss
    that ``compute_loss`` returns, at ``lr`` for the head and the same ratio as configured
    for every other parameter group (the backbone keeps its share of the head's rate)."""
    head_lr = max(group["lr"] for group in optimizer.param_groups)
    ratios = [group["lr"] / head_lr for group in optimizer.param_groups]

    def step(lr: float) -> float:
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step
