"""``imgcls cv DATA --folds K``: stratified k-fold cross-validation of one training recipe.

Every labelled image outside the test split (train and val together) goes to exactly one
fold, stratified by class (scikit-learn's ``StratifiedKFold``, shuffled with the run's
``--split-seed``, so the same data and seed give the same folds). Fold k trains on the
other folds and validates on fold k, through a CSV manifest (``fold-k.csv``) and the
ordinary training path, so every fold is a complete run (``<cv>/fold-k/``) that the
leaderboard lists. The test split, when there is one, is evaluated by every fold.

Written to the cv folder: ``folds.csv`` (path, label, fold), ``oof_predictions.csv`` (one
row per image: the fold that held it out, the true label, the columns of ``imgcls
predict``, and the probability of every class), ``cv.json`` (per-fold metrics, mean and
standard deviation of every scalar metric, the pooled out-of-fold metrics) and ``cv.html``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
from sklearn.model_selection import StratifiedKFold

from imgcls import api
from imgcls.config import RunConfig
from imgcls.data.shards import ShardSamples
from imgcls.data.sources import DatasetError, Sample, discover_run
from imgcls.evaluation import figures
from imgcls.inference.rows import format_predictions
from imgcls.metrics.classification import classification_metrics
from imgcls.runtime import log

CV_FILE = "cv.json"
OOF_FILE = "oof_predictions.csv"
TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class CvResult:
    folder: Path
    summary: dict  # what cv.json holds
    runs: list[Path]


def assign_folds(samples: list[Sample], folds: int, seed: int) -> list[int]:
    """The fold (0-based) of each sample: stratified by label, shuffled with ``seed``.

    Raises DatasetError naming the classes with fewer images than folds.
    """
    if folds < 2:
        raise DatasetError(f"--folds {folds}: cross-validation needs at least 2 folds")
    labels = [s.label for s in samples]
    small = sorted({label for label in labels if labels.count(label) < folds})
    if small:
        raise DatasetError(f"--folds {folds}: classes {small} have fewer images than folds; lower --folds")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = [0] * len(samples)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        for index in held_out:
            assignment[index] = fold
    return assignment


def cross_validate(config: RunConfig, folds: int = 5) -> CvResult:
    """Train one run per fold with ``config`` and aggregate them (see the module docstring)."""
    splits = discover_run(config.data)
    if splits.multilabel:  # the folds are stratified by class and the summary is single-label's
        raise DatasetError(f"{splits.where('train')}: imgcls cv is for single-label datasets; this manifest has "
                           "label sets (train it with imgcls train)")
    if isinstance(splits.splits["train"], ShardSamples):  # folds re-split the images: not a stream
        raise DatasetError(f"{config.data.path}: imgcls cv needs the images as files; give it the dataset the "
                           "shards were made from (or an hf: dataset)")
    pool = splits.splits["train"] + splits.splits.get("val", [])
    test = splits.splits.get("test", [])
    assignment = assign_folds(pool, folds, config.data.split_seed)
    name = config.name or f"cv-{config.model.name.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = Path(config.out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_folds(folder / "folds.csv", pool, assignment)
    runs, fold_metrics, oof_rows = [], [], []
    for fold in range(folds):
        manifest = _write_manifest(folder / f"fold-{fold + 1}.csv", pool, assignment, fold, test)
        fold_config = RunConfig.from_dict(config.to_dict())
        fold_config.name, fold_config.out_dir = f"fold-{fold + 1}", str(folder)
        fold_config.data.path, fold_config.data.train_dirs, fold_config.data.val_dir = str(manifest), [], None
        log.info("cv: fold %d of %d: %d train, %d held-out images", fold + 1, folds,
                 len(pool) - assignment.count(fold), assignment.count(fold))
        result = api.train(config=fold_config)
        runs.append(result.run_dir)
        fold_metrics.append({split: _scalars(m) for split, m in result.metrics.items()})
        held_out = [sample for sample, f in zip(pool, assignment) if f == fold]
        oof_rows += _out_of_fold_rows(result.run_dir, held_out, fold)
    summary = _summarise(config, folds, fold_metrics, oof_rows, runs)
    (folder / CV_FILE).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _write_oof(folder / OOF_FILE, oof_rows, summary["classes"])
    (folder / "cv.html").write_text(_render(summary, name), encoding="utf-8")
    return CvResult(folder, summary, runs)


def _write_folds(path: Path, samples: list[Sample], assignment: list[int]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "fold"])
        writer.writerows([str(s.path.resolve()), s.label, fold + 1] for s, fold in zip(samples, assignment))


def _write_manifest(path: Path, samples: list[Sample], assignment: list[int], fold: int, test: list[Sample]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for sample, f in zip(samples, assignment):
            writer.writerow([str(sample.path.resolve()), sample.label, "val" if f == fold else "train"])
        writer.writerows([str(s.path.resolve()), s.label, "test"] for s in test)
    return path


def _scalars(metrics: dict) -> dict[str, float]:
    """The scalar metrics of an eval (top-1, macro-F1, log loss, ECE, MCC...)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _out_of_fold_rows(run_dir: Path, held_out: list[Sample], fold: int) -> list[dict]:
    """Predictions of the fold's best model for the images it never trained on."""
    classifier = api.load(run_dir)
    index = {name: i for i, name in enumerate(classifier.classes)}
    result = classifier.predictions([s.path for s in held_out], [index[s.label] for s in held_out])
    rows = format_predictions(result.logits, classifier.classes, min(3, len(classifier.classes)),
                              classifier.unknown, classifier.temperature, [held_out[i].path for i in result.indices])
    for row, position, probs in zip(rows, result.indices, result.probs):
        row.update(fold=fold + 1, true_label=held_out[position].label, probs=probs.tolist())
    return rows


