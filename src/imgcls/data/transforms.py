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

from imgcls.config import AUGMENT_PRESETS


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


# The presets below follow torchvision's references/classification/presets.py: geometry and
# colour on the PIL image, then the tensor tail, then random erasing on the normalised tensor.
PRESETS = AUGMENT_PRESETS
# The default preset's parameters, shared with the batched cached pipeline (cached_dataset.py).
DEFAULT_CROP_SCALE = (0.25, 1.0)
DEFAULT_JITTER = 0.2


def train_transform(pre: Preprocessing, preset: str = "default", random_erasing: float = 0.0) -> T.Compose:
    """The training transform of a named augmentation preset (``none`` is the eval transform).

    ``random_erasing`` is the probability of erasing one random rectangle per image.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}' (choose: {', '.join(PRESETS)})")
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"--random-erasing {random_erasing}: a probability between 0 and 1")
    steps = eval_transform(pre).transforms if preset == "none" else _augment(pre, preset) + _tail(pre)
    if random_erasing > 0:
        steps = list(steps) + [T.RandomErasing(p=random_erasing, value=0)]
    return T.Compose(steps)


def _augment(pre: Preprocessing, preset: str) -> list:
    interpolation = InterpolationMode(pre.interpolation)
    # Rotations and shears on tensors (the pixel cache serves uint8 tensors) support only
    # nearest and bilinear; bilinear is what Keras and TF use for them anyway.
    warp = InterpolationMode.BILINEAR
    size = pre.image_size
    flip = T.RandomHorizontalFlip()
    # Uncovered corners get the normalisation mean (0 after Normalize), not black, so they
    # carry no brightness signal.
    fill = tuple(round(m * 255) for m in pre.mean)
    if preset == "keras":
        # Keras ImageDataGenerator of seed 000: rotation 30 deg, zoom 20%, shear 10%, shift 10%.
        # Keras reads shear_range in degrees; the seed means a 10% shear, i.e. atan(0.1) = 5.7 deg.
        # Affine before the centre crop: the crop trims some of the filled border, as Keras'
        # 'nearest' fill would hide it.
        return [
            T.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
            T.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=math.degrees(math.atan(0.1)),
                           interpolation=warp, fill=fill),
            T.CenterCrop(size),
        ]
    if preset == "color":
        # Seeds 003 and 004: flip, brightness/contrast/saturation/hue, zoom-like random crop, rotation.
        return [
            T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=interpolation, antialias=True),
            flip,
            T.RandomRotation(15, interpolation=warp, fill=fill),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
        ]
    # scale >= 0.25 rather than ImageNet's 0.08: fine-tuning runs are short and crops of 8% of
    # an image often lose the object in small datasets.
    crop = T.RandomResizedCrop(size, scale=DEFAULT_CROP_SCALE, interpolation=interpolation, antialias=True)
    if preset == "randaugment":
        return [crop, flip, T.RandAugment(interpolation=warp)]
    if preset == "trivialaugment":
        return [crop, flip, T.TrivialAugmentWide(interpolation=warp)]
    jitter = DEFAULT_JITTER
    return [crop, flip, T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)]
