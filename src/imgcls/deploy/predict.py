"""A trained model ready to use: ``imgcls.load(path)`` returns a :class:`Classifier`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.images import to_rgb
from imgcls.data.loaders import make_loader
from imgcls.data.sources import list_images
from imgcls.data.transforms import eval_transform
from imgcls.evaluation.evaluate import evaluate_samples, load_split, write_eval
from imgcls.evaluation.inference import predict_loader
from imgcls.runtime import select_device
from imgcls.training.checkpoint import model_from_checkpoint, read_checkpoint


class Classifier:
    """A model, its class names and its preprocessing, loaded from one checkpoint file."""

    def __init__(self, checkpoint: dict, device: str = "auto"):
        self.checkpoint_path = Path(checkpoint["path"])
        self.config = RunConfig.from_dict(checkpoint["config"])
        self.classes: list[str] = list(checkpoint["classes"])
        self.temperature = float(checkpoint.get("temperature", 1.0))
        self.calibration: dict | None = checkpoint.get("calibration")  # how the temperature was fitted
        self.device = select_device(device)
        self.model, self.preprocessing = model_from_checkpoint(checkpoint)
        self.model.to(self.device)
        self.transform = eval_transform(self.preprocessing)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Classifier":
        return cls(read_checkpoint(path), device)

    def predict_proba(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities for in-memory PIL images, shape (n, C)."""
        return self.probabilities(torch.stack([self.transform(to_rgb(image)) for image in images]))

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities for an already preprocessed batch (n, 3, H, W) (used by the server,
        which preprocesses each request itself and batches requests together)."""
        with torch.no_grad():
            self.model.eval()
            logits = self.model(batch.to(self.device)).float() / self.temperature
        return logits.softmax(1).cpu().numpy()

    def predict(self, images, topk: int = 3, batch_size: int = 32, workers: int | None = 0) -> list[dict]:
        """Predict files, folders (recursively) or PIL images.

        Returns one dict per image: ``path``, ``label``, ``probability``, ``topk`` (list of
        (label, probability)) and ``error`` (a reason when the file could not be decoded).
        """
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if all(isinstance(image, Image.Image) for image in images):
            return [self._row(None, p, topk) for p in self.predict_proba(list(images))]
        paths = list_images(images)
        dataset = ImageDataset(paths, None, self.transform, draft_size=self.preprocessing.resize_size)
        loader = make_loader(dataset, batch_size, train=False, workers=workers)
        result = predict_loader(self.model, loader, self.device, temperature=self.temperature, desc="predict")
        rows: list[dict | None] = [None] * len(paths)
        for index, probs in zip(result.indices, result.probs):
            rows[index] = self._row(paths[index], probs, topk)
        for bad in result.bad:
            rows[bad.index] = {"path": str(bad.path), "label": "", "probability": float("nan"),
                                           "topk": [], "error": bad.reason}
        return rows

    def _row(self, path, probs: np.ndarray, topk: int) -> dict:
        order = np.argsort(-probs)[: min(topk, len(self.classes))]
        top = [(self.classes[i], float(probs[i])) for i in order]
        return {"path": str(path) if path else None, "label": top[0][0], "probability": top[0][1],
                "topk": top, "error": ""}

    def evaluate(self, data: str | Path, split: str | None = None, out_dir: str | Path | None = None,
                 batch_size: int = 64, workers: int | None = None, report: bool | str | Path = False) -> dict:
        """Full metrics on a split of ``data``; writes eval.json and CSVs to ``out_dir``
        (default: ``eval-<split>/`` beside the checkpoint). ``report``: also write the HTML
        report (True: ``report.html`` beside eval.json, or this path); a checkpoint with no
        fitted temperature first gets one (fitted on the run's val split and stored)."""
        if report and getattr(self, "calibration", None) is None:
            from imgcls.evaluation.calibration import calibrate_classifier

            calibrate_classifier(self, batch_size=batch_size, workers=workers)
        split, samples = load_split(data, self.config, split)
        metrics, predictions = evaluate_samples(
            self.model, self.classes, self.preprocessing, samples, self.device, batch_size=batch_size,
            topk=self.config.train.topk, temperature=self.temperature, workers=workers)
        metrics["split"] = split
        metrics["checkpoint"] = str(self.checkpoint_path)
        out = Path(out_dir) if out_dir else self.checkpoint_path.parent / f"eval-{split}"
        metrics["files"] = {k: str(v) for k, v in write_eval(metrics, predictions, samples, self.classes, out).items()}
        if report:
            from imgcls.evaluation.report import write_report

            target = out / "report.html" if report is True else Path(report)
            metrics["files"]["report"] = str(write_report(self, metrics, predictions, samples, target, data=data))
        return metrics


def write_predictions_csv(rows: list[dict], out: str | Path, topk: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ["path", "label", "probability"]
    for k in range(2, topk + 1):
        header += [f"label_{k}", f"probability_{k}"]
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header + ["error"])
        for row in rows:
            line = [row["path"], row["label"], "" if row["error"] else f"{row['probability']:.6f}"]
            for k in range(1, topk):
                label, prob = row["topk"][k] if k < len(row["topk"]) else ("", None)
                line += [label, "" if prob is None else f"{prob:.6f}"]
            writer.writerow(line + [row["error"]])
    return out
