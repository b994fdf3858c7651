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
    images: torch.Tensor  # normalised float, or uint8 still to be finished (see model_input)
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

    def model_input(self, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
        """The images as the model takes them, on ``device``. uint8 batches cross to the
        device (and between processes) at a quarter of the bytes and are jittered and
        normalised there: on the GPU when there is one."""
        images = self.images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            from imgcls.data.cached_dataset import finish_batch

            images = finish_batch(images, self.factors, *self.norm)
        return images.contiguous(memory_format=memory_format)


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
