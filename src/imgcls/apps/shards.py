"""``imgcls data to-shards DATA --out DIR``: a dataset as WebDataset tar shards.

Any dataset imgcls reads (class folders, split folders, a manifest, ``hf:PATH``) is written
as ``DIR/{train,val,test}-NNNNNN.tar`` with ``--shard-size`` samples each, plus
``DIR/_info.json`` (class names; each shard's sample count and labels), which is what
``imgcls train wds:DIR`` reads (docs/data.md). The val split is the one training would use:
the dataset's own, or ``--val-fraction`` of each class, stratified by ``--split-seed``.

Samples are written in a seeded random order, so every shard mixes the classes (a stream
shuffles shard order and a buffer, not the whole dataset); the image bytes are copied as
they are (no re-encoding: the same pixels as the folder). Each sample is ``<key>.<ext>``
(the image), ``<key>.cls`` (class index) and ``<key>.json`` (``{"path", "label"}``: where
it came from). ``DIR`` may be an fsspec URL (``s3://bucket/shards``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imgcls.data.images import sniff_format
from imgcls.data.shards import IMAGE_KEYS, INFO, LABEL_KEY, META_KEY, info_json
from imgcls.data.sources import DatasetSplits, Sample, discover
from imgcls.runtime import log, progress, require


@dataclass
class ShardsWritten:
    out: str
    counts: dict[str, int]  # samples per split
    shards: dict[str, int]  # shards per split
    classes: list[str]


def write_shards(data: str, out: str, shard_size: int = 1000, val_fraction: float = 0.15, split_seed: int = 0,
                 seed: int = 0) -> ShardsWritten:
    """Write the splits of ``data`` as shards under ``out`` (see the module docstring)."""
    fsspec = require("fsspec", "wds", "data to-shards")
    webdataset = require("webdataset", "wds", "data to-shards")
    splits = discover(data, val_fraction=val_fraction, split_seed=split_seed)
    out = str(out).rstrip("/")
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    index = {name: i for i, name in enumerate(splits.classes)}
    table: dict[str, list[tuple[str, list[int]]]] = {}
    for split, samples in splits.splits.items():
        order = list(samples)
        random.Random(f"{seed}/{split}").shuffle(order)
        table[split] = []
        chunks = [order[i : i + shard_size] for i in range(0, len(order), shard_size)]
        for number, chunk in enumerate(progress(chunks, desc=f"{split} shards")):
            name = f"{split}-{number:06d}.tar"
            with fs.open(f"{root}/{name}", "wb") as handle:
                writer = webdataset.TarWriter(handle)
                for position, sample in enumerate(chunk):
                    writer.write(_record(sample, f"{split}-{number:06d}-{position:06d}", index, splits))
                writer.close()
            table[split].append((name, [index[s.label] for s in chunk]))
    with fs.open(f"{root}/{INFO}", "w") as handle:
        handle.write(info_json(splits.classes, table, source=str(data)))
    log.info("%s: %s -> %s", data, ", ".join(f"{split} {len(s)}" for split, s in splits.splits.items()), out)
    return ShardsWritten(out, {s: len(v) for s, v in splits.splits.items()}, {s: len(v) for s, v in table.items()},
                         list(splits.classes))


def _record(sample: Sample, key: str, index: dict[str, int], splits: DatasetSplits) -> dict:
    """One WebDataset sample: the image file's bytes under its extension, the class index and
    where it came from."""
    data = Path(sample.path).read_bytes()
    origin = str(sample.path)
    if splits.root is not None and Path(sample.path).is_relative_to(splits.root.parent):
        origin = Path(sample.path).relative_to(splits.root.parent).as_posix()
    meta = {"path": origin, "label": sample.label}
    return {"__key__": key, _extension(Path(sample.path)): data, LABEL_KEY: str(index[sample.label]),
            META_KEY: json.dumps(meta).encode()}


def _extension(path: Path) -> str:
    """The member extension of an image: its own when readers know it, else its format's."""
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_KEYS:
        return ext
    kind = sniff_format(path)
    return next((e.lstrip(".") for e, fmt in Image.registered_extensions().items() if fmt == kind), "jpg")
