"""Checks across files: exact duplicates, conflicting labels, train/val/test leakage,
classes unknown to training, files outside class folders, and class balance."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from imgcls.apps.doctor.scan import FileRecord
from imgcls.data.images import is_image_file
from imgcls.data.sources import UNKNOWN_FOLDER

# How held-out a split is. Of two copies in different splits the more held-out one is kept,
# so that removing the other never shrinks the test set.
HELD_OUT = {"train": 0, "val": 1, "test": 2}

# Operating-system litter, reported as not_image wherever it is; other non-images outside
# class folders (README, LICENSE, a manifest) are documentation, not problems.
JUNK_NAMES = frozenset({"thumbs.db", ".ds_store", "desktop.ini", "ehthumbs.db"})

# dHash bits set below / above these counts mean a nearly flat image: every flat image has
# the same hash, so such hashes only match through the exact content hash.
_FLAT_BITS = (6, 58)


@dataclass
class Finding:
    """Files that belong together in the report (a duplicate group, a leaked pair...)."""

    code: str
    files: list[str]  # relative paths, shown side by side; the kept / reference file first
    flagged: list[str]  # which of them carry ``code``
    detail: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"code": self.code, "files": self.files, "flagged": self.flagged, "detail": self.detail,
                **self.extra}


def dataset_checks(records: list[FileRecord], near_distance: int) -> list[Finding]:
    """Run every cross-file check (except the backbone ones); flags go onto the records."""
    check_strays(records)
    findings = exact_copies(records)
    findings += hash_leaks(records, near_distance)
    check_unknown_classes(records)
    return findings


def labelled(record: FileRecord) -> bool:
    """Does the record have a label: a class folder, a manifest label, or a label set (even empty)?"""
    return bool(record.label) or record.labels is not None


def labels_of(record: FileRecord) -> tuple[str, ...]:
    """The record's labels: its label set (multilabel), else its one class (or none)."""
    if record.labels is not None:
        return record.labels
    return (record.label,) if record.label else ()


def check_strays(records: list[FileRecord]) -> None:
    for record in records:
        if labelled(record):
            continue
        if "not_image" in record.problems and record.path.name.lower() not in JUNK_NAMES:
            del record.problems["not_image"]
        elif record.format and not record.problems.keys() & {"zero_byte", "decompression_bomb"}:
            where = "outside the train/val/test folders" if not record.split else "not inside a class folder"
            record.flag("unlabeled", where)


def exact_copies(records: list[FileRecord]) -> list[Finding]:
    """Byte-identical files: under two classes (conflict) or twice in one class (duplicate)."""
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        if record.format and labelled(record):
            by_hash[record.content_hash].append(record)
    findings = []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        labels = sorted({r.label for r in group})
        if len(labels) > 1:
            for record in group:
                others = [r.rel for r in group if r.label != record.label]
                record.flag("conflicting_label", f"same file under class(es) "
                            f"{', '.join(l for l in labels if l != record.label)}: {others[0]}")
            rels = [r.rel for r in group]
            findings.append(Finding("conflicting_label", rels, rels, f"classes {', '.join(labels)}",
                                    {"labels": [r.label for r in group]}))
            continue
        by_split: dict[str, list[FileRecord]] = defaultdict(list)
        for record in group:
            by_split[record.split].append(record)
        for members in by_split.values():
            if len(members) > 1:
                kept, *copies = sorted(members, key=lambda r: r.rel)
                for record in copies:
                    record.flag("duplicate", f"copy of {kept.rel}")
                findings.append(Finding("duplicate", [kept.rel] + [r.rel for r in copies],
                                        [r.rel for r in copies], f"{len(members)} identical files"))
    return findings


def hash_leaks(records: list[FileRecord], near_distance: int) -> list[Finding]:
    """Pairs across splits with the same content hash or dHashes within ``near_distance`` bits."""
    by_split: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        if record.split in HELD_OUT and record.format and record.content_hash:
            by_split[record.split].append(record)
    findings = []
    for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
        if by_split[early] and by_split[late]:
            for a, b, distance in _matching_pairs(by_split[early], by_split[late], near_distance):
                how = "identical file" if a.content_hash == b.content_hash else f"dHash distance {distance}"
                findings.append(flag_leak(a, b, how))
    return findings


