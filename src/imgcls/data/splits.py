"""Reproducible stratified train/val split."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def stratified_split(samples: list[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``round(n * val_fraction)`` samples of each class (at least one if n >= 2).

    Written by hand rather than with scikit-learn's ``StratifiedShuffleSplit`` because that
    fails on one-image classes and depends on the listing order. Here each file is ranked by
    a seeded hash of its path, so the split depends only on (seed, file names): it is the
    same on every machine, and adding a file moves at most a few others.
    """
    by_class: dict[str, list[T]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    train: list[T] = []
    val: list[T] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda s: _rank(seed, s.path))
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    key = lambda s: (s.label, str(s.path))  # noqa: E731 - stable output order
    return sorted(train, key=key), sorted(val, key=key)


def _rank(seed: int, path) -> str:
    # The file name plus its class folder, not the absolute path, so the split survives
    # moving the dataset to another folder or machine.
    p = Path(path)
    return hashlib.sha1(f"{seed}/{p.parent.name}/{p.name}".encode()).hexdigest()


def seeded_split(samples: list[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``round(n * val_fraction)`` samples (at least one if n >= 2), picked by the
    same seeded hash of each file's name as :func:`stratified_split`, for label sets.

    Not stratified: scikit-learn has no stratified split for multi-label data (iterative
    stratification, Sechidis et al., 2011, lives outside it), and ranking by hash keeps the
    split reproducible and stable when files are added. Output is in path order.
    """
    ranked = sorted(samples, key=lambda s: _rank(seed, s.path))
    n_val = min(max(round(len(ranked) * val_fraction), 1), len(ranked) - 1) if len(ranked) >= 2 else 0
    key = lambda s: str(s.path)  # noqa: E731 - stable output order
    return sorted(ranked[n_val:], key=key), sorted(ranked[:n_val], key=key)
