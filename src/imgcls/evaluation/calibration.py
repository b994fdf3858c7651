"""Temperature scaling and reliability statistics (Guo et al., 2017, "On Calibration of
Modern Neural Networks").

One scalar ``T`` divides the logits before the softmax. It is fitted on the validation
split by minimising the negative log-likelihood, stored in the checkpoint (``temperature``
plus a ``calibration`` summary), and from then on every ``predict`` / ``eval`` uses it.
Dividing by ``T`` never changes the arg-max, so accuracy, F1 and the confusion matrix stay
as they were; only the probabilities (log loss, ECE) move.

scikit-learn's ``CalibratedClassifierCV`` wraps estimators rather than a fixed set of logits
and has no temperature scaling, so the one-parameter fit is written here with torch's LBFGS.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgcls.evaluation.metrics import ECE_BINS
from imgcls.runtime import log

if TYPE_CHECKING:
    from imgcls.deploy.predict import Classifier

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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / T)``."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(targets, dtype=np.int64))))


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


def reliability_bins(targets: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-1 confidence histogram: per bin the count, accuracy and mean confidence, and ECE.

    Bins are equal-width over [0, 1], upper-inclusive (the first also takes 0), exactly as
    ``metrics._expected_calibration_error`` bins them, so the two ECEs agree; this version
    also returns the per-bin values a reliability diagram draws.
    """
    y = np.asarray(targets)
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
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


def calibration_summary(logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, Any]:
    """NLL, ECE and reliability bins at T = 1 ("before") and at ``temperature`` ("after")."""
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


def calibrate_classifier(classifier: "Classifier", batch_size: int = 64, workers: int | None = None) -> dict | None:
    """Fit ``T`` on the run's own validation split, store it in the checkpoint file and use it.

    Returns the summary (also kept as ``classifier.calibration``), or None when the run's
    validation images cannot be read any more (moved dataset): the stored ``T`` is then kept.
    """
    from imgcls.data.sources import DatasetError
    from imgcls.evaluation.evaluate import evaluate_samples, load_split

    try:
        _, samples = load_split(None, classifier.config, "val")
        _, predictions = evaluate_samples(classifier.model, classifier.classes, classifier.preprocessing, samples,
                                          classifier.device, batch_size=batch_size, temperature=1.0,
                                          workers=workers, raw=classifier.remembered(samples))
        classifier.remember(samples, predictions)
    except (DatasetError, OSError) as err:
        log.warning("temperature scaling skipped: the run's validation split is not readable (%s)", err)
        return None
    logits = raw_logits(predictions, 1.0)
    temperature = fit_temperature(logits, predictions.targets)
    summary = {"split": "val", **calibration_summary(logits, predictions.targets, temperature)}
    classifier.temperature = temperature
    classifier.calibration = summary
    store_calibration(classifier.checkpoint_path, summary)
    log.info("temperature scaling: T = %.3f fitted on val (NLL %.4f -> %.4f, ECE %.4f -> %.4f)", temperature,
             summary["nll_before"], summary["nll_after"], summary["ece_before"], summary["ece_after"])
    return summary


def store_calibration(checkpoint_path: Path, summary: dict) -> None:
    """Write ``temperature`` and the ``calibration`` summary into an existing checkpoint."""
    from imgcls.training.checkpoint import read_checkpoint, save_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    checkpoint.pop("path", None)
    checkpoint.pop("format", None)
    checkpoint["temperature"] = summary["temperature"]
    checkpoint["calibration"] = summary
    try:
        save_checkpoint(Path(checkpoint_path), **checkpoint)
    except OSError as err:  # a read-only checkpoint still gets a report; T is used in memory
        log.warning("%s: cannot store the temperature (%s); it is used for this run only", checkpoint_path, err)
