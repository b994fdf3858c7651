"""The multilabel sections of ``report.html`` (:mod:`imgcls.evaluation.report` renders them).

Where a single-label report shows the confusion matrix, calibration and the most confused
pairs, a multilabel one shows: the headline (mAP, samples-F1), every metric of
:mod:`imgcls.metrics.multilabel`, a per-label table sortable by AP, precision-recall curves
of the best and worst labels, label co-occurrence in the truth and in the predictions, the
decision thresholds fitted on val, and the images with the highest loss with their true and
predicted label sets and a Grad-CAM overlay per label (true or predicted).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve

from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.sources import Sample
from imgcls.evaluation.evaluate import Evaluation, image_losses
from imgcls.evaluation.explain import GradCamExplainer, display_crop, overlay
from imgcls.evaluation.figures import figure_uri, image_uri
from imgcls.inference.classifier import Classifier
from imgcls.runtime import log

PR_CURVES = 3  # best and worst labels by AP drawn
GALLERY_SIZE = 12
CAMS_PER_IMAGE = 4  # Grad-CAM overlays per gallery image (its true and predicted labels, most probable first)
ANNOTATE_LIMIT = 15


def multilabel_sections(classifier: Classifier, evaluation: Evaluation, counts: dict | None,
                        gallery_size: int = GALLERY_SIZE) -> dict[str, Any]:
    """The report context of a multilabel evaluation (keys the template's multilabel branch reads)."""
    metrics, predictions = evaluation.metrics, evaluation.predictions
    y, probs = np.asarray(predictions.targets, dtype=np.int64), predictions.probs
    classes = classifier.classes
    return {
        "headline": _headline(metrics),
        "metric_rows": _metric_rows(metrics),
        "per_label": _per_label_rows(metrics, counts),
        "pr_curves": _pr_figures(y, probs, metrics),
        "cooccurrence": [{"title": "Label co-occurrence, truth", "uri": cooccurrence_heatmap(
                             np.array(metrics["cooccurrence_true"]), classes, "truth")},
                         {"title": "Label co-occurrence, predictions", "uri": cooccurrence_heatmap(
                             np.array(metrics["cooccurrence_pred"]), classes, "predicted")}],
        "thresholds": _thresholds(classifier),
        "gallery": _gallery(classifier, evaluation, gallery_size),
    }


def _headline(m: dict) -> list[dict[str, str]]:
    return [
        {"label": "mAP (macro)", "value": f"{m['map_macro']:.3f}"},
        {"label": "samples F1", "value": f"{m['f1_samples']:.3f}"},
        {"label": "micro F1", "value": f"{m['f1_micro']:.3f}"},
        {"label": "subset accuracy", "value": f"{100 * m['subset_accuracy']:.1f}%"},
        {"label": f"{m['split']} images", "value": f"{m['n']:,}"},
        {"label": "labels", "value": str(m["num_classes"])},
    ]


def _f(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"


def _metric_rows(m: dict) -> list[tuple[str, str, str]]:
    rows = [
        ("mAP macro / micro", f"{_f(m['map_macro'])} / {_f(m['map_micro'])}",
         "average precision per label (area under its precision-recall curve), mean over labels / all pairs pooled"),
        ("F1 micro / macro / samples", f"{_f(m['f1_micro'])} / {_f(m['f1_macro'])} / {_f(m['f1_samples'])}",
         "at the fitted thresholds; samples: mean over images of the F1 of the predicted set"),
        ("precision micro / macro", f"{_f(m['precision_micro'])} / {_f(m['precision_macro'])}", ""),
        ("recall micro / macro", f"{_f(m['recall_micro'])} / {_f(m['recall_macro'])}", ""),
        ("subset accuracy", _f(m["subset_accuracy"]), "share of images whose predicted set is exactly the true set"),
        ("Hamming loss", _f(m["hamming_loss"]), "share of wrong (image, label) decisions; lower is better"),
        ("labels per image, predicted / true", f"{m['cardinality_pred']:.3f} / {m['cardinality_true']:.3f}",
         f"label cardinality; images with no label: {m['empty_pred']} predicted, {m['empty_true']} true"),
        ("ROC AUC (macro over labels)", _f(m["roc_auc_macro"]), "ranking quality per label; 0.5 = chance"),
        ("loss", _f(m.get("loss")), "binary cross-entropy, mean over images and labels"),
        ("images", str(m["n"]), f"{len(m.get('skipped', []))} unreadable file(s) skipped"),
    ]
    plain = m.get("without_tta")
    if plain:
        rows.append((f"without TTA ({m['tta']} above): mAP / samples F1",
                     f"{_f(plain['map_macro'])} / {_f(plain['f1_samples'])}",
                     "the same weights on the plain centre crop"))
    return rows


def _per_label_rows(metrics: dict, counts: dict | None) -> list[dict[str, Any]]:
    train = (counts or {}).get("train", {})
    return [{**row, "train": train.get(row["class"])} for row in
            sorted(metrics["per_class"], key=lambda r: (r["ap"] is None, -(r["ap"] or 0.0), r["class"]))]


def _pr_figures(y: np.ndarray, probs: np.ndarray, metrics: dict) -> list[dict[str, str]]:
    """Precision-recall curves of the best and the worst labels by AP (labels with positives)."""
    rows = [(c, r) for c, r in enumerate(metrics["per_class"]) if r["ap"] is not None]
    ranked = sorted(rows, key=lambda item: (-item[1]["ap"], item[1]["class"]))
    if not ranked:
        return []
    best = ranked[:PR_CURVES]
    worst = [item for item in ranked[::-1][:PR_CURVES] if item not in best]
    figures = [{"title": "Best labels by AP", "uri": pr_curves(y, probs, best, "best labels")}]
    if worst:
        figures.append({"title": "Worst labels by AP", "uri": pr_curves(y, probs, worst, "worst labels")})
    return figures


def pr_curves(y: np.ndarray, probs: np.ndarray, labels: list[tuple[int, dict]], title: str) -> str:
    """Precision against recall (scikit-learn's curve) of each ``(column, per-label row)``, the
    point at the label's threshold marked."""
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    colours = plt.get_cmap("tab10")
    for k, (c, row) in enumerate(labels):
        precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
        ax.step(recall, precision, where="post", lw=1.6, color=colours(k), label=f"{row['class']} (AP {row['ap']:.3f})")
        ax.plot([row["recall"]], [row["precision"]], "o", ms=5, color=colours(k))
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    return figure_uri(fig)


def cooccurrence_heatmap(matrix: np.ndarray, classes: list[str], what: str) -> str:
    """Images carrying both labels (the diagonal: each label's count), as a heatmap."""
    n = len(classes)
    side = min(max(0.32 * n + 2.0, 3.6), 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    ax.grid(False)
    size = max(4.5, min(10.0, 300 / max(n, 1) / 2.2))
    ax.set_xticks(range(n), classes, rotation=90, fontsize=size)
    ax.set_yticks(range(n), classes, fontsize=size)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if n <= ANNOTATE_LIMIT:
        top = max(int(matrix.max()), 1)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=7.5,
                    color="white" if value > 0.55 * top else "#1f2937")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02).set_label(f"images, {what}")
    return figure_uri(fig, dpi=100 if n > 40 else 110)


def _thresholds(classifier: Classifier) -> dict[str, Any]:
    stored = classifier.card.thresholds
    fit = (stored.fit or {}) if stored is not None else {}
    rules = [(name, fit.get(f"f1_micro_{key}"), fit.get(f"f1_samples_{key}"))
             for name, key in (("0.5 for every label", "0.5"), ("one global threshold", "global"),
                               ("per-label thresholds (applied)", "per_label")) if f"f1_micro_{key}" in fit]
    return {"fitted": stored is not None, "global": stored.global_threshold if stored is not None else None,
            "rules": rules, "fallback": fit.get("global_for", []), "min_positives": fit.get("min_positives"),
            "n": fit.get("n")}


def _gallery(classifier: Classifier, evaluation: Evaluation, size: int) -> dict[str, Any]:
    """The images with the highest loss, each with a Grad-CAM overlay per label: its true and
    predicted labels, most probable first (at most ``CAMS_PER_IMAGE``)."""
    predictions, samples = evaluation.predictions, evaluation.samples
    losses = image_losses(predictions)
    predicted = predictions.probs >= np.asarray(evaluation.metrics["thresholds"])
    truth = np.asarray(predictions.targets) > 0.5
    chosen, originals = [], []
    for r in np.argsort(-losses, kind="stable"):
        if len(chosen) >= size:
            break
        try:
            originals.append(load_rgb(samples[predictions.indices[r]].path))
            chosen.append(int(r))
        except (ImageDecodeError, OSError):
            continue  # deleted or damaged since it was evaluated: leave it out
    labels = [sorted(np.flatnonzero(truth[r] | predicted[r]), key=lambda c: -predictions.probs[r, c])[:CAMS_PER_IMAGE]
              for r in chosen]
    maps = _heatmaps(classifier, [image for image, ls in zip(originals, labels) for _ in ls],
                     [int(c) for ls in labels for c in ls])
    cards, position = [], 0
    for r, image, shown in zip(chosen, originals, labels):
        crop = display_crop(image, classifier.preprocessing, 160)
        cams = []
        for c in shown:
            heatmap = maps[position]
            position += 1
            cams.append({"label": classifier.classes[c], "prob": float(predictions.probs[r, c]),
                         "true": bool(truth[r, c]), "predicted": bool(predicted[r, c]),
                         "uri": image_uri(overlay(crop, heatmap)) if heatmap is not None else None})
        sample: Sample = samples[predictions.indices[r]]
        cards.append({"image": image_uri(crop), "cams": cams, "name": sample.path.name, "path": str(sample.path),
                      "true": [classifier.classes[c] for c in np.flatnonzero(truth[r])],
                      "pred": [classifier.classes[c] for c in np.flatnonzero(predicted[r])],
                      "loss": float(losses[r]), "exact": bool((truth[r] == predicted[r]).all())})
    wrong = int((truth != predicted).any(1).sum())
    return {"cards": cards, "wrong": wrong, "n": int(len(losses))}


def _heatmaps(classifier: Classifier, images: list, indices: list[int]) -> list:
    if not images:
        return []
    try:
        explainer = GradCamExplainer(classifier.torch_module, classifier.preprocessing, classifier.device)
        return list(explainer.heatmaps(images, indices))
    except Exception as err:  # noqa: BLE001 - an exotic architecture must not cost the whole report
        log.warning("report: Grad-CAM unavailable for this model (%s)", err)
        return [None] * len(images)


