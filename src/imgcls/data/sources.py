"""Find the labelled samples of a dataset, whatever layout it comes in.

Layouts, checked in this order:
  * a CSV manifest ``path,label[,split]`` (paths relative to the CSV), as spreadsheet
    programs and Windows write it (see :func:`read_manifest`);
  * a folder of split folders, recognised by name in any case (``train/``, ``Training/``,
    ``valid/``, ``Testing/``...: :mod:`imgcls.data.layout`), each holding class folders;
  * a single folder of class folders;
  * ``--train`` folders (several are merged by class name) and an optional ``--val`` folder.
Whatever has no validation split gets one from :func:`imgcls.data.splits.stratified_split`.
Images are recognised by any extension Pillow decodes, or by content
(:func:`imgcls.data.images.is_image_file`). Nothing is dropped silently: every file or folder
that is not a sample is kept with its reason in ``DatasetSplits.unused``.

``nested=True`` (``--hierarchy folders``) reads ``<coarse>/<fine>/`` folders instead: the fine
folder is the class, the coarse folder is kept in ``Sample.coarse``. An ``unknown/`` folder in
val or test (when no training class has that name) holds out-of-distribution images for
open-set evaluation: it is kept apart in ``DatasetSplits.unknown``, not treated as a class.

Multilabel (``task``): a manifest whose ``labels`` column holds a set of labels per image
(``cat;dog``; separator ``;``, ``|`` or spaces, ``label_sep``), an empty cell being a valid
negative. Each sample keeps its set in ``Sample.labels``; the classes are the sorted union
of the training labels, and targets are multi-hot rows (see docs/multilabel.md).
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from imgcls.data.hf import is_hf
from imgcls.data.hf import materialise as materialise_hf
from imgcls.data.images import is_image_file
from imgcls.data.layout import (EMPTY_CLASS, HIDDEN, MISSING, NOT_IMAGE, NOT_IN_CLASS, SPLIT_FOLDERS, SPLITS,
                                TRAIN, VAL, DatasetError, Unused, is_hidden, resolve_folder, split_name)
from imgcls.config import MULTILABEL, SINGLE_LABEL
from imgcls.data.shards import ShardSamples, extract_held_out, is_wds
from imgcls.data.shards import resolve as resolve_shards
from imgcls.data.splits import seeded_split, stratified_split

__all__ = ["DatasetError", "DatasetSplits", "Sample", "Unused", "discover", "discover_run", "find_split_folders",
           "is_nested", "list_images", "read_dataset", "read_manifest", "sample_targets", "scan_class_folders"]

UNKNOWN_FOLDER = "unknown"
HIERARCHY_FOLDERS = "folders"  # data.hierarchy value for <coarse>/<fine>/ folders
MANIFEST, TRAIN_FOLDERS = "manifest", "train folders"  # DatasetSplits.layout besides the layout module's
HF_LAYOUT, WDS_LAYOUT = "Hugging Face dataset", "WebDataset shards"  # DATA = hf:PATH, wds:SPEC

# Header names a manifest's columns go by (compared in lower case, spaces as underscores).
PATH_COLUMNS = ("path", "filepath", "file_path", "image_path", "filename", "file_name", "file", "image")
LABEL_COLUMNS = ("label", "class", "class_name", "category")
LABELS_COLUMNS = ("labels", "tags")  # a set of labels per image: multilabel


@dataclass
class Sample:
    path: Path
    label: str  # the class; for multilabel the set written as in the manifest ("cat;dog", "" when empty)
    coarse: str | None = None  # the <coarse> folder of a nested layout
    labels: tuple[str, ...] | None = None  # multilabel: the sorted label set (empty: a negative); else None


@dataclass
class DatasetSplits:
    """Labelled samples per split; ``classes`` fixes the label -> index mapping.

    ``sources``: where each split was read from (folder(s) or manifest); ``automatic_val``:
    how val was made when the dataset has none; ``unused``: every file or folder under the
    data that is not a sample, with its reason."""

    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    unknown: dict[str, list[Sample]] = field(default_factory=dict)  # out-of-distribution images per split
    layout: str = ""  # "split folders" | "class folders" | "manifest" | "train folders"
    root: Path | None = None  # the dataset folder or manifest
    sources: dict[str, str] = field(default_factory=dict)
    automatic_val: str = ""
    unused: list[Unused] = field(default_factory=list)
    task: str = SINGLE_LABEL  # or "multilabel": samples carry label sets

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

    def targets(self, split: str) -> list[int] | list[list[float]]:
        """Class indices, or for multilabel (n, C) multi-hot rows of 0.0/1.0."""
        return sample_targets(self.splits[split], self.classes)

    def counts(self, split: str) -> dict[str, int]:
        """Images per class (for multilabel: images carrying each label)."""
        counts = dict.fromkeys(self.classes, 0)
        for sample in self.splits.get(split, []):
            for label in sample.labels if sample.labels is not None else (sample.label,):
                counts[label] += 1
        return counts

    def where(self, split: str) -> str:
        """The folder or file to name in a message about ``split``."""
        return self.sources.get(split) or str(self.root or self.sources.get(TRAIN, ""))


def sample_targets(samples: list[Sample], classes: list[str]) -> list[int] | list[list[float]]:
    """Class indices of single-label samples, multi-hot (n, C) rows of samples with label sets."""
    index = {name: i for i, name in enumerate(classes)}
    if samples and samples[0].labels is not None:
        rows = [[0.0] * len(classes) for _ in samples]
        for row, sample in zip(rows, samples):
            for label in sample.labels:
                row[index[label]] = 1.0
        return rows
    return [index[s.label] for s in samples]


def discover(
    path: str | Path | None,
    train_dirs: list[str] | None = None,
    val_dir: str | None = None,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    nested: bool = False,
    task: str = "auto",
    label_sep: str = ";",
) -> DatasetSplits:
    """Read the dataset at ``path`` (and/or ``train_dirs``) into train/val[/test] samples.

    ``task``: auto | single-label | multilabel (a manifest's label sets, ``label_sep``
    between the labels); ``DatasetSplits.task`` says which it is. Raises DatasetError
    naming the folder or file: no such path, a layout that reads two ways, a split without
    a usable image, val/test classes with no training images. Looks at names and folder
    listings only (a file's header when its extension is unknown).
    """
    data = read_dataset(path, train_dirs, val_dir, val_fraction, split_seed, nested, task, label_sep)
    _check_known_classes(data.splits, data.classes, path)
    return data


def read_dataset(
    path: str | Path | None,
    train_dirs: list[str] | None = None,
    val_dir: str | None = None,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    nested: bool = False,
    task: str = "auto",
    label_sep: str = ";",
) -> DatasetSplits:
    """:func:`discover` without its last check (that val/test have only training classes),
    which the doctor reports file by file instead."""
    remote = is_hf(path) or is_wds(path)
    root = Path(path) if path and not remote else None
    data = DatasetSplits(classes=[], root=root)
    if remote:
        _read_spec(data, str(path), bool(train_dirs or val_dir), task, label_sep)
    elif root is not None:
        _read_root(data, root, nested, task, label_sep)
    data.task = _resolve_task(data, task, path or train_dirs, bool(train_dirs or val_dir))
    for extra in map(Path, train_dirs or []):
        data.layout = data.layout or TRAIN_FOLDERS
        data.splits.setdefault(TRAIN, []).extend(scan_class_folders(extra, nested, data.unused))
        data.sources[TRAIN] = ", ".join(filter(None, [data.sources.get(TRAIN), str(extra)]))
    if val_dir:
        data.splits[VAL] = scan_class_folders(Path(val_dir), nested, data.unused)
        data.sources[VAL] = str(val_dir)
    if not data.splits.get(TRAIN):
        found = ", ".join(f"{s} <- {data.sources[s]}" for s in data.splits)
        raise DatasetError(f"{path or train_dirs}: no training images found" +
                           (f" (only {found}); add a train split or give --train DIR" if found else ""),
                           "empty_split")
    data.classes = _train_classes(data)
    if VAL not in data.splits:
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"{path}: no val split and --val-fraction {val_fraction} is not in (0, 1)")
        if data.multilabel:
            data.splits[TRAIN], data.splits[VAL] = seeded_split(data.splits[TRAIN], val_fraction, split_seed)
            data.automatic_val = f"{val_fraction * 100:g}% of the train images (seeded, --split-seed {split_seed})"
        else:
            data.splits[TRAIN], data.splits[VAL] = stratified_split(data.splits[TRAIN], val_fraction, split_seed)
            data.automatic_val = f"{val_fraction * 100:g}% of each train class (stratified, --split-seed {split_seed})"
    data.splits = {s: data.splits[s] for s in SPLITS if s in data.splits}
    data.unknown = {} if data.multilabel else _set_aside_unknown(data.splits, data.classes)
    data.unused.sort(key=lambda u: str(u.path))
    return data


def _resolve_task(data: DatasetSplits, task: str, where, folders: bool) -> str:
    """single-label or multilabel: what the manifest holds (label sets or labels), refusing
    ``--task multilabel`` without label sets and label sets mixed with class folders."""
    multilabel = any(s.labels is not None for samples in data.splits.values() for s in samples)
    if task == MULTILABEL and data.layout != MANIFEST:
        raise DatasetError(f"{where}: --task multilabel reads label sets from a CSV manifest with a 'labels' "
                           "column (path,labels[,split]); folders give one label per image")
    if multilabel and folders:
        raise DatasetError(f"{where}: a multilabel manifest cannot be merged with --train/--val class folders (one "
                           "label per image); give every image in the manifest, with its split column")
    return MULTILABEL if multilabel else SINGLE_LABEL


def _train_classes(data: DatasetSplits) -> list[str]:
    """The sorted training classes; for multilabel the union of the training label sets."""
    if data.multilabel:
        return sorted({label for s in data.splits[TRAIN] for label in s.labels})
    return sorted({s.label for s in data.splits[TRAIN]})


def _read_root(data: DatasetSplits, root: Path, nested: bool, task: str = "auto", label_sep: str = ";") -> None:
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if root.is_file():
        data.layout = MANIFEST
        data.splits = _usable_rows(root, read_manifest(root, task, label_sep), data.unused)
        data.sources = dict.fromkeys(data.splits, str(root))
        return
    layout = resolve_folder(root, nested)
    data.layout = layout.kind
    data.unused.extend(layout.outside)
    for split, folder in layout.splits.items():
        data.splits[split] = scan_class_folders(folder, nested, data.unused)
        data.sources[split] = str(folder)


def _read_spec(data: DatasetSplits, spec: str, merged: bool, task: str, label_sep: str) -> None:
    """``hf:PATH`` (data/hf.py: materialised as a manifest of files) and ``wds:SPEC``
    (data/shards.py: train streamed from its shards, val/test extracted to files)."""
    if merged:
        raise DatasetError(f"{spec}: --train/--val folders cannot be merged with a {spec.split(':')[0]}: dataset")
    if is_hf(spec):
        _read_root(data, materialise_hf(spec), False, task, label_sep)
        data.layout, data.sources = HF_LAYOUT, {name: f"{spec} [{name}]" for name in data.splits}
        return
    found = resolve_shards(spec)
    _read_root(data, extract_held_out(found), False, task, label_sep)
    data.layout, data.sources = WDS_LAYOUT, {name: found.where[name] for name in data.splits}
    data.splits[TRAIN] = ShardSamples(found.splits[TRAIN], found.classes, Sample)
    data.sources[TRAIN] = found.where[TRAIN]


def discover_run(data_cfg, path: str | Path | None = None) -> DatasetSplits:
    """The splits of a run: its :class:`~imgcls.config.DataConfig` read the way training reads
    it (same folders, same seeded split, nested ``<coarse>/<fine>/`` folders when
    ``hierarchy`` is ``folders``), so 'val' is the same images wherever it is asked for.
    ``path`` replaces the run's dataset (``--train``/``--val`` folders then do not apply)."""
    nested = is_nested(data_cfg.hierarchy)
    if path is not None:
        return discover(path, val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed, nested=nested,
                        task=data_cfg.task, label_sep=data_cfg.label_sep)
    return discover(data_cfg.path, data_cfg.train_dirs, data_cfg.val_dir, data_cfg.val_fraction, data_cfg.split_seed,
                    nested=nested, task=data_cfg.task, label_sep=data_cfg.label_sep)


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


def find_split_folders(root: Path) -> dict[str, Path]:
    """The split folders of ``root`` (``{"train": ..., "val": ..., "test": ...}`` for those
    present, recognised by name: ``Training/``, ``valid/``, ``test_set/``...); empty when
    ``root`` is a folder of class folders. Raises DatasetError when it reads two ways."""
    layout = resolve_folder(root)
    return layout.splits if layout.kind == SPLIT_FOLDERS else {}


def scan_class_folders(root: Path, nested: bool = False, unused: list[Unused] | None = None) -> list[Sample]:
    """Every image below ``root/<class>/`` (recursively), sorted; ``nested``: below
    ``root/<coarse>/<class>/``. Whatever is not a sample (hidden files, non-images, files
    outside class folders, empty class folders) is appended to ``unused`` with its reason.

    Raises DatasetError naming ``root`` when it is not a folder or no class folder in it
    holds an image.
    """
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of class folders")
    unused = [] if unused is None else unused
    start = len(unused)
    samples: list[Sample] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            unused.append(Unused(entry, HIDDEN))
        elif not entry.is_dir():
            unused.append(Unused(entry, NOT_IN_CLASS))
        elif not nested or entry.name == UNKNOWN_FOLDER:
            samples.extend(_class_images(entry, entry.name, None, unused))
        else:
            samples.extend(_coarse_images(entry, unused))
    if not samples:
        reasons = Counter(u.reason for u in unused[start:])
        found = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        raise DatasetError(f"{root}: no images found in class sub-folders" + (f" ({found})" if found else ""),
                           "empty_split")
    return samples


def _coarse_images(coarse_dir: Path, unused: list[Unused]) -> list[Sample]:
    loose = next((f for f in sorted(coarse_dir.iterdir()) if f.is_file() and is_image_file(f)), None)
    if loose is not None:
        raise DatasetError(f"{loose}: an image directly in coarse folder '{coarse_dir.name}'; with "
                           "--hierarchy folders images go in <coarse>/<fine>/ folders")
    samples: list[Sample] = []
    for entry in sorted(coarse_dir.iterdir()):
        if entry.name.startswith("."):
            unused.append(Unused(entry, HIDDEN))
        elif not entry.is_dir():
            unused.append(Unused(entry, NOT_IN_CLASS))
        else:
            samples.extend(_class_images(entry, entry.name, coarse_dir.name, unused))
    if not samples and not any(u.path.parent == coarse_dir and u.reason == EMPTY_CLASS for u in unused):
        unused.append(Unused(coarse_dir, EMPTY_CLASS))
    return samples


def _class_images(class_dir: Path, label: str, coarse: str | None, unused: list[Unused]) -> list[Sample]:
    """The images below one class folder; the rest goes to ``unused``."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:  # a symlink back up the tree (or to a folder already read)
            dirnames[:] = []
            continue
        seen.add(real)
        unused.extend(Unused(here / d, HIDDEN) for d in dirnames if d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            file = here / name
            if name.startswith("."):
                unused.append(Unused(file, HIDDEN))
            elif is_image_file(file):
                found.append(file)
            else:
                unused.append(Unused(file, NOT_IMAGE))
    if not found:
        unused.append(Unused(class_dir, EMPTY_CLASS))
    return [Sample(file, label, coarse) for file in sorted(found)]


def list_images(paths: list[str | Path]) -> list[Path]:
    """Files given directly, plus every image below the folders given, plus every image of
    an ``hf:PATH`` dataset, all its splits (for prediction)."""
    found: list[Path] = []
    for spec in paths:
        if is_wds(spec):
            raise DatasetError(f"{spec}: predict reads images, folders or hf:PATH; WebDataset shards are for train "
                               "and eval (imgcls eval RUN wds:... scores their val or test shards)")
        if is_hf(spec):
            found.extend(s.path for samples in read_manifest(materialise_hf(spec)).values() for s in samples)
            continue
        item = Path(spec)
        if item.is_dir():
            found.extend(sorted(f for f in item.rglob("*") if f.is_file() and not is_hidden(f, item)
                                and is_image_file(f)))
        elif item.exists():
            found.append(item)
        else:
            raise DatasetError(f"{item}: no such file or folder")
    return found


def read_manifest(csv_path: Path, task: str = "auto", label_sep: str = ";") -> dict[str, list[Sample]]:
    """Read ``path,label[,split]`` rows (or ``path,labels[,split]`` label sets, see below);
    paths are relative to the CSV's folder.

    Read as spreadsheet programs and Windows save them: UTF-8 with or without a BOM, UTF-16
    (Excel's "Unicode text"), Windows-1252; fields separated by ``,`` ``;`` tab or ``|``;
    header names in any case (``Path``, ``filename``, ``Class`` also do); paths with ``\\`` or
    ``/``; blank rows skipped. A split value is read like a split folder's name (``Training``,
    ``valid``), an empty one means train. Every row is returned, whether its file exists or
    not. Raises DatasetError naming the file (and line) it cannot read.

    Label sets (multilabel): a ``labels`` (or ``tags``) column with ``task`` auto or
    multilabel, or the label column with ``task`` multilabel; the labels of a cell are
    separated by ``label_sep`` (``;``, ``|`` or ``space``), and an empty cell is an image with
    no label. Such samples carry ``Sample.labels``.
    """
    header, rows = _read_table(csv_path)
    columns = {name.strip().lower().replace(" ", "_"): i for i, name in enumerate(header)}
    path_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    sets_col = next((columns[c] for c in LABELS_COLUMNS if c in columns), None) if task != SINGLE_LABEL else None
    label_col = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    multilabel = sets_col is not None or (task == MULTILABEL and label_col is not None)
    label_col = sets_col if sets_col is not None else label_col
    if path_col is None or label_col is None:
        hint = "; a 'labels' column holds label sets: --task multilabel" if task == SINGLE_LABEL and any(
            c in columns for c in LABELS_COLUMNS) else ""
        raise DatasetError(f"{csv_path}: a manifest needs a header with 'path' and 'label' (or 'labels') columns "
                           f"(found: {', '.join(header) or 'nothing'}){hint}")
    split_col = columns.get("split")
    separator = " " if label_sep == "space" else label_sep
    splits: dict[str, list[Sample]] = {}
    for line, row in rows:
        def cell(i: int | None) -> str:
            return row[i].strip() if i is not None and i < len(row) else ""

        path, label, value = cell(path_col), cell(label_col), cell(split_col) or TRAIN
        if not path or not (label or multilabel):
            raise DatasetError(f"{csv_path}:{line}: empty path or label")
        split = split_name(value)
        if split is None:
            raise DatasetError(f"{csv_path}:{line}: split '{value}' is not train, val or test")
        sample = Sample(_manifest_path(csv_path.parent, path), label)
        if multilabel:
            sample.labels = tuple(sorted({part.strip() for part in label.split(separator) if part.strip()}))
            sample.label = separator.join(sample.labels)
        splits.setdefault(split, []).append(sample)
    if not splits:
        raise DatasetError(f"{csv_path}: the manifest has a header but no rows")
    return splits


def _read_table(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank ``(line number, cells)`` rows of a delimited text file."""
    try:
        text = _decode(csv_path.read_bytes(), csv_path)
    except OSError as err:
        raise DatasetError(f"{csv_path}: cannot read manifest: {err.strerror or err}") from None
    try:
        delimiter = csv.Sniffer().sniff(text[:16384], delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","  # one column, or too little text to tell: the standard comma
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        table = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except csv.Error as err:
        raise DatasetError(f"{csv_path}:{reader.line_num}: cannot read manifest: {err}") from None
    if not table:
        return [], []
    return table[0][1], table[1:]


def _decode(raw: bytes, csv_path: Path) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")  # with or without the BOM Excel writes
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252")  # Excel on Windows saves "CSV" in the ANSI code page
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: cannot read manifest: not UTF-8, UTF-16 or Windows-1252 text") from None


def _manifest_path(folder: Path, text: str) -> Path:
    path = folder / text
    if "\\" in text and not path.exists():
        # Written on Windows (images\cat\0.png). A backslash may be part of a POSIX file
        # name, so a file named exactly as written wins.
        path = folder / PureWindowsPath(text).as_posix()
    return path


def _usable_rows(csv_path: Path, splits: dict[str, list[Sample]], unused: list[Unused]) -> dict[str, list[Sample]]:
    """The manifest's rows whose file exists and is an image; the others go to ``unused``.
    Raises DatasetError naming the first missing file when a split keeps no row."""
    kept: dict[str, list[Sample]] = {}
    for split, samples in splits.items():
        dropped = [Unused(s.path, NOT_IMAGE if s.path.is_file() else MISSING) for s in samples
                   if not (s.path.is_file() and is_image_file(s.path))]
        if len(dropped) == len(samples):
            raise DatasetError(f"{csv_path}: no usable image in the {split} split: all {len(samples)} listed files "
                               f"are missing or not images (first: {dropped[0].path}: {dropped[0].reason})",
                               "empty_split")
        bad = {u.path for u in dropped}
        kept[split] = [s for s in samples if s.path not in bad]
        unused.extend(dropped)
    return kept


def _check_known_classes(splits: dict[str, list[Sample]], classes: list[str], where) -> None:
    known = set(classes)
    for name, samples in splits.items():
        if samples and samples[0].labels is not None:
            unknown = sorted({label for s in samples for label in s.labels} - known)
            if unknown:
                raise DatasetError(f"{where}: {name} split has labels that no training image carries: {unknown}",
                                   "unknown_class")
            continue
        unknown = sorted({s.label for s in samples} - known)
        if unknown:
            raise DatasetError(f"{where}: {name} split has classes with no training images: {unknown}",
                               "unknown_class")
