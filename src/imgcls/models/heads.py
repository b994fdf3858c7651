"""Classifier heads on top of pooled backbone features.

``linear``          dropout -> Linear
``mlp:512,256``     BatchNorm -> [Linear -> ReLU -> BatchNorm -> Dropout] per width -> Linear
                    (the Keras BN-Dense-BN-Dropout head of seeds 000 and 003)
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.errors import UserError


class HeadSpecError(UserError, ValueError):
    pass


class ClassifierHead(nn.Module):
    def __init__(self, layers: nn.Sequential, l2: float = 0.0):
        super().__init__()
        self.layers = layers
        self.l2 = l2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)

    def l2_penalty(self) -> torch.Tensor | float:
        """Keras-style ``l2 * sum(w**2)`` over hidden dense kernels, added to the loss.

        Kept apart from the optimiser's decoupled weight decay on purpose: it reproduces
        Keras' ``kernel_regularizer=l2(...)`` that seeds 000 and 003 rely on.
        """
        if not self.l2:
            return 0.0
        hidden = [m.weight for m in self.layers if isinstance(m, nn.Linear)][:-1]
        return self.l2 * sum((w**2).sum() for w in hidden)


def parse_head_spec(spec: str) -> tuple[str, list[int]]:
    kind, _, widths = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "linear" and not widths:
        return kind, []
    if kind == "mlp":
        try:
            sizes = [int(w) for w in widths.split(",") if w.strip()]
        except ValueError:
            sizes = []
        if sizes and all(s > 0 for s in sizes):
            return kind, sizes
    raise HeadSpecError(f"--head {spec!r}: expected 'linear' or 'mlp:W1[,W2...]' (e.g. mlp:512,256)")


def build_head(spec: str, in_features: int, num_classes: int, dropout: float = 0.2, l2: float = 0.0) -> ClassifierHead:
    kind, widths = parse_head_spec(spec)
    if kind == "linear":
        return ClassifierHead(nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes)))
    layers: list[nn.Module] = [nn.BatchNorm1d(in_features)]
    previous = in_features
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU(inplace=True), nn.BatchNorm1d(width), nn.Dropout(dropout)]
        previous = width
    layers.append(nn.Linear(previous, num_classes))
    return ClassifierHead(nn.Sequential(*layers), l2=l2)
