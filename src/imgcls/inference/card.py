"""The model card: everything but the weights that a trained model needs to be used.

A card travels with the weights: as JSON in the header of a ``.safetensors`` file (see
:mod:`imgcls.inference.artifact`) and in the metadata of an exported ONNX file. It is
plain JSON, so reading it can never run code.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from imgcls._version import __version__
from imgcls.config import MULTILABEL, SINGLE_LABEL, ConfigError, RunConfig
from imgcls.data.transforms import Preprocessing
from imgcls.errors import CheckpointError

FORMAT = "imgcls-model/2"
CARD_METADATA_KEY = "imgcls.card"  # where model files (safetensors header, ONNX metadata) keep the card
TASKS = (SINGLE_LABEL, MULTILABEL)
DEFAULT_THRESHOLD = 0.5  # a multilabel model's decision threshold until one is fitted on val


@dataclass(frozen=True)
class UnknownSetting:
    """The open-set rule fitted for a model: ``score`` below ``threshold`` means ``unknown``.

    ``temperature`` is the one in force when the threshold was placed (scores are computed
    at it, so a later re-fitted temperature does not move the kept share); ``fit``
    describes how it was placed (split, share kept), or None for a given value.
    """

    threshold: float
    score: str = "msp"
    temperature: float | None = None
    fit: dict | None = None


@dataclass(frozen=True)
class LabelThresholds:
    """A multilabel model's decision rule: label ``i`` is predicted when its probability is
    at least ``per_label[i]``.

    ``global_threshold`` is the one threshold that maximises micro-F1 on the fitting split;
    ``per_label`` holds each label's own F1-maximising threshold (the global one for labels
    too rare there to fit one); ``fit`` describes the fit (split, F1 at each rule).
    """

    per_label: list[float]
    global_threshold: float = DEFAULT_THRESHOLD
    fit: dict | None = None


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about its model; every field is plain JSON.

    Attributes:
        classes: class names in output order (index i of the logits is ``classes[i]``).
        preprocessing: :class:`~imgcls.data.transforms.Preprocessing` as a dict.
        config: the run's :class:`~imgcls.config.RunConfig` as a dict (architecture, head...).
        task: ``single-label`` (softmax over the classes) or ``multilabel`` (a sigmoid per
            label; the predicted set is every label at or above its threshold).
        temperature: divides the logits before the softmax (fitted on val; 1 = none, and
            always 1 for multilabel).
        calibration: how the temperature was fitted (NLL and ECE before/after), or None.
        unknown: the open-set rule, or None.
        hierarchy: fine -> coarse class names of a hierarchical model, or None.
        epoch, phase: the epoch (1-based) and training phase the weights come from.
        monitor: the monitored metric's name, best value and best epoch at save time.
        head_fit: the head's clean train top-1 on frozen features, when measured.
        tta: test-time augmentation that eval, predict and serve apply (``none``: off).
        ema: the weights are an exponential moving average of the trained ones.
        thresholds: multilabel decision thresholds fitted on val, or None (then 0.5 each).
    """

    classes: list[str]
    preprocessing: dict
    config: dict
    task: str = "single-label"
    temperature: float = 1.0
    calibration: dict | None = None
    unknown: UnknownSetting | None = None
    hierarchy: dict[str, str] | None = None
    epoch: int | None = None
    phase: str | None = None
    monitor: dict | None = None
    head_fit: float | None = None
    tta: str = "none"
    ema: bool = False
    thresholds: LabelThresholds | None = None
    imgcls_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format: str = FORMAT

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    @property
    def architecture(self) -> str:
        return (self.config.get("model") or {}).get("name", "?")

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

    def label_thresholds(self) -> list[float]:
        """The per-label decision thresholds in force (0.5 each until fitted)."""
        if self.thresholds is None:
            return [DEFAULT_THRESHOLD] * len(self.classes)
        return list(self.thresholds.per_label)

    def image_preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def replace(self, **changes: Any) -> "ModelCard":
        """A copy with ``changes`` applied (a card is never changed in place)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, values: dict, source: str = "model card") -> "ModelCard":
        """Rebuild a card; raises :class:`CheckpointError` naming ``source`` when it is not one."""
        if not isinstance(values, dict) or values.get("format") != FORMAT:
            found = values.get("format") if isinstance(values, dict) else type(values).__name__
            raise CheckpointError(f"{source}: not an imgcls model card of format {FORMAT} (found {found!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in names}  # keys of newer versions are ignored
        missing = {"classes", "preprocessing", "config"} - set(values)
        if missing:
            raise CheckpointError(f"{source}: model card lacks {sorted(missing)}")
        if values.get("task", "single-label") not in TASKS:
            raise CheckpointError(f"{source}: task {values['task']!r} is not supported by this imgcls "
                                  f"({__version__}); supported: {', '.join(TASKS)}")
        if values.get("unknown") is not None:
            values["unknown"] = UnknownSetting(**values["unknown"])
        if values.get("thresholds") is not None:
            values["thresholds"] = _thresholds(values["thresholds"], len(values["classes"]), source)
        card = cls(**values)
        try:
            card.run_config  # noqa: B018 - validates the stored config now, with the file named
        except ConfigError as err:
            raise CheckpointError(f"{source}: its run config does not load ({err})") from None
        return card

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{source}: damaged model card ({err})") from None
        return cls.from_dict(values, source)


def _thresholds(values, num_classes: int, source: str) -> LabelThresholds:
    """A card's stored thresholds, checked: one number in [0, 1] per class."""
    try:
        thresholds = LabelThresholds(**values)
        ok = len(thresholds.per_label) == num_classes and all(0.0 <= float(t) <= 1.0 for t in thresholds.per_label)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{source}: model card thresholds are not one number in [0, 1] per class")
    return thresholds
