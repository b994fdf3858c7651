"""The training loss, built from the config in one place.

Extensions of the objective (class weights, soft MixUp targets, coarse + fine losses)
belong here, so the loop keeps calling ``criterion(outputs, targets)``.
"""

from __future__ import annotations

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.nn import functional as F

from imgcls.config import RunConfig
from imgcls.data.balance import loss_class_weights
from imgcls.data.hierarchy import Hierarchy
from imgcls.data.sources import DatasetSplits
from imgcls.training.mixing import mixing_enabled


def build_criterion(config: RunConfig, data: DatasetSplits) -> nn.Module:
    weight = loss_class_weights(config, data)  # --balance weights, else None
    if config.data.hierarchy_map:
        hierarchy = Hierarchy.from_map(data.classes, config.data.hierarchy_map)
        smoothing = 0.0 if mixing_enabled(config) else config.train.label_smoothing
        return HierarchicalLoss(torch.as_tensor(hierarchy.parent), config.train.coarse_weight,
                                config.train.fine_weight, smoothing)
    if mixing_enabled(config):
        # MixUp/CutMix targets are soft rows with label smoothing already folded in (mixing.py).
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.train.label_smoothing)


class HierarchicalLoss(nn.Module):
    """``coarse_weight * CE(coarse) + fine_weight * CE(fine)`` (seed 004's two-head objective).

    Called with ``outputs = (coarse_logits, fine_logits)``; ``wants_levels`` tells the loop to
    ask the model for both. Targets are fine class indices, or soft fine rows (MixUp/CutMix),
    whose mass summed per coarse class is the coarse target.
    """

    wants_levels = True

    def __init__(self, parent: torch.Tensor, coarse_weight: float = 1.0, fine_weight: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        if coarse_weight < 0 or fine_weight < 0 or coarse_weight + fine_weight == 0:
            raise ValueError(f"--coarse-weight {coarse_weight} / --fine-weight {fine_weight}: need weights >= 0, "
                             "not both 0")
        # Buffers, so the criterion's .to(device) moves them once instead of every batch.
        self.register_buffer("parent", parent.long())
        self.register_buffer("membership", F.one_hot(parent.long()).float())  # (fine, coarse)
        self.coarse_weight, self.fine_weight, self.label_smoothing = coarse_weight, fine_weight, label_smoothing

    def forward(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        coarse_logits, fine_logits = outputs
        if targets.ndim > 1:
            coarse_targets = targets.float() @ self.membership
        else:
            coarse_targets = self.parent[targets]
        coarse = F.cross_entropy(coarse_logits.float(), coarse_targets, label_smoothing=self.label_smoothing)
        fine = F.cross_entropy(fine_logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.coarse_weight * coarse + self.fine_weight * fine
