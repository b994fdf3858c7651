"""A trained model ready to use: ``imgcls.load(path)`` returns a :class:`Classifier`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset, collate
from imgcls.data.hierarchy import Hierarchy
from imgcls.data.images import to_rgb
from imgcls.data.loaders import make_loader
from imgcls.data.sources import list_images
from imgcls.data.transforms import eval_transform
from imgcls.evaluation.evaluate import evaluate_samples, load_split, load_unknown, write_eval
from imgcls.evaluation.inference import Predictions, predict_loader
from imgcls.evaluation.openset import UNKNOWN_LABEL, UnknownRule, evaluate_unknown_images, known_rejection
from imgcls.runtime import infer, memory_format_for, select_device
from imgcls.training.checkpoint import model_from_checkpoint, read_checkpoint


class Classifier:
    """A model, its class names and its preprocessing, loaded from one checkpoint file."""

    hierarchy: Hierarchy | None = None  # coarse labels of a hierarchical model
    unknown: UnknownRule = UnknownRule()  # open-set rejection rule (inactive: no threshold)

    def __init__(self, checkpoint: dict, device: str = "auto"):
        self.checkpoint_path = Path(checkpoint["path"])
        self.config = RunConfig.from_dict(checkpoint["config"])
        self.classes: list[str] = list(checkpoint["classes"])
        self.temperature = float(checkpoint.get("temperature", 1.0))
        self.calibration: dict | None = checkpoint.get("calibration")  # how the temperature was fitted
        self.device = select_device(device)
        self.model, self.preprocessing = model_from_checkpoint(checkpoint)
        self.model.to(self.device, memory_format=memory_format_for(self.device))
        self.transform = eval_transform(self.preprocessing)
        hierarchy_map = self.config.data.hierarchy_map
        self.hierarchy = Hierarchy.from_map(self.classes, hierarchy_map) if hierarchy_map else None
        self.unknown = UnknownRule.from_checkpoint(checkpoint)

    @property
    def unknown_threshold(self) -> float | None:
        """Below this ``unknown_score`` (msp: top probability; energy: logsumexp of logits) an
        image is ``unknown``; None: no rejection (docs/openset.md)."""
        return self.unknown.threshold

    @property
    def unknown_score(self) -> str:
        return self.unknown.score

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Classifier":
        return cls(read_checkpoint(path), device)

    def predict_proba(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities for in-memory PIL images, shape (n, C)."""
        return self.probabilities(torch.stack([self.transform(to_rgb(image)) for image in images]))

    def scaled_logits(self, batch: torch.Tensor) -> np.ndarray:
        """``logits / temperature`` of an already preprocessed batch (n, 3, H, W): what the
        server batches (the probabilities and the open-set score both come from them)."""
        with torch.no_grad():
            self.model.eval()
            return (infer(self.model, batch.to(self.device)).float() / self.temperature).cpu().numpy()

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities for an already preprocessed batch (n, 3, H, W)."""
        return torch.from_numpy(self.scaled_logits(batch)).softmax(1).numpy()

    def predict(self, images, topk: int = 3, batch_size: int = 32, workers: int | None = 0) -> list[dict]:
        """Predict files, folders (recursively) or PIL images.

        Returns one dict per image: ``path``, ``label``, ``probability``, ``topk`` (list of
        (label, probability)) and ``error`` (a reason when the file could not be decoded).
        """
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if all(isinstance(image, Image.Image) for image in images):
            dataset = [(self.transform(to_rgb(image)), -1, i) for i, image in enumerate(images)]
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
            result = predict_loader(self.model, loader, self.device, temperature=self.temperature, desc="predict")
            return [self._row(None, result, i, topk) for i in range(len(images))]
        paths = list_images(images)
        dataset = ImageDataset(paths, None, self.transform, draft_size=self.preprocessing.resize_size)
        loader = make_loader(dataset, batch_size, train=False, workers=workers)
        result = predict_loader(self.model, loader, self.device, temperature=self.temperature, desc="predict")
        rows: list[dict | None] = [None] * len(paths)
        for position, index in enumerate(result.indices):
            rows[index] = self._row(paths[index], result, position, topk)
        for bad in result.bad:
            rows[bad.index] = {"path": str(bad.path), "label": "", "probability": float("nan"),
                                           "topk": [], "error": bad.reason}
        return rows

    def _row(self, path, result: Predictions, position: int, topk: int) -> dict:
        """One prediction; plus ``coarse_label``/``coarse_probability`` (hierarchical model) and
        ``unknown_score``/``unknown`` (open-set rule; ``label`` is then ``unknown`` below the threshold)."""
        probs = result.probs[position]
        order = np.argsort(-probs)[: min(topk, len(self.classes))]
        top = [(self.classes[i], float(probs[i])) for i in order]
        row = {"path": str(path) if path else None, "label": top[0][0], "probability": top[0][1],
               "topk": top, "error": ""}
        if self.hierarchy is not None and result.coarse_probs is not None:
            coarse = result.coarse_probs[position]
            row.update(coarse_label=self.hierarchy.coarse_classes[int(np.argmax(coarse))],
                       coarse_probability=float(np.max(coarse)))
        if self.unknown.active:
            score = float(self.unknown.scores(result.logits[position:position + 1], self.temperature)[0])
            row.update(unknown_score=score, unknown=score < self.unknown.threshold)
            if row["unknown"]:
                row["label"] = UNKNOWN_LABEL
        return row

    def remember(self, samples: list, raw: Predictions) -> None:
        """Keep the temperature-1 predictions of one sample list: calibration, the open-set
        fit and the evaluation that follow training all score the val split, and the model
        does not change in between, so it runs over the images once, not three times."""
        self._remembered = (tuple(str(s.path) for s in samples), raw)

    def remembered(self, samples: list) -> Predictions | None:
        key, raw = getattr(self, "_remembered", (None, None))
        return raw if key == tuple(str(s.path) for s in samples) else None

    def evaluate(self, data: str | Path, split: str | None = None, out_dir: str | Path | None = None,
                 batch_size: int = 64, workers: int | None = None, report: bool | str | Path = False,
                 unknown: str | Path | None = None) -> dict:
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
            topk=self.config.train.topk, temperature=self.temperature, workers=workers, hierarchy=self.hierarchy,
            raw=self.remembered(samples))
        metrics["split"] = split
        metrics["checkpoint"] = str(self.checkpoint_path)
        out = Path(out_dir) if out_dir else self.checkpoint_path.parent / f"eval-{split}"
        if self.unknown.active:
            metrics["unknown_rule"] = known_rejection(predictions.logits, self.unknown, self.temperature)
        outliers = load_unknown(data, self.config, split, unknown)  # out-of-distribution images, if any
        if outliers:
            metrics["openset"] = evaluate_unknown_images(self, predictions, outliers, out, batch_size, workers)
        metrics["files"] = {k: str(v) for k, v in
                            write_eval(metrics, predictions, samples, self.classes, out, self.hierarchy).items()}
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
    levels = any("coarse_label" in row for row in rows)  # hierarchical model
    openset = any("unknown_score" in row for row in rows)  # open-set rule: top class kept beside 'unknown'
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
                line += [row.get("coarse_label", ""), f"{row['coarse_probability']:.6f}" if "coarse_label" in row else ""]
            if openset:
                line += [row["topk"][0][0] if row["topk"] else "",
                         f"{row['unknown_score']:.6f}" if "unknown_score" in row else ""]
            writer.writerow(line + [row["error"]])
    return out
