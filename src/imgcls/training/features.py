"""Head-only epochs on backbone features computed once.

While the backbone is frozen, running it again every epoch recomputes the same numbers:
features are extracted once per image (or once per each of K augmented views) and the head
trains on them, which makes a head epoch about as cheap as a matrix multiply.

Equivalence with the uncached path: the frozen backbone runs in eval mode either way
(frozen BatchNorm keeps its statistics, see ``train_mode``); the head sees the same kind
of batches, in a seeded order, with the same optimiser steps and schedule.

Multilabel runs cache (n, C) multi-hot targets (-1 rows for undecodable images) and report
micro-F1 at probability 0.5 where single-label runs report top-1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgcls.config import MULTILABEL
from imgcls.data.loaders import DeviceLoader, make_loader
from imgcls.inference.predictions import Predictions, labelled_rows, outputs_and_loss
from imgcls.runtime import autocast, infer, log, progress
from imgcls.training.probe import DomainProbe
from imgcls.training.stats import EpochStats


@dataclass
class FeatureSet:
    train: torch.Tensor  # (views, n_train, F); a view's rows follow the dataset order
    train_targets: torch.Tensor  # (n_train,) or multilabel (n_train, C); -1 where the image could not be decoded
    val: torch.Tensor  # (n_val, F)
    val_targets: torch.Tensor
    val_indices: np.ndarray  # dataset positions of the decodable val images
    bad: list
    domain: dict | None = None  # the training plan's measurements of the first train view (probe.DomainProbe)


@torch.no_grad()
def _extract(backbone: nn.Module, loader, device, amp, size: int, desc: str,
             memory_format: torch.memory_format, probe=None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Features of every image of ``loader``; ``probe`` (a training.probe.DomainProbe)
    measures the pass on the way."""
    backbone.eval()
    features, targets, bad = None, torch.full((size,), -1, dtype=torch.long), []
    for batch in progress(DeviceLoader(loader, device, memory_format), desc=desc, total=len(loader)):
        bad.extend(batch.bad)
        if not len(batch):
            continue
        if probe is not None:
            probe.observe(batch.images)
        with autocast(device, amp), probe if probe is not None else contextlib.nullcontext():
            out = infer(backbone, batch.images).float().cpu()
        if features is None:
            features = torch.zeros(size, out.shape[1])
            if batch.targets.ndim > 1:  # multilabel: multi-hot rows
                targets = torch.full((size, batch.targets.shape[1]), -1.0, dtype=batch.targets.dtype)
        features[batch.indices] = out
        targets[batch.indices] = batch.targets.cpu()
    return features, targets, bad


def extract_feature_set(trainer, views: int, clean_train=None) -> FeatureSet:
    """Features of every train image (``views`` augmented views, or with ``views`` 1 the
    ``clean_train`` dataset: train images under the eval transform) and of every val image.
    The first train view's pass also measures the data for the training plan
    (:class:`~imgcls.training.probe.DomainProbe`: BatchNorm shift, grayscale share)."""
    batch = trainer.loaders["train"].batch_size
    workers = trainer.loaders["train"].num_workers
    train_data = trainer.loaders["train"].dataset
    val_loader = trainer.loaders["val"]
    backbone, device, amp = trainer.model.backbone, trainer.device, trainer.amp
    if views == 1:
        clean = make_loader(clean_train, batch, train=False, workers=workers,
                            collate_fn=val_loader.collate_fn)
        loaders = [clean]
    else:
        loaders = []
        for view in range(views):
            loader = make_loader(train_data, batch, train=False, seed=trainer.config.train.seed, workers=workers,
                                 collate_fn=trainer.loaders["train"].collate_fn)
            loader.sampler.shuffle = False
            loader.sampler.set_epoch(10_000 + view)  # distinct augmentation seeds per view
            loaders.append(loader)
    train_views, train_targets, bad = [], None, []
    probe = DomainProbe(backbone, trainer.preprocessing.mean, trainer.preprocessing.std)
    for view, loader in enumerate(loaders):
        feats, train_targets, view_bad = _extract(backbone, loader, device, amp, len(train_data),
                                                  f"features (view {view + 1}/{len(loaders)})", trainer.memory_format,
                                                  probe if view == 0 else None)
        train_views.append(feats)
        bad = bad or view_bad
    val, val_targets, val_bad = _extract(backbone, val_loader, device, amp, len(val_loader.dataset), "features (val)",
                                         trainer.memory_format)
    decoded = usable_rows(val_targets)
    log.info("feature cache: %d train x %d view(s), %d val images, %d features", len(train_data), len(loaders),
             len(decoded), train_views[0].shape[1])
    return FeatureSet(torch.stack(train_views), train_targets, val[decoded], val_targets[decoded],
                      decoded.numpy(), bad + val_bad, {"bn_shift": probe.bn_shift, "gray_share": probe.gray_share})


