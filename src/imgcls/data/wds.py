"""Streaming a split from WebDataset tar shards (``DATA = wds:SPEC``; discovery: data/shards.py).

WebDataset's own pipeline (``split_by_node``, ``split_by_worker``, ``shuffle``) is not used
for the plan of an epoch, only its tar parsing (:func:`imgcls.data.shards.iter_shard`):
its node and worker splitting leaves ranks with different numbers of batches (DDP then
hangs) unless it resamples with replacement (images seen twice or never), and its
shuffle draws from an unseeded generator. Here, every epoch:

* the shard order is a permutation drawn from (seed, epoch), the same on every rank, and
  shard ``k`` of it goes to the ``k mod (ranks x workers)``-th (rank, worker) slot: each
  shard is read by exactly one worker of one rank, so each image once per epoch;
* each worker shuffles its stream through a buffer (``--shuffle-buffer`` samples), seeded
  by (seed, epoch, rank, worker), and batches it itself; a last batch of one image is
  merged into the one before (a batch of one cannot train BatchNorm);
* the per-shard sample counts (``_info.json``) give every rank's number of batches before
  anything is read: ranks with fewer pad with empty batches, which the training loop turns
  into zero-weighted steps, so all ranks take the same number of steps without repeating
  an image;
* augmentation is seeded per image by (seed, epoch, index), as the map-style path does.

The images take the pixel cache's path without the cache: decoded (JPEG draft), resized
and centre-cropped to the cache's square, then cropped and flipped in uint8 with colour
jitter batched on the training device (the default preset), so a streamed run sees the
same kind of inputs as a run on the folder.
"""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from imgcls.config import ConfigError
from imgcls.data.cache import square_transform
from imgcls.data.cached_dataset import CachedCollate, _crop_and_flip, _jitter_factors
from imgcls.data.dataset import BadFile, Batch
from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.layout import DatasetError
from imgcls.data.loaders import default_workers
from imgcls.data.shards import ShardSamples, ShardSplit, iter_shard, sample_image
from imgcls.data.transforms import Preprocessing, eval_transform, train_transform
from imgcls.runtime import log

# Options that need random access to the training images, which a stream does not give.
STREAM_REFUSED_BALANCE = ("sampler", "oversample", "undersample")


@dataclasses.dataclass
class StreamBatch(Batch):
    keys: list[str] = dataclasses.field(default_factory=list)  # "<shard URL>#<key>" of each image


def batch_count(samples: int, batch_size: int) -> int:
    """Batches one worker makes of ``samples`` (a last batch of one joins the one before)."""
    full, rest = divmod(samples, batch_size)
    if rest == 1 and full:
        return full
    return full + (rest > 0)


class ShardStream(IterableDataset):
    """The batches of one split, streamed from its shards (see the module docstring).

    ``len()`` is the number of samples; :meth:`steps` the number of batches each rank yields
    this epoch. ``shuffle`` (on for training) shuffles shards and samples; ``train`` augments.
    """

    def __init__(self, split: ShardSplit, remap, pre: Preprocessing, train: bool, preset: str = "default",
                 random_erasing: float = 0.0, batch_size: int = 32, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, buffer: int = 1000):
        self.split, self.remap, self.pre = split, np.asarray(remap, dtype=np.int64), pre
        self.train, self.shuffle, self.preset, self.random_erasing = train, train, preset, random_erasing
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.workers, self.buffer, self.epoch = workers, buffer, 0
        self.offsets = split.offsets
        self.fast = train and preset == "default" and not random_erasing
        self.transform = None if self.fast else (train_transform(pre, preset, random_erasing) if train
                                                 else eval_transform(pre))
        self.square = square_transform(pre)
        self.collate = CachedCollate(pre)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def eval_view(self) -> "ShardStream":
        """The same samples, unshuffled, under the eval transform, in one process: the clean
        view the frozen-feature cache extracts."""
        return ShardStream(self.split, self.remap, self.pre, False, batch_size=self.batch_size, seed=self.seed,
                           workers=self.workers)

    def plan(self) -> list[list[list[int]]]:
        """Shard indices per rank and worker for the current epoch."""
        count = len(self.split.shards)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(count, generator=generator).tolist()
        else:
            order = list(range(count))
        workers = max(self.workers, 1)
        slots = self.world_size * workers
        return [[order[rank * workers + worker::slots] for worker in range(workers)]
                for rank in range(self.world_size)]

    def _batches(self, plan, rank: int) -> int:
        return sum(batch_count(sum(self.split.shards[i].count for i in shards), self.batch_size)
                   for shards in plan[rank])

    def steps(self) -> int:
        """Batches every rank yields this epoch (the most any rank has; the others pad)."""
        plan = self.plan()
        return max(self._batches(plan, rank) for rank in range(self.world_size))

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plan = self.plan()
        samples = self._read(plan[self.rank][worker])
        if self.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
            samples = _buffer_shuffle(samples, self.buffer, rng)
        chunk: list = []
        for item in samples:
            chunk.append(item)
            if len(chunk) == self.batch_size * 2:  # hold one batch back: a trailing single image joins it
                yield self._batch(chunk[: self.batch_size])
                chunk = chunk[self.batch_size:]
        for part in _final_batches(chunk, self.batch_size):
            yield self._batch(part)
        if worker == 0:
            for _ in range(self.steps() - self._batches(plan, self.rank)):
                yield StreamBatch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                                  [])

    def _read(self, shards: list[int]):
        for shard_index in shards:
            shard = self.split.shards[shard_index]
            for position, sample in enumerate(iter_shard(shard.url)):
                if position >= shard.count:
                    log.warning("%s holds more samples than its index says (%d); the rest is skipped", shard.url,
                                shard.count)
                    break
                yield self.offsets[shard_index] + position, int(shard.labels[position]), sample

    def _batch(self, chunk: list) -> StreamBatch:
        items = [self._item(*entry) for entry in chunk]
        keys = [f"{sample['__url__']}#{sample['__key__']}" for (_, _, sample), item in zip(chunk, items)
                if not isinstance(item, BadFile)]
        batch = self.collate(items)
        return StreamBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)}, keys=keys)

    def _item(self, index: int, label: int, sample: dict):
        try:
            _, data = sample_image(sample)
            image = load_rgb(io.BytesIO(data), self.pre.resize_size)
        except (ImageDecodeError, DatasetError) as err:
            return BadFile(Path(f"{sample['__url__']}#{sample['__key__']}"), str(err), index)
        target = int(self.remap[label])
        if not self.train:
            return self.transform(image), target, index
        with torch.random.fork_rng(devices=[]):
            base = (self.seed * 1_000_003 + self.epoch) * 10_000_019  # SeededSampler's per-sample seeds
            torch.default_generator.manual_seed((base + index) % (2**63))
            if not self.fast:
                return self.transform(image), target, index
            pixels = torch.from_numpy(np.array(self.square(image))).permute(2, 0, 1)
            return _crop_and_flip(pixels, self.pre.image_size), target, index, _jitter_factors()

    def loader(self, batch_size: int | None = None, workers: int | None = None) -> "StreamLoader":
        """A loader over this stream (``batch_size``/``workers`` given: over a copy with them)."""
        stream = self
        if (batch_size or self.batch_size) != self.batch_size or (workers is not None and workers != self.workers):
            stream = _copy(self, batch_size, workers)
        return StreamLoader(stream)


