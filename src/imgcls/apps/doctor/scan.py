"""Find every file of a dataset and read its header, hashes and (optionally) all its pixels.

Per file: one read of the bytes, a BLAKE2b content hash, Pillow's header (format, size,
mode: ``Image.open`` without decoding) and a 64-bit difference hash (imagehash's dHash)
of a thumbnail that JPEGs decode at reduced scale. The work is a pure function of the
file, so large datasets are spread over a process pool.
"""

from __future__ import annotations

import functools
import hashlib
import io
import multiprocessing
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
from PIL import Image, UnidentifiedImageError

from imgcls.apps.doctor.checks import check_header, decode_problem
from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.layout import SPLIT_FOLDERS, resolve_folder
from imgcls.data.sources import DatasetError, read_manifest
from imgcls.runtime import progress

# Below this many files a process pool costs more to start than it saves.
POOL_MIN_FILES = 500


@dataclass
class FileRecord:
    """One file of the dataset and everything the doctor learnt about it."""

    path: Path
    rel: str  # POSIX path relative to the dataset root: the key in every output
    split: str  # train | val | test | "" (outside the split folders)
    label: str  # class folder name, "" when the file is in no class folder (multilabel: the set as written)
    format: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    bytes: int = 0
    content_hash: str = ""
    perceptual_hash: str = ""  # 16 hex digits, "" when the file did not decode
    problems: dict[str, str] = field(default_factory=dict)  # code -> one-line detail
    labels: tuple[str, ...] | None = None  # a multilabel manifest's label set (empty: no label)

    def flag(self, code: str, detail: str = "") -> None:
        self.problems.setdefault(code, detail)

    @property
    def decodes(self) -> bool:
        return bool(self.perceptual_hash)


@dataclass
class DatasetFiles:
    root: Path  # the folder relative paths start from; the quarantine goes beside it
    layout: str  # "split folders" | "class folders" | "manifest"
    records: list[FileRecord]


def find_files(data: str | Path) -> DatasetFiles:
    """Every file of the dataset at ``data``, in the layouts :func:`imgcls.data.sources.discover` reads
    (split folders recognised by the same names: ``Training/``, ``valid/``...).

    Unlike training, junk (``Thumbs.db``, ``.DS_Store``, text) is listed too, so it can be
    reported; hidden folders (``.git``, ``.ipynb_checkpoints``) are not entered. A folder
    that reads two ways is scanned as class folders (the layout finding says why).
    """
    data = Path(data)
    if not data.exists():
        raise DatasetError(f"{data}: no such file or folder")
    if data.is_file():
        return _manifest_files(data)
    try:
        layout = resolve_folder(data)
    except DatasetError:
        layout = None  # reported by the layout checks; every file is still scanned
    if layout is not None and layout.kind == SPLIT_FOLDERS:
        return DatasetFiles(data, SPLIT_FOLDERS, _split_files(data, layout.splits))
    return DatasetFiles(data, "class folders", _folder_files(data, data, "train", classes=True))


def _split_files(root: Path, splits: dict[str, Path]) -> list[FileRecord]:
    records = []
    for top in _visible_children(root):
        folder, split = next(((f, s) for s, f in splits.items() if f == top or top in f.parents), (None, ""))
        if top.is_file() or folder is None:
            records.extend(_folder_files(root, top, "", classes=False) if top.is_dir() else [_record(root, top, "", "")])
            continue
        # training_set/training_set/<class>/: files of the wrapping folders belong to no class
        for wrapper in [p for p in folder.parents if p == top or top in p.parents]:
            records.extend(_record(root, f, split, "") for f in _visible_children(wrapper) if f.is_file())
        records.extend(_folder_files(root, folder, split, classes=True))
    return records


def _visible_children(folder: Path) -> list[Path]:
    # Hidden files are kept (.DS_Store is junk worth reporting); hidden folders are not entered.
    return sorted(p for p in folder.iterdir() if p.is_file() or not p.name.startswith("."))


