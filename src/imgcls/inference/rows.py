"""One prediction row per image, the same for ``imgcls predict`` (CSV) and the server (JSON).

Single-label rows name the most probable class; multilabel rows name the predicted set
(every label whose sigmoid probability reaches its threshold) and carry every label's
probability.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.special import expit

from imgcls.inference.unknown import UNKNOWN_LABEL, UnknownRule
from imgcls.metrics.calibration import softmax


def format_predictions(scaled_logits: np.ndarray, classes: list[str], topk: int, rule: UnknownRule,
                       temperature: float, names: list[str | None] | None = None,
                       coarse_probs: np.ndarray | None = None, coarse_classes: list[str] | None = None,
                       thresholds: list[float] | np.ndarray | None = None, separator: str = ";") -> list[dict]:
    """Rows for (n, C) ``logits / temperature``: ``path`` (the name), ``label`` (``unknown``
    when the open-set rule rejects the image), ``probability`` (of the top class), ``topk``
    ([(label, probability)], most probable first), ``unknown`` (bool), ``error`` (""), plus
    ``unknown_score`` when the rule is active and ``coarse_label``/``coarse_probability``
    for a hierarchical model.

    ``thresholds`` (one per class) makes the rows multilabel: ``labels`` (the predicted set,
    in class order), ``label`` (that set joined by ``separator``), ``probabilities``
    ({class: sigmoid probability}), ``probability`` and ``topk`` by sigmoid probability."""
    if thresholds is not None:
        return _multilabel_rows(scaled_logits, classes, topk, np.asarray(thresholds, dtype=np.float64), names,
                                separator)
    probs = softmax(scaled_logits)
    names = names if names is not None else [None] * len(probs)
    k = min(topk, len(classes))
    scores = rule.scores(scaled_logits, temperature) if rule.active else None
    rows = []
    for i, (name, row_probs) in enumerate(zip(names, probs)):
        order = np.argsort(-row_probs, kind="stable")[:k]
        top = [(classes[c], float(row_probs[c])) for c in order]
        row = {"path": None if name is None else str(name), "label": top[0][0], "probability": top[0][1],
               "topk": top, "unknown": False, "error": ""}
        if scores is not None:
            row.update(unknown_score=float(scores[i]), unknown=bool(scores[i] < rule.threshold))
            if row["unknown"]:
                row["label"] = UNKNOWN_LABEL
        if coarse_probs is not None and coarse_classes is not None:
            best = int(np.argmax(coarse_probs[i]))
            row.update(coarse_label=coarse_classes[best], coarse_probability=float(coarse_probs[i][best]))
        rows.append(row)
    return rows


def _multilabel_rows(logits: np.ndarray, classes: list[str], topk: int, thresholds: np.ndarray,
                     names: list[str | None] | None, separator: str) -> list[dict]:
    probs = expit(np.asarray(logits, dtype=np.float64))
    names = names if names is not None else [None] * len(probs)
    k = min(topk, len(classes))
    rows = []
    for name, row_probs in zip(names, probs):
        chosen = [classes[c] for c in np.flatnonzero(row_probs >= thresholds)]
        order = np.argsort(-row_probs, kind="stable")[:k]
        rows.append({"path": None if name is None else str(name), "label": separator.join(chosen), "labels": chosen,
                     "probability": float(row_probs.max()), "probabilities": dict(zip(classes, row_probs.tolist())),
                     "topk": [(classes[c], float(row_probs[c])) for c in order], "unknown": False, "error": ""})
    return rows


def error_row(name: str | Path | None, reason: str) -> dict:
    """The row of an image that could not be decoded."""
    return {"path": None if name is None else str(name), "label": "", "probability": float("nan"), "topk": [],
            "unknown": False, "error": reason}


def write_predictions_csv(rows: list[dict], out: str | Path, topk: int) -> Path:
    """``path,label,probability[,label_k,probability_k...][,coarse...][,top_class,unknown_score],error``;
    multilabel rows: ``path,labels,p_<class>...,error`` (see :func:`write_multilabel_csv`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if any("labels" in row for row in rows):
        return write_multilabel_csv(rows, out)
    header = ["path", "label", "probability"]
    for k in range(2, topk + 1):
        header += [f"label_{k}", f"probability_{k}"]
    levels = any("coarse_label" in row for row in rows)
    openset = any("unknown_score" in row for row in rows)  # the top class is kept beside 'unknown'
    extra = (["coarse_label", "coarse_probability"] if levels else []) + (
        ["top_class", "unknown_score"] if openset else [])
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + extra + ["error"])
        for row in rows:
            line = [row["path"], row["label"], "" if row["error"] else f"{row['probability']:.6f}"]
            for k in range(1, topk):
                label, prob = row["topk"][k] if k < len(row["topk"]) else ("", None)
                line += [label, "" if prob is None else f"{prob:.6f}"]
            if levels:
                line += [row.get("coarse_label", ""),
                         f"{row['coarse_probability']:.6f}" if "coarse_label" in row else ""]
            if openset:
                line += [row["topk"][0][0] if row["topk"] else "",
                         f"{row['unknown_score']:.6f}" if "unknown_score" in row else ""]
            writer.writerow(line + [row["error"]])
    return out


def write_multilabel_csv(rows: list[dict], out: Path) -> Path:
    """``path,labels,p_<class>...,error``: the predicted set (joined as in the manifest, empty
    when no label reaches its threshold) and every label's probability, one column each."""
    classes = next((list(row["probabilities"]) for row in rows if row.get("probabilities")), [])
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", *[f"p_{name}" for name in classes], "error"])
        for row in rows:
            probs = row.get("probabilities") or {}
            writer.writerow([row["path"], row["label"], *[f"{probs[c]:.6f}" if c in probs else "" for c in classes],
                             row["error"]])
    return out
