"""WebDataset tar shards as a dataset: ``DATA = wds:SPEC`` (discovery; streaming is data/wds.py).

A shard is a tar file whose members are grouped into samples by name (WebDataset's
convention): ``<key>.jpg`` (any image extension) and ``<key>.cls`` (the class index, as
text); ``<key>.json`` may say where the image came from. ``SPEC`` is a local path or any
fsspec URL (``s3://``, ``gs://``, ``https://``...) and is one of:

* a folder of shards (what ``imgcls data to-shards`` writes): ``train-000000.tar``,
  ``val-000000.tar``, ``test-000000.tar`` ... (or ``train/*.tar``, ``val/*.tar``: split
  folders), with ``_info.json`` beside them: the class names, and per shard its sample count
  and labels, so nothing is read to plan an epoch;
* a pattern of train shards, braces expanded (``shards/train-{000000..000099}.tar``) or a
  glob; the val and test shards are those of the same folder whose file (or folder) name
  says val or test, as split folders are recognised (``val-*.tar``, ``valid/``...).

Without ``_info.json`` the shards are read once to count their samples and labels (and
the classes are named by their index). The train split is streamed; val and test, which
evaluation, the report and per-image predictions name file by file, are extracted once
to ``$IMGCLS_CACHE/wds/<key>/`` with a manifest (keyed by every shard's URL, size and
modification time).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.images import IMAGE_EXTENSIONS
from imgcls.data.layout import SPLITS, TEST, TRAIN, VAL, DatasetError, split_name
from imgcls.runtime import log, progress, require

PREFIX = "wds:"
INFO = "_info.json"
FORMAT = "imgcls-shards/1"
LABEL_KEY = "cls"
META_KEY = "json"
IMAGE_KEYS = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
DONE = ".complete"


def is_wds(spec) -> bool:
    """Does ``spec`` name WebDataset shards (``wds:SPEC``)?"""
    return isinstance(spec, str) and spec.startswith(PREFIX)


@dataclass
class Shard:
    url: str
    count: int
    labels: np.ndarray  # (count,) class index of each sample, in shard order


@dataclass
class ShardSplit:
    """One split's shards, in a fixed order; sample ``i`` of the split is the ``i - offset``-th
    sample of its shard, so a sample's index never depends on how an epoch reads them."""

    shards: list[Shard]

    @property
    def offsets(self) -> list[int]:
        return np.cumsum([0] + [s.count for s in self.shards]).tolist()

    def __len__(self) -> int:
        return sum(s.count for s in self.shards)


@dataclass
class ShardSet:
    spec: str
    classes: list[str]  # class names by the index a shard's .cls holds
    splits: dict[str, ShardSplit] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # per split: the folder or pattern it came from


