"""Open-set rejection: say ``unknown`` for images of none of the trained classes.

Two scores, both "higher = more like a known class", computed from the logits the
classifier's probabilities come from (``logits / temperature``):
  * ``msp``    - maximum softmax probability (Hendrycks & Gimpel, 2017);
  * ``energy`` - the negative energy ``logsumexp(logits)`` (Liu et al., 2020, energy with T = 1).
An image whose score is below the threshold is predicted ``unknown``. ``auto`` places the
threshold on the validation split so that a chosen share (``--unknown-keep``) of known
images stays above it. The checkpoint keeps ``unknown_threshold`` and ``unknown_score``.

Evaluation treats known images as positives: AUROC (scikit-learn ``roc_auc_score``) and
the false-positive rate (share of unknown images accepted) at the threshold where 95% of
known images are accepted (from ``roc_curve``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score, roc_curve

from imgcls.runtime import log

SCORES = ("msp", "energy")
UNKNOWN_LABEL = "unknown"


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"--unknown-score {score!r}: expected one of {', '.join(SCORES)}")
    return score


def parse_threshold(value: str | float | None) -> float | str | None:
    """``None``, ``"auto"`` or a number (``--unknown-threshold``)."""
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
    """Per-image score from (temperature-scaled) logits; higher means more like a known class."""
    z = np.asarray(logits, dtype=np.float64)
    if check_score(score) == "energy":
        return logsumexp(z, axis=1)
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)  # max softmax = exp(0) / sum(exp(z - max))


def fit_threshold(scores: np.ndarray, keep: float) -> float:
    """The largest observed score that keeps at least ``keep`` of ``scores`` at or above it.

    With n scores sorted ascending, dropping the lowest ``floor((1 - keep) * n)`` keeps at
    least ``ceil(keep * n)``; ties at the threshold are kept too, so never fewer.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"--unknown-keep {keep}: expected a share in (0, 1]")
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(values):
        raise ValueError("cannot fit an unknown threshold on an empty validation split")
    dropped = int(math.floor((1.0 - keep) * len(values) + 1e-9))
    return float(values[min(dropped, len(values) - 1)])


