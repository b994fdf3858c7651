"""Backbone + head as one module, the model factory, and freezing by backbone blocks."""

from __future__ import annotations

import re

import torch
from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcls.config import FREEZE_PATTERN, DataConfig, ModelConfig
from imgcls.data.transforms import Preprocessing
from imgcls.models.backbones import create_backbone
from imgcls.models.heads import build_head
from imgcls.models.hierarchical import HierarchicalHead, num_coarse_classes


class ImageClassifier(nn.Module):
    """``head(backbone(x))``; kept as two parts so each gets its own learning rate and can be
    frozen, and so features can be computed once and reused."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, levels: bool = False):
        """Class logits; ``levels=True`` (hierarchical heads only): ``(coarse, fine)`` logits.

        The flag goes through ``forward`` rather than a separate method so that a DDP- or
        torch.compile-wrapped model still sees one ordinary forward call.
        """
        if levels:
            return self.head.forward_levels(self.backbone(images))
        return self.head(self.backbone(images))

    @property
    def hierarchical(self) -> bool:
        return isinstance(self.head, HierarchicalHead)

    def backbone_blocks(self) -> list[list[nn.Parameter]]:
        """Backbone parameters grouped into blocks, from the stem to the last block.

        timm's ``group_matcher`` (the grouping behind layer-wise LR decay) knows each
        architecture's blocks; models without one fall back to their top-level children.
        """
        named = dict(self.backbone.named_parameters())
        if hasattr(self.backbone, "group_matcher"):
            groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=False))
            return [[named[name] for name in names] for _, names in sorted(groups.items())]
        return [list(child.parameters()) for child in self.backbone.children() if any(True for _ in child.parameters())]


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig, num_classes: int,
                load_weights: bool = True) -> tuple[ImageClassifier, Preprocessing]:
    """Create the model and its preprocessing; ``load_weights=False`` skips pretrained
    weights (when a checkpoint's weights are about to be loaded anyway)."""
    use_pretrained = model_cfg.pretrained and load_weights
    weights = model_cfg.weights if use_pretrained else None
    backbone, data_config = create_backbone(model_cfg.name, use_pretrained, weights)
    num_coarse = num_coarse_classes(data_cfg.hierarchy_map)
    if num_coarse:
        head = HierarchicalHead(model_cfg.head, backbone.num_features, num_classes, num_coarse, model_cfg.dropout,
                                model_cfg.head_l2)
    else:
        head = build_head(model_cfg.head, backbone.num_features, num_classes, model_cfg.dropout, model_cfg.head_l2)
    size = data_cfg.image_size or data_config["input_size"][-1]
    preprocessing = Preprocessing(
        image_size=size,
        mean=tuple(data_cfg.mean or data_config["mean"]),
        std=tuple(data_cfg.std or data_config["std"]),
        crop_pct=data_config.get("crop_pct", 0.875),
        interpolation=data_config.get("interpolation", "bilinear") or "bilinear",
    )
    return ImageClassifier(backbone, head), preprocessing


_FREEZE = re.compile(rf"^({FREEZE_PATTERN})$")


def validate_freeze(spec: str) -> str:
    if not _FREEZE.match(spec):
        raise ValueError(f"--freeze {spec!r}: expected none, backbone, half or all-but-last:N")
    return spec


def apply_freeze(model: ImageClassifier, spec: str) -> None:
    """Set ``requires_grad`` on backbone blocks; the head always trains."""
    match = _FREEZE.match(validate_freeze(spec))
    blocks = model.backbone_blocks()
    if spec == "none":
        frozen = 0
    elif spec == "backbone":
        frozen = len(blocks)
    elif spec == "half":
        frozen = len(blocks) // 2
    else:
        frozen = max(len(blocks) - int(match.group(2)), 0)
    for i, block in enumerate(blocks):
        for param in block:
            param.requires_grad_(i >= frozen)
    for param in model.head.parameters():
        param.requires_grad_(True)


def train_mode(model: nn.Module, backbone_bn_eval: bool = False) -> None:
    """``model.train()``, but frozen BatchNorm layers keep their running statistics.

    A frozen layer whose statistics still move is not frozen: Keras' ``trainable=False``
    semantics, which the two-phase recipes of seeds 001 and 003 depend on.
    ``backbone_bn_eval``: every backbone BatchNorm normalises with its running statistics
    (its scale and shift still train), as Keras advises when fine-tuning a pretrained base.
    """
    model.train()
    backbone = getattr(model, "backbone", None)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None and not module.weight.requires_grad:
            module.eval()
    if backbone_bn_eval and backbone is not None:
        for module in backbone.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