def _copy(stream: ShardStream, batch_size: int | None, workers: int | None) -> ShardStream:
    copy = ShardStream.__new__(ShardStream)
    copy.__dict__.update(stream.__dict__)
    copy.batch_size = batch_size or stream.batch_size
    copy.workers = stream.workers if workers is None else workers
    return copy


def _buffer_shuffle(samples, size: int, rng: random.Random):
    """WebDataset's shuffle: keep ``size`` samples, emit a random one as each new one comes in."""
    buffer: list = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        pick = rng.randrange(len(buffer))
        buffer[pick], sample = sample, buffer[pick]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _final_batches(chunk: list, batch_size: int) -> list[list]:
    """The last one or two batches of a worker's stream (under two batches' worth is left)."""
    if len(chunk) <= batch_size:
        return [chunk] if chunk else []
    first, rest = chunk[:batch_size], chunk[batch_size:]
    return [first + rest] if len(rest) == 1 else [first, rest]


def _whole(batch):
    return batch  # the stream yields finished batches


class StreamLoader:
    """What the training loop reads for a streamed split, in a DataLoader's terms: ``len()``
    is this epoch's batches per rank, ``sampler.set_epoch`` reaches the stream, and every
    iteration starts fresh workers (which copy the stream with its current epoch)."""

    def __init__(self, stream: ShardStream):
        self.dataset = stream
        self.collate_fn = None

    @property
    def sampler(self) -> ShardStream:
        return self.dataset

    @property
    def batch_size(self) -> int:
        return self.dataset.batch_size

    @property
    def num_workers(self) -> int:
        return self.dataset.workers

    def __len__(self) -> int:
        return self.dataset.steps()

    def __iter__(self):
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.dataset.workers, collate_fn=_whole,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False)
        return iter(loader)


def check_stream_config(config, data) -> None:
    """Refuse, before anything is read, the options a streamed train split cannot serve."""
    if not isinstance(data.splits.get("train"), ShardSamples):
        return
    if config.train.balance in STREAM_REFUSED_BALANCE:
        raise ConfigError(f"--balance {config.train.balance}: needs random access to the training images, which "
                          f"streamed shards ({config.data.path}) do not give; use --balance weights or none")


def stream_loader(samples: ShardSamples, classes: list[str], pre: Preprocessing, config, train: bool,
                  rank: int = 0, world_size: int = 1, batch_size: int = 32) -> StreamLoader:
    """The loader of a streamed split for one rank (``batch_size``: per device)."""
    index = {name: i for i, name in enumerate(classes)}
    remap = [index.get(name, -1) for name in samples.classes]
    d = config.data
    workers = default_workers() if d.workers is None else d.workers
    stream = ShardStream(samples.split, remap, pre, train, d.augment, d.random_erasing, batch_size,
                         config.train.seed, rank, world_size, workers, d.shuffle_buffer)
    if len(samples.split.shards) < world_size * max(workers, 1):
        log.warning("%d shards for %d processes x %d workers: some read nothing (write more, smaller shards: "
                    "imgcls data to-shards --shard-size)", len(samples.split.shards), world_size, max(workers, 1))
    return stream.loader()
