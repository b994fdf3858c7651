"""Hugging Face ``datasets`` as a dataset: ``DATA = hf:PATH``.

``PATH`` is a dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``), a
folder or file that ``datasets.load_dataset`` reads (``imagefolder``, Parquet: split names
come from the file names, ``train-*.parquet``, ``data/test-00000-of-00001.parquet``), or a
Hub dataset id (downloaded by ``datasets`` into its own cache). The image column is the one
of type ``Image``; the label column the one of type ``ClassLabel``, else one named ``label``
(``class``, ``category``...). Named splits map to train/val/test by the names
:func:`imgcls.data.layout.split_name` recognises (``validation``, ``valid``, ``test``...);
other splits are left out, and said so.

The rows are then *materialised* for the file-based pipeline, once per dataset fingerprint:
an image the dataset references on disk (``imagefolder``) is used where it is; embedded
image bytes (Parquet, ``save_to_disk``) are written, as they are stored, to
``$IMGCLS_CACHE/hf/<fingerprint>/<split>/<row>.<ext>``; and a ``manifest.csv``
(``path,label,split``) lists them. Reading that manifest is then like reading any other
(:func:`imgcls.data.sources.read_manifest`), so training, the pixel cache, evaluation,
``predict``, ``cv`` and the doctor all work on it unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

from PIL import Image

from imgcls.data.layout import DatasetError, split_name
from imgcls.runtime import log, require

PREFIX = "hf:"
MANIFEST_NAME = "manifest.csv"
DONE = ".complete"  # written last: a folder without it was interrupted and is rebuilt
LABEL_NAMES = ("label", "labels", "class", "class_name", "category", "fine_label")
IMAGE_NAMES = ("image", "img", "picture", "photo")


def is_hf(spec) -> bool:
    """Does ``spec`` name a Hugging Face dataset (``hf:PATH``)?"""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE", Path.home() / ".cache" / "imgcls")) / "hf"


def load(spec: str):
    """The ``datasets`` object ``hf:PATH`` names: a DatasetDict (or a Dataset, read as train)."""
    datasets = require("datasets", "hf", "hf: datasets")
    path = spec[len(PREFIX):]
    local = Path(path).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            return datasets.load_from_disk(str(local))
        if local.is_file():
            builder = "parquet" if local.suffix.lower() == ".parquet" else None
            if builder is None:
                raise DatasetError(f"{spec}: a file must be a .parquet file (or give its folder)")
            return datasets.load_dataset(builder, data_files={"train": str(local)})
        return datasets.load_dataset(str(local) if local.exists() else path)
    except DatasetError:
        raise
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ValueError)
        raise DatasetError(f"{spec}: cannot load the dataset: {str(err).splitlines()[0] if str(err) else err!r}") \
            from None


def materialise(spec: str) -> Path:
    """The ``manifest.csv`` of the Hugging Face dataset ``spec`` (written on first use; see
    the module docstring). Raises DatasetError naming ``spec`` when it has no image or label
    column, or no split that is train, val or test."""
    loaded = load(spec)
    splits = dict(loaded) if hasattr(loaded, "keys") else {"train": loaded}
    kept = {name: ds for name, ds in splits.items() if split_name(name)}
    skipped = sorted(set(splits) - set(kept))
    if not kept:
        raise DatasetError(f"{spec}: no split named train, val or test (has: {', '.join(splits) or 'none'})")
    if skipped:
        log.info("%s: splits %s are not train, val or test: left out", spec, ", ".join(skipped))
    fingerprint = "-".join(sorted(f"{name}:{getattr(ds, '_fingerprint', '') or id(ds)}" for name, ds in kept.items()))
    folder = cache_root() / _digest(spec + "|" + fingerprint)
    manifest = folder / MANIFEST_NAME
    if (folder / DONE).is_file() and manifest.is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for name, ds in kept.items():
            for path, label in _rows(spec, name, ds, folder / split_name(name)):
                writer.writerow([path, label, split_name(name)])
    (folder / DONE).write_text(spec + "\n")
    log.info("%s: materialised %d split(s) for the file pipeline in %s", spec, len(kept), folder)
    return manifest


def _rows(spec: str, split: str, ds, folder: Path):
    """``(path, label)`` per row of one split: the image's own file where the dataset points
    to one, else its stored bytes written to ``folder``."""
    datasets = require("datasets", "hf", "hf: datasets")
    image_col, label_col = columns(spec, ds)
    names = ds.features[label_col].names if isinstance(ds.features[label_col], datasets.ClassLabel) else None
    raw = ds.cast_column(image_col, datasets.Image(decode=False)).select_columns([image_col, label_col])
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for batch in raw.iter(batch_size=256):
        for image, label in zip(batch[image_col], batch[label_col]):
            path = _image_file(image, folder, index)
            index += 1
            if path is None or label is None or (names is not None and label < 0):
                continue  # no image, or unlabelled (ClassLabel -1: a test split without labels): not a sample
            yield path, names[label] if names is not None else str(label)
    log.info("%s[%s]: %d rows (image column '%s', label column '%s')", spec, split, index, image_col, label_col)


def columns(spec: str, ds) -> tuple[str, str]:
    """The image and label columns of one split (see the module docstring)."""
    datasets = require("datasets", "hf", "hf: datasets")
    features = ds.features
    images = [n for n, f in features.items() if isinstance(f, datasets.Image)] or \
        [n for n in features if n.lower() in IMAGE_NAMES]
    labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)] or \
        [n for n in features if n.lower() in LABEL_NAMES]
    if not images or not labels:
        what = "image column (of type Image)" if not images else "label column (a ClassLabel, or one named label)"
        raise DatasetError(f"{spec}: found no {what}; its columns: {', '.join(features)}")
    # Several ClassLabel columns (CIFAR-100's fine_label, coarse_label): prefer one named as a label.
    label = next((n for n in labels if n.lower() in ("label", "fine_label")), labels[0])
    return images[0], label


def _image_file(image: dict | None, folder: Path, index: int) -> Path | None:
    if not image:
        return None
    data, path = image.get("bytes"), image.get("path")
    if data is None:
        return Path(path) if path and Path(path).is_file() else None
    target = folder / f"{index:08d}{_extension(data, path)}"
    if not target.is_file() or target.stat().st_size != len(data):
        target.write_bytes(data)  # the stored bytes as they are: the same pixels, no re-encoding
    return target


def _extension(data: bytes, path: str | None) -> str:
    if path and Path(path).suffix:
        return Path(path).suffix.lower()
    try:
        kind = Image.open(io.BytesIO(data)).format
    except Exception:  # undecodable bytes: kept, and reported by decoding like any bad file
        return ".img"
    return next((ext for ext, fmt in Image.registered_extensions().items() if fmt == kind), ".img")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]
