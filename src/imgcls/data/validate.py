"""Is a discovered dataset one training can learn from, and what did discovery understand?

Run right after :func:`imgcls.data.sources.discover`, before a run folder exists or an image
is decoded: :func:`training_problems` lists what would make training meaningless (one class,
an empty validation split, a split of one image), :func:`describe` the layout as understood
(which folder became which split, classes, counts, what is left unused).
``imgcls train`` refuses on the first problem; ``imgcls doctor`` reports them all.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from imgcls.data.layout import DatasetError, Unused
from imgcls.data.sources import DatasetSplits

UNUSED_FILE = "unused_files.csv"


@dataclass(frozen=True)
class LayoutProblem:
    code: str  # the doctor's problem code (imgcls.apps.doctor.checks.PROBLEMS)
    where: str  # the folder or file it is about
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def training_problems(data: DatasetSplits) -> list[LayoutProblem]:
    """What makes training on ``data`` meaningless, most basic first; empty when it is fine."""
    problems = []
    if len(data.classes) < 2:
        found = f"only one class, '{data.classes[0]}'" if data.classes else "no class"
        problems.append(LayoutProblem("one_class", data.where("train"),
                                      f"{found}; a classifier needs at least 2 class folders"))
    for split, samples in data.splits.items():
        automatic = split == "val" and data.automatic_val
        if not samples and automatic:
            problems.append(LayoutProblem(
                "empty_split", data.where(split), "the automatic split left val empty: every class has a single "
                "image (a class gives val an image from 2 on); add images or give a val folder"))
        elif not samples:
            problems.append(LayoutProblem("empty_split", data.where(split), f"the {split} split has no images"))
        elif len(samples) == 1:
            problems.append(LayoutProblem(
                "small_split", data.where(split), f"the {split} split has a single image ({samples[0].path.name}"
                f"{', from the automatic split' if automatic else ''}); it needs at least 2 to measure anything"))
    return problems


def check_trainable(data: DatasetSplits) -> None:
    """Raise the first of :func:`training_problems` as a DatasetError (one line naming the folder)."""
    problems = training_problems(data)
    if problems:
        raise DatasetError(str(problems[0]), problems[0].code)


def describe(data: DatasetSplits) -> list[str]:
    """The layout as understood, for the log: layout and split sources, classes, counts, unused."""
    lines = [f"data: {data.layout} {data.root or ''}".rstrip() + ": " + ", ".join(
        f"{split} <- {_source(data, split)}" for split in data.splits)]
    shown = ", ".join(data.classes[:12]) + (f", ... ({len(data.classes)} in all)" if len(data.classes) > 12 else "")
    lines.append(f"{'labels' if data.multilabel else 'classes'} ({len(data.classes)}): {shown}")
    lines.append("images: " + "; ".join(f"{split} {len(samples)}{_per_class(data, split)}"
                                        for split, samples in data.splits.items()))
    if data.multilabel:
        lines.append("labels per image: " + "; ".join(_cardinality(samples, split)
                                                      for split, samples in data.splits.items()))
    if data.unknown:
        lines.append("set aside for open-set evaluation: " + ", ".join(
            f"{split} {len(samples)} unknown/" for split, samples in data.unknown.items()))
    if data.unused:
        lines.append(unused_summary(data.unused))
    return lines


def _source(data: DatasetSplits, split: str) -> str:
    if split == "val" and data.automatic_val:
        return data.automatic_val
    source, root = data.sources.get(split, ""), data.root
    if root is None or not source:
        return source
    if root.is_file():
        return f"the manifest's {split} rows"
    if Path(source) == root:
        return "the class folders"
    return Path(source).relative_to(root).as_posix() + "/" if Path(source).is_relative_to(root) else source


def _cardinality(samples: list, split: str) -> str:
    sizes = [len(s.labels) for s in samples]
    empty = sizes.count(0)
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    return f"{split} {mean:.2f} on average, {min(sizes, default=0)}-{max(sizes, default=0)}" + (
        f", {empty} with none" if empty else "")


def _per_class(data: DatasetSplits, split: str) -> str:
    if data.multilabel:  # images carrying each label
        counts = list(Counter(label for s in data.splits[split] for label in s.labels).values())
        return f" ({min(counts)}-{max(counts)} per label)" if counts else ""
    counts = list(Counter(s.label for s in data.splits[split]).values())
    if not counts:
        return ""
    low, high = min(counts), max(counts)
    return f" ({low} per class)" if low == high else f" ({low}-{high} per class)"


def unused_summary(unused: list[Unused]) -> str:
    """One line: how many files and folders training does not use, by reason."""
    reasons = Counter(u.reason for u in unused)
    by_reason = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    return f"unused: {len(unused)} files or folders not trained on ({by_reason})"


def write_unused(unused: list[Unused], path: Path) -> Path | None:
    """``path, reason`` rows (folders end in ``/``); nothing written when nothing is unused."""
    if not unused:
        return None
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows([str(u.path) + ("/" if u.path.is_dir() else ""), u.reason] for u in unused)
    return path
