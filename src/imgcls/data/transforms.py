"""Train and eval transform presets (after torchvision's references/classification/presets.py).

Everything that turns a PIL image into the model's input lives in :class:`Preprocessing`,
which is stored in each checkpoint so that ``predict`` sees exactly what ``eval`` saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop (e.g. 256 for a 224 crop at 0.875)."""
        return int(math.floor(self.image_size / self.crop_pct))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        values = dict(values)
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)


def _tail(pre: Preprocessing) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the shorter side, then centre crop: the standard ImageNet evaluation."""
    interpolation = InterpolationMode(pre.interpolation)
    return T.Compose(
        [T.Resize(pre.resize_size, interpolation=interpolation, antialias=True), T.CenterCrop(pre.image_size)]
        + _tail(pre)
    )


def train_transform(pre: Preprocessing, preset: str = "default") -> T.Compose:
    """Augmentation presets for training; ``none`` is the eval transform."""
    if preset == "none":
        return eval_transform(pre)
    if preset != "default":
        raise ValueError(f"unknown augmentation preset '{preset}' (choose: default, none)")
    interpolation = InterpolationMode(pre.interpolation)
    # scale >= 0.25 rather than ImageNet's 0.08: fine-tuning runs are short and the crops of
    # 8% of an image often lose the object in small datasets.
    return T.Compose(
        [
            T.RandomResizedCrop(pre.image_size, scale=(0.25, 1.0), interpolation=interpolation, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
        + _tail(pre)
    )
