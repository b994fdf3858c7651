"""Find the labelled samples of a dataset, whatever layout it comes in.

Layouts, checked in this order:
  * a CSV manifest ``path,label[,split]`` (paths relative to the CSV);
  * a folder with ``train/`` (and optionally ``val/`` and ``test/``) of class folders;
  * a single folder of class folders;
  * ``--train`` folders (several are merged by class name) and an optional ``--val`` folder.
Whatever has no validation split gets one from :func:`imgcls.data.splits.stratified_split`.

``nested=True`` (``--hierarchy folders``) reads ``<coarse>/<fine>/`` folders instead: the fine
folder is the class, the coarse folder is kept in ``Sample.coarse``. An ``unknown/`` folder in
val or test (when no training class has that name) holds out-of-distribution images for
open-set evaluation: it is kept apart in ``DatasetSplits.unknown``, not treated as a class.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.images import is_image_file
from imgcls.errors import UserError
from imgcls.data.splits import stratified_split

VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test",)
UNKNOWN_FOLDER = "unknown"
HIERARCHY_FOLDERS = "folders"  # data.hierarchy value for <coarse>/<fine>/ folders


class DatasetError(UserError, ValueError):
    """A dataset that cannot be read; ``str()`` names the path and the problem."""


@dataclass
class Sample:
    path: Path
    label: str
    coarse: str | None = None  # the <coarse> folder of a nested layout


@dataclass
class DatasetSplits:
    """Labelled samples per split; ``classes`` fixes the label -> index mapping."""

    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    unknown: dict[str, list[Sample]] = field(default_factory=dict)  # out-of-distribution images per split

    def targets(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[s.label] for s in self.splits[split]]

    def counts(self, split: str) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.splits.get(split, []):
            counts[sample.label] += 1
        return counts


def discover(
    path: str | Path | None,
    train_dirs: list[str] | None = None,
    val_dir: str | None = None,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    nested: bool = False,
) -> DatasetSplits:
    """Read the dataset at ``path`` (and/or ``train_dirs``) into train/val[/test] samples."""
    splits = _read_layout(Path(path) if path else None, [Path(p) for p in train_dirs or []], nested)
    if val_dir:
        splits["val"] = scan_class_folders(Path(val_dir), nested)
    if "train" not in splits or not splits["train"]:
        raise DatasetError(f"{path or train_dirs}: no training images found")
    if "val" not in splits:
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"{path}: no val split and --val-fraction {val_fraction} is not in (0, 1)")
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, split_seed)
    classes = sorted({s.label for s in splits["train"]})
    unknown = _set_aside_unknown(splits, classes)
    _check_known_classes(splits, classes, path)
    return DatasetSplits(classes=classes, splits=splits, unknown=unknown)


def discover_run(data_cfg, path: str | Path | None = None) -> DatasetSplits:
    """The splits of a run: its :class:`~imgcls.config.DataConfig` read the way training reads
    it (same folders, same seeded split, nested ``<coarse>/<fine>/`` folders when
    ``hierarchy`` is ``folders``), so 'val' is the same images wherever it is asked for.
    ``path`` replaces the run's dataset (``--train``/``--val`` folders then do not apply)."""
    nested = is_nested(data_cfg.hierarchy)
    if path is not None:
        return discover(path, val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed, nested=nested)
    return discover(data_cfg.path, data_cfg.train_dirs, data_cfg.val_dir, data_cfg.val_fraction, data_cfg.split_seed,
                    nested=nested)


def is_nested(hierarchy: str | None) -> bool:
    """Does ``data.hierarchy`` ask for ``<coarse>/<fine>/`` folders?"""
    return hierarchy is not None and hierarchy.strip().lower() == HIERARCHY_FOLDERS


