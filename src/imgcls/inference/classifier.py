"""A trained model ready to use: a model card and a backend (``imgcls.load(path)`` returns one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset, collate
from imgcls.data.hierarchy import Hierarchy
from imgcls.data.images import to_rgb
from imgcls.data.loaders import make_loader
from imgcls.data.sources import list_images
from imgcls.data.transforms import eval_transform
from imgcls.errors import UserError
from imgcls.inference.card import ModelCard
from imgcls.inference.predictions import Predictions, predict_loader
from imgcls.inference.rows import error_row, format_predictions
from imgcls.inference.tta import TtaBackend
from imgcls.inference.unknown import UnknownRule
from imgcls.runtime import infer


class Classifier:
    """Class names, preprocessing, temperature and open-set rule (the card) plus what runs
    the network (a :mod:`~imgcls.inference.backends` backend).

    A classifier is not changed in place: :meth:`with_card` and :meth:`with_unknown_rule`
    return new ones that share the backend.

    Args:
        card: the model card.
        backend: ``TorchBackend`` or ``OnnxBackend``.
        source: the file it was loaded from (None for one built in memory).
        unknown: an open-set rule overriding the card's (``predict --unknown-threshold``).
        tta: a test-time augmentation overriding the card's (``eval --tta``, ``predict --tta``).
    """

    def __init__(self, card: ModelCard, backend, source: str | Path | None = None, unknown: UnknownRule | None = None,
                 tta: str | None = None):
        self.card = card
        self.backend = backend
        self.tta = card.tta if tta is None else tta
        # What runs the images: the backend, or the mean of its logits over the TTA views.
        self.runner = TtaBackend(backend, self.tta) if self.tta != "none" else backend
        self.source = Path(source) if source is not None else None
        self.classes: list[str] = list(card.classes)
        self.preprocessing = card.image_preprocessing()
        self.transform = eval_transform(self.preprocessing)
        self.config: RunConfig = card.run_config
        self.hierarchy = Hierarchy.from_map(self.classes, card.hierarchy) if card.hierarchy else None
        self.unknown = unknown if unknown is not None else UnknownRule.from_card(card)
        # Multilabel: a sigmoid per label, and the set of labels at or above their thresholds.
        self.multilabel = card.multilabel
        self.thresholds = np.asarray(card.label_thresholds(), dtype=np.float64)
        self.label_separator = " " if self.config.data.label_sep == "space" else self.config.data.label_sep

    @property
    def temperature(self) -> float:
        return float(self.card.temperature)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def run_dir(self) -> Path | None:
        """The run folder of a model file inside one (None for exports and in-memory models)."""
        if self.source is None or self.source.suffix.lower() == ".onnx":
            return None
        return self.source.parent

    @property
    def torch_module(self) -> nn.Module:
        """The PyTorch network (Grad-CAM, model size); raises for other backends."""
        module = getattr(self.backend, "module", None)
        if module is None:
            raise UserError(f"{self.source}: this needs a PyTorch model file, not a {self.backend.name} one")
        return module

    def with_card(self, card: ModelCard) -> "Classifier":
        return Classifier(card, self.backend, self.source)

    def with_unknown_rule(self, rule: UnknownRule) -> "Classifier":
        return Classifier(self.card, self.backend, self.source, unknown=rule, tta=self.tta)

    def with_tta(self, mode: str) -> "Classifier":
        """The same model with test-time augmentation ``mode`` (``none`` turns it off)."""
        return Classifier(self.card, self.backend, self.source, unknown=self.unknown, tta=mode)

    # -- batches already preprocessed -------------------------------------------------

    def scaled_logits(self, batch: torch.Tensor) -> np.ndarray:
        """``logits / temperature`` (n, C) float32 of a preprocessed batch (n, 3, H, W): what
        the server batches (probabilities and the open-set score both come from them)."""
        images = batch.to(self.device).contiguous(memory_format=self.backend.memory_format)
        with torch.no_grad():
            return (infer(self.runner, images).float() / self.temperature).cpu().numpy()

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, C) of a preprocessed batch (n, 3, H, W): the softmax, or for
        a multilabel model each label's sigmoid."""
        logits = torch.from_numpy(self.scaled_logits(batch))
        return (logits.sigmoid() if self.multilabel else logits.softmax(1)).numpy()

    def predict_proba(self, images: list[Image.Image]) -> np.ndarray:
        """Class probabilities (n, C) of in-memory PIL images."""
        return self.probabilities(torch.stack([self.transform(to_rgb(image)) for image in images]))

    # -- files --------------------------------------------------------------------------

    def predictions(self, paths: list[Path], targets: list[int] | None = None, batch_size: int = 64,
                    workers: int | None = None, temperature: float | None = None, desc: str = "eval") -> Predictions:
        """Outputs for image files at ``temperature`` (default: the model's own; 1.0 gives
        the raw logits that calibration fits on). Undecodable files are in ``.bad``."""
        dataset = ImageDataset(paths, targets, self.transform, draft_size=self.preprocessing.resize_size)
        loader = make_loader(dataset, batch_size, train=False, workers=workers)
        return self.run_loader(loader, temperature, desc)

    def run_loader(self, loader, temperature: float | None = None, desc: str = "eval") -> Predictions:
        """:func:`~imgcls.inference.predictions.predict_loader` with this model's backend."""
        temperature = self.temperature if temperature is None else temperature
        return predict_loader(self.runner, loader, self.device, temperature=temperature, desc=desc,
                              memory_format=self.backend.memory_format, multilabel=self.multilabel)

    def predict(self, images, topk: int = 3, batch_size: int = 32, workers: int | None = 0) -> list[dict]:
        """Predict files, folders (searched recursively) or PIL images.

        Returns one row per image (see :func:`imgcls.inference.rows.format_predictions`);
        a file that cannot be decoded gets a row with its ``error``. Raises
        :class:`~imgcls.data.sources.DatasetError` for a path that does not exist.
        """
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if images and all(isinstance(image, Image.Image) for image in images):
            dataset = [(self.transform(to_rgb(image)), -1, i) for i, image in enumerate(images)]
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
            return self.rows(self.run_loader(loader, desc="predict"), [None] * len(images), topk)
        paths = list_images(images)
        result = self.predictions(paths, batch_size=batch_size, workers=workers, desc="predict")
        rows: list[dict | None] = [None] * len(paths)
        for row, index in zip(self.rows(result, [paths[i] for i in result.indices], topk), result.indices):
            rows[index] = row
        for bad in result.bad:
            rows[bad.index] = error_row(bad.path, bad.reason)
        return rows

    def rows(self, result: Predictions, names: list, topk: int) -> list[dict]:
        """Prediction rows of ``result`` (made at this model's temperature), one per name."""
        if result.logits is None or not len(result.indices):
            return []
        return self.format_rows(result.logits, names, topk, result.coarse_probs)

    def format_rows(self, scaled_logits: np.ndarray, names: list, topk: int,
                    coarse_probs: np.ndarray | None = None) -> list[dict]:
        """Prediction rows (:func:`~imgcls.inference.rows.format_predictions`) of (n, C)
        ``logits / temperature`` with this model's classes, open-set rule and, for a
        multilabel model, thresholds: what ``predict`` and the server both return."""
        coarse = self.hierarchy.coarse_classes if self.hierarchy is not None else None
        return format_predictions(scaled_logits, self.classes, topk, self.unknown, self.temperature, names,
                                  coarse_probs, coarse, self.thresholds if self.multilabel else None,
                                  self.label_separator)
