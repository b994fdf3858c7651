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
    """

    probs: np.ndarray  # (n, C)
    targets: np.ndarray  # (n,)
    indices: np.ndarray  # (n,) dataset positions of those images
    loss: float = float("nan")  # mean cross-entropy where labels exist
    bad: list[BadFile] = field(default_factory=list)
    logits: np.ndarray | None = None  # (n, C)
    coarse_probs: np.ndarray | None = None  # (n, K) coarse-head probabilities of a hierarchical model


@torch.no_grad()
def predict_loader(model, loader: DataLoader, device: torch.device, amp: torch.dtype | None = None,
                   temperature: float = 1.0, desc: str = "eval",
                   memory_format: torch.memory_format = torch.contiguous_format) -> Predictions:
    """Run ``model`` (an ``nn.Module`` or an inference backend: images -> logits, or
    ``(coarse, fine)`` logits with ``levels=True`` when ``model.hierarchical``) over ``loader``."""
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
        known = batch.targets >= 0
        if known.any():
            loss_sum += torch.nn.functional.cross_entropy(logits[known], batch.targets[known], reduction="sum").item()
            labelled += int(known.sum())
        probs.append(logits.softmax(dim=1).cpu().numpy())
        targets.append(batch.targets.cpu().numpy())
        indices.append(batch.indices.numpy())
    if not probs:
        return Predictions(np.zeros((0, 0)), np.zeros(0, int), np.zeros(0, int), bad=bad)
    return Predictions(
        probs=np.concatenate(probs).astype(np.float64),
        targets=np.concatenate(targets),
        indices=np.concatenate(indices),
        loss=loss_sum / labelled if labelled else float("nan"),
        bad=bad,
        logits=np.concatenate(raw),
        coarse_probs=np.concatenate(coarse) if coarse else None,
    )


def at_temperature(raw: Predictions, temperature: float) -> Predictions:
    """Predictions made at temperature 1, rescaled to ``temperature``: probabilities, loss
    and stored logits (the arg-max never changes)."""
    if temperature == 1.0 or raw.logits is None or not len(raw.targets):
        return raw
    logits = torch.from_numpy(raw.logits).double() / temperature
    known = torch.from_numpy(raw.targets >= 0)
    loss = (torch.nn.functional.cross_entropy(logits[known], torch.from_numpy(raw.targets[known])).item()
            if known.any() else float("nan"))
    return dataclasses.replace(raw, probs=logits.softmax(1).numpy(), logits=logits.float().numpy(), loss=loss)