def _folder_files(root: Path, folder: Path, split: str, classes: bool) -> list[FileRecord]:
    records = []
    for child in _visible_children(folder):
        if child.is_file():
            records.append(_record(root, child, split, ""))
            continue
        label = child.name if classes else ""
        for dirpath, dirnames, filenames in os.walk(child):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            records.extend(_record(root, Path(dirpath) / name, split, label) for name in sorted(filenames))
    return records


def _record(root: Path, path: Path, split: str, label: str) -> FileRecord:
    return FileRecord(path=path, rel=path.relative_to(root).as_posix(), split=split, label=label)


def _manifest_files(csv_path: Path) -> DatasetFiles:
    root = csv_path.parent
    records = []
    for split, samples in read_manifest(csv_path).items():
        for sample in samples:
            path = Path(sample.path)
            rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            records.append(FileRecord(path=path, rel=rel, split=split, label=sample.label, labels=sample.labels))
    return DatasetFiles(root, "manifest", sorted(records, key=lambda r: r.rel))


def scan_files(records: list[FileRecord], full: bool = False, min_size: int = 32,
               workers: int | None = None) -> list[FileRecord]:
    """:func:`scan_file` over all records, in a process pool when there are many."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    work = functools.partial(scan_file, full=full, min_size=min_size)
    desc = "decoding every image" if full else "scanning"
    if workers <= 1 or len(records) < POOL_MIN_FILES:
        return [work(record) for record in progress(records, desc=desc)]
    # fork (where there is one) starts workers without re-importing torch; the doctor has
    # run no torch code by now, so there are no threads a fork could break.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    chunk = max(16, min(256, len(records) // (workers * 16)))
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return list(progress(pool.imap(work, records, chunksize=chunk), desc=desc, total=len(records)))


def scan_file(record: FileRecord, full: bool = False, min_size: int = 32) -> FileRecord:
    """Fill in ``record`` from its file; problems go into ``record.problems``, never raise."""
    try:
        _scan(record, full, min_size)
    except Exception as err:  # noqa: BLE001 - one odd file must not stop the scan of 60,000
        record.flag("unreadable", f"{type(err).__name__}: {err}")
    return record


def _scan(record: FileRecord, full: bool, min_size: int) -> None:
    try:
        data = record.path.read_bytes()
    except OSError as err:
        record.flag("unreadable", f"cannot read: {err.strerror or err}")
        return
    record.bytes = len(data)
    record.content_hash = content_hash(data)
    if not data:
        record.flag("zero_byte", "empty file (0 bytes)")
        return
    try:
        with warnings.catch_warnings():
            # The same limit training applies (see images.load_rgb): above it, a warning
            # becomes an error rather than a 100-megapixel decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        record.flag("not_image", "not an image Pillow can read")
        return
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        record.flag("decompression_bomb", str(err).split(",")[0])
        return
    except (OSError, SyntaxError, ValueError) as err:
        record.flag(decode_problem(str(err)), f"cannot read header: {err}")
        return
    with image:
        record.format, record.mode = image.format or "", image.mode
        record.width, record.height = image.size
        for code, detail in check_header(record.rel, image, min_size).items():
            record.flag(code, detail)
        try:
            record.perceptual_hash = perceptual_hash(image)
        except (OSError, SyntaxError, ValueError) as err:
            record.flag(decode_problem(str(err)), f"cannot decode: {err}")
            return
    if full:
        _full_decode(record)


def _full_decode(record: FileRecord) -> None:
    # Exactly what training does to the file, so --full catches whatever would be skipped.
    try:
        load_rgb(record.path)
    except ImageDecodeError as err:
        record.flag(decode_problem(str(err)), str(err))
        record.perceptual_hash = ""


def content_hash(data: bytes) -> str:
    """128-bit BLAKE2b: as fast as a non-cryptographic hash at these sizes, in the stdlib."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def perceptual_hash(image: Image.Image) -> str:
    """imagehash's 64-bit dHash; JPEGs decode at 1/2..1/8 scale first (libjpeg's DCT
    scaling), which makes photos several times cheaper and does not change a 9x8 hash."""
    if image.format in ("JPEG", "MPO"):
        image.draft("L", (64, 64))
    return str(imagehash.dhash(image))
