"""Training and evaluation samples served from a :class:`~imgcls.data.cache.PixelCache`.

The default preset is split in two so that the expensive part is batched:
  * per sample, in the loader workers, on uint8: random resized crop + flip (cheap slicing
    and one antialiased uint8 resize);
  * per batch, in :func:`collate_cached`: colour jitter and normalisation as a few
    vectorised float operations.
Written by hand because torchvision's v2 transforms draw one set of random parameters per
call: applied to a batch they would jitter every image identically, and applied per image
their float colour ops are ~10x slower than this batched form.

Other presets run their full torchvision transform on each cached uint8 image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop

from imgcls.data.cache import PixelCache, build_cache
from imgcls.data.dataset import Batch, BadFile, ImageDataset, collate
from imgcls.data.transforms import DEFAULT_CROP_SCALE, DEFAULT_JITTER, Preprocessing, eval_transform, train_transform

class CachedImageDataset(Dataset):
    def __init__(self, cache: PixelCache, paths: list, targets: list[int], pre: Preprocessing,
                 train: bool, preset: str = "default", random_erasing: float = 0.0):
        self.cache, self.paths, self.targets, self.pre = cache, paths, list(targets), pre
        # "none" trains on the eval view: the exact centre crop of the cached square, not a
        # second resize of it.
        self.train = train and not (preset == "none" and not random_erasing)
        fast = not self.train or (preset == "default" and not random_erasing)
        self.slow_transform = None if fast else train_transform(pre, preset, random_erasing)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if index in self.cache.bad:
            return BadFile(self.paths[index], self.cache.bad[index], index)
        image = torch.from_numpy(np.ascontiguousarray(self.cache.pixels[index])).permute(2, 0, 1)
        if not self.train:  # deterministic: no generator to fork and seed
            return _centre_crop(image, self.pre.image_size), self.targets[index], index
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.default_generator.manual_seed(seed)  # CPU only: no CUDA lazy-seed bookkeeping
            if self.slow_transform is not None:
                return self.slow_transform(image), self.targets[index], index
            return _crop_and_flip(image, self.pre.image_size), self.targets[index], index, _jitter_factors()


class DecodedTrainDataset(ImageDataset):
    """The default preset without a pixel cache: each file is decoded (with JPEG draft) and
    cropped and flipped as uint8, like a cached image; jitter and normalisation are then
    batched by :class:`CachedCollate` instead of run per image in float."""

    def __init__(self, paths: list, targets: list[int], pre: Preprocessing):
        super().__init__(paths, targets, transform=None, draft_size=pre.resize_size)
        self.pre = pre

    def sample(self, image, index: int) -> tuple:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        return _crop_and_flip(pixels, self.pre.image_size), self.targets[index], index, _jitter_factors()


def _centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    # The same rounding as torchvision's CenterCrop, so cached and uncached eval agree exactly.
    top = int(round((image.shape[1] - size) / 2.0))
    left = int(round((image.shape[2] - size) / 2.0))
    return image[:, top : top + size, left : left + size]


def _crop_and_flip(image: torch.Tensor, size: int) -> torch.Tensor:
    top, left, height, width = RandomResizedCrop.get_params(image, DEFAULT_CROP_SCALE, (3 / 4, 4 / 3))
    crop = image[None, :, top : top + height, left : left + width]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


def _jitter_factors() -> torch.Tensor:
    """Brightness, contrast and saturation factors, uniform in [1 - j, 1 + j]."""
    return 1.0 + (torch.rand(3) * 2 - 1) * DEFAULT_JITTER


class CachedCollate:
    """Collate for cached datasets: stacks uint8 crops and finishes them as one batch."""

    def __init__(self, pre: Preprocessing):
        self.mean, self.std = pre.mean, pre.std

    def __call__(self, items: list) -> Batch:
        good = [item for item in items if not isinstance(item, BadFile)]
        if not good or good[0][0].dtype != torch.uint8:
            return collate(items)  # slow presets already produced normalised floats
        batch = collate([item[:3] if not isinstance(item, BadFile) else item for item in items])
        batch.factors = torch.stack([item[3] for item in good]) if len(good[0]) > 3 else None
        batch.norm = (self.mean, self.std)
        return batch  # uint8: finished on the training device by data.loaders.DeviceLoader


def make_dataset(paths: list, targets: list[int], pre: Preprocessing, train: bool, cache: str = "none",
                 preset: str = "default", random_erasing: float = 0.0, workers: int = 1,
                 cache_dir=None):
    """The dataset and collate function for one split: served from the pixel cache when
    ``cache`` resolves to ram/disk, else decoded from the files every epoch."""
    pixels = build_cache(paths, pre, cache, cache_dir, workers) if cache != "none" else None
    if pixels is not None:
        dataset = CachedImageDataset(pixels, paths, targets, pre, train, preset, random_erasing)
        return dataset, CachedCollate(pre)
    if train and preset == "default" and not random_erasing:
        return DecodedTrainDataset(paths, targets, pre), CachedCollate(pre)
    transform = train_transform(pre, preset, random_erasing) if train else eval_transform(pre)
    return ImageDataset(paths, targets, transform, draft_size=pre.resize_size), collate
