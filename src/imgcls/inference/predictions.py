"""Run a model over a loader and collect its outputs: shared by validation, eval and predict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgcls.data.dataset import BadFile
from imgcls.data.loaders import DeviceLoader
from imgcls.runtime import autocast, infer, progress


@dataclass
class Predictions:
    """Outputs for the images of a loader that decoded, in loader order.

    ``logits`` are float32 (n, C) logits divided by the temperature the predictions were
    made at, and ``probs`` their float64 softmax; ``targets`` are -1 where unlabelled.
    Multilabel (``multilabel``): ``probs`` are the per-label sigmoids of the logits,
    ``targets`` (n, C) multi-hot rows (-1 rows where unlabelled) and ``loss`` the mean binary
    cross-entropy over the labels.
    """

    probs: np.ndarray  # (n, C)
    targets: np.ndarray  # (n,), or (n, C) for multilabel
    indices: np.ndarray  # (n,) dataset positions of those images
    loss: float = float("nan")  # mean cross-entropy (multilabel: binary cross-entropy) where labels exist
    bad: list[BadFile] = field(default_factory=list)
    logits: np.ndarray | None = None  # (n, C)
    coarse_probs: np.ndarray | None = None  # (n, K) coarse-head probabilities of a hierarchical model
    multilabel: bool = False


def labelled_rows(targets: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the rows of (n,) class indices or (n, C) multi-hot targets that hold a label."""
    return (targets >= 0).reshape(len(targets), -1).all(1)


def outputs_and_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> tuple[torch.Tensor, float, int]:
    """``(probabilities, summed loss over the labelled rows, labelled rows)`` of float logits:
    softmax and cross-entropy, or for multilabel sigmoid and the binary cross-entropy
    averaged over the labels (each image's mean over its C labels, summed)."""
    known = labelled_rows(targets) if multilabel else targets >= 0
    loss = 0.0
    if known.any():
        if multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[known], targets[known].float(), reduction="sum").item() / logits.shape[1]
        else:
            loss = torch.nn.functional.cross_entropy(logits[known], targets[known], reduction="sum").item()
    probs = logits.sigmoid() if multilabel else logits.softmax(dim=1)
    return probs, loss, int(known.sum())


@torch.no_grad()
def predict_loader(model, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None,
                   temperature: float = 1.0, desc: str = "eval",
                   memory_format: torch.memory_format = torch.contiguous_format,
                   multilabel: bool = False) -> Predictions:
    """Run ``model`` (an ``nn.Module`` or an inference backend: images -> logits, or
    ``(coarse, fine)`` logits with ``levels=True`` when ``model.hierarchical``) over ``loader``.
    ``multilabel``: sigmoid probabilities and binary cross-entropy (see :class:`Predictions`)."""
    if hasattr(model, "eval"):
        model.eval()
    probs, targets, indices, bad, raw, coarse = [], [], [], [], [], []
    loss_sum, labelled = 0.0, 0
    levels = getattr(model, "hierarchical", False)
    for batch in progress(DeviceLoader(loader, device, memory_format), desc=desc, total=len(loader)):
        bad.extend(batch.bad)
        if not len(batch):
            continue
        with autocast(device, amp):
            logits = infer(model, batch.images, **({"levels": True} if levels else {}))
        if levels:
            coarse_logits, logits = logits
            coarse.append(coarse_logits.float().softmax(dim=1).cpu().numpy().astype(np.float64))
        logits = logits.float().to(batch.targets.device) / temperature
        raw.append(logits.cpu().numpy())
        batch_probs, batch_loss, batch_labelled = outputs_and_loss(logits, batch.targets, multilabel)
        loss_sum += batch_loss
        labelled += batch_labelled
        probs.append(batch_probs.cpu().numpy())
        targets.append(batch.targets.cpu().numpy())
        indices.append(batch.indices.numpy())
    if not probs:
        return Predictions(np.zeros((0, 0)), np.zeros(0, int), np.zeros(0, int), bad=bad, multilabel=multilabel)
    return Predictions(
        probs=np.concatenate(probs).astype(np.float64),
        targets=np.concatenate(targets),
        indices=np.concatenate(indices),
        loss=loss_sum / labelled if labelled else float("nan"),
        bad=bad,
        logits=np.concatenate(raw),
        coarse_probs=np.concatenate(coarse) if coarse else None,
        multilabel=multilabel,
    )


def at_temperature(raw: Predictions, temperature: float) -> Predictions:
    """Predictions made at temperature 1, rescaled to ``temperature``: probabilities, loss
    and stored logits (the arg-max never changes)."""
    if temperature == 1.0 or raw.logits is None or not len(raw.targets) or raw.multilabel:
        return raw
    logits = torch.from_numpy(raw.logits).double() / temperature
    known = raw.targets >= 0  # a numpy mask: numpy reads a one-element torch mask as the index 1
    loss = (torch.nn.functional.cross_entropy(logits[torch.from_numpy(known)],
                                              torch.from_numpy(raw.targets[known])).item()
            if known.any() else float("nan"))
    return dataclasses.replace(raw, probs=logits.softmax(1).numpy(), logits=logits.float().numpy(), loss=loss)
