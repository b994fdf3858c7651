"""``--balance``: what training does about classes of very different sizes.

* ``weights``: cross-entropy weighted by ``n / (k * n_class)`` (scikit-learn's "balanced"
  class weights), so every class contributes equally to the loss; for multilabel, the
  positive term of each label's binary cross-entropy weighted by its negatives / positives
  (``BCEWithLogitsLoss(pos_weight=...)``), so rare labels are not drowned by their negatives;
* ``sampler``: every epoch draws as many images as the train split has, with replacement,
  each class equally likely (torch's WeightedRandomSampler idea, drawn inside
  :class:`imgcls.data.loaders.SeededSampler` to keep the (seed, epoch) determinism);
* ``oversample``: every class topped up to the largest one by drawing extra copies with
  replacement; ``undersample``: every class cut to the smallest one (seed 001's up- and
  down-sampling of the sample list, done once per run from the run seed).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TypeVar

import numpy as np
import torch
from sklearn.utils import resample
from sklearn.utils.class_weight import compute_class_weight

from imgcls.config import BALANCE_MODES
from imgcls.runtime import log

T = TypeVar("T")


def check_balance(mode: str) -> str:
    if mode not in BALANCE_MODES:
        raise ValueError(f"--balance {mode!r}: choose one of {', '.join(BALANCE_MODES)}")
    return mode


def class_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """``n / (k * n_c)`` per class; classes without training images get weight 0."""
    targets_array = np.asarray(targets)
    present = np.unique(targets_array)
    weights = np.zeros(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets_array)
    return torch.from_numpy(weights)


def loss_class_weights(config, data) -> torch.Tensor | None:
    """The cross-entropy ``weight`` for ``--balance weights`` (else None) of a RunConfig and
    its DatasetSplits; for multilabel data the BCE ``pos_weight`` (:func:`positive_weights`)."""
    if check_balance(config.train.balance) != "weights":
        return None
    if getattr(data, "multilabel", False):
        return positive_weights(data.targets("train"))
    # Soft MixUp/CutMix targets and the hierarchical loss take no class weights (getattr: those
    # options are newer than this module and may be absent from a config).
    if any(getattr(section, name, None) for section, name in (
            (config.train, "mixup"), (config.train, "cutmix"), (config.data, "hierarchy_map"))):
        raise ValueError("--balance weights needs the plain cross-entropy; with --mixup, --cutmix or --hierarchy "
                         "use --balance sampler")
    return class_weights(data.targets("train"), len(data.classes))


def positive_weights(targets) -> torch.Tensor:
    """Per label of (n, C) multi-hot ``targets``: negatives / positives, the ``pos_weight`` of
    ``torch.nn.BCEWithLogitsLoss`` that balances each label's two terms (torch's own advice
    for it); a label without positives gets 1 (nothing to up-weight)."""
    y = torch.as_tensor(np.asarray(targets, dtype=np.float32))
    positives = y.sum(0)
    negatives = len(y) - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))


def sample_weights(targets: list[int]) -> torch.Tensor:
    """``1 / n_class`` per sample: a weighted draw then picks every class equally often."""
    counts = np.bincount(np.asarray(targets))
    return torch.from_numpy(1.0 / counts[np.asarray(targets)]).double()


def resample_split(items: list[T], targets: list[int], mode: str, seed: int) -> tuple[list[T], list[int]]:
    """Over- or undersample ``items`` (any per-sample objects) to equal class counts."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for position, target in enumerate(targets):
        by_class[target].append(position)
    sizes = [len(members) for members in by_class.values()]
    target_size = max(sizes) if mode == "oversample" else min(sizes)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        if mode == "oversample":
            extra = target_size - len(members)
            chosen += members + (resample(members, replace=True, n_samples=extra, random_state=seed + label)
                                 if extra else [])
        else:
            chosen += sorted(resample(members, replace=False, n_samples=target_size, random_state=seed + label))
    return [items[i] for i in chosen], [targets[i] for i in chosen]


def balance_train_split(items: list[T], targets: list[int], mode: str, seed: int
                        ) -> tuple[list[T], list[int], torch.Tensor | None]:
    """The train split as ``--balance`` wants it: ``(items, targets, sampler weights or None)``."""
    check_balance(mode)
    if mode in ("oversample", "undersample"):
        before = len(items)
        items, targets = resample_split(items, targets, mode, seed)
        log.info("--balance %s: %d training images -> %d, %d per class", mode, before, len(items),
                 len(items) // max(len(set(targets)), 1))
    weights = sample_weights(targets) if mode == "sampler" else None
    return items, targets, weights
