"""MixUp / CutMix on training batches (timm's ``Mixup``), turning hard labels into soft targets.

When mixing is on, the targets reaching the loss are class-probability rows (label
smoothing included: timm folds it into the mixed targets), so :func:`build_criterion`
switches to a soft-target cross-entropy at the same time.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from imgcls.config import RunConfig


def mixing_enabled(config: RunConfig) -> bool:
    return config.train.mixup > 0 or config.train.cutmix > 0


def _validate(config: RunConfig) -> None:
    cfg = config.train
    for name in ("mixup", "cutmix"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name} {getattr(cfg, name)}: alpha must be >= 0 (0 turns it off)")
    for name in ("mix_prob", "mix_switch_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: a probability between 0 and 1")


class BatchMixer:
    """Mixes a batch of images and returns soft targets; copes with odd batch sizes.

    timm's Mixup pairs image i with image n-1-i and refuses odd batches. A batch can be odd
    here (decode failures drop images, the last batch of an epoch), so the last image of an
    odd batch stays unmixed and only gets the (smoothed) one-hot target.
    """

    def __init__(self, config: RunConfig, num_classes: int):
        _validate(config)
        cfg = config.train
        self.num_classes, self.smoothing = num_classes, cfg.label_smoothing
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                           switch_prob=cfg.mix_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                           num_classes=num_classes)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = len(images) - len(images) % 2
        if even == 0:
            return images, mixup_target(targets, self.num_classes, 1.0, self.smoothing)
        mixed_images, mixed_targets = self.mixup(images[:even], targets[:even])  # mixes images in place
        if even == len(images):
            return mixed_images, mixed_targets
        rest = mixup_target(targets[even:], self.num_classes, 1.0, self.smoothing)
        return torch.cat([mixed_images, images[even:]]), torch.cat([mixed_targets, rest])


def build_mixer(config: RunConfig, num_classes: int) -> BatchMixer | None:
    """The batch mixer of this run, or None when neither MixUp nor CutMix is on."""
    _validate(config)  # a negative alpha is an error, not "off"
    return BatchMixer(config, num_classes) if mixing_enabled(config) else None