def is_unknown(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return np.zeros(len(scores), dtype=bool)
    return np.asarray(scores) < threshold


def openset_metrics(known: np.ndarray, unknown: np.ndarray, threshold: float | None = None) -> dict:
    """AUROC and FPR at 95% TPR with known images as positives; rates at ``threshold`` if given."""
    known, unknown = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not len(known) or not len(unknown):
        raise ValueError("open-set metrics need both known and unknown images")
    y = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    s = np.r_[known, unknown]
    fpr, tpr, _ = roc_curve(y, s)
    # First operating point accepting >= 95% of known images (roc_curve's tpr is non-decreasing).
    at95 = int(np.searchsorted(tpr, 0.95, side="left"))
    result = {"auroc": float(roc_auc_score(y, s)), "fpr_at_95_tpr": float(fpr[min(at95, len(fpr) - 1)]),
              "n_known": int(len(known)), "n_unknown": int(len(unknown))}
    if threshold is not None:
        result.update(threshold=float(threshold), known_accepted=float((known >= threshold).mean()),
                      unknown_rejected=float((unknown < threshold).mean()))
    return result


def evaluate_openset(known_logits: np.ndarray, unknown_logits: np.ndarray, rule: "UnknownRule",
                     logits_temperature: float = 1.0) -> dict:
    """Open-set metrics for both scores; the rule's own score also at its threshold."""
    result: dict = {"score": rule.score if rule.active else None, "threshold": rule.threshold}
    for name in SCORES:
        scorer = UnknownRule(None, name, rule.temperature)
        own = rule.threshold if rule.active and name == rule.score else None
        result[name] = openset_metrics(scorer.scores(known_logits, logits_temperature),
                                       scorer.scores(unknown_logits, logits_temperature), own)
    return result


def known_rejection(known_logits: np.ndarray, rule: "UnknownRule", logits_temperature: float) -> dict:
    """How many of a labelled split's (known) images the rule calls unknown."""
    scores = rule.scores(known_logits, logits_temperature)
    return {"score": rule.score, "threshold": rule.threshold, "known_rejected": float(np.mean(scores < rule.threshold))}


def evaluate_unknown_images(classifier, known, samples: list, out_dir: Path, batch_size: int = 64,
                            workers: int | None = None) -> dict:
    """Score out-of-distribution ``samples`` against the known split's predictions ``known``;
    writes ``eval_unknown_predictions.csv`` and returns the ``openset`` metrics."""
    from imgcls.data.sources import DatasetError
    from imgcls.evaluation.evaluate import predict_samples

    unknown = predict_samples(classifier.model, classifier.preprocessing, [s.path for s in samples],
                              classifier.device, batch_size, classifier.temperature, workers)
    if not len(unknown.indices):
        raise DatasetError(f"{samples[0].path.parent}: none of the {len(samples)} unknown images could be decoded")
    rule: UnknownRule = classifier.unknown
    metrics = evaluate_openset(known.logits, unknown.logits, rule, classifier.temperature)
    scorer = rule if rule.active else UnknownRule(None, "msp", rule.temperature)
    scores = scorer.scores(unknown.logits, classifier.temperature)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "eval_unknown_predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "closest_class", "probability", f"{scorer.score}_score", "rejected"])
        for row, index in enumerate(unknown.indices):
            top = int(np.argmax(unknown.probs[row]))
            writer.writerow([samples[index].path, classifier.classes[top], f"{unknown.probs[row, top]:.6f}",
                             f"{scores[row]:.6f}", "" if not rule.active else int(scores[row] < rule.threshold)])
    metrics["skipped"] = [{"path": str(b.path), "reason": b.reason} for b in unknown.bad]
    return metrics


def format_openset_lines(metrics: dict) -> list[str]:
    lines = [f"Open-set ({metrics['msp']['n_known']} known vs {metrics['msp']['n_unknown']} unknown images; "
             "known = positive)"]
    for name in SCORES:
        m = metrics[name]
        line = f"  {name:<7} AUROC {m['auroc']:.4f}   FPR@95%TPR {m['fpr_at_95_tpr']:.4f}"
        if "threshold" in m:
            line += (f"   at threshold {m['threshold']:.4g}: known accepted {m['known_accepted']:.4f}, "
                     f"unknown rejected {m['unknown_rejected']:.4f}")
        lines.append(line)
    return lines


def fit_on_validation(classifier, score: str, keep: float, batch_size: int = 64,
                      workers: int | None = None) -> dict:
    """Score the run's validation split with ``classifier`` and place the ``auto`` threshold."""
    from imgcls.evaluation.evaluate import evaluate_samples, load_split

    _, samples = load_split(None, classifier.config, "val")
    _, predictions = evaluate_samples(classifier.model, classifier.classes, classifier.preprocessing, samples,
                                      classifier.device, batch_size=batch_size, temperature=classifier.temperature,
                                      workers=workers, raw=classifier.remembered(samples))
    scores = known_scores(predictions.logits, score)
    threshold = fit_threshold(scores, keep)
    return {"unknown_threshold": threshold, "unknown_score": score, "unknown_temperature": classifier.temperature,
            "unknown_fit": {"split": "val", "keep": keep, "n": int(len(scores)),
                            "kept": float((scores >= threshold).mean())}}


def store_threshold(checkpoint_path: Path, values: dict) -> None:
    """Write the threshold keys into an existing checkpoint (atomically)."""
    from imgcls.training.checkpoint import save_checkpoint

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    checkpoint.update(values)
    save_checkpoint(Path(checkpoint_path), **{k: v for k, v in checkpoint.items() if k not in ("format", "path")})


def check_config(config) -> None:
    """Fail before training, not after it, on a bad ``--unknown-*`` option."""
    parse_threshold(config.train.unknown_threshold)
    check_score(config.train.unknown_score)
    if not 0.0 < config.train.unknown_keep <= 1.0:
        raise ValueError(f"--unknown-keep {config.train.unknown_keep}: expected a share in (0, 1]")


def fit_unknown_threshold(classifier, config, batch_size: int = 64) -> dict | None:
    """End of training: apply ``train.unknown_threshold`` (``auto`` or a value) to the
    classifier and store it in its checkpoint (``best.pt``); None when not configured."""
    setting = parse_threshold(config.train.unknown_threshold)
    if setting is None:
        return None
    score = check_score(config.train.unknown_score)
    if setting == "auto":
        values = fit_on_validation(classifier, score, config.train.unknown_keep, batch_size, config.data.workers)
        log.info("unknown threshold: %s >= %.4g keeps %.1f%% of %d validation images", score,
                 values["unknown_threshold"], 100 * values["unknown_fit"]["kept"], values["unknown_fit"]["n"])
    else:
        values = {"unknown_threshold": float(setting), "unknown_score": score,
                  "unknown_temperature": classifier.temperature, "unknown_fit": None}
    store_threshold(classifier.checkpoint_path, values)
    classifier.unknown = UnknownRule(values["unknown_threshold"], score, values["unknown_temperature"])
    return values


class UnknownRule:
    """A checkpoint's rejection rule: ``score`` below ``threshold`` means ``unknown``.

    The threshold was placed on scores at the temperature in force when it was fitted
    (``unknown_temperature``); scores are computed at that temperature even if the model's
    temperature was re-fitted since, so the kept share stays what was asked for. ``None``:
    the model's current temperature. Rules are not changed in place; ``replaced`` makes a new one.
    """

    def __init__(self, threshold: float | None = None, score: str = "msp", temperature: float | None = None):
        self.threshold = None if threshold is None else float(threshold)
        self.score = check_score(score)
        self.temperature = None if temperature is None else float(temperature)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "UnknownRule":
        return cls(checkpoint.get("unknown_threshold"), checkpoint.get("unknown_score") or "msp",
                   checkpoint.get("unknown_temperature"))

    @property
    def active(self) -> bool:
        return self.threshold is not None

    def scores(self, logits: np.ndarray, logits_temperature: float = 1.0) -> np.ndarray:
        """Scores of logits that were divided by ``logits_temperature`` (as Predictions.logits are)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.temperature is not None:
            z = z * (logits_temperature / self.temperature)
        return known_scores(z, self.score)

    def replaced(self, threshold: str | float | None, score: str | None = None) -> "UnknownRule":
        """The rule with another threshold (``predict --unknown-threshold VALUE|none``) and/or score."""
        value = parse_threshold(threshold)
        if value == "auto":
            raise ValueError("--unknown-threshold auto is fitted when training (on val); give a value to predict")
        return UnknownRule(value, score or self.score, self.temperature)
