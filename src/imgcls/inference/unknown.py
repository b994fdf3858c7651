"""Open-set rejection at inference: say ``unknown`` for images of none of the trained classes.

Two scores, both "higher = more like a known class", computed from the logits the
classifier's probabilities come from (``logits / temperature``):
  * ``msp``    - maximum softmax probability (Hendrycks & Gimpel, 2017);
  * ``energy`` - the negative energy ``logsumexp(logits)`` (Liu et al., 2020, energy with T = 1).
An image whose score is below the model's threshold is predicted ``unknown``. Placing the
threshold is evaluation's job (:mod:`imgcls.evaluation.openset`); the rule itself is stored
in the model card (:class:`~imgcls.inference.card.UnknownSetting`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from imgcls.inference.card import ModelCard, UnknownSetting

SCORES = ("msp", "energy")
UNKNOWN_LABEL = "unknown"


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"--unknown-score {score!r}: expected one of {', '.join(SCORES)}")
    return score


def parse_threshold(value: str | float | None) -> float | str | None:
    """``None``, ``"auto"`` or a finite number, from a ``--unknown-threshold`` value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--unknown-threshold {value!r}: expected 'auto' or a number") from None
    if not math.isfinite(number):
        raise ValueError(f"--unknown-threshold {value!r}: must be finite")
    return number


def known_scores(logits: np.ndarray, score: str) -> np.ndarray:
    """(n,) scores of (n, C) temperature-scaled logits; higher means more like a known class."""
    z = np.asarray(logits, dtype=np.float64)
    if check_score(score) == "energy":
        return logsumexp(z, axis=1)
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)  # max softmax = exp(0) / sum(exp(z - max))


class UnknownRule:
    """A model's rejection rule: ``score`` below ``threshold`` means ``unknown``.

    Scores are computed at the temperature the threshold was placed at
    (``temperature``; None: the model's current one), so the kept share stays what was
    asked for even if the model's temperature was re-fitted since. Rules are values:
    :meth:`replaced` makes a new one.
    """

    def __init__(self, threshold: float | None = None, score: str = "msp", temperature: float | None = None):
        self.threshold = None if threshold is None else float(threshold)
        self.score = check_score(score)
        self.temperature = None if temperature is None else float(temperature)

    @classmethod
    def from_card(cls, card: ModelCard) -> "UnknownRule":
        if card.unknown is None:
            return cls()
        return cls(card.unknown.threshold, card.unknown.score, card.unknown.temperature)

    def setting(self, fit: dict | None = None) -> UnknownSetting | None:
        """The rule as a model-card entry (None when inactive)."""
        if not self.active:
            return None
        return UnknownSetting(self.threshold, self.score, self.temperature, fit)

    @property
    def active(self) -> bool:
        return self.threshold is not None

    def scores(self, logits: np.ndarray, logits_temperature: float = 1.0) -> np.ndarray:
        """(n,) scores of (n, C) logits that were divided by ``logits_temperature``."""
        z = np.asarray(logits, dtype=np.float64)
        if self.temperature is not None:
            z = z * (logits_temperature / self.temperature)
        return known_scores(z, self.score)

    def rejects(self, logits: np.ndarray, logits_temperature: float = 1.0) -> np.ndarray:
        """(n,) bool: which images the rule calls ``unknown`` (none when inactive)."""
        if not self.active:
            return np.zeros(len(logits), dtype=bool)
        return self.scores(logits, logits_temperature) < self.threshold

    def replaced(self, threshold: str | float | None, score: str | None = None) -> "UnknownRule":
        """The rule with another threshold (``predict --unknown-threshold VALUE|none``) and/or score."""
        value = parse_threshold(threshold)
        if value == "auto":
            raise ValueError("--unknown-threshold auto is fitted when training (on val); give a value to predict")
        return UnknownRule(value, score or self.score, self.temperature)