def flag_leak(kept_out: FileRecord, held_out: FileRecord, how: str) -> Finding:
    """``kept_out`` (the less held-out copy) gets the flag; ``held_out`` stays."""
    kept_out.flag("leak", f"{how} to {held_out.rel}")
    return Finding("leak", [held_out.rel, kept_out.rel], [kept_out.rel], how)


def _matching_pairs(early: list[FileRecord], late: list[FileRecord], near_distance: int):
    exact: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(early):
        exact[record.content_hash].append(i)
    found = {(i, j) for j, record in enumerate(late) for i in exact.get(record.content_hash, [])}
    a_index, a_hashes = _hash_array(early)
    b_index, b_hashes = _hash_array(late)
    distances = {}
    # Brute force in chunks (XOR + popcount over all pairs): 50,000 x 10,000 CIFAR hashes
    # take about a second, and unlike a BK-tree it needs no code of its own.
    chunk = max(1, 4_000_000 // max(len(a_hashes), 1))
    for start in range(0, len(b_hashes), chunk):
        block = np.bitwise_count(b_hashes[start:start + chunk, None] ^ a_hashes[None, :])
        for row, col in zip(*np.nonzero(block <= near_distance)):
            pair = (int(a_index[col]), int(b_index[start + row]))
            found.add(pair)
            distances[pair] = int(block[row, col])
    for i, j in sorted(found):
        yield early[i], late[j], distances.get((i, j), 0)


def _hash_array(records: list[FileRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Indices and uint64 dHashes of the records whose hash is not flat."""
    index, hashes = [], []
    for i, record in enumerate(records):
        if record.perceptual_hash:
            value = int(record.perceptual_hash, 16)
            if _FLAT_BITS[0] <= value.bit_count() <= _FLAT_BITS[1]:
                index.append(i)
                hashes.append(value)
    return np.array(index, dtype=np.int64), np.array(hashes, dtype=np.uint64)


def check_unknown_classes(records: list[FileRecord]) -> None:
    known = {label for r in records if r.split == "train" and is_image_file(r.path) for label in labels_of(r)}
    if not known:
        return
    for record in records:
        if record.labels is not None:  # a label set: each of its labels must be a trained one
            new = [label for label in record.labels if label not in known]
            if record.split in ("val", "test") and new:
                record.flag("unknown_class", f"label(s) {', '.join(new)} on no training image")
            continue
        # unknown/ under val or test holds out-of-distribution images on purpose (open-set eval)
        set_aside = record.label == UNKNOWN_FOLDER
        if record.split in ("val", "test") and record.label and record.label not in known and not set_aside:
            record.flag("unknown_class", f"class '{record.label}' has no training images")


def class_balance(records: list[FileRecord], ratio_limit: float) -> dict:
    """Images per class and split (files training would pick up), and the train max/min ratio.
    For label sets, images per label (an image counts once for each of its labels)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        if record.split and is_image_file(record.path):
            for label in labels_of(record):
                counts[record.split][label] += 1
    train = counts.get("train", {})
    classes = sorted({label for split in counts.values() for label in split})
    ratio = max(train.values()) / min(train.values()) if train and min(train.values()) else float("nan")
    imbalanced = bool(len(train) > 1 and ratio >= ratio_limit)
    cutoff = max(train.values()) / ratio_limit if imbalanced else 0
    return {
        "classes": classes,
        "counts": {split: {c: counts[split].get(c, 0) for c in classes} for split in counts},
        "ratio": ratio,
        "ratio_limit": ratio_limit,
        "imbalanced": imbalanced,
        "minority": sorted(c for c, n in train.items() if n <= cutoff),  # at least ratio_limit x below the largest
        "largest": max(train, key=train.get) if train else None,
        "smallest": min(train, key=train.get) if train else None,
    }
