"""Helpers shared by the deployment benchmarks: a small real checkpoint to measure with."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

import imgcls

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


def colour_dataset(root: Path, per_class: int = 8, size: tuple[int, int] = (96, 80)) -> Path:
    """train/ and val/ folders of noisy colour images (the tests' task, at a larger size)."""
    for split, offset in (("train", 0), ("val", 500)):
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(per_class):
                rng = np.random.default_rng(offset + 100 * c + i)
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
                path = root / split / name / f"{name}_{i:03d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
    return root


def quick_checkpoint(workdir: Path, model: str, image_size: int, pretrained: bool = True) -> Path:
    """Train ``model`` head-only for one epoch on generated data: a genuine imgcls checkpoint
    in seconds (its accuracy does not matter for speed measurements)."""
    data = colour_dataset(workdir / "data")
    started = time.perf_counter()
    result = imgcls.train(data, out_dir=str(workdir / "runs"), name=model, evaluate=False, model=model,
                          pretrained=pretrained, image_size=image_size, epochs=1, head_epochs=1, batch_size=8,
                          workers=0, lr=0.01)
    print(f"checkpoint: {result.best_checkpoint} ({model} at {image_size} px, "
          f"{'pretrained' if pretrained else 'random'} backbone, made in {time.perf_counter() - started:.0f} s)")
    return result.best_checkpoint


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")
