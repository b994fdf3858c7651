"""DataLoaders whose order and augmentation are a pure function of (seed, epoch)."""

from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from imgcls.data.dataset import Batch, ImageDataset, collate
from imgcls.data.finish import finish_batch


class SeededSampler(Sampler):
    """Yields ``(index, sample_seed)``; the permutation and seeds depend on (seed, epoch).

    Like torch's DistributedSampler it shards by ``rank``/``world_size`` and needs
    ``set_epoch``; unlike it, it never pads the evaluation split with duplicates (``pad``
    is only for training, where DDP needs the same number of steps on every rank), and it
    hands each sample a seed so augmentation is reproducible on resume.

    With per-sample ``weights`` (``--balance sampler``) each epoch instead draws ``size``
    indices with replacement, in proportion to the weights, from the same (seed, epoch)
    generator: torch's WeightedRandomSampler, but deterministic and shardable.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = False, weights: torch.Tensor | None = None):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.pad and self.size % self.world_size:
            order = torch.cat([order, order[: self.world_size - self.size % self.world_size]])
        shard = order[self.rank :: self.world_size].tolist()
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        if self.weights is not None:  # an image drawn k times gets k different augmentations
            repeats = _repeat_counts(order.tolist())[self.rank :: self.world_size]
            return iter([(index, (base + index + self.size * k) % (2**63)) for index, k in zip(shard, repeats)])
        return iter([(index, (base + index) % (2**63)) for index in shard])

    def __len__(self) -> int:
        total = self.size
        if self.pad and total % self.world_size:
            total += self.world_size - total % self.world_size
        return len(range(self.rank, total, self.world_size))


def _repeat_counts(order: list[int]) -> list[int]:
    """How often each position's index already occurred earlier in ``order``."""
    seen: dict[int, int] = {}
    counts = []
    for index in order:
        counts.append(seen.get(index, 0))
        seen[index] = counts[-1] + 1
    return counts


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def make_loader(dataset: ImageDataset, batch_size: int, train: bool, seed: int = 0,
                workers: int | None = None, rank: int = 0, world_size: int = 1,
                collate_fn=collate, weights: torch.Tensor | None = None) -> DataLoader:
    """``weights``: per-sample draw weights for training (``--balance sampler``). A stream
    (:class:`imgcls.data.wds.ShardStream`) shards, shuffles and batches itself: its own loader."""
    workers = default_workers() if workers is None else workers
    if isinstance(dataset, IterableDataset):
        return dataset.loader(batch_size, workers)
    sampler = SeededSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                            weights=weights if train else None)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        # Its own generator: otherwise every new iterator draws a worker base seed from the
        # global RNG, and dropout masks would depend on how many loaders were iterated.
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        # A last training batch of one image breaks BatchNorm; dropping it costs at most
        # batch_size-1 images per epoch, a different set every epoch.
        drop_last=train and len(sampler) > batch_size,
    )


class DeviceLoader:
    """Iterate a loader's batches with their images finished on ``device``: moved there,
    uint8 batches jittered and normalised there, and laid out in ``memory_format``; targets
    move too. The role of timm's ``PrefetchLoader``: the batch record stays plain data and
    the model code receives what the model takes.

    Args:
        loader: an iterable of :class:`Batch` (a DataLoader from :func:`make_loader`).
        device: where the model runs.
        memory_format: ``torch.channels_last`` for convolutions on CUDA/CPU, else contiguous.
    """

    def __init__(self, loader, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
        self.loader, self.device, self.memory_format = loader, torch.device(device), memory_format

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.finish(batch)

    def finish(self, batch: Batch) -> Batch:
        """``batch`` with float images (N, 3, H, W) and targets on the device."""
        if not len(batch):
            return batch
        images = batch.images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = finish_batch(images, batch.factors, *batch.norm)
        images = images.contiguous(memory_format=self.memory_format)
        targets = batch.targets.to(self.device, non_blocking=True)
        return Batch(images, targets, batch.indices, batch.bad)
