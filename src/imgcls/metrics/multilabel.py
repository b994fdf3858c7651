"""Multi-label classification metrics: (n, C) 0/1 truth and (n, C) label probabilities in,
one JSON-ready dictionary out.

scikit-learn computes every number; this module chooses the inputs (the decision
thresholds, which labels an average runs over) and names the results as the field does:

* **mAP**: average precision per label (sklearn's ``average_precision_score``, the step-wise
  area under the precision-recall curve), ``map_macro`` its mean over the labels that have a
  positive in the set, ``map_micro`` over all (image, label) pairs pooled;
* per label: precision, recall and F1 at the label's threshold, AP, ROC AUC, support;
* F1 ``micro`` (pairs pooled), ``macro`` (mean over labels present), ``samples`` (mean over
  images; an image with no true and no predicted label scores 1, sklearn's
  ``zero_division=1``: predicting nothing for a true negative is right);
* subset accuracy (the whole set right), Hamming loss (share of wrong (image, label)
  decisions), label cardinality (mean set size) of truth and predictions;
* co-occurrence counts of label pairs in the truth and in the predictions.

Decisions are ``probability >= threshold`` (one threshold per label), the rule of
``precision_recall_curve``. Only numpy and scikit-learn are used (no torch).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss,
                             precision_recall_curve, precision_recall_fscore_support, roc_auc_score)

__all__ = ["best_f1_threshold", "decisions", "format_multilabel_table", "mean_average_precision",
           "multilabel_metrics", "samples_f1", "write_multilabel_metrics"]

DEFAULT_THRESHOLD = 0.5
BEST_WORST_LIMIT = 5


def _validate(y_true: Any, probs: Any, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(truth as int64 0/1, probabilities as float64), both (n, C); ValueError when they do not fit."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or p.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"multilabel metrics need (n, C) truth and probabilities of one shape, got {y.shape} and "
                         f"{p.shape}")
    if not len(y):
        raise ValueError("cannot compute metrics on an empty evaluation set (n == 0)")
    if class_names is not None and len(class_names) != p.shape[1]:
        raise ValueError(f"class_names has {len(class_names)} entries but probs has {p.shape[1]} columns")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multilabel truth must be 0/1 (multi-hot rows)")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    return y.astype(np.int64), p


def decisions(probs: np.ndarray, thresholds: float | np.ndarray = DEFAULT_THRESHOLD) -> np.ndarray:
    """(n, C) 0/1: label c is predicted where ``probs[:, c] >= thresholds[c]`` (or one threshold)."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def mean_average_precision(y_true: Any, probs: Any) -> float:
    """Macro mAP: the mean AP of the labels with at least one positive (NaN when none has one).

    A label without positives has no precision-recall curve (sklearn warns and scores it 0);
    counting it would mark a model down for the make-up of the set."""
    y, p = _validate(y_true, probs)
    present = y.sum(0) > 0
    if not present.any():
        return float("nan")
    return float(average_precision_score(y[:, present], p[:, present], average="macro"))


def samples_f1(y_true: Any, probs: Any, thresholds: float | np.ndarray = DEFAULT_THRESHOLD) -> float:
    """Mean over images of the F1 of the predicted set against the true set."""
    y, p = _validate(y_true, probs)
    return float(f1_score(y, decisions(p, thresholds), average="samples", zero_division=1.0))


