"""The training loss, built from the config in one place.

Extensions of the objective (class weights, soft MixUp targets, coarse + fine losses,
the multilabel losses) belong here, so the loop keeps calling ``criterion(outputs, targets)``.

Multilabel (``data.task: multilabel``): each label is its own binary problem on the sigmoid
of its logit, trained with binary cross-entropy (``--loss bce``, torch's
``BCEWithLogitsLoss``; ``--balance weights`` sets its ``pos_weight`` per label) or the
asymmetric loss (``--loss asl``, timm's ``AsymmetricLossMultiLabel``: Ridnik et al., 2021,
"Asymmetric Loss For Multi-Label Classification", for sets where most (image, label) pairs
are negatives). :func:`check_task_options` refuses the single-label-only options first.
"""

from __future__ import annotations

from typing import Callable

import torch
from timm.loss import AsymmetricLossMultiLabel, SoftTargetCrossEntropy
from torch import nn
from torch.nn import functional as F

from imgcls.config import MULTILABEL, ConfigError, RunConfig
from imgcls.data.balance import loss_class_weights
from imgcls.data.hierarchy import Hierarchy
from imgcls.data.sources import DatasetSplits
from imgcls.training.mixing import mixing_enabled


MULTILABEL_MONITORS = ("val_map", "val_f1", "val_loss", "train_f1", "train_loss")
MULTILABEL_ONLY_MONITORS = ("val_map", "val_f1", "train_f1")


def check_task_options(config: RunConfig) -> None:
    """Refuse options that do not apply to the run's task (``config.data.task`` resolved),
    with one line naming the flag, before anything is trained; for multilabel, the default
    monitor ``val_acc`` becomes ``val_map``. Raises ConfigError."""
    t = config.train
    if config.data.task != MULTILABEL:
        if t.loss in ("bce", "asl"):
            raise ConfigError(f"--loss {t.loss}: a multilabel loss; this dataset has one label per image (--loss ce)")
        if t.monitor in MULTILABEL_ONLY_MONITORS:
            raise ConfigError(f"--monitor {t.monitor}: a multilabel metric; this dataset has one label per image")
        return
    refused = [("--loss ce", t.loss == "ce"), ("--mixup", t.mixup > 0), ("--cutmix", t.cutmix > 0),
               ("--hierarchy", bool(config.data.hierarchy)), ("--unknown-threshold", _openset_on(t)),
               (f"--balance {t.balance}", t.balance in ("sampler", "oversample", "undersample"))]
    for flag, on in refused:
        if on:
            raise ConfigError(f"{flag}: not available for multilabel data (label sets; see docs/multilabel.md): "
                              "use --loss bce|asl and --balance none|weights")
    if t.monitor == "val_acc":
        t.monitor = "val_map"  # the default monitor: top-1 accuracy has no multilabel meaning
    if t.monitor not in MULTILABEL_MONITORS:
        raise ConfigError(f"--monitor {t.monitor}: not a multilabel metric (choose {', '.join(MULTILABEL_MONITORS)})")


def _openset_on(train_config) -> bool:
    value = train_config.unknown_threshold
    return value is not None and str(value).strip().lower() not in ("none", "off", "")


def plain_loss(config: RunConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The unweighted loss of the task, on float logits: cross-entropy, or for multilabel the
    binary cross-entropy. What validation reports and the LR range test and step timing run."""
    return F.binary_cross_entropy_with_logits if config.data.task == MULTILABEL else F.cross_entropy


def build_criterion(config: RunConfig, data: DatasetSplits) -> nn.Module:
    weight = loss_class_weights(config, data)  # --balance weights, else None
    if config.data.task == MULTILABEL:
        return _multilabel_criterion(config, weight)
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


def _multilabel_criterion(config: RunConfig, pos_weight: torch.Tensor | None) -> nn.Module:
    """BCE (``pos_weight``: negatives / positives per label, from ``--balance weights``) or ASL.

    ASL with ``reduction="mean"`` (over images and labels, like BCE's) rather than the
    paper's sum, so the logged loss and the learning rate mean the same as with BCE; the
    paper's MS-COCO setting (gamma- 4, gamma+ 0, clip 0.05) is the default.
    """
    t = config.train
    if t.loss == "asl":
        return AsymmetricLossMultiLabel(gamma_neg=t.asl_gamma_neg, gamma_pos=t.asl_gamma_pos, clip=t.asl_clip,
                                        reduction="mean", pos_weight=pos_weight)
    return FloatTargets(nn.BCEWithLogitsLoss(pos_weight=pos_weight))


class FloatTargets(nn.Module):
    """``loss(logits.float(), targets.float())``: BCE needs float targets and, under autocast,
    float32 logits for its log-sigmoid."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), targets.float())
