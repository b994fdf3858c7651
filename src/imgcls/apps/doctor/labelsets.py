"""Checks of a multilabel manifest's label sets: label frequencies per split, labels that no
image of a split carries or that every training image carries, images without labels, and
which labels occur together (the co-occurrence counts of the training split).

A label set is one row's ``labels`` cell (:func:`imgcls.data.sources.read_manifest`); the
checks that look at files (duplicates, leakage, unreadable images) run on these records as
on any other dataset.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from imgcls.apps.doctor.groups import Finding
from imgcls.apps.doctor.scan import FileRecord
from imgcls.data.layout import SPLITS

TOP_PAIRS = 10
MAX_LISTED = 200  # image paths listed per finding (doctor.json keeps the count)


def label_set_checks(records: list[FileRecord]) -> tuple[dict | None, list[Finding]]:
    """``(statistics, findings)`` of the records that carry label sets; ``(None, [])`` for a
    dataset without any (folders, single-label manifests).

    statistics: ``labels`` (sorted), per split ``images``, ``empty``, ``mean_labels``,
    ``max_labels`` and ``counts`` (images per label), the training split's ``cooccurrence``
    (C x C image counts, the diagonal each label's count) and its ``top_pairs``.
    Findings: ``label_missing`` (a label no image of a split carries), ``label_always`` (a
    label on every training image), ``empty_labels`` (images of a split without any label).
    """
    labelled = [r for r in records if r.labels is not None and r.split]
    if not labelled:
        return None, []
    labels = sorted({label for r in labelled for label in r.labels})
    splits = {s: [r for r in labelled if r.split == s] for s in SPLITS if any(r.split == s for r in labelled)}
    stats = {"labels": labels, "splits": {s: _split_stats(rs, labels) for s, rs in splits.items()}}
    findings = _findings(stats, splits)
    train = splits.get("train", [])
    matrix = _cooccurrence(train, labels)
    stats["cooccurrence"] = matrix.tolist()
    pairs = [(int(matrix[i, j]), labels[i], labels[j]) for i, j in combinations(range(len(labels)), 2) if matrix[i, j]]
    stats["top_pairs"] = [{"labels": [a, b], "images": n} for n, a, b in sorted(pairs, key=lambda p: -p[0])[:TOP_PAIRS]]
    return stats, findings


def _split_stats(records: list[FileRecord], labels: list[str]) -> dict:
    sizes = [len(r.labels) for r in records]
    counts = dict.fromkeys(labels, 0)
    for record in records:
        for label in record.labels:
            counts[label] += 1
    return {"images": len(records), "empty": sizes.count(0), "mean_labels": float(np.mean(sizes)) if sizes else 0.0,
            "max_labels": max(sizes, default=0), "counts": counts}


def _findings(stats: dict, splits: dict[str, list[FileRecord]]) -> list[Finding]:
    findings = []
    for split, split_stats in stats["splits"].items():
        missing = [label for label, n in split_stats["counts"].items() if n == 0]
        if missing:
            why = "cannot be learnt" if split == "train" else "cannot be measured there (no AP, no fitted threshold)"
            findings.append(Finding("label_missing", [], [], f"{split}: no image carries {', '.join(missing)}; "
                                    f"{'it' if len(missing) == 1 else 'they'} {why}",
                                    {"split": split, "labels": missing}))
        empty = [r.rel for r in splits[split] if not r.labels]
        if empty:
            findings.append(Finding("empty_labels", empty[:MAX_LISTED], [], f"{split}: {len(empty)} image(s) with an "
                                    "empty label set (negatives: no label applies)", {"split": split,
                                                                                      "images": len(empty)}))
    train = stats["splits"].get("train")
    if train and train["images"] >= 2:
        always = [label for label, n in train["counts"].items() if n == train["images"]]
        if always:
            findings.append(Finding("label_always", [], [], f"train: every image carries {', '.join(always)}; a model "
                                    "learns to predict it always", {"labels": always}))
    return findings


def _cooccurrence(records: list[FileRecord], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((len(records), len(labels)), dtype=np.int64)
    for row, record in enumerate(records):
        y[row, [index[label] for label in record.labels]] = 1
    return y.T @ y


def summary_lines(stats: dict | None) -> list[str]:
    """Label frequencies per split, set sizes and the most frequent pairs, for the terminal."""
    if not stats:
        return []
    lines = [f"\nlabel sets ({len(stats['labels'])} labels):"]
    for split, s in stats["splits"].items():
        shown = ", ".join(f"{label} {n}" for label, n in sorted(s["counts"].items(), key=lambda kv: -kv[1]))
        lines.append(f"  {split}: {s['images']} images, {s['mean_labels']:.2f} labels each on average (at most "
                     f"{s['max_labels']}), {s['empty']} without any; images per label: {shown}")
    if stats.get("top_pairs"):
        lines.append("  most frequent pairs (train): " + ", ".join(
            f"{p['labels'][0]} + {p['labels'][1]} {p['images']}" for p in stats["top_pairs"]))
    return lines
