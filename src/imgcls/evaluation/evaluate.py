"""``imgcls eval``: full metrics of a classifier on one evaluation set.

Which images: the run's own split (``data`` None: read exactly as training read it), a
split of another dataset that has split folders or a manifest, or, for a folder of class
folders without split folders, the whole folder: it is one evaluation set.
Where the files go: ``<run>/eval-<split>/`` for the run's own data, and a folder named
after the data otherwise (``eval-on-<data>[-<split>]/``), so evaluating other data never
replaces the run's own results (which the leaderboard reads).

A multilabel model is scored with :mod:`imgcls.metrics.multilabel` at its card's thresholds
and writes ``eval_per_label.csv`` and ``eval_cooccurrence.csv`` beside ``eval.json``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.config import RunConfig
from imgcls.data.hierarchy import Hierarchy
from imgcls.data.sources import (UNKNOWN_FOLDER, DatasetError, DatasetSplits, Sample, discover, discover_run,
                                 find_split_folders, is_nested, list_images, sample_targets, scan_class_folders)
from imgcls.evaluation.openset import evaluate_unknown_images, known_rejection
from imgcls.inference import artifact
from imgcls.inference.classifier import Classifier
from imgcls.inference.predictions import Predictions, at_temperature
from imgcls.metrics.classification import classification_metrics, write_metrics
from imgcls.metrics.hierarchy import hierarchy_metrics
from imgcls.metrics.multilabel import multilabel_metrics, write_multilabel_metrics

WHOLE = "all"  # the split name of a dataset evaluated whole
PLAIN_KEYS = ("top1", "topk_accuracy", "f1_macro", "log_loss", "ece", "loss")
MULTILABEL_PLAIN_KEYS = ("map_macro", "map_micro", "f1_samples", "f1_micro", "loss")


@dataclass
class Evaluation:
    """One evaluated set: its name, samples, predictions (at the model's temperature) and metrics."""

    split: str
    samples: list[Sample]
    predictions: Predictions
    metrics: dict
    data: str | None  # the evaluated dataset when it is not the run's own


def load_split(data: str | Path | None, config: RunConfig, split: str | None) -> tuple[str, list[Sample]]:
    """``(split name, samples)`` of the set to evaluate (see the module docstring).

    ``split``: train | val | test | all (every image of a class-folder tree); default
    ``test`` when there is one, else ``val``. Raises DatasetError for a split that is not there.
    """
    nested = is_nested(config.data.hierarchy)
    if config.data.task == "multilabel" and (data is not None and Path(data).is_dir() or split == WHOLE):
        raise DatasetError(f"{data or config.data.path}: a multilabel model is evaluated on a split of a CSV "
                           "manifest with a 'labels' column (--split train|val|test), not on class folders")
    if data is not None and Path(data).is_dir() and (split == WHOLE or not find_split_folders(Path(data))):
        if split not in (None, WHOLE):
            raise DatasetError(f"{data}: a folder of class folders without train/val/test folders is evaluated "
                               f"whole; --split {split} does not apply (leave it out)")
        return WHOLE, scan_class_folders(Path(data), nested)
    if split == WHOLE:
        return WHOLE, scan_class_folders(Path(config.data.path), nested)
    splits = run_splits(data, config)
    split = split or ("test" if "test" in splits.splits else "val")
    if split not in splits.splits:
        raise DatasetError(f"{data or config.data.path}: no '{split}' split (have: {', '.join(splits.splits)})")
    return split, splits.splits[split]


def run_splits(data: str | Path | None, config: RunConfig) -> DatasetSplits:
    """The run's splits (``data`` None) or those of ``data``, read with the run's split settings."""
    return discover_run(config.data) if data is None else discover_run(config.data, data)


def load_unknown(data: str | Path | None, config: RunConfig, split: str, folder: str | Path | None = None
                 ) -> list[Sample]:
    """Out-of-distribution images for open-set metrics: ``folder`` if given, else the split's
    ``unknown/`` folder (e.g. ``DATA/test/unknown/``); empty when there is none."""
    if folder is not None:
        return [Sample(path, UNKNOWN_FOLDER) for path in list_images([folder])]
    if split == WHOLE:
        return []
    return run_splits(data, config).unknown.get(split, [])


def evaluate_samples(classifier: Classifier, samples: list[Sample], batch_size: int = 64,
                     workers: int | None = None, raw: Predictions | None = None) -> tuple[dict, Predictions]:
    """Metrics of ``samples`` at the classifier's temperature, and the predictions.

    ``raw``: the model's predictions of these samples at temperature 1, already computed.
    A hierarchical model adds ``coarse`` metrics, ``consistency``, ``coarse_top1_from_fine``
    and ``both_top1``. Raises DatasetError for labels that are not model classes, or when
    no image decodes.
    """
    index = {name: i for i, name in enumerate(classifier.classes)}
    if samples and classifier.multilabel != (samples[0].labels is not None):
        raise DatasetError(f"a {'multilabel' if classifier.multilabel else 'single-label'} model cannot be scored on "
                           f"{'label sets' if not classifier.multilabel else 'single labels'}")
    given = {label for s in samples for label in s.labels} if classifier.multilabel else {s.label for s in samples}
    unknown = sorted(given - set(index))
    if unknown:
        raise DatasetError(f"classes {unknown} are not among the model's {len(classifier.classes)} classes "
                           f"({', '.join(classifier.classes[:10])}{', ...' if len(index) > 10 else ''})")
    if raw is None:
        raw = classifier.predictions([s.path for s in samples], sample_targets(samples, classifier.classes),
                                     batch_size, workers, temperature=1.0)
    predictions = at_temperature(raw, classifier.temperature)
    if not len(predictions.targets):
        raise DatasetError("no image of the evaluated set could be decoded")
    if classifier.multilabel:
        metrics = multilabel_metrics(predictions.targets, predictions.probs, classifier.classes, classifier.thresholds)
        metrics["loss"] = predictions.loss
        metrics["skipped"] = [{"path": str(b.path), "reason": b.reason} for b in predictions.bad]
        return metrics, predictions
    topk = classifier.config.train.topk
    metrics = classification_metrics(predictions.targets, predictions.probs, classifier.classes, topk=topk)
    if classifier.hierarchy is not None and predictions.coarse_probs is not None:
        metrics.update(hierarchy_metrics(predictions.targets, predictions.probs, predictions.coarse_probs,
                                         classifier.hierarchy, topk=topk))
    metrics["loss"] = predictions.loss
    metrics["skipped"] = [{"path": str(b.path), "reason": b.reason} for b in predictions.bad]
    return metrics, predictions


def default_out_dir(classifier: Classifier, data: str | Path | None, split: str) -> Path:
    """``eval-<split>`` beside the run's own model for its own data; otherwise a name that
    also says which model file (when not ``best``) and which dataset."""
    base = classifier.source.parent if classifier.source is not None else Path.cwd()
    model_tag = "" if classifier.source is None or classifier.source.name == artifact.BEST else classifier.source.stem
    data_tag = "" if data is None else "on-" + _safe_name(Path(data).stem if Path(data).is_file() else Path(data).name)
    split_tag = "" if split == WHOLE and data_tag else split
    return base / ("eval-" + "-".join(part for part in (model_tag, data_tag, split_tag) if part))


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "data"


def write_eval(evaluation: Evaluation, classes: list[str], out_dir: Path,
               hierarchy: Hierarchy | None = None) -> dict[str, Path]:
    """``eval.json``, the confusion matrix and per-class CSVs, and one row per image (with
    coarse columns and ``eval_coarse_*`` CSVs for a hierarchical model)."""
    metrics, predictions, samples = evaluation.metrics, evaluation.predictions, evaluation.samples
    if predictions.multilabel:
        return _write_multilabel_eval(evaluation, classes, out_dir)
    paths = write_metrics(metrics, out_dir, prefix="eval")
    levels = hierarchy is not None and predictions.coarse_probs is not None and "coarse" in metrics
    if levels:
        coarse_files = write_metrics(metrics["coarse"], out_dir, prefix="eval_coarse")
        paths.update({f"coarse_{k}": v for k, v in coarse_files.items()})
    rows = out_dir / "eval_predictions.csv"
    with rows.open("w", newline="") as handle:
        writer = csv.writer(handle)
        extra = ["coarse_label", "coarse_predicted", "coarse_probability", "consistent"] if levels else []
        writer.writerow(["path", "label", "predicted", "probability", "correct", *extra])
        for row, (i, probs) in enumerate(zip(predictions.indices, predictions.probs)):
            top = int(np.argmax(probs))
            sample = samples[i]
            line = [sample.path, sample.label, classes[top], f"{probs[top]:.6f}", int(sample.label == classes[top])]
            if levels:
                coarse = predictions.coarse_probs[row]
                guess = int(np.argmax(coarse))
                names = hierarchy.coarse_classes
                line += [names[hierarchy.parent[predictions.targets[row]]], names[guess], f"{coarse[guess]:.6f}",
                         int(hierarchy.parent[top] == guess)]
            writer.writerow(line)
    paths["predictions"] = rows
    return paths


def _write_multilabel_eval(evaluation: Evaluation, classes: list[str], out_dir: Path) -> dict[str, Path]:
    """``eval.json``, the per-label and co-occurrence CSVs, and one row per image: its true and
    predicted label sets, whether they are equal, its binary cross-entropy (mean over the
    labels) and every label's probability."""
    predictions, samples = evaluation.predictions, evaluation.samples
    paths = write_multilabel_metrics(evaluation.metrics, out_dir, prefix="eval")
    thresholds = np.asarray(evaluation.metrics["thresholds"])
    losses = image_losses(predictions)
    rows = out_dir / "eval_predictions.csv"
    with rows.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "predicted", "exact", "loss", *[f"p_{name}" for name in classes]])
        for row, (i, probs) in enumerate(zip(predictions.indices, predictions.probs)):
            chosen = [classes[c] for c in np.flatnonzero(probs >= thresholds)]
            truth = list(samples[i].labels)
            writer.writerow([samples[i].path, ";".join(truth), ";".join(chosen), int(truth == chosen),
                             f"{losses[row]:.6f}", *[f"{p:.6f}" for p in probs]])
    paths["predictions"] = rows
    return paths


