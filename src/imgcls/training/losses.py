"""The training loss, built from the config in one place.

Extensions of the objective (class weights, soft MixUp targets, coarse + fine losses)
belong here, so the loop keeps calling ``criterion(outputs, targets)``.
"""

from __future__ import annotations

from torch import nn

from imgcls.config import RunConfig
from imgcls.data.sources import DatasetSplits


def build_criterion(config: RunConfig, data: DatasetSplits) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
