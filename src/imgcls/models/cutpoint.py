"""A backbone as a chain of stages, so it can be cut where freezing ends.

Partial fine-tuning freezes the first blocks of a backbone (``--freeze all-but-last:N``,
``half``); their output for an image only changes with the image. The cut-point cache
(:mod:`imgcls.training.features`) computes it once per augmented view and trains the rest of
the network on it. That needs the backbone as ``suffix(prefix(x))`` with ``prefix`` exactly
the frozen blocks of :meth:`ImageClassifier.backbone_blocks`, which this module gives for
the timm families whose forward is a plain chain: the EfficientNet / MobileNet family
(``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``) and ResNets (``conv1`` ...
``layer4``). Any other architecture gets None, and partial fine-tuning recomputes.
"""

from __future__ import annotations

import torch
from torch import nn


class _Tail(nn.Module):
    """The stages after the last block: the final convolution (if any) and the backbone's
    own pooling head (``forward_head``), kept as a call so pooling options are honoured."""

    def __init__(self, modules: list[nn.Module], forward_head):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        object.__setattr__(self, "_forward_head", forward_head)  # a bound method: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return self._forward_head(x)


def backbone_stages(backbone: nn.Module) -> list[nn.Module] | None:
    """The backbone as modules applied one after another (stem, each block, the tail that
    pools): ``backbone(x)`` equals chaining them. None for an architecture not known to be
    such a chain."""
    names = {name for name, _ in backbone.named_children()}
    if {"conv_stem", "bn1", "blocks", "conv_head", "bn2"} <= names:  # EfficientNet, MobileNetV2/V3, MixNet ...
        blocks = [block for stage in backbone.blocks for block in stage]
        stem = nn.Sequential(backbone.conv_stem, backbone.bn1)
        return [stem, *blocks, _Tail([backbone.conv_head, backbone.bn2], backbone.forward_head)]
    if {"conv1", "bn1", "act1", "maxpool", "layer1", "layer4"} <= names:  # ResNet, ResNeXt, SE-ResNet ...
        stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool)
        layers = [getattr(backbone, f"layer{i}") for i in range(1, 5)]
        return [stem, *[block for layer in layers for block in layer], _Tail([], backbone.forward_head)]
    return None


def cut_backbone(backbone: nn.Module, blocks: list[list[nn.Parameter]], frozen: int
                 ) -> tuple[nn.Module, nn.Module] | None:
    """``(prefix, suffix)`` with ``suffix(prefix(x)) == backbone(x)`` and ``prefix`` made of
    exactly the first ``frozen`` parameter groups of ``blocks`` (as
    :meth:`ImageClassifier.backbone_blocks` lists them); None when the architecture is not
    a known chain, its stages do not line up with the groups, or nothing (or everything)
    is frozen. The modules are the backbone's own: training the suffix trains the model."""
    stages = backbone_stages(backbone)
    if stages is None or not 0 < frozen < len(blocks):
        return None
    ends = _group_ends(stages, blocks)
    if ends is None:
        return None
    cut = ends[frozen - 1] + 1  # the first stage after the frozen groups
    return nn.Sequential(*stages[:cut]), nn.Sequential(*stages[cut:])


def _group_ends(stages: list[nn.Module], blocks: list[list[nn.Parameter]]) -> list[int] | None:
    """Index of the last stage of each parameter group, when consecutive stages make up
    each group exactly (a group may span stages: timm puts EfficientNet's final convolution
    in the last block's group); None when they do not line up."""
    ends, i = [], 0
    for group in blocks:
        wanted, have = {id(p) for p in group}, set()
        while have != wanted:
            if i >= len(stages):
                return None
            have |= {id(p) for p in stages[i].parameters()}
            if not have <= wanted:
                return None
            i += 1
        ends.append(i - 1)
    return ends
