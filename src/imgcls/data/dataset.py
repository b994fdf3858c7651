"""A map-style dataset that survives bad files, and the collate function that drops them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from imgcls.data.images import ImageDecodeError, load_rgb


@dataclass
class BadFile:
    path: Path
    reason: str
    index: int = -1  # position in the dataset


@dataclass
class Batch:
    """What a loader yields: plain data. ``images`` is normalised float (N, 3, H, W), or uint8
    still to be finished on the device (``factors`` and ``norm`` set), which
    :class:`imgcls.data.loaders.DeviceLoader` does."""

    images: torch.Tensor  # normalised float, or uint8 still to be finished
    targets: torch.Tensor
    indices: torch.Tensor  # positions in the dataset, to map outputs back to files
    bad: list[BadFile]
    # uint8 batches: per-image colour-jitter factors (or None) and the normalisation
    factors: torch.Tensor | None = None
    norm: tuple | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> "Batch":
        self.images = self.images.pin_memory()
        self.targets = self.targets.pin_memory()
        return self


class ImageDataset(Dataset):
    """``(path, target)`` pairs decoded on access; an unreadable file yields a :class:`BadFile`.

    Returning the failure instead of raising keeps an epoch going and lets the training
    loop report each bad file once, by name (see :func:`collate`).
    """

    def __init__(self, paths: list[Path], targets: list[int] | None, transform: Callable,
                 draft_size: int | None = None):
        self.paths = [Path(p) for p in paths]
        self.targets = list(targets) if targets is not None else [-1] * len(self.paths)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]):
        # SeededSampler hands out (index, seed): seeding each sample's augmentation makes
        # it depend on (run seed, epoch, index) only, not on worker count or on resuming.
        index, seed = key if isinstance(key, tuple) else (key, None)
        path = self.paths[index]
        try:
            image = load_rgb(path, self.draft_size)
        except ImageDecodeError as err:
            return BadFile(path, str(err), index)
        except OSError as err:  # vanished or unreadable on disk
            return BadFile(path, f"cannot read: {err.strerror or err}", index)
        if seed is None:
            return self.sample(image, index)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: no CUDA lazy-seed bookkeeping
            return self.sample(image, index)

    def sample(self, image, index: int) -> tuple:
        """What one decoded image becomes: ``(tensor, target, index)``."""
        return self.transform(image), self.targets[index], index


def collate(items: list) -> Batch:
    good = [item for item in items if not isinstance(item, BadFile)]
    bad = [item for item in items if isinstance(item, BadFile)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad)
    images, targets, indices = zip(*good)
    return Batch(torch.stack(images), torch.tensor(targets), torch.tensor(indices), bad)
