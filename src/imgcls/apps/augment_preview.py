"""``imgcls augment-preview``: a grid image showing what an augmentation preset does.

Each row is one training image: first as evaluation sees it, then several augmented views
drawn by the same transform training uses (:func:`train_transform`), so the picture is the
policy itself, not an illustration of it.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.sources import DatasetError, Sample, discover
from imgcls.data.transforms import Preprocessing, eval_transform, train_transform
from imgcls.config import DataConfig
from imgcls.options import PREVIEW_IMAGE_SIZE, AugmentPreviewCommand
from imgcls.runtime import log

_NORM = (0.5, 0.5, 0.5)  # any mean/std works: the preview undoes the normalisation
_MIN_CELL = 96  # small images (CIFAR's 32 px) are enlarged, pixel for pixel, to stay visible
_PAD, _LABEL_W, _HEADER_H = 4, 120, 34


def augment_preview(data: str | Path, out: str | Path = AugmentPreviewCommand.out, preset: str = DataConfig.augment,
                    n: int = AugmentPreviewCommand.n, per_image: int = AugmentPreviewCommand.per_image,
                    image_size: int = PREVIEW_IMAGE_SIZE, random_erasing: float = DataConfig.random_erasing,
                    seed: int = AugmentPreviewCommand.seed) -> Path:
    """Write a PNG grid of ``n`` augmented views (``per_image`` per row) of training images."""
    if n < 1 or per_image < 1:
        raise ValueError("--n and --per-image must be at least 1")
    if image_size < 8:
        raise ValueError(f"--image-size {image_size}: at least 8 pixels")
    pre = Preprocessing(image_size=image_size, mean=_NORM, std=_NORM)
    augment = train_transform(pre, preset, random_erasing)
    show = eval_transform(pre)
    data_splits = discover(data)
    rows = math.ceil(n / per_image)
    samples = _pick(data_splits.splits["train"], rows, seed)
    cells: list[list[Image.Image]] = []
    labels: list[str] = []
    for row, sample in enumerate(samples):
        try:
            image = load_rgb(sample.path, pre.resize_size)
        except (ImageDecodeError, OSError) as err:
            log.warning("skipped %s: %s", sample.path, err)
            continue
        views = min(per_image, n - row * per_image)
        cells.append([_to_pil(show(image), pre)] + [_augmented(augment, image, pre, seed, row, v) for v in range(views)])
        labels.append(sample.label)
    if not cells:
        raise DatasetError(f"{data}: none of the sampled training images could be decoded")
    title = f"preset '{preset}'  size {image_size}" + (f"  random erasing {random_erasing:g}" if random_erasing else "")
    grid = _compose(cells, labels, title, per_image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def _pick(samples: list[Sample], count: int, seed: int) -> list[Sample]:
    """Up to ``count`` samples, round-robin over classes so every class shows up early."""
    by_class: dict[str, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    picked: list[Sample] = []
    while len(picked) < count and any(by_class.values()):
        for label in sorted(by_class):
            if by_class[label] and len(picked) < count:
                picked.append(by_class[label].pop())
    return picked


def _augmented(augment, image: Image.Image, pre: Preprocessing, seed: int, row: int, view: int) -> Image.Image:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + row * 1_009 + view)
        return _to_pil(augment(image), pre)


def _to_pil(tensor: torch.Tensor, pre: Preprocessing) -> Image.Image:
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    pixels = (tensor.float() * std + mean).clamp(0, 1).mul(255).round().byte()
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if image.width < _MIN_CELL:
        scale = math.ceil(_MIN_CELL / image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def _compose(cells: list[list[Image.Image]], labels: list[str], title: str, per_image: int) -> Image.Image:
    side = cells[0][0].width
    columns = 1 + per_image
    width = _LABEL_W + columns * (side + _PAD) + _PAD
    height = _HEADER_H + len(cells) * (side + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((_PAD, 4), title, fill="black", font=font)
    draw.text((_LABEL_W + _PAD, 18), "original", fill="dimgray", font=font)
    draw.text((_LABEL_W + side + 2 * _PAD, 18), "augmented ->", fill="dimgray", font=font)
    for r, (row, label) in enumerate(zip(cells, labels)):
        y = _HEADER_H + _PAD + r * (side + _PAD)
        draw.text((_PAD, y + side // 2 - 6), label[:18], fill="black", font=font)
        for c, cell in enumerate(row):
            canvas.paste(cell, (_LABEL_W + _PAD + c * (side + _PAD), y))
    return canvas
