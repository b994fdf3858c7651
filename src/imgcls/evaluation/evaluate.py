"""``imgcls eval``: full metrics of a trained model on one split of a dataset."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.loaders import make_loader
from imgcls.data.hierarchy import Hierarchy, is_nested
from imgcls.data.sources import (UNKNOWN_FOLDER, DatasetError, DatasetSplits, Sample, discover, list_images,
                                 scan_class_folders)
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.evaluation.inference import Predictions, predict_loader
from imgcls.evaluation.hierarchy_metrics import hierarchy_metrics
from imgcls.evaluation.metrics import classification_metrics, write_metrics


def load_split(data: str | Path | None, config: RunConfig, split: str | None) -> tuple[str, list[Sample]]:
    """Samples of ``split`` read with the run's own split settings, so 'val' is the same
    images that training validated on (``data=None``: the run's own dataset). ``all`` takes
    every image of a class-folder tree; the default is ``test`` when there is one, else ``val``."""
    if split == "all":
        return split, scan_class_folders(Path(data or config.data.path), is_nested(config.data.hierarchy))
    splits = _discover_for_eval(data, config)
    split = split or ("test" if "test" in splits.splits else "val")
    if split not in splits.splits:
        raise DatasetError(f"{data}: no '{split}' split (have: {', '.join(splits.splits)})")
    return split, splits.splits[split]


def _discover_for_eval(data: str | Path | None, config: RunConfig) -> DatasetSplits:
    d, nested = config.data, is_nested(config.data.hierarchy)
    if data is None:
        return discover(d.path, d.train_dirs, d.val_dir, d.val_fraction, d.split_seed, nested=nested)
    return discover(data, val_fraction=d.val_fraction, split_seed=d.split_seed, nested=nested)


def load_unknown(data: str | Path | None, config: RunConfig, split: str, folder: str | Path | None = None) -> list[Sample]:
    """Out-of-distribution images for open-set metrics: ``folder`` if given, else the split's
    ``unknown/`` folder (e.g. ``DATA/test/unknown/``); empty when there is none."""
    if folder is not None:
        return [Sample(path, UNKNOWN_FOLDER) for path in list_images([folder])]
    if split == "all":
        return []
    return _discover_for_eval(data, config).unknown.get(split, [])


def evaluate_samples(model: torch.nn.Module, classes: list[str], preprocessing: Preprocessing,
                     samples: list[Sample], device: torch.device, batch_size: int = 64, topk: int = 3,
                     temperature: float = 1.0, workers: int | None = None,
                     hierarchy: Hierarchy | None = None, raw: Predictions | None = None) -> tuple[dict, Predictions]:
    """Metrics of ``samples``; a hierarchical model with its ``hierarchy`` adds ``coarse``
    (coarse-head metrics), ``consistency``, ``coarse_top1_from_fine`` and ``both_top1``.
    ``raw``: the model's predictions of these samples at temperature 1, already computed."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise DatasetError(f"classes {unknown} are not among the model's {len(classes)} classes")
    if raw is None:
        raw = predict_samples(model, preprocessing, [s.path for s in samples], device, batch_size, 1.0, workers,
                              targets=[index[s.label] for s in samples])
    predictions = at_temperature(raw, temperature)
    if not len(predictions.targets):
        raise DatasetError("no image of the split could be decoded")
    metrics = classification_metrics(predictions.targets, predictions.probs, classes, topk=topk)
    if hierarchy is not None and predictions.coarse_probs is not None:
        metrics.update(hierarchy_metrics(predictions.targets, predictions.probs, predictions.coarse_probs,
                                         hierarchy, topk=topk))
    metrics["loss"] = predictions.loss
    metrics["skipped"] = [{"path": str(b.path), "reason": b.reason} for b in predictions.bad]
    return metrics, predictions


def at_temperature(raw: Predictions, temperature: float) -> Predictions:
    """Predictions made at temperature 1, rescaled: probabilities, loss and stored logits."""
    if temperature == 1.0 or raw.logits is None or not len(raw.targets):
        return raw
    logits = torch.from_numpy(raw.logits).double() / temperature
    known = torch.from_numpy(raw.targets >= 0)
    loss = (torch.nn.functional.cross_entropy(logits[known], torch.from_numpy(raw.targets[known])).item()
            if known.any() else float("nan"))
    return dataclasses.replace(raw, probs=logits.softmax(1).numpy(), logits=logits.float().numpy(), loss=loss)


def predict_samples(model: torch.nn.Module, preprocessing: Preprocessing, paths: list[Path], device: torch.device,
                    batch_size: int = 64, temperature: float = 1.0, workers: int | None = None,
                    targets: list[int] | None = None) -> Predictions:
    dataset = ImageDataset(paths, targets, eval_transform(preprocessing), draft_size=preprocessing.resize_size)
    loader = make_loader(dataset, batch_size, train=False, workers=workers)
    return predict_loader(model, loader, device, temperature=temperature)


def write_eval(metrics: dict, predictions: Predictions, samples: list[Sample], classes: list[str],
               out_dir: Path, hierarchy: Hierarchy | None = None) -> dict[str, Path]:
    """``eval.json``, the confusion matrix and per-class CSVs, and one row per image (with
    coarse columns and ``eval_coarse_*`` CSVs for a hierarchical model)."""
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
