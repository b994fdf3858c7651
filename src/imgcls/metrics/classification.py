"""Classification metrics for an evaluated model, as plain JSON-ready data.

The entry point is :func:`classification_metrics`, which turns integer labels
and a matrix of predicted class probabilities into one dictionary of headline
scores, per-class scores, the confusion matrix and the most common mistakes.
:func:`format_metrics_table` renders that dictionary for a terminal and
:func:`write_metrics` saves it as JSON plus two CSV files.

Only numpy and scikit-learn are used here (no torch), so the module can score
predictions produced anywhere, including offline from saved arrays.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from imgcls.metrics.calibration import ECE_BINS, expected_calibration_error

__all__ = ["ECE_BINS", "classification_metrics", "format_metrics_table", "topk_accuracy", "write_metrics"]

MOST_CONFUSED_LIMIT = 10
BEST_WORST_LIMIT = 5


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _validate(
    y_true: Any, probs: Any, class_names: list[str], topk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs and return (labels as int64, probabilities as float64)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, num_classes), got shape {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} samples but probs has {p.shape[0]} rows")
    if y.shape[0] == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set (n == 0)")
    if len(class_names) != p.shape[1]:
        raise ValueError(
            f"class_names has {len(class_names)} entries but probs has {p.shape[1]} columns"
        )
    if p.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got {p.shape[1]}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    # Float labels such as 2.0 are common after a round trip through numpy
    # arrays of mixed data; accept them only when they are whole numbers.
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(y == np.round(y)):
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(
            f"y_true labels must be in [0, {p.shape[1] - 1}], "
            f"got range [{y.min()}, {y.max()}]"
        )
    return y, p


def _sanitise_probs(probs: np.ndarray) -> np.ndarray:
    """Floor at eps and renormalise each row to sum to one.

    Softmax outputs in float16/float32 can contain exact zeros (log loss would
    be infinite) and rows that sum to 1 +/- 1e-4 (sklearn warns). Using the
    float64 machine epsilon as the floor matches sklearn's own clipping, so
    valid inputs are left numerically unchanged. There is deliberately no
    upper clip before renormalising: capping values above 1 would change the
    ranking within a row of unnormalised scores.
    """
    eps = np.finfo(np.float64).eps
    clipped = np.maximum(probs, eps)
    return clipped / clipped.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------
# Individual metrics
# --------------------------------------------------------------------------


def topk_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of the (n,) int labels ``y`` among the ``k`` highest of the (n, C) ``probs`` (or
    logits) of their row; NaN for an empty set. The one top-k of imgcls: training's
    per-epoch columns and evaluation both use it."""
    if not len(y):
        return float("nan")
    if k >= probs.shape[1]:
        return 1.0
    true_scores = probs[np.arange(len(y)), y]
    # Rank = number of classes scoring strictly higher than the true class, so
    # ties are resolved in the model's favour instead of by column order.
    rank = (probs > true_scores[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def _roc_auc_ovr(y: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro mean of one-vs-rest ROC AUCs over classes that can be scored.

    sklearn's roc_auc_score(multi_class="ovr") raises when a class is missing
    from y_true (the column count no longer matches; with labels= it instead
    yields NaN, or raises in older releases), because a one-vs-rest AUC needs
    positives and negatives. Absent classes are routine in small or imbalanced
    eval sets, and two classes take yet another code path. Scoring each class
    as a binary problem and skipping the undefined ones gives the same number
    when every class is present and a meaningful one when some are not.
    """
    aucs = []
    for c in range(probs.shape[1]):
        is_c = y == c
        if is_c.all() or not is_c.any():
            continue
        aucs.append(roc_auc_score(is_c.astype(np.int64), probs[:, c]))
    return float(np.mean(aucs)) if aucs else None


def _most_confused(
    cm: np.ndarray, class_names: list[str], limit: int = MOST_CONFUSED_LIMIT
) -> list[dict[str, Any]]:
    """Largest off-diagonal confusion-matrix cells, as (true, pred) pairs."""
    support = cm.sum(axis=1)
    pairs = []
    for t, p in zip(*np.nonzero(cm)):
        if t == p:
            continue
        count = int(cm[t, p])
        pairs.append({
            "true": class_names[t],
            "pred": class_names[p],
            "count": count,
            "rate": float(count / support[t]),  # support > 0 because count > 0
        })
    # sorted() is stable, so equal (count, rate) keep matrix order: deterministic.
    pairs.sort(key=lambda d: (-d["count"], -d["rate"]))
    return pairs[:limit]


def _best_and_worst(
    f1: np.ndarray, support: np.ndarray, class_names: list[str],
    limit: int = BEST_WORST_LIMIT,
) -> tuple[list[str], list[str]]:
    """Class names with the highest and lowest F1, ignoring absent classes.

    Absent classes have F1 = 0 only by the zero_division convention, so they
    would crowd out genuinely bad classes from the "worst" list.
    """
    present = [c for c in range(len(class_names)) if support[c] > 0]
    best = sorted(present, key=lambda c: (-f1[c], c))[:limit]
    worst = sorted(present, key=lambda c: (f1[c], c))[:limit]
    return [class_names[c] for c in best], [class_names[c] for c in worst]


def _prf(y: np.ndarray, pred: np.ndarray, labels: list[int]) -> dict[str, Any]:
    """Per-class and macro/weighted precision, recall and F1.

    The averages run over the classes present in ``y`` (scikit-learn's ``labels=``): a
    class the split has no image of has no recall, and counting it as 0 (the
    ``zero_division`` convention) would mark a perfect model down for the split's make-up.
    The per-class rows still list every class.
    """
    out: dict[str, Any] = {}
    present = [c for c in labels if np.any(y == c)]
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=present, average=average, zero_division=0
        )
        out[f"precision_{average}"] = float(p)
        out[f"recall_{average}"] = float(r)
        out[f"f1_{average}"] = float(f)
    p, r, f, s = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    out["_per_class"] = (p, r, f, s)
    return out


def _per_class_rows(
    class_names: list[str], prec: np.ndarray, rec: np.ndarray,
    f1: np.ndarray, support: np.ndarray,
) -> list[dict[str, Any]]:
    """Per-class scores in class order, converted to builtin types."""
    return [
        {
            "class": name,
            "precision": float(prec[c]),
            "recall": float(rec[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    ]


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], topk: int = 3
) -> dict:
    """Compute a full, JSON-serialisable metrics report.

    Macro and weighted averages are over the classes present in ``y_true``;
    ``absent_classes`` names the others.

    y_true: (n,) int class indices; probs: (n, C) probabilities (rows sum to 1).
    Probabilities are clipped and renormalised before use, so slightly
    unnormalised low-precision softmax outputs are accepted. Raises ValueError
    on inconsistent shapes, an empty set or labels outside [0, C).
    """
    y, raw = _validate(y_true, probs, class_names, topk)
    p = _sanitise_probs(raw)
    n, num_classes = p.shape
    labels = list(range(num_classes))
    k = min(topk, num_classes)
    pred = p.argmax(axis=1)

    prf = _prf(y, pred, labels)
    prec, rec, f1, support = prf.pop("_per_class")
    absent = [class_names[c] for c in labels if support[c] == 0]
    cm = confusion_matrix(y, pred, labels=labels)
    best, worst = _best_and_worst(f1, support, class_names)

    return {
        "n": int(n),
        "num_classes": int(num_classes),
        "topk": int(k),
        "top1": topk_accuracy(y, p, 1),
        "topk_accuracy": topk_accuracy(y, p, k),
        **prf,
        "log_loss": float(log_loss(y, p, labels=labels)),
        "roc_auc_ovr": _roc_auc_ovr(y, p),
        "mcc": float(matthews_corrcoef(y, pred)),
        "ece": expected_calibration_error(y, p),
        "per_class": _per_class_rows(class_names, prec, rec, f1, support),
        "absent_classes": absent,  # no image in this set: left out of the macro/weighted averages
        "confusion_matrix": cm.astype(int).tolist(),
        "most_confused": _most_confused(cm, class_names),
        "best_classes": best,
        "worst_classes": worst,
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _headline_lines(m: dict) -> list[str]:
    rows = [
        ("top-1 accuracy", _fmt(m["top1"])),
        (f"top-{m['topk']} accuracy", _fmt(m["topk_accuracy"])),
        ("precision (macro / weighted)",
         f"{_fmt(m['precision_macro'])} / {_fmt(m['precision_weighted'])}"),
        ("recall    (macro / weighted)",
         f"{_fmt(m['recall_macro'])} / {_fmt(m['recall_weighted'])}"),
        ("F1        (macro / weighted)",
         f"{_fmt(m['f1_macro'])} / {_fmt(m['f1_weighted'])}"),
        ("log loss", _fmt(m["log_loss"])),
        ("ROC AUC (one-vs-rest, macro)", _fmt(m["roc_auc_ovr"])),
        ("MCC", _fmt(m["mcc"])),
        ("ECE (15 bins)", _fmt(m["ece"])),
        ("n", str(m["n"])),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["Summary"] + [f"  {label:<{width}}  {value}" for label, value in rows]
    if m.get("absent_classes"):
        lines.append(f"  (absent from this set, left out of the averages: {', '.join(m['absent_classes'])})")
    return lines


def _per_class_lines(m: dict, max_classes: int) -> list[str]:
    rows = m["per_class"]
    title = "Per-class"
    if len(rows) > max_classes:
        # The worst classes are the actionable ones; listing hundreds of rows
        # would scroll the summary off the screen.
        rows = sorted(rows, key=lambda r: (r["f1"], r["class"]))[:max_classes]
        title = f"Per-class (worst {max_classes} of {len(m['per_class'])} by F1)"
    name_w = max([len("class")] + [len(r["class"]) for r in rows])
    header = f"  {'class':<{name_w}}  {'precision':>9}  {'recall':>9}  {'F1':>9}  {'support':>8}"
    lines = [title, header, "  " + "-" * (len(header) - 2)]
    for r in rows:
        lines.append(
            f"  {r['class']:<{name_w}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}"
            f"  {r['f1']:>9.4f}  {r['support']:>8d}"
        )
    return lines


def _confused_lines(m: dict) -> list[str]:
    pairs = m["most_confused"]
    if not pairs:
        return ["Most confused pairs", "  (none: no misclassifications)"]
    true_w = max([len("true")] + [len(d["true"]) for d in pairs])
    pred_w = max([len("predicted")] + [len(d["pred"]) for d in pairs])
    header = f"  {'true':<{true_w}}  {'predicted':<{pred_w}}  {'count':>7}  {'rate':>7}"
    lines = ["Most confused pairs", header, "  " + "-" * (len(header) - 2)]
    for d in pairs:
        lines.append(
            f"  {d['true']:<{true_w}}  {d['pred']:<{pred_w}}  {d['count']:>7d}  {d['rate']:>7.4f}"
        )
    return lines


def format_metrics_table(metrics: dict, max_classes: int = 20) -> str:
    """Render a metrics dict from classification_metrics as plain text."""
    sections = [
        _headline_lines(metrics),
        _per_class_lines(metrics, max_classes),
        _confused_lines(metrics),
    ]
    return "\n\n".join("\n".join(s) for s in sections)


def write_metrics(metrics: dict, out_dir: Path, prefix: str = "eval") -> dict[str, Path]:
    """Write the metrics as JSON plus confusion-matrix and per-class CSVs.

    Returns the written paths keyed by "json", "confusion_matrix", "per_class".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{prefix}.json",
        "confusion_matrix": out_dir / f"{prefix}_confusion_matrix.csv",
        "per_class": out_dir / f"{prefix}_per_class.csv",
    }
    # allow_nan=False: fail loudly here rather than emit non-standard JSON
    # (NaN) that strict parsers in other tools would reject.
    paths["json"].write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")

    names = [row["class"] for row in metrics["per_class"]]
    with paths["confusion_matrix"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true\\pred", *names])
        for name, row in zip(names, metrics["confusion_matrix"]):
            writer.writerow([name, *row])

    fields = ["class", "precision", "recall", "f1", "support"]
    with paths["per_class"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(metrics["per_class"])
    return paths
