"""Small helpers for notebooks, each returning a matplotlib ``Figure`` (Jupyter shows a
Figure that ends a cell; ``fig.savefig(...)`` writes it anywhere else).

* :func:`show_samples`: a grid of a dataset's images with their labels;
* :func:`show_predictions`: a grid of images with a model's top classes and probabilities;
* :func:`show_confusion`: the confusion matrix of an evaluation (``imgcls.evaluate``).

Figures are built with matplotlib's object API, not pyplot: nothing is kept in pyplot's
list of open figures, and they do not depend on the backend the report selected.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.shards import ShardSamples, iter_shard, sample_image
from imgcls.data.sources import DatasetSplits, discover
from imgcls.evaluation.figures import row_normalise
from imgcls.inference.classifier import Classifier
from imgcls.inference.loading import load

THUMB = 160  # pixels of each grid cell's longer side


def show_samples(data: str | Path | DatasetSplits, split: str = "train", n: int = 16, columns: int = 8,
                 seed: int = 0) -> Figure:
    """``n`` images of ``split`` (a seeded draw, classes in turn) with their labels; ``data``
    is anything ``imgcls train`` reads (a folder, a manifest, ``hf:PATH``, ``wds:SPEC``) or
    discovered :class:`DatasetSplits`."""
    splits = data if isinstance(data, DatasetSplits) else discover(data)
    if split not in splits.splits:
        raise ValueError(f"no '{split}' split (have: {', '.join(splits.splits)})")
    samples = splits.splits[split]
    if isinstance(samples, ShardSamples):
        images = _first_of_shards(samples, n)
    else:
        images = [(_thumbnail(s.path), s.label) for s in _pick(samples, n, seed)]
    return _grid(images, columns, f"{split}: {len(samples)} images, {len(splits.classes)} classes")


def show_predictions(model: Classifier | str | Path, images, topk: int = 3, columns: int = 4) -> Figure:
    """Each image with the model's ``topk`` classes and their probabilities as its caption;
    ``images``: files, folders, PIL images or ``hf:PATH`` (as ``Classifier.predict`` takes);
    ``model``: a classifier or anything ``imgcls.load`` opens."""
    classifier = model if isinstance(model, Classifier) else load(model)
    items = images if isinstance(images, (list, tuple)) else [images]
    rows = classifier.predict(list(items), topk=topk)
    pictures = [item for item in items if isinstance(item, Image.Image)]
    cells = []
    for i, row in enumerate(rows):
        picture = pictures[i] if pictures else None
        thumb = _thumbnail(row["path"]) if picture is None else _fit(picture)
        caption = row["error"] or "\n".join(f"{label} {p:.0%}" for label, p in row["topk"])
        cells.append((thumb, caption))
    return _grid(cells, columns, f"{Path(str(classifier.source)).name if classifier.source else 'model'}: top-{topk}",
                 caption_lines=topk)


def show_confusion(metrics: dict, normalise: bool = True) -> Figure:
    """The confusion matrix of evaluation ``metrics`` (what ``imgcls.evaluate`` returns):
    each row is where a true class's images went (row shares when ``normalise``)."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = [row["class"] for row in metrics.get("per_class", [])] or list(range(len(cm)))
    values = row_normalise(cm) if normalise else cm
    side = min(max(0.45 * len(classes) + 2.5, 4.0), 16.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalise else None)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.grid(False)
    if len(classes) <= 15:
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.0%}" if normalise else f"{value:.0f}"
            dark = value > values.max() / 2
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    top1 = metrics.get("top1")
    ax.set_title(f"{metrics.get('split', 'evaluation')}" + (f": top-1 {top1:.1%}" if top1 is not None else ""))
    fig.tight_layout()
    return fig


def _pick(samples, n: int, seed: int) -> list:
    """Up to ``n`` samples, the classes taking turns, each class's order seeded."""
    by_class: dict[str, list] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    picked, turn = [], 0
    while len(picked) < n and any(turn < len(m) for m in by_class.values()):
        picked += [m[turn] for m in by_class.values() if turn < len(m)][: n - len(picked)]
        turn += 1
    return picked


def _first_of_shards(samples: ShardSamples, n: int) -> list:
    """The first ``n`` images of a streamed split, read from its first shards."""
    cells = []
    for shard in samples.split.shards:
        for position, sample in enumerate(iter_shard(shard.url)):
            if len(cells) == n or position >= shard.count:
                break
            _, data = sample_image(sample)
            cells.append((_fit(load_rgb(io.BytesIO(data))), samples.classes[int(shard.labels[position])]))
        if len(cells) == n:
            break
    return cells


def _thumbnail(path) -> Image.Image | None:
    try:
        return _fit(load_rgb(path, THUMB))
    except (ImageDecodeError, OSError):
        return None


def _fit(image: Image.Image) -> Image.Image:
    image = image.convert("RGB").copy()
    image.thumbnail((THUMB, THUMB))
    return image


def _grid(cells: list, columns: int, title: str, caption_lines: int = 1) -> Figure:
    columns = max(1, min(columns, len(cells) or 1))
    rows = max(1, math.ceil(len(cells) / columns))
    fig = Figure(figsize=(2.0 * columns, (2.0 + 0.25 * caption_lines) * rows))
    for i, (image, caption) in enumerate(cells):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.axis("off")
        if image is not None:
            ax.imshow(np.asarray(image))
        ax.set_title(caption if image is not None else f"unreadable\n{caption}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
