"""DataLoaders whose order and augmentation are a pure function of (seed, epoch)."""

from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from imgcls.data.dataset import ImageDataset, collate


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``; the permutation and seeds depend on (seed, epoch).

    Like torch's DistributedSampler it shards by ``rank``/``world_size`` and needs
    ``set_epoch``; unlike it, it never pads the evaluation split with duplicates (``pad``
    is only for training, where DDP needs the same number of steps on every rank), and it
    hands each sample a seed so augmentation is reproducible on resume.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.pad and self.size % self.world_size:
            order = torch.cat([order, order[: self.world_size - self.size % self.world_size]])
        shard = order[self.rank :: self.world_size].tolist()
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        return iter([(index, (base + index) % (2**63)) for index in shard])

    def __len__(self) -> int:
        total = self.size
        if self.pad and total % self.world_size:
            total += self.world_size - total % self.world_size
        return len(range(self.rank, total, self.world_size))


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, seed: int = 0,
                workers: int | None = None, rank: int = 0, world_size: int = 1) -> DataLoader:
    workers = default_workers() if workers is None else workers
    sampler = SeededSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # A last training batch of one image breaks BatchNorm; dropping it costs at most
        # batch_size-1 images per epoch, a different set every epoch.
        drop_last=train and len(sampler) > batch_size,
    )
