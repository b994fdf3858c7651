"""Open-set detection metrics: how well a score separates known from unknown images.

Known images are the positives: AUROC (scikit-learn ``roc_auc_score``) and the
false-positive rate (share of unknown images accepted) at the first operating point that
accepts 95% of known images (from ``roc_curve``), as Hendrycks & Gimpel (2017) report them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def openset_metrics(known: np.ndarray, unknown: np.ndarray, threshold: float | None = None) -> dict:
    """AUROC and FPR at 95% TPR of (n_known,) and (n_unknown,) scores ("higher = more known");
    with ``threshold``, also the shares of known images accepted and unknown images rejected.

    Raises ValueError when either set is empty.
    """
    known, unknown = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise ValueError("open-set metrics need both known and unknown images")
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    s = np.r_[known, unknown]
    fpr, tpr, _ = roc_curve(y, s)
    at95 = int(np.searchsorted(tpr, 0.95, side="left"))  # roc_curve's tpr is non-decreasing
    result = {"auroc": float(roc_auc_score(y, s)), "fpr_at_95_tpr": float(fpr[min(at95, len(fpr) - 1)]),
              "n_known": int(len(known)), "n_unknown": int(len(unknown))}
    if threshold is not None:
        result.update(threshold=float(threshold), known_accepted=float((known >= threshold).mean()),
                      unknown_rejected=float((unknown < threshold).mean()))
    return result