def usable_rows(targets: torch.Tensor) -> torch.Tensor:
    """Positions of the rows of cached targets that belong to a decoded image."""
    return labelled_rows(targets).nonzero().flatten()


def _multilabel(trainer) -> bool:
    return trainer.config.data.task == MULTILABEL


def train_head_epoch(trainer, features: FeatureSet, epoch: int, optimizer_step) -> dict:
    """One head-only epoch over cached features, as many optimiser steps as the image loader."""
    head, cfg = trainer.model.head, trainer.config.train
    head.train()
    view = features.train[epoch % len(features.train)]
    usable = usable_rows(features.train_targets)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = usable[torch.randperm(len(usable), generator=generator)]
    batch = trainer.loaders["train"].batch_size
    steps = len(trainer.loaders["train"])
    stats = EpochStats(_multilabel(trainer))
    for step in range(steps):
        index = order[step * batch : (step + 1) * batch]
        if len(index) < 2:
            break
        x, y = view[index].to(trainer.device), features.train_targets[index].to(trainer.device)
        logits = head(x)
        loss = trainer.criterion(logits, y) + head.l2_penalty()
        trainer.scaler.scale(loss).backward()
        optimizer_step(trainer)
        stats.add(loss.item(), logits, y)
    return stats.row()


@torch.no_grad()
def head_fit(trainer, features: FeatureSet) -> float:
    """Top-1 of the head (in eval mode) on the cached train features: how well frozen
    features separate the training classes, without dropout or augmentation noise. For
    multilabel, the micro-F1 of its (image, label) decisions at probability 0.5."""
    head = trainer.model.head
    was_training = head.training
    head.eval()
    usable = usable_rows(features.train_targets)
    logits = head(features.train[0, usable].to(trainer.device)).float()
    head.train(was_training)
    if not len(usable):
        return 0.0
    if _multilabel(trainer):
        stats = EpochStats(multilabel=True)
        stats.add(0.0, logits.cpu(), features.train_targets[usable])
        return stats.row()["train_f1"]
    return (logits.argmax(1).cpu() == features.train_targets[usable]).float().mean().item()


@torch.no_grad()
def predict_val(trainer, features: FeatureSet, head: nn.Module | None = None) -> Predictions:
    """Val predictions of ``head`` (default: the model's) on the cached val features."""
    head = head if head is not None else trainer.model.head
    head.eval()
    logits = head(features.val.to(trainer.device)).float()
    targets = features.val_targets.to(trainer.device)
    if _multilabel(trainer):
        probs, loss_sum, labelled = outputs_and_loss(logits, targets, multilabel=True)
        return Predictions(probs=probs.cpu().numpy().astype(np.float64), targets=features.val_targets.numpy(),
                           indices=features.val_indices, loss=loss_sum / labelled if labelled else float("nan"),
                           logits=logits.cpu().numpy(), multilabel=True)
    loss = nn.functional.cross_entropy(logits, targets).item() if len(targets) else float("nan")
    return Predictions(probs=logits.softmax(1).cpu().numpy().astype(np.float64),
                       targets=features.val_targets.numpy(), indices=features.val_indices, loss=loss,
                       logits=logits.cpu().numpy())