def _summarise(config: RunConfig, folds: int, fold_metrics: list[dict], oof: list[dict], runs: list[Path]) -> dict:
    classes = sorted({row["true_label"] for row in oof})
    splits = sorted({split for metrics in fold_metrics for split in metrics})
    aggregate = {}
    for split in splits:
        keys = sorted(set.intersection(*(set(m.get(split, {})) for m in fold_metrics)))
        aggregate[split] = {key: {"mean": statistics.fmean(m[split][key] for m in fold_metrics),
                                  "std": statistics.stdev(m[split][key] for m in fold_metrics) if folds > 1 else 0.0}
                            for key in keys}
    index = {name: i for i, name in enumerate(classes)}
    pooled = classification_metrics(np.array([index[r["true_label"]] for r in oof]),
                                     np.array([r["probs"] for r in oof]), classes,
                                     topk=config.train.topk) if oof else None
    return {"folds": folds, "classes": classes, "config": config.to_dict(), "runs": [str(r) for r in runs],
            "per_fold": fold_metrics, "mean_std": aggregate, "out_of_fold": pooled, "images": len(oof)}


def _write_oof(path: Path, rows: list[dict], classes: list[str]) -> None:
    topk = max((len(r["topk"]) for r in rows), default=1)
    header = ["path", "fold", "true_label", "label", "probability"]
    for k in range(2, topk + 1):
        header += [f"label_{k}", f"probability_{k}"]
    header += [f"p_{name}" for name in classes]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            line = [row["path"], row["fold"], row["true_label"], row["label"], f"{row['probability']:.6f}"]
            for k in range(1, topk):
                label, prob = row["topk"][k] if k < len(row["topk"]) else ("", None)
                line += [label, "" if prob is None else f"{prob:.6f}"]
            writer.writerow(line + [f"{p:.6f}" for p in row["probs"]])


def read_oof_probabilities(folder: str | Path) -> tuple[list[Path], list[str], list[str], np.ndarray]:
    """(paths, true labels, class names, (n, C) probabilities) of a cv folder's out-of-fold
    predictions: what the doctor's label check needs. Raises DatasetError without them."""
    path = Path(folder) / OOF_FILE
    if not path.is_file():
        raise DatasetError(f"{folder}: no {OOF_FILE} (not an imgcls cv folder?)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = [key[2:] for key in (rows[0] if rows else {}) if key.startswith("p_")]
    probs = np.array([[float(row[f"p_{c}"]) for c in classes] for row in rows])
    return [Path(r["path"]) for r in rows], [r["true_label"] for r in rows], classes, probs


def _render(summary: dict, name: str) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    pooled = summary["out_of_fold"]
    confusion = figures.confusion_figures(np.array(pooled["confusion_matrix"]), summary["classes"]) if pooled else []
    keys = [k for k in ("top1", "topk_accuracy", "f1_macro", "log_loss", "ece", "mcc")
            if k in summary["mean_std"].get("val", {})]
    return environment.get_template("cv.html.j2").render(title=name, summary=summary, keys=keys, confusion=confusion)
