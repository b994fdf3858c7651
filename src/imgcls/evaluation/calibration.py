"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar ``T`` divides the logits before the softmax. It is fitted on the validation
split by minimising the negative log-likelihood; the caller stores it in the model card
(``temperature`` plus a ``calibration`` summary), and from then on every ``predict`` /
``eval`` uses it. The statistics (ECE, reliability bins) are in :mod:`imgcls.metrics.calibration`.
Dividing by ``T`` never changes the arg-max, so accuracy, F1 and the confusion matrix stay
as they were; only the probabilities (log loss, ECE) move.

scikit-learn's ``CalibratedClassifierCV`` wraps estimators rather than a fixed set of logits
and has no temperature scaling, so the one-parameter fit is written here with torch's LBFGS.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from imgcls.inference.predictions import Predictions
from imgcls.metrics.calibration import calibration_summary
from imgcls.runtime import log

# Temperatures outside this range mean a degenerate fit (e.g. a validation set the model
# gets 100% right with margin pushes T towards 0); they are clamped rather than trusted.
T_MIN, T_MAX = 0.05, 20.0


def logits_from_probs(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Logits (up to a per-row constant, which the softmax ignores) from probabilities that
    were computed at ``temperature``.

    Inference keeps probabilities, not logits; ``log p = z / T - logsumexp`` recovers ``z``.
    float32 softmax underflows to 0 only for logit gaps above ~87, which label-smoothed
    classifiers never reach, so clipping at float32's smallest normal number is harmless.
    """
    p = np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float32).tiny)
    return np.log(p) * temperature


def raw_logits(predictions, temperature: float) -> np.ndarray:
    """The un-scaled logits of predictions made at ``temperature``: exact when inference kept
    its logits (which it stores divided by the temperature), else recovered from the probabilities."""
    if getattr(predictions, "logits", None) is not None and len(predictions.logits) == len(predictions.probs):
        return np.asarray(predictions.logits, dtype=np.float64) * temperature
    return logits_from_probs(predictions.probs, temperature)


def fit_temperature(logits: np.ndarray, targets: np.ndarray, max_iter: int = 100) -> float:
    """The ``T`` minimising the validation NLL of ``softmax(logits / T)``.

    Optimised over ``log T`` so ``T`` stays positive without constraints; the NLL is convex
    in ``1/T`` (a log-sum-exp of linear functions), so LBFGS finds the global minimum.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if z.ndim != 2 or len(z) != len(y) or not len(y):
        raise ValueError(f"fit_temperature: need (n, C) logits and n targets, got {tuple(z.shape)} and {len(y)}")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, T_MIN), T_MAX)


def fit_calibration(raw: Predictions) -> dict[str, Any]:
    """Fit ``T`` on validation predictions made at temperature 1 (``raw``); returns the
    summary (``temperature``, NLL and ECE before/after, reliability bins) that the caller
    stores in the model card (``temperature`` and ``calibration``)."""
    logits = raw_logits(raw, 1.0)
    temperature = fit_temperature(logits, raw.targets)
    summary = {"split": "val", **calibration_summary(logits, raw.targets, temperature)}
    log.info("temperature scaling: T = %.3f fitted on val (NLL %.4f -> %.4f, ECE %.4f -> %.4f)", temperature,
             summary["nll_before"], summary["nll_after"], summary["ece_before"], summary["ece_after"])
    return summary
