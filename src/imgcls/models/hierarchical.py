"""The coarse + fine head of seed 004: one backbone, two classifiers.

The coarse head sees the pooled features; the fine head sees the features *and* the coarse
prediction (``softmax(coarse logits)`` concatenated to them), so it can condition the fine
decision on the super-class. ``forward`` returns the fine logits, which keeps every consumer
of ``model(x)`` (validation, eval, predict, export) unchanged; ``forward_levels`` returns both.

The coarse softmax is not detached: the fine loss also trains the coarse head to produce a
useful conditioning signal, as in the seed's model.
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.models.heads import build_head


class HierarchicalHead(nn.Module):
    def __init__(self, spec: str, in_features: int, num_fine: int, num_coarse: int, dropout: float = 0.2,
                 l2: float = 0.0):
        super().__init__()
        self.num_coarse = num_coarse
        self.coarse = build_head(spec, in_features, num_coarse, dropout, l2)
        self.fine = build_head(spec, in_features + num_coarse, num_fine, dropout, l2)

    def forward_levels(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse_logits, fine_logits)`` from one pass over the features."""
        coarse = self.coarse(features)
        fine = self.fine(torch.cat([features, coarse.softmax(dim=1).to(features.dtype)], dim=1))
        return coarse, fine

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(features)[1]

    def l2_penalty(self) -> torch.Tensor | float:
        return self.coarse.l2_penalty() + self.fine.l2_penalty()


def num_coarse_classes(hierarchy_map: dict[str, str] | None) -> int:
    """Coarse head width for a ``data.hierarchy_map`` (0 = flat model)."""
    return len(set(hierarchy_map.values())) if hierarchy_map else 0
