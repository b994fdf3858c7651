"""The doctor's opt-in checks on backbone features: near-duplicate leakage by embedding
cosine (``--deep``) and likely label errors (``--label-check``).

Label errors follow confident learning (Northcutt et al., 2021): every image gets
out-of-fold class probabilities from a linear probe on frozen features, and
``cleanlab.filter.find_label_issues`` flags those whose given label is improbable while
another class is confidently predicted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.apps.cv import read_oof_probabilities
from imgcls.apps.doctor.groups import HELD_OUT, Finding, flag_leak
from imgcls.apps.doctor.scan import FileRecord
from imgcls.runtime import log, require


@dataclass
class Features:
    records: list[FileRecord]  # the images that have a row below
    vectors: np.ndarray  # (n, d), L2-normalised backbone features


def embed(records: list[FileRecord], embedder) -> Features:
    """Features of every record that decodes, from ``embedder`` (paths -> (vectors, decoded
    mask), e.g. :class:`imgcls.inference.embedding.BackboneEmbedder`)."""
    usable = [r for r in records if r.decodes]
    vectors, decoded = embedder([r.path for r in usable])
    return Features([r for r, good in zip(usable, decoded) if good], vectors)


def embedding_leaks(features: Features, threshold: float, known: set[tuple[str, str]] = frozenset()
                    ) -> list[Finding]:
    """Cross-split pairs whose feature cosine is at least ``threshold`` (and not in ``known``)."""
    by_split: dict[str, list[int]] = {s: [] for s in HELD_OUT}
    for i, record in enumerate(features.records):
        if record.split in by_split:
            by_split[record.split].append(i)
    findings = []
    for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
        a, b = np.array(by_split[early], dtype=int), np.array(by_split[late], dtype=int)
        if not len(a) or not len(b):
            continue
        chunk = max(1, 4_000_000 // len(a))
        for start in range(0, len(b), chunk):
            cosine = features.vectors[b[start:start + chunk]] @ features.vectors[a].T
            for row, col in zip(*np.nonzero(cosine >= threshold)):
                kept_out, held_out = features.records[a[col]], features.records[b[start + row]]
                if (kept_out.rel, held_out.rel) not in known:
                    findings.append(flag_leak(kept_out, held_out, f"embedding cosine {cosine[row, col]:.3f}"))
    return findings


def out_of_fold_probabilities(vectors: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(n, K) probabilities, each row from a probe that never saw that image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(max(2, min(folds, np.bincount(labels).min())))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of a deliberately quick probe
        return cross_val_predict(probe, vectors, labels, cv=splitter, method="predict_proba")


def label_errors(features: Features, folds: int = 5, seed: int = 0) -> list[Finding]:
    """Flag likely label errors among the labelled images (all splits pooled)."""
    counts: dict[str, int] = {}
    for record in features.records:
        if record.label and record.split:
            counts[record.label] = counts.get(record.label, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= 2)  # a probe cannot hold out a singleton
    if len(classes) < 2:
        log.warning("label check skipped: it needs two classes with at least two images each")
        return []
    index = {c: i for i, c in enumerate(classes)}
    rows = [i for i, r in enumerate(features.records) if r.split and r.label in index]
    labels = np.array([index[features.records[i].label] for i in rows])
    probs = out_of_fold_probabilities(features.vectors[rows], labels, folds, seed)
    return _flag_label_issues([features.records[i] for i in rows], labels, probs, classes)


def label_errors_from_cv(records: list[FileRecord], cv_folder) -> list[Finding]:
    """Flag likely label errors with the out-of-fold probabilities of an ``imgcls cv`` run on
    this dataset (each image scored by the fold model that never trained on it): the same
    confident-learning rule as the probe, on the real model's predictions."""
    paths, _, classes, probs = read_oof_probabilities(cv_folder)
    row_of = {str(Path(p).resolve()): i for i, p in enumerate(paths)}
    index = {c: i for i, c in enumerate(classes)}
    chosen = [(record, row_of[key]) for record in records
              if record.label in index and (key := str(record.path.resolve())) in row_of]
    if len(chosen) < 2:
        log.warning("label check skipped: %s predicts none of this dataset's images", cv_folder)
        return []
    labels = np.array([index[record.label] for record, _ in chosen])
    return _flag_label_issues([record for record, _ in chosen], labels, probs[[row for _, row in chosen]], classes)


def _flag_label_issues(records: list[FileRecord], labels: np.ndarray, probs: np.ndarray,
                       classes: list[str]) -> list[Finding]:
    """Confident learning (cleanlab ``find_label_issues``) over (n,) labels and (n, K) out-of-fold
    probabilities; one ``label_error`` finding per flagged record, least likely label first."""
    find_label_issues = require("cleanlab.filter", "doctor", "doctor --label-check").find_label_issues

    issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    findings = []
    for k in np.flatnonzero(issues):
        suggested = int(probs[k].argmax())
        if suggested == labels[k]:
            continue
        record = records[k]
        given_p, suggested_p = float(probs[k, labels[k]]), float(probs[k, suggested])
        record.flag("label_error", f"labelled {record.label} (p={given_p:.2f}); looks like "
                                   f"{classes[suggested]} (p={suggested_p:.2f})")
        findings.append(Finding("label_error", [record.rel], [record.rel], f"{record.label} -> {classes[suggested]}",
                                {"given": record.label, "suggested": classes[suggested],
                                 "given_prob": round(given_p, 4), "suggested_prob": round(suggested_p, 4)}))
    return sorted(findings, key=lambda f: f.extra["given_prob"])