class ShardSamples(Sequence):
    """A streamed split as the sample list the rest of imgcls reads (counts, labels, class
    weights), without holding a sample object per image: item ``i`` is built on access,
    its ``path`` ``<shard URL>#<position>`` (there is no file to open)."""

    def __init__(self, split: ShardSplit, classes: list[str], factory):
        self.split, self.classes, self.factory = split, classes, factory
        self._offsets = split.offsets

    def __len__(self) -> int:
        return self._offsets[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = bisect.bisect_right(self._offsets, index) - 1
        position = index - self._offsets[shard]
        item = self.split.shards[shard]
        return self.factory(Path(f"{item.url}#{position}"), self.classes[int(item.labels[position])])


def resolve(spec: str) -> ShardSet:
    """The shards ``wds:SPEC`` names, split by split, with their counts and labels (see the
    module docstring). Raises DatasetError naming ``spec`` when there are no train or no val
    shards."""
    fsspec = require("fsspec", "wds", "wds: shards")
    require("webdataset", "wds", "wds: shards")  # checked first: the shards are read with it
    target = spec[len(PREFIX):]
    pattern = any(c in target for c in "{*?[") or target.endswith(".tar")
    if pattern:
        train = _expand(fsspec, target)
        folder = _parent(train[0]) if train else target.rsplit("/", 1)[0]
        if split_name(_name(folder)):  # shards in split folders: train/ beside val/
            folder = _parent(folder)
        found = _scan(fsspec, folder)
        found[TRAIN] = train
    else:
        folder = target.rstrip("/")
        found = _scan(fsspec, folder)
    info = _read_info(fsspec, folder)
    if not found.get(TRAIN):
        raise DatasetError(f"{spec}: no train shards found (shards are .tar files; see docs/data.md#webdataset-shards)")
    if not found.get(VAL):
        raise DatasetError(f"{spec}: no val shards beside the train shards (val-*.tar or val/*.tar); imgcls data "
                           "to-shards writes them, holding out --val-fraction of train when the folder has no val")
    counted = _shard_table(info, folder)
    missing = [url for urls in found.values() for url in urls if url not in counted]
    if missing:
        log.info("%s: %d shard(s) not in %s: reading them once to count their samples (imgcls data to-shards "
                 "writes it)", spec, len(missing), INFO)
        counted.update(count_shards(missing))
    splits = {name: ShardSplit([Shard(url, *counted[url]) for url in found[name]]) for name in SPLITS if name in found}
    top = max((int(s.labels.max()) for split in splits.values() for s in split.shards if s.count), default=-1)
    classes = list(info.get("classes") or [str(i) for i in range(top + 1)])
    if top >= len(classes):
        raise DatasetError(f"{spec}: a shard holds class index {top}, but {INFO} names {len(classes)} classes")
    where = {name: target if name == TRAIN and pattern else f"{folder}/{name}*" for name in splits}
    return ShardSet(spec, classes, splits, where)


def _expand(fsspec, pattern: str) -> list[str]:
    """Brace expansion (WebDataset's), then globbing of any ``*?[``; sorted within a glob."""
    shardlists = require("webdataset.shardlists", "wds", "wds: shards")
    urls: list[str] = []
    for item in shardlists.expand_urls(pattern):
        if any(c in item for c in "*?["):
            fs, path = fsspec.core.url_to_fs(item)
            urls.extend(sorted(fs.unstrip_protocol(p) if "://" in item else _local(p) for p in fs.glob(path)))
        else:
            urls.append(_local(item))
    return urls


def _scan(fsspec, folder: str) -> dict[str, list[str]]:
    """The shards of ``folder`` by split: by their split folder (``val/``), else by the
    first word of their name (``val-000000.tar``); shards named for no split are train."""
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.isdir(path):
        return {}
    found: dict[str, list[str]] = {}
    for item in sorted(fs.find(path, maxdepth=2)):
        if not item.endswith(".tar"):
            continue
        relative = item[len(path.rstrip("/")) + 1:]
        parts = relative.split("/")
        split = split_name(parts[0]) if len(parts) == 2 else split_name(_first_word(parts[0]))
        if len(parts) == 2 and split is None:
            continue  # a sub-folder that is no split: not ours
        url = fs.unstrip_protocol(item) if "://" in folder else _local(item)
        found.setdefault(split or TRAIN, []).append(url)
    return found


def _local(url: str) -> str:
    """A shard's name as it is compared and shown: URLs as given, local paths absolute."""
    return url if "://" in url else os.path.abspath(url)


def _first_word(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    for separator in "-_.":
        stem = stem.split(separator)[0]
    return stem.rstrip("0123456789")


def _parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] if "/" in url.rstrip("/") else "."


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _read_info(fsspec, folder: str) -> dict:
    fs, path = fsspec.core.url_to_fs(f"{folder}/{INFO}")
    if not fs.exists(path):
        return {}
    try:
        with fs.open(path, "rb") as handle:
            info = json.loads(handle.read())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{folder}/{INFO}: cannot read: {err}") from None
    if info.get("format") != FORMAT:
        raise DatasetError(f"{folder}/{INFO}: not an imgcls shard index (format {info.get('format')!r})")
    return info


def _shard_table(info: dict, folder: str) -> dict[str, tuple[int, np.ndarray]]:
    """``url -> (count, labels)`` from ``_info.json`` (shard names are relative to it)."""
    table = {}
    for shards in info.get("splits", {}).values():
        for entry in shards:
            labels = np.asarray(entry["labels"], dtype=np.int64)
            table[_local(f"{folder}/{entry['shard']}")] = (int(entry["count"]), labels)
    return table


def iter_shard(url: str):
    """The samples of one shard in order: dicts of ``__key__`` and one entry per member
    extension (bytes), parsed by WebDataset's tar iterator from an fsspec stream."""
    fsspec = require("fsspec", "wds", "wds: shards")
    tariterators = require("webdataset.tariterators", "wds", "wds: shards")
    with fsspec.open(url, "rb") as stream:
        members = ({**member, "__url__": url} for member in tariterators.tar_file_iterator(stream))
        yield from tariterators.group_by_keys(members)


def sample_label(sample: dict) -> int:
    try:
        return int(sample[LABEL_KEY].decode().strip())
    except (KeyError, ValueError, AttributeError):
        raise DatasetError(f"{sample.get('__url__')}: sample '{sample.get('__key__')}' has no integer "
                           f".{LABEL_KEY} member (the class index)") from None


def sample_image(sample: dict) -> tuple[str, bytes]:
    """``(extension, encoded bytes)`` of a sample's image member."""
    for key, value in sample.items():
        if key in IMAGE_KEYS:
            return key, value
    raise DatasetError(f"{sample.get('__url__')}: sample '{sample.get('__key__')}' has no image member "
                       f"(members: {', '.join(k for k in sample if not k.startswith('__'))})")


def count_shards(urls: list[str]) -> dict[str, tuple[int, np.ndarray]]:
    """``url -> (count, labels)`` by reading each shard once."""
    table = {}
    for url in progress(urls, desc="counting shards"):
        labels = [sample_label(sample) for sample in iter_shard(url)]
        table[url] = (len(labels), np.asarray(labels, dtype=np.int64))
    return table


def cache_root() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE", Path.home() / ".cache" / "imgcls")) / "wds"


def extract_held_out(found: ShardSet) -> Path:
    """A ``path,label,split`` manifest of the val (and test) samples, extracted once to
    files under :func:`cache_root` (the stored bytes as they are)."""
    fsspec = require("fsspec", "wds", "wds: shards")
    urls = [s.url for name in (VAL, TEST) if name in found.splits for s in found.splits[name].shards]
    stamp = [f"{url}|{_stamp(fsspec, url)}" for url in urls]
    folder = cache_root() / hashlib.sha1("\n".join([*found.classes, *stamp]).encode()).hexdigest()[:20]
    manifest = folder / "manifest.csv"
    if (folder / DONE).is_file():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for name in (VAL, TEST):
            for shard in found.splits[name].shards if name in found.splits else []:
                target = folder / name / _name(shard.url).rsplit(".", 1)[0]
                target.mkdir(parents=True, exist_ok=True)
                for sample in iter_shard(shard.url):
                    ext, data = sample_image(sample)
                    path = target / f"{_name(sample['__key__'])}.{ext}"
                    path.write_bytes(data)
                    writer.writerow([path.relative_to(folder).as_posix(), found.classes[sample_label(sample)], name])
    (folder / DONE).write_text(found.spec + "\n")
    log.info("%s: val/test samples extracted to %s", found.spec, folder)
    return manifest


def _stamp(fsspec, url: str) -> str:
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    return f"{info.get('size')}|{info.get('mtime') or info.get('ETag') or info.get('LastModified') or ''}"


def info_json(classes: list[str], splits: dict[str, list[tuple[str, list[int]]]], source: str = "") -> str:
    """The text of ``_info.json``: the class names and, per split, each shard's name
    (relative to the folder the file is in), sample count and labels in shard order."""
    info = {"format": FORMAT, "source": source, "classes": list(classes),
            "splits": {name: [{"shard": shard, "count": len(labels), "labels": [int(x) for x in labels]}
                              for shard, labels in shards] for name, shards in splits.items()}}
    return json.dumps(info, separators=(",", ":")) + "\n"
