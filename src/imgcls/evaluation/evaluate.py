"""``imgcls eval``: full metrics of a trained model on one split of a dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.loaders import make_loader
from imgcls.data.sources import DatasetError, DatasetSplits, Sample, discover, scan_class_folders
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.evaluation.inference import Predictions, predict_loader
from imgcls.evaluation.metrics import classification_metrics, write_metrics


def load_split(data: str | Path | None, config: RunConfig, split: str | None) -> tuple[str, list[Sample]]:
    """Samples of ``split`` read with the run's own split settings, so 'val' is the same
    images that training validated on (``data=None``: the run's own dataset). ``all`` takes
    every image of a class-folder tree; the default is ``test`` when there is one, else ``val``."""
    if split == "all":
        return split, scan_class_folders(Path(data or config.data.path))
    d = config.data
    if data is None:
        splits: DatasetSplits = discover(d.path, d.train_dirs, d.val_dir, d.val_fraction, d.split_seed)
    else:
        splits = discover(data, val_fraction=d.val_fraction, split_seed=d.split_seed)
    split = split or ("test" if "test" in splits.splits else "val")
    if split not in splits.splits:
        raise DatasetError(f"{data}: no '{split}' split (have: {', '.join(splits.splits)})")
    return split, splits.splits[split]


def evaluate_samples(model: torch.nn.Module, classes: list[str], preprocessing: Preprocessing,
                     samples: list[Sample], device: torch.device, batch_size: int = 64, topk: int = 3,
                     temperature: float = 1.0, workers: int | None = None) -> tuple[dict, Predictions]:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise DatasetError(f"classes {unknown} are not among the model's {len(classes)} classes")
    dataset = ImageDataset([s.path for s in samples], [index[s.label] for s in samples],
                           eval_transform(preprocessing), draft_size=preprocessing.resize_size)
    loader = make_loader(dataset, batch_size, train=False, workers=workers)
    predictions = predict_loader(model, loader, device, temperature=temperature)
    if not len(predictions.targets):
        raise DatasetError("no image of the split could be decoded")
    metrics = classification_metrics(predictions.targets, predictions.probs, classes, topk=topk)
    metrics["loss"] = predictions.loss
    metrics["skipped"] = [{"path": str(b.path), "reason": b.reason} for b in predictions.bad]
    return metrics, predictions


def write_eval(metrics: dict, predictions: Predictions, samples: list[Sample], classes: list[str],
               out_dir: Path) -> dict[str, Path]:
    """``eval.json``, the confusion matrix and per-class CSVs, and one row per image."""
    paths = write_metrics(metrics, out_dir, prefix="eval")
    rows = out_dir / "eval_predictions.csv"
    with rows.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted", "probability", "correct"])
        for i, probs in zip(predictions.indices, predictions.probs):
            top = int(np.argmax(probs))
            sample = samples[i]
            writer.writerow([sample.path, sample.label, classes[top], f"{probs[top]:.6f}",
                             int(sample.label == classes[top])])
    paths["predictions"] = rows
    return paths
