"""Metrics of a hierarchical (coarse + fine) model: both levels and their consistency.

Coarse metrics come from the coarse head, the model's own coarse prediction: that is what
seed 004 reports as its "general" accuracy, and the consistency rate (the predicted fine
class lies inside the predicted coarse class) only means something between two separate
predictions. The coarse accuracy implied by the fine head (fine probabilities summed per
coarse class) is reported beside it as ``coarse_top1_from_fine``.
"""

from __future__ import annotations

import numpy as np

from imgcls.data.hierarchy import Hierarchy
from imgcls.metrics.classification import classification_metrics


def consistency_rate(fine_probs: np.ndarray, coarse_probs: np.ndarray, hierarchy: Hierarchy) -> float:
    """Share of images whose predicted fine class belongs to the predicted coarse class."""
    fine_pred = np.asarray(fine_probs).argmax(axis=1)
    coarse_pred = np.asarray(coarse_probs).argmax(axis=1)
    return float(np.mean(hierarchy.parent[fine_pred] == coarse_pred))


def hierarchy_metrics(fine_targets: np.ndarray, fine_probs: np.ndarray, coarse_probs: np.ndarray,
                      hierarchy: Hierarchy, topk: int = 3) -> dict:
    """``coarse`` (full metrics of the coarse head), ``consistency``, ``coarse_top1_from_fine``, ``both_top1``."""
    coarse_targets = hierarchy.coarse_targets(fine_targets)
    summed = np.asarray(fine_probs) @ hierarchy.membership()
    fine_right = np.asarray(fine_probs).argmax(axis=1) == np.asarray(fine_targets)
    coarse_right = np.asarray(coarse_probs).argmax(axis=1) == coarse_targets
    return {
        "coarse": classification_metrics(coarse_targets, coarse_probs, hierarchy.coarse_classes, topk=topk),
        "consistency": consistency_rate(fine_probs, coarse_probs, hierarchy),
        "coarse_top1_from_fine": float(np.mean(summed.argmax(axis=1) == coarse_targets)),
        "both_top1": float(np.mean(fine_right & coarse_right)),
    }


def hierarchy_epoch_metrics(val, hierarchy_map: dict[str, str] | None, classes: list[str]) -> dict:
    """Columns of a training epoch row: coarse loss and accuracy on val, and consistency."""
    if not hierarchy_map or val.coarse_probs is None or not len(val.targets):
        return {}
    hierarchy = Hierarchy.from_map(classes, hierarchy_map)
    coarse_targets = hierarchy.coarse_targets(val.targets)
    picked = val.coarse_probs[np.arange(len(coarse_targets)), coarse_targets]
    return {
        "val_coarse_loss": float(-np.mean(np.log(np.maximum(picked, 1e-12)))),
        "val_coarse_acc": float(np.mean(val.coarse_probs.argmax(axis=1) == coarse_targets)),
        "val_consistency": consistency_rate(val.probs, val.coarse_probs, hierarchy),
    }


def format_hierarchy_lines(metrics: dict) -> list[str]:
    coarse = metrics["coarse"]
    return [
        f"Hierarchy ({coarse['num_classes']} coarse classes; coarse metrics from the coarse head)",
        f"  fine top-1                      {metrics['top1']:.4f}",
        f"  coarse top-1                    {coarse['top1']:.4f}   (macro-F1 {coarse['f1_macro']:.4f})",
        f"  coarse top-1 from fine (summed) {metrics['coarse_top1_from_fine']:.4f}",
        f"  both levels right               {metrics['both_top1']:.4f}",
        f"  consistency                     {metrics['consistency']:.4f}   "
        "(predicted fine class inside the predicted coarse class)",
    ]
