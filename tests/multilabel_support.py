"""Tiny multilabel datasets: 2x2 mosaics of coloured tiles, labelled with the colours they show.

Each tile is red, green, blue or grey (grey carries no label), so an image holds 0 to 3
labels and a small CNN learns the task in a few epochs, like the colour classes of
``conftest.py`` for single-label tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

TILE_COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}
GREY = (128, 128, 128)
LABELS = sorted(TILE_COLOURS)


def mosaic(tiles: list[str | None], size: int = 32, seed: int = 0) -> Image.Image:
    """A size x size image of four tiles (row by row); None is a grey tile."""
    rng = np.random.default_rng(seed)
    half = size // 2
    pixels = np.zeros((size, size, 3))
    for t, name in enumerate(tiles):
        y, x = divmod(t, 2)
        pixels[y * half:(y + 1) * half, x * half:(x + 1) * half] = TILE_COLOURS[name] if name else GREY
    return Image.fromarray(np.clip(pixels + rng.normal(0, 15, pixels.shape), 0, 255).astype(np.uint8))


def make_manifest(root: Path, splits: dict[str, int], seed: int = 0, separator: str = ";",
                  column: str = "labels", name: str = "labels.csv") -> Path:
    """``root/<name>``: ``path,<column>,split`` rows for ``{split: images}``; images under ``root/img/``."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows, i = [], 0
    for split, count in splits.items():
        for _ in range(count):
            tiles = [LABELS[k] if k < 3 else None for k in rng.integers(0, 4, 4)]
            path = root / "img" / f"{split}_{i:04d}.png"
            mosaic(tiles, seed=seed * 10_000 + i).save(path)
            rows.append([f"img/{path.name}", separator.join(sorted({t for t in tiles if t})), split])
            i += 1
    manifest = root / name
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", column, "split"])
        writer.writerows(rows)
    return manifest


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
