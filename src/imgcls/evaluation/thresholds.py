"""Decision thresholds of a multilabel model, fitted on the validation split.

A sigmoid output of 0.5 is rarely the best place to say "this label is there": rare labels
and a loss that down-weights negatives (ASL) move it. Two rules are fitted to maximise F1
(:func:`imgcls.metrics.multilabel.best_f1_threshold`, scikit-learn's precision-recall curve
underneath):

* one **global** threshold for every label, maximising micro-F1 over all (image, label) pairs;
* a **per-label** threshold maximising each label's own F1. A label with fewer than
  ``MIN_POSITIVES`` positives in val gets the global one instead: a threshold fitted on two
  or three images follows their noise.

The per-label thresholds are what ``predict``, ``eval``, the server and ONNX exports apply;
the caller (:func:`imgcls.api.fit_on_validation`) stores both in the model card.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from imgcls.inference.card import DEFAULT_THRESHOLD, LabelThresholds
from imgcls.inference.predictions import Predictions
from imgcls.metrics.multilabel import best_f1_threshold, decisions
from imgcls.runtime import log

MIN_POSITIVES = 5


def fit_thresholds(predictions: Predictions, classes: list[str],
                   min_positives: int = MIN_POSITIVES) -> LabelThresholds:
    """The global and per-label F1-maximising thresholds of multilabel ``predictions`` (probs
    (n, C) sigmoids, targets (n, C) multi-hot) of the validation split.

    ``fit`` records the split size, the labels that fell back to the global threshold and the
    micro- and samples-F1 of the three rules (0.5, global, per-label) on this split (which
    flatters the fitted ones: they were chosen on it). A split without any label keeps 0.5.
    """
    y = np.asarray(predictions.targets, dtype=np.int64)
    p = np.asarray(predictions.probs, dtype=np.float64)
    if not y.any():
        log.warning("thresholds: no validation image carries a label; every label keeps %g", DEFAULT_THRESHOLD)
        return LabelThresholds([DEFAULT_THRESHOLD] * len(classes), DEFAULT_THRESHOLD, {"split": "val", "n": len(y)})
    global_threshold, _ = best_f1_threshold(y, p)
    per_label, fallback = [], []
    for c, name in enumerate(classes):
        positives = int(y[:, c].sum())
        if min_positives <= positives < len(y):
            per_label.append(best_f1_threshold(y[:, c], p[:, c])[0])
        else:
            per_label.append(global_threshold)
            fallback.append(name)
    rules = {"0.5": DEFAULT_THRESHOLD, "global": global_threshold, "per_label": np.array(per_label)}
    fit = {"split": "val", "n": int(len(y)), "min_positives": min_positives, "global_for": fallback,
           **{f"f1_micro_{rule}": _f1(y, p, t, "micro") for rule, t in rules.items()},
           **{f"f1_samples_{rule}": _f1(y, p, t, "samples") for rule, t in rules.items()}}
    log.info("thresholds fitted on val (%d images): global %.3f, per label %.2f-%.2f%s; micro-F1 %.4f at 0.5, "
             "%.4f global, %.4f per label", len(y), global_threshold, min(per_label), max(per_label),
             f" ({len(fallback)} labels with < {min_positives} positives use the global one)" if fallback else "",
             fit["f1_micro_0.5"], fit["f1_micro_global"], fit["f1_micro_per_label"])
    return LabelThresholds(per_label=[float(t) for t in per_label], global_threshold=float(global_threshold), fit=fit)


def _f1(y: np.ndarray, p: np.ndarray, thresholds, average: str) -> float:
    return float(f1_score(y, decisions(p, thresholds), average=average, zero_division=1.0 if average == "samples"
                          else 0.0))