def image_losses(predictions: Predictions) -> np.ndarray:
    """(n,) loss of each image: the negative log-likelihood of its label (single-label), or the
    binary cross-entropy of its label set averaged over the labels (multilabel)."""
    probs = np.clip(predictions.probs, 1e-12, 1 - 1e-12)
    if predictions.multilabel:
        y = np.asarray(predictions.targets, dtype=np.float64)
        return -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean(1)
    return -np.log(probs[np.arange(len(probs)), predictions.targets])


def evaluate(classifier: Classifier, data: str | Path | None = None, split: str | None = None,
             out_dir: str | Path | None = None, batch_size: int = 64, workers: int | None = None,
             unknown: str | Path | None = None, raw: Predictions | None = None,
             plain_raw: Predictions | None = None) -> Evaluation:
    """Evaluate one set (see :func:`load_split`) and write its files to ``out_dir`` (default:
    :func:`default_out_dir`); ``metrics["files"]`` lists them. With out-of-distribution images
    (``unknown``, or the split's ``unknown/`` folder) the metrics include ``openset``. With
    test-time augmentation, ``without_tta`` holds the headline metrics of the plain model
    (``plain_raw``: its temperature-1 predictions, when already computed)."""
    split, samples = load_split(data, classifier.config, split)
    metrics, predictions = evaluate_samples(classifier, samples, batch_size, workers, raw)
    if classifier.tta != "none":  # the same model without TTA, for comparison
        plain, _ = evaluate_samples(classifier.with_tta("none"), samples, batch_size, workers, plain_raw)
        metrics["tta"] = classifier.tta
        metrics["without_tta"] = {key: plain[key] for key in (MULTILABEL_PLAIN_KEYS if classifier.multilabel
                                                              else PLAIN_KEYS)}
    metrics["split"] = split
    metrics["model"] = str(classifier.source) if classifier.source else None
    if data is not None:
        metrics["data"] = str(data)
    out = Path(out_dir) if out_dir else default_out_dir(classifier, data, split)
    if classifier.unknown.active:
        metrics["unknown_rule"] = known_rejection(predictions.logits, classifier.unknown, classifier.temperature)
    outliers = load_unknown(data, classifier.config, split, unknown)
    if outliers:
        metrics["openset"] = evaluate_unknown_images(classifier, predictions, outliers, out, batch_size, workers)
    evaluation = Evaluation(split, samples, predictions, metrics, None if data is None else str(data))
    metrics["files"] = {k: str(v) for k, v in write_eval(evaluation, classifier.classes, out,
                                                         classifier.hierarchy).items()}
    return evaluation