def best_f1_threshold(y_true: Any, scores: Any) -> tuple[float, float]:
    """``(threshold, F1)``: the threshold that maximises the F1 of ``scores >= threshold``
    against the 0/1 ``y_true`` (1-D: one label, or all pairs flattened for a micro-F1 fit).
    Candidates are the scores themselves (``precision_recall_curve``), ties going to the
    highest; the threshold returned lies halfway between the best candidate and the next
    lower score, which decides every image of this set the same way but does not let a
    rounding difference (ONNX Runtime against PyTorch) flip the image the threshold was
    taken from. Raises ValueError when ``y_true`` has no positive."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not y.any():
        raise ValueError("no positive: an F1-optimal threshold is undefined")
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    lower = s[s < thresholds[best]]
    threshold = (thresholds[best] + lower.max()) / 2 if len(lower) else thresholds[best]
    return float(threshold), float(f1[best])


def _per_label(y: np.ndarray, p: np.ndarray, pred: np.ndarray, names: list[str],
               thresholds: np.ndarray) -> list[dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    rows = []
    for c, name in enumerate(names):
        positives = int(y[:, c].sum())
        both = 0 < positives < len(y)
        rows.append({
            "class": name,
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "ap": float(average_precision_score(y[:, c], p[:, c])) if positives else None,
            "roc_auc": float(roc_auc_score(y[:, c], p[:, c])) if both else None,
            "support": int(support[c]),
            "predicted": int(pred[:, c].sum()),
            "threshold": float(thresholds[c]),
        })
    return rows


def _averages(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    present = [c for c in range(y.shape[1]) if y[:, c].any()]
    out = {}
    for average, labels in (("micro", None), ("macro", present)):
        if average == "macro" and not present:
            out.update(precision_macro=float("nan"), recall_macro=float("nan"), f1_macro=float("nan"))
            continue
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    out["f1_samples"] = float(f1_score(y, pred, average="samples", zero_division=1.0))
    return out


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def multilabel_metrics(y_true: Any, probs: Any, class_names: list[str],
                       thresholds: float | np.ndarray = DEFAULT_THRESHOLD) -> dict:
    """Every multilabel metric of the module docstring as a JSON-ready dict.

    Args:
        y_true: (n, C) 0/1 truth (multi-hot rows; an all-zero row is an image without labels).
        probs: (n, C) label probabilities (sigmoid outputs).
        class_names: the C label names.
        thresholds: one threshold, or (C,) per-label thresholds; a label is predicted at
            ``probs >= threshold``.

    Averages over labels (macro F1, mAP, ROC AUC) run over the labels with a positive in
    the set; ``absent_labels`` names the others. Raises ValueError for shapes that do not
    fit, an empty set, non-0/1 truth or non-finite probabilities.
    """
    y, p = _validate(y_true, probs, class_names)
    n, num_labels = y.shape
    per_threshold = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num_labels,)).copy()
    pred = decisions(p, per_threshold)
    rows = _per_label(y, p, pred, class_names, per_threshold)
    present = [r for r in rows if r["support"] > 0]
    by_ap = sorted(present, key=lambda r: (-r["ap"], r["class"]))
    return {
        "task": "multilabel",
        "n": int(n),
        "num_classes": int(num_labels),
        "map_macro": mean_average_precision(y, p),
        "map_micro": float(average_precision_score(y, p, average="micro")) if y.any() else float("nan"),
        **_averages(y, pred),
        "subset_accuracy": float(accuracy_score(y, pred)),
        "hamming_loss": float(hamming_loss(y, pred)),
        "cardinality_true": float(y.sum(1).mean()),
        "cardinality_pred": float(pred.sum(1).mean()),
        "empty_true": int((y.sum(1) == 0).sum()),
        "empty_pred": int((pred.sum(1) == 0).sum()),
        "roc_auc_macro": _mean_or_none([r["roc_auc"] for r in rows]),
        "thresholds": per_threshold.tolist(),
        "per_class": rows,
        "absent_labels": [r["class"] for r in rows if r["support"] == 0],
        "cooccurrence_true": (y.T @ y).astype(int).tolist(),
        "cooccurrence_pred": (pred.T @ pred).astype(int).tolist(),
        "best_classes": [r["class"] for r in by_ap[:BEST_WORST_LIMIT]],
        "worst_classes": [r["class"] for r in by_ap[::-1][:BEST_WORST_LIMIT]],
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_multilabel_table(metrics: dict, max_labels: int = 20) -> str:
    """The metrics of :func:`multilabel_metrics` as plain text: the summary, then per label
    (the worst ``max_labels`` by AP when there are more)."""
    m = metrics
    summary = [
        ("mAP (macro / micro)", f"{_fmt(m['map_macro'])} / {_fmt(m['map_micro'])}"),
        ("F1 (micro / macro / samples)", f"{_fmt(m['f1_micro'])} / {_fmt(m['f1_macro'])} / {_fmt(m['f1_samples'])}"),
        ("precision (micro / macro)", f"{_fmt(m['precision_micro'])} / {_fmt(m['precision_macro'])}"),
        ("recall    (micro / macro)", f"{_fmt(m['recall_micro'])} / {_fmt(m['recall_macro'])}"),
        ("subset accuracy", _fmt(m["subset_accuracy"])),
        ("Hamming loss", _fmt(m["hamming_loss"])),
        ("labels per image (pred / true)", f"{m['cardinality_pred']:.3f} / {m['cardinality_true']:.3f}"),
        ("ROC AUC (macro over labels)", _fmt(m["roc_auc_macro"])),
        ("n", str(m["n"])),
    ]
    width = max(len(label) for label, _ in summary)
    lines = ["Summary"] + [f"  {label:<{width}}  {value}" for label, value in summary]
    if m.get("absent_labels"):
        lines.append(f"  (no image of this set has: {', '.join(m['absent_labels'])}; left out of the averages)")
    rows, title = m["per_class"], "Per label"
    if len(rows) > max_labels:
        rows = sorted(rows, key=lambda r: (-1.0 if r["ap"] is None else r["ap"], r["class"]))[:max_labels]
        title = f"Per label (worst {max_labels} of {len(m['per_class'])} by AP)"
    name_w = max([len("label")] + [len(r["class"]) for r in rows])
    header = (f"  {'label':<{name_w}}  {'AP':>7}  {'precision':>9}  {'recall':>7}  {'F1':>7}  {'threshold':>9}"
              f"  {'support':>7}")
    table = [title, header, "  " + "-" * (len(header) - 2)]
    for r in rows:
        table.append(f"  {r['class']:<{name_w}}  {_fmt(r['ap']):>7}  {r['precision']:>9.4f}  {r['recall']:>7.4f}  "
                     f"{r['f1']:>7.4f}  {r['threshold']:>9.4f}  {r['support']:>7d}")
    return "\n".join(lines) + "\n\n" + "\n".join(table)


PER_LABEL_FIELDS = ["class", "ap", "precision", "recall", "f1", "roc_auc", "support", "predicted", "threshold"]


def write_multilabel_metrics(metrics: dict, out_dir: Path, prefix: str = "eval") -> dict[str, Path]:
    """``<prefix>.json`` (NaN written as null), ``<prefix>_per_label.csv`` and
    ``<prefix>_cooccurrence.csv`` (C x C: images carrying both labels, the diagonal each
    label's count, in the truth); returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{prefix}.json", "per_label": out_dir / f"{prefix}_per_label.csv",
             "cooccurrence": out_dir / f"{prefix}_cooccurrence.csv"}
    paths["json"].write_text(json.dumps(_finite(metrics), indent=2, allow_nan=False) + "\n")
    with paths["per_label"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_LABEL_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(metrics["per_class"])
    names = [r["class"] for r in metrics["per_class"]]
    with paths["cooccurrence"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\true", *names])
        writer.writerows([name, *row] for name, row in zip(names, metrics["cooccurrence_true"]))
    return paths


def _finite(value):
    """NaN -> None, recursively, so strict JSON holds undefined averages as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
