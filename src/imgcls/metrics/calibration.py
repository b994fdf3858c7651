"""Calibration statistics: reliability bins, the one ECE of imgcls, NLL at a temperature.

Pure numpy/torch functions of logits or probabilities; fitting a temperature is in
:mod:`imgcls.evaluation.calibration`. ECE is Guo et al., 2017 ("On Calibration of Modern
Neural Networks"): top-1 confidences in ``ECE_BINS`` equal-width bins over [0, 1], each bin
upper-inclusive (the first also takes 0), |accuracy - mean confidence| weighted by the
share of images in the bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` of (n, C) logits, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / T)`` for (n, C) logits and (n,) int targets."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(targets, dtype=np.int64))))


def reliability_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-1 confidence histogram of (n, C) ``probs``: per bin the count, accuracy and mean
    confidence (None for empty bins), the bin edges, and ``ece``."""
    y = np.asarray(targets)
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right=True: a confidence of exactly 1.0 lands in the last bin, not an overflow bin.
    index = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(np.abs(accuracy[filled] - mean_conf[filled]) * count[filled]) / max(len(y), 1))
    return {
        "edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "accuracy": [float(a) if f else None for a, f in zip(accuracy, filled)],
        "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled)],
        "ece": ece,
    }


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-1 prediction (see the module docstring); a share in [0, 1]."""
    return reliability_bins(targets, probs, n_bins)["ece"]


def calibration_summary(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, Any]:
    """NLL, ECE and reliability bins of (n, C) logits at T = 1 ("before") and at ``temperature`` ("after")."""
    bins_before = reliability_bins(targets, softmax(logits))
    bins_after = reliability_bins(targets, softmax(logits, temperature))
    return {
        "temperature": float(temperature),
        "n": int(len(targets)),
        "nll_before": negative_log_likelihood(logits, targets),
        "nll_after": negative_log_likelihood(logits, targets, temperature),
        "ece_before": bins_before["ece"],
        "ece_after": bins_after["ece"],
        "bins_before": bins_before,
        "bins_after": bins_after,
    }
