"""``imgcls data cifar100 --to DIR``: the official CIFAR-100 python archive as class folders.

Writes ``DIR/{train,test}/<fine>/NNNNN.png`` (NNNNN = the image's position in the archive's
split) and ``DIR/hierarchy.csv`` (``fine,coarse``) taken from the archive's own coarse
labels, ready for ``imgcls train DIR --hierarchy DIR/hierarchy.csv``.

torchvision's ``CIFAR100`` dataset class reads the same archive but extracts it and keeps
the images in memory; here each split is read straight out of the ``.tar.gz`` and written
as image files, the layout imgcls trains from. The download is done with urllib (with a
timeout, so an offline machine fails at once instead of hanging) and checked against the
archive's published MD5 with torchvision's ``check_integrity``.
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.data.hierarchy import write_mapping_csv
from imgcls.data.sources import DatasetError
from imgcls.runtime import log

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
SPLITS = ("train", "test")
TIMEOUT_S = 15


class _ArraysOnly(pickle.Unpickler):
    """The archive's pickles hold dicts of lists and numpy arrays; refuse anything else, so a
    tampered archive cannot run code while it is read."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def convert_cifar100(to: str | Path, archive: str | Path | None = None, download: bool = True) -> dict:
    """Convert the archive (``archive``, else ``DIR/cifar-100-python.tar.gz``, else downloaded)."""
    out = Path(to)
    for split in SPLITS:
        if (out / split).exists() and any((out / split).iterdir()):
            raise DatasetError(f"{out / split}: already exists and is not empty; convert into a new folder")
    source = _locate_archive(out, archive, download)
    counts: dict[str, int] = {}
    with _open_archive(source) as tar:
        meta = _load(tar, "meta", source)
        fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
        mapping: dict[str, str] = {}
        for split in SPLITS:
            batch = _load(tar, split, source)
            images = _images(batch, source, split)
            fine, coarse = batch["fine_labels"], batch["coarse_labels"]
            _collect_mapping(mapping, fine, coarse, fine_names, coarse_names, source)
            counts[split] = _write_split(out / split, images, [fine_names[f] for f in fine])
    hierarchy = write_mapping_csv(out / "hierarchy.csv", mapping)
    log.info("CIFAR-100: %s images -> %s (%d fine, %d coarse classes)",
             " + ".join(f"{n} {s}" for s, n in counts.items()), out, len(mapping), len(set(mapping.values())))
    return {"root": out, "counts": counts, "hierarchy": hierarchy, "archive": source,
            "fine_classes": len(mapping), "coarse_classes": len(set(mapping.values()))}


def _locate_archive(out: Path, archive: str | Path | None, download: bool) -> Path:
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise DatasetError(f"{path}: no such archive (expected {ARCHIVE_NAME})")
        return path
    cached = out / ARCHIVE_NAME
    if cached.is_file():
        return cached
    if not download:
        raise DatasetError(f"{cached}: archive not found; pass --archive PATH")
    return download_archive(cached, URL)


def download_archive(target: Path, url: str, timeout: float = TIMEOUT_S) -> Path:
    """Fetch the archive to ``target`` via a ``.part`` file; one clear error when offline."""
    from torchvision.datasets.utils import check_integrity

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    log.info("downloading %s -> %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DatasetError(f"cannot download {url} ({reason}); offline? download it elsewhere and pass "
                           f"--archive PATH/{ARCHIVE_NAME}") from None
    if url.endswith(ARCHIVE_NAME) and not check_integrity(str(partial), MD5):
        partial.unlink(missing_ok=True)
        raise DatasetError(f"{url}: downloaded file does not match the published MD5 {MD5}")
    partial.replace(target)
    return target


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"{path}: not a readable tar archive ({err})") from None


def _load(tar: tarfile.TarFile, name: str, source: Path) -> dict:
    member = next((m for m in tar.getmembers() if m.isfile() and Path(m.name).name == name), None)
    if member is None:
        raise DatasetError(f"{source}: no '{name}' file inside; is this cifar-100-python.tar.gz?")
    try:
        data = _ArraysOnly(tar.extractfile(member), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"{source}: cannot read '{member.name}' ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: '{member.name}' is not a CIFAR-100 batch")
    return data


def _images(batch: dict, source: Path, split: str) -> np.ndarray:
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        fine, coarse = batch["fine_labels"], batch["coarse_labels"]
    except KeyError as err:
        raise DatasetError(f"{source}: '{split}' lacks the {err} entry") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data) == len(fine) == len(coarse):
        raise DatasetError(f"{source}: '{split}' holds {data.shape} pixels for {len(fine)} labels; "
                           "expected (n, 3072) rows of 32x32 RGB")
    # Rows are channel-planar (1024 red, 1024 green, 1024 blue), row-major within each plane.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _collect_mapping(mapping: dict[str, str], fine: list[int], coarse: list[int], fine_names: list[str],
                     coarse_names: list[str], source: Path) -> None:
    for f, c in set(zip(fine, coarse)):
        name, parent = fine_names[f], coarse_names[c]
        if mapping.setdefault(name, parent) != parent:
            raise DatasetError(f"{source}: fine class '{name}' has two coarse labels ('{mapping[name]}', '{parent}')")


def _write_split(root: Path, images: np.ndarray, labels: list[str]) -> int:
    for name in sorted(set(labels)):
        (root / name).mkdir(parents=True, exist_ok=True)
    for index, (pixels, label) in enumerate(zip(images, labels)):
        Image.fromarray(pixels).save(root / label / f"{index:05d}.png")
    return len(labels)
