"""The report's figures, drawn with matplotlib and returned as PNG/JPEG data URIs so the
HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

BLUE, ORANGE, GREEN, RED, GREY = "#2563eb", "#ea580c", "#16a34a", "#dc2626", "#6b7280"
FULL_ORDER_LIMIT = 12  # up to this many classes the confusion matrix keeps the class order
ANNOTATE_LIMIT = 15  # ... and up to this many its cells carry their percentage
SUBMATRIX_FROM = 30  # above this many classes the most-confused sub-matrix is drawn too
SUBMATRIX_SIZE = 20

plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                     "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100})


def figure_uri(fig: plt.Figure, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_bytes(uri: str) -> bytes:
    """The PNG bytes of a ``data:image/png;base64,...`` URI (to write a figure to a file)."""
    return base64.b64decode(uri.partition(",")[2])


def image_uri(image: Image.Image, quality: int = 82) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------


def _series(history: list[dict], key: str) -> np.ndarray:
    values = []
    for row in history:
        try:
            values.append(float(row.get(key, "nan")))
        except (TypeError, ValueError):
            values.append(float("nan"))
    return np.array(values)


def _mark_phases(ax, history: list[dict], best_epoch: int | None) -> None:
    head = [int(r["epoch"]) for r in history if r.get("phase") == "head"]
    if head and len(head) < len(history):
        ax.axvspan(min(head) - 0.5, max(head) + 0.5, color=GREY, alpha=0.08, lw=0)
        ax.text(min(head) - 0.4, 0.98, "head only", transform=ax.get_xaxis_transform(), va="top",
                fontsize=8, color=GREY)
    if best_epoch:
        ax.axvline(best_epoch, color=GREEN, ls=":", lw=1.2)


def training_curves(history: list[dict], best_epoch: int | None = None) -> list[dict[str, str]]:
    """Loss, accuracy (train, val top-1, val top-k; multilabel runs: train micro-F1, val mAP
    and samples-F1) and learning rate per epoch."""
    if not history:
        return []
    epochs = _series(history, "epoch")
    topk_key = next((k for k in history[0] if k.startswith("val_top")), None)
    scores = ("Accuracy", [("train top-1", "train_acc", BLUE), ("val top-1", "val_acc", ORANGE)]
              + ([(f"val top-{topk_key[7:]}", topk_key, GREEN)] if topk_key else []), False)
    if "val_map" in history[0]:  # a multilabel run logs mAP and F1 instead of accuracy
        scores = ("mAP and F1", [("train micro-F1", "train_f1", BLUE), ("val mAP", "val_map", ORANGE),
                                 ("val samples-F1", "val_f1", GREEN)], False)
    panels = [
        ("Loss", [("train", "train_loss", BLUE), ("val", "val_loss", ORANGE)], False),
        scores,
        # Linear, not log: cosine schedules end at exactly 0, which a log axis would drop.
        ("Learning rate", [("head", "lr", BLUE), ("backbone", "backbone_lr", ORANGE)], False),
    ]
    figures = []
    for title, lines, log_scale in panels:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        for label, key, colour in lines:
            values = _series(history, key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", ms=3.5, lw=1.6, color=colour, label=label)
        _mark_phases(ax, history, best_epoch)
        ax.set_xlabel("epoch")
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if log_scale:
            ax.set_yscale("log")
        if title in ("Accuracy", "mAP and F1"):
            ax.set_ylim(top=1.02)
        ax.legend(frameon=False, fontsize=8)
        figures.append({"title": title, "uri": figure_uri(fig)})
    return figures


def lr_range_test(test: dict) -> str:
    """The LR range test (``lr_find.json``): loss and smoothed loss against the rate on a log
    axis, the suggestion marked."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(test["lrs"], test["losses"], color=GREY, lw=0.8, alpha=0.6, label="loss")
    ax.plot(test["lrs"], test["smoothed"], color=BLUE, lw=1.8, label="smoothed")
    ax.axvline(test["suggestion"], color=GREEN, ls=":", lw=1.4, label=f"suggested {test['suggestion']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    low = min(min(test["losses"]), min(test["smoothed"]))
    start = test["smoothed"][0]
    high = min(max(max(test["smoothed"]), start), start + 2 * (start - low) + 1e-9)  # divergence off the top
    ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_title(f"LR range test ({test.get('phase', 'head')} phase)", loc="left", fontsize=11, fontweight="bold")
    ax.legend(frameon=False, fontsize=8)
    return figure_uri(fig)


# --------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------


def row_normalise(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)


def similarity_order(cm: np.ndarray) -> list[int]:
    """Classes ordered so that those confused with each other sit together: average-linkage
    clustering on the symmetrised confusion rates with optimal leaf ordering (scipy)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    n = len(cm)
    if n < 3:
        return list(range(n))
    rates = row_normalise(cm)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0.0)
    distance = 1.0 - similarity / max(similarity.max(), 1e-12)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)]


def most_confused_classes(cm: np.ndarray, size: int = SUBMATRIX_SIZE) -> list[int]:
    """Up to ``size`` classes taken from the largest off-diagonal cells, biggest first."""
    off = np.asarray(cm, dtype=np.float64).copy()
    np.fill_diagonal(off, 0)
    chosen: list[int] = []
    for flat in np.argsort(-off, axis=None, kind="stable"):
        if off.flat[flat] <= 0 or len(chosen) >= size:
            break
        for c in np.unravel_index(flat, off.shape):
            if int(c) not in chosen and len(chosen) < size:
                chosen.append(int(c))
    return chosen


def confusion_heatmap(cm: np.ndarray, classes: list[str], order: list[int] | None = None,
                      title: str = "") -> str:
    """Row-normalised heatmap (each row: where that true class's images went), sized so
    that up to ~100 class labels stay legible; ``order`` may also pick a subset of classes."""
    order = list(range(len(classes))) if order is None else order
    rates = row_normalise(cm)[np.ix_(order, order)]
    names = [classes[i] for i in order]
    n = len(order)
    side = min(max(0.32 * n + 2.0, 3.6), 17.0)
    label_size = max(4.5, min(10.0, 300 / max(n, 1) / 2.2))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(n), names, rotation=90, fontsize=label_size)
    ax.set_yticks(range(n), names, fontsize=label_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if n <= ANNOTATE_LIMIT:
        for (i, j), value in np.ndenumerate(rates):
            if value >= 0.005:
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.55 else "#1f2937")
    bar = fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    bar.set_label("share of the true class")
    if title:
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    return figure_uri(fig, dpi=100 if n > 40 else 110)


def display_width(n: int) -> int:
    """CSS pixels to show an n-class heatmap at: small matrices need not fill the page."""
    return int(min(1000, 300 + 28 * n))


def confusion_figures(cm: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """The full matrix (reordered by similarity beyond a dozen classes) and, for many
    classes, a zoom on the most-confused ones."""
    n = len(classes)
    if n <= FULL_ORDER_LIMIT:
        figures = [{"title": "Confusion matrix", "note": "rows: true class, in class order; cells: % of that class",
                    "uri": confusion_heatmap(cm, classes), "width": display_width(n)}]
    else:
        figures = [{"title": "Confusion matrix",
                    "note": "rows: true class; classes reordered so that those confused with each other sit "
                            "together (hierarchical clustering of the confusion rates)",
                    "uri": confusion_heatmap(cm, classes, similarity_order(cm)), "width": display_width(n)}]
    if n > SUBMATRIX_FROM:
        chosen = most_confused_classes(cm)
        if len(chosen) >= 2:
            sub = np.asarray(cm)[np.ix_(chosen, chosen)]
            order = [chosen[i] for i in similarity_order(sub)]
            # Rows are normalised over the full matrix before slicing, so the zoom shows the
            # same rates as the big picture (a row's remaining share went to other classes).
            figures.append({"title": f"The {len(chosen)} most confused classes",
                            "note": "zoom on the classes of the largest off-diagonal cells; "
                                    "cells are still shares of each whole true class",
                            "uri": confusion_heatmap(cm, classes, order), "width": display_width(len(order))})
    return figures



# --------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------


def reliability_diagram(bins: dict, title: str) -> str:
    """Accuracy against confidence per bin (bars) next to the diagonal of perfect
    calibration, with the share of images per bin underneath."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 4.6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    edges = np.array(bins["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges) * 0.92
    accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]])
    confidence = np.array([np.nan if c is None else c for c in bins["confidence"]])
    top.bar(centres, np.nan_to_num(accuracy), width=width, color=BLUE, alpha=0.85, label="accuracy")
    top.bar(centres, np.nan_to_num(np.abs(confidence - accuracy)), bottom=np.nan_to_num(np.fmin(accuracy, confidence)),
            width=width, color=RED, alpha=0.35, hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}: ECE {100 * bins['ece']:.2f}%", loc="left", fontsize=10.5, fontweight="bold")
    top.legend(frameon=False, fontsize=8, loc="upper left")
    counts = np.array(bins["count"], dtype=float)
    bottom.bar(centres, counts / max(counts.sum(), 1), width=width, color=GREY)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("share")
    bottom.grid(False)
    return figure_uri(fig)


def nice_count(value: float) -> str:
    """1234567 -> '1.23 M': parameter and FLOP counts as people say them."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:g}"