def _set_aside_unknown(splits: dict[str, list[Sample]], classes: list[str]) -> dict[str, list[Sample]]:
    """Move the images of an ``unknown`` folder out of val/test (unless it is a trained class)."""
    if UNKNOWN_FOLDER in classes:
        return {}
    unknown = {}
    for name in [n for n in splits if n != "train"]:
        found = [s for s in splits[name] if s.label == UNKNOWN_FOLDER]
        if found:
            unknown[name] = found
            splits[name] = [s for s in splits[name] if s.label != UNKNOWN_FOLDER]
    return unknown


def _read_layout(root: Path | None, train_dirs: list[Path], nested: bool = False) -> dict[str, list[Sample]]:
    splits: dict[str, list[Sample]] = {}
    if root is not None:
        if not root.exists():
            raise DatasetError(f"{root}: no such file or folder")
        if root.is_file():
            return read_manifest(root)
        folders = find_split_folders(root)
        if "train" in folders:
            for name, folder in folders.items():
                splits[name] = scan_class_folders(folder, nested)
        else:
            splits["train"] = scan_class_folders(root, nested)
    for extra in train_dirs:
        splits.setdefault("train", []).extend(scan_class_folders(extra, nested))
    return splits


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders directly under ``root``: ``{"train": ..., "val": ..., "test": ...}``
    for those present (empty when ``root`` is a folder of class folders)."""
    found = {}
    for name, options in (("train", ("train",)), ("val", VAL_NAMES), ("test", TEST_NAMES)):
        folder = next((root / o for o in options if (root / o).is_dir()), None)
        if folder is not None:
            found[name] = folder
    return found


def scan_class_folders(root: Path, nested: bool = False) -> list[Sample]:
    """Every image below ``root/<class>/`` (recursively), sorted, hidden files skipped;
    ``nested``: below ``root/<coarse>/<class>/``."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of class folders")
    samples = []
    for class_dir in _subfolders(root):
        if not nested or class_dir.name == UNKNOWN_FOLDER:
            samples.extend(_images_below(class_dir, class_dir.name))
            continue
        loose = next((f for f in class_dir.iterdir() if f.is_file() and is_image_file(f)), None)
        if loose is not None:
            raise DatasetError(f"{loose}: an image directly in coarse folder '{class_dir.name}'; with "
                               "--hierarchy folders images go in <coarse>/<fine>/ folders")
        for fine_dir in _subfolders(class_dir):
            samples.extend(_images_below(fine_dir, fine_dir.name, class_dir.name))
    if not samples:
        raise DatasetError(f"{root}: no images found in class sub-folders")
    return samples


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_below(class_dir: Path, label: str, coarse: str | None = None) -> list[Sample]:
    return [Sample(file, label, coarse) for file in sorted(class_dir.rglob("*"))
            if file.is_file() and is_image_file(file) and not _is_hidden(file, class_dir)]


def list_images(paths: list[str | Path]) -> list[Path]:
    """Files given directly, plus every image below the folders given (for prediction)."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(sorted(f for f in item.rglob("*") if f.is_file() and is_image_file(f)
                                and not _is_hidden(f, item)))
        elif item.exists():
            found.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder")
    return found


def read_manifest(csv_path: Path) -> dict[str, list[Sample]]:
    """Read ``path,label[,split]`` rows; paths are relative to the CSV's folder."""
    try:
        with csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{csv_path}: cannot read manifest: {err}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{csv_path}: a manifest needs a header with 'path' and 'label' columns")
    splits: dict[str, list[Sample]] = {}
    for line, row in enumerate(rows, start=2):
        if not row["path"] or not row["label"]:
            raise DatasetError(f"{csv_path}:{line}: empty path or label")
        split = (row.get("split") or "train").strip().lower()
        split = "val" if split in VAL_NAMES else split
        splits.setdefault(split, []).append(Sample(csv_path.parent / row["path"], row["label"].strip()))
    return splits


def _is_hidden(file: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _check_known_classes(splits: dict[str, list[Sample]], classes: list[str], where) -> None:
    known = set(classes)
    for name, samples in splits.items():
        unknown = sorted({s.label for s in samples} - known)
        if unknown:
            raise DatasetError(f"{where}: {name} split has classes with no training images: {unknown}")
