"""Run a model over a loader and collect probabilities, shared by validation, eval and predict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgcls.data.dataset import BadFile
from imgcls.runtime import autocast, infer, progress


@dataclass
class Predictions:
    probs: np.ndarray  # (n, C) for the images that decoded
    targets: np.ndarray  # (n,) -1 where unlabelled
    indices: np.ndarray  # (n,) dataset positions of those images
    loss: float = float("nan")  # mean cross-entropy where labels exist
    bad: list[BadFile] = field(default_factory=list)
    logits: np.ndarray | None = None  # (n, C) float32 logits / temperature (energy scores need them)
    coarse_probs: np.ndarray | None = None  # (n, K) coarse-head probabilities of a hierarchical model


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   amp: torch.dtype | None = None, temperature: float = 1.0, desc: str = "eval") -> Predictions:
    model.eval()
    probs, targets, indices, bad, raw, coarse = [], [], [], [], [], []
    loss_sum, labelled = 0.0, 0
    levels = getattr(model, "hierarchical", False)
    for batch in progress(loader, desc=desc):
        bad.extend(batch.bad)
        if not len(batch):
            continue
        with autocast(device, amp):
            logits = infer(model, batch.model_input(device), **({"levels": True} if levels else {}))
        if levels:
            coarse_logits, logits = logits
            coarse.append(coarse_logits.float().softmax(dim=1).cpu().numpy().astype(np.float64))
        logits = logits.float() / temperature
        raw.append(logits.cpu().numpy())
        known = batch.targets >= 0
        if known.any():
            tgt = batch.targets[known].to(device)
            loss_sum += torch.nn.functional.cross_entropy(logits[known.to(device)], tgt, reduction="sum").item()
            labelled += int(known.sum())
        probs.append(logits.softmax(dim=1).cpu().numpy())
        targets.append(batch.targets.numpy())
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
