"""Open-set evaluation: place the ``unknown`` threshold on val, and score unknown images.

The rule itself (scores, threshold, what ``predict`` says) is in
:mod:`imgcls.inference.unknown`; the metrics (AUROC, FPR at 95% TPR) in
:mod:`imgcls.metrics.openset`. ``auto`` places the threshold on the validation split so that
a chosen share (``--unknown-keep``) of known images stays above it; the caller stores the
returned setting in the model card.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from imgcls.data.sources import DatasetError, Sample
from imgcls.inference.card import UnknownSetting
from imgcls.inference.classifier import Classifier
from imgcls.inference.predictions import Predictions
from imgcls.inference.unknown import SCORES, UnknownRule, check_score, known_scores, parse_threshold
from imgcls.metrics.openset import openset_metrics
from imgcls.runtime import log


def fit_threshold(scores: np.ndarray, keep: float) -> float:
    """The largest observed score that keeps at least ``keep`` of (n,) ``scores`` at or above it.

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


def fit_unknown_setting(train_cfg, val: Predictions, temperature: float) -> UnknownSetting | None:
    """The open-set rule ``--unknown-threshold`` asks for: ``auto`` placed on the val
    predictions ``val`` (made at ``temperature``), or the given value; None when not asked."""
    setting = parse_threshold(train_cfg.unknown_threshold)
    if setting is None:
        return None
    score = check_score(train_cfg.unknown_score)
    if setting != "auto":
        return UnknownSetting(float(setting), score, temperature, None)
    scores = known_scores(val.logits, score)
    threshold = fit_threshold(scores, train_cfg.unknown_keep)
    fit = {"split": "val", "keep": train_cfg.unknown_keep, "n": int(len(scores)),
           "kept": float((scores >= threshold).mean())}
    log.info("unknown threshold: %s >= %.4g keeps %.1f%% of %d validation images", score, threshold,
             100 * fit["kept"], fit["n"])
    return UnknownSetting(threshold, score, temperature, fit)


def check_config(config) -> None:
    """Fail before training, not after it, on a bad ``--unknown-*`` option."""
    parse_threshold(config.train.unknown_threshold)
    check_score(config.train.unknown_score)
    if not 0.0 < config.train.unknown_keep <= 1.0:
        raise ValueError(f"--unknown-keep {config.train.unknown_keep}: expected a share in (0, 1]")


def evaluate_openset(known_logits: np.ndarray, unknown_logits: np.ndarray, rule: UnknownRule,
                     logits_temperature: float = 1.0) -> dict:
    """Open-set metrics for both scores; the rule's own score also at its threshold."""
    result: dict = {"score": rule.score if rule.active else None, "threshold": rule.threshold}
    for name in SCORES:
        scorer = UnknownRule(None, name, rule.temperature)
        own = rule.threshold if rule.active and name == rule.score else None
        result[name] = openset_metrics(scorer.scores(known_logits, logits_temperature),
                                       scorer.scores(unknown_logits, logits_temperature), own)
    return result


def known_rejection(known_logits: np.ndarray, rule: UnknownRule, logits_temperature: float) -> dict:
    """How many of a labelled split's (known) images the rule calls unknown."""
    scores = rule.scores(known_logits, logits_temperature)
    return {"score": rule.score, "threshold": rule.threshold, "known_rejected": float(np.mean(scores < rule.threshold))}


def evaluate_unknown_images(classifier: Classifier, known: Predictions, samples: list[Sample], out_dir: Path,
                            batch_size: int = 64, workers: int | None = None) -> dict:
    """Score out-of-distribution ``samples`` against the known split's predictions ``known``;
    writes ``eval_unknown_predictions.csv`` and returns the ``openset`` metrics."""
    unknown = classifier.predictions([s.path for s in samples], batch_size=batch_size, workers=workers)
    if not len(unknown.indices):
        raise DatasetError(f"{samples[0].path.parent}: none of the {len(samples)} unknown images could be decoded")
    rule = classifier.unknown
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
