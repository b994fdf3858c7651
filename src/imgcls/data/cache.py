"""Decode each image once: a uint8 pixel cache in RAM or in a numpy memmap on disk.

Every image is decoded (with JPEG draft), resized so its shorter side is the eval resize
size (e.g. 256 for a 224 model) and centre-cropped to a square: exactly the pixels the eval
transform starts from, so cached evaluation sees the same pixels as uncached evaluation.
Training crops are taken from that square (a little above the training size).

The cache file is keyed by the preprocessing and by every file's path, size and mtime, so
a changed, added or removed file gives a new key and the stale cache is not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from imgcls.config import CACHE_MODES
from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.transforms import Preprocessing
from imgcls.runtime import available_memory, log, progress

RAM_SHARE = 0.5  # use at most half of the currently available memory
# RAM caches alive in this process, by key: freed with the last dataset that uses them.
_IN_MEMORY: weakref.WeakValueDictionary[str, "PixelCache"] = weakref.WeakValueDictionary()


@dataclass
class PixelCache:
    pixels: np.ndarray  # (N, S, S, 3) uint8, in RAM or a read-only memmap
    bad: dict[int, str]  # index -> reason, for files that could not be decoded
    location: str  # "ram" or the .npy path

    @property
    def side(self) -> int:
        return self.pixels.shape[1]


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE", Path.home() / ".cache" / "imgcls")) / "pixels"


def cache_key(paths: list[Path], pre: Preprocessing) -> str:
    digest = hashlib.sha1(f"v1|{pre.resize_size}|{pre.interpolation}".encode())
    for path in paths:
        stat = path.stat() if path.exists() else None
        digest.update(f"|{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:20]


def choose_mode(mode: str, count: int, side: int, cache_dir: Path) -> str:
    """Resolve ``auto``, and fall back from ``ram`` to ``disk`` when memory is short."""
    if mode not in CACHE_MODES:
        raise ValueError(f"--cache {mode!r}: choose one of {', '.join(CACHE_MODES)}")
    if mode == "none":
        return mode
    needed = count * side * side * 3
    if mode in ("auto", "ram") and needed <= RAM_SHARE * available_memory():
        return "ram"
    if mode == "ram":
        log.info("pixel cache: %.1f GB does not fit in free memory; using a disk cache instead", needed / 1e9)
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(cache_dir).f_bavail * os.statvfs(cache_dir).f_frsize
    if needed < free - 2e9:
        return "disk"
    log.info("pixel cache: %.1f GB needed, not enough disk in %s; decoding every epoch", needed / 1e9, cache_dir)
    return "none"


def build_cache(paths: list[Path], pre: Preprocessing, mode: str, cache_dir: Path | None = None,
                workers: int = 1) -> PixelCache | None:
    """Return the cache for ``paths`` (decoding them once if needed), or None for ``none``."""
    cache_dir = cache_dir or default_cache_dir()
    side = pre.resize_size
    mode = choose_mode(mode, len(paths), side, cache_dir)
    if mode == "none":
        return None
    key = cache_key(paths, pre)
    if mode == "ram" and key in _IN_MEMORY:
        return _IN_MEMORY[key]  # e.g. the train images again, for the clean feature view
    target = cache_dir / f"{key}.npy"
    if mode == "disk" and target.exists() and target.with_suffix(".json").exists():
        bad = {int(k): v for k, v in json.loads(target.with_suffix(".json").read_text()).items()}
        return PixelCache(np.load(target, mmap_mode="r"), bad, str(target))
    if mode == "ram":
        pixels = np.zeros((len(paths), side, side, 3), np.uint8)
    else:
        pixels = np.lib.format.open_memmap(target.with_suffix(".tmp.npy"), "w+", np.uint8, (len(paths), side, side, 3))
    bad = _fill(pixels, paths, pre, workers)
    if mode == "ram":
        cache = _IN_MEMORY[key] = PixelCache(pixels, bad, "ram")
        return cache
    pixels.flush()
    del pixels
    target.with_suffix(".json").write_text(json.dumps(bad))
    os.replace(target.with_suffix(".tmp.npy"), target)
    return PixelCache(np.load(target, mmap_mode="r"), bad, str(target))


def _fill(pixels: np.ndarray, paths: list[Path], pre: Preprocessing, workers: int) -> dict[int, str]:
    bad: dict[int, str] = {}
    chunks = [list(range(i, min(i + 64, len(paths)))) for i in range(0, len(paths), 64)]
    jobs = [([paths[i] for i in chunk], pre) for chunk in chunks]
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    results = pool.map(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)
    try:
        for chunk, (images, errors) in progress(zip(chunks, results), desc="caching pixels", total=len(chunks)):
            for offset, index in enumerate(chunk):
                if errors[offset]:
                    bad[index] = errors[offset]
                else:
                    pixels[index] = images[offset]
    finally:
        if pool:
            pool.shutdown()
    return bad


def _decode_chunk(job: tuple[list[Path], Preprocessing]) -> tuple[np.ndarray, list[str]]:
    paths, pre = job
    square = square_transform(pre)
    images = np.zeros((len(paths), pre.resize_size, pre.resize_size, 3), np.uint8)
    errors = [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            images[i] = np.asarray(square(load_rgb(path, pre.resize_size)))
        except ImageDecodeError as err:
            errors[i] = str(err)
        except OSError as err:
            errors[i] = f"cannot read: {err.strerror or err}"
    return images, errors


def square_transform(pre: Preprocessing) -> T.Compose:
    """The first two steps of the eval transform (same resize, same centre), on PIL images."""
    interpolation = InterpolationMode(pre.interpolation)
    return T.Compose([T.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
                      T.CenterCrop(pre.resize_size)])
