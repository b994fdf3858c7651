"""Test-time augmentation: the logits of several views of each image, averaged.

Views are made from the preprocessed batch (the eval centre crop), so they work the same
for every backend, ONNX Runtime included:
  * ``flip``       - the image and its mirror (2 views);
  * ``flip+crops`` - those two plus the four corner crops covering 90% of each side,
    resized back to the input size (6 views), the "corner crops" of the ten-crop
    evaluation (Krizhevsky et al., 2012) without their mirrors.
Logits, not probabilities, are averaged (the issue's and timm's choice): the temperature
and the open-set scores then apply to one set of logits as they do without TTA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgcls.config import TTA_MODES

CROP_SHARE = 0.9


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a preprocessed batch (N, 3, H, W) for ``mode`` (see the module docstring)."""
    if mode not in TTA_MODES:
        raise ValueError(f"--tta {mode!r}: choose one of {', '.join(TTA_MODES)}")
    views = [images]
    if mode in ("flip", "flip+crops"):
        views.append(images.flip(-1))
    if mode == "flip+crops":
        height, width = images.shape[-2:]
        h, w = max(1, round(height * CROP_SHARE)), max(1, round(width * CROP_SHARE))
        for top, left in ((0, 0), (0, width - w), (height - h, 0), (height - h, width - w)):
            crop = images[..., top:top + h, left:left + w]
            views.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
    return views


class TtaBackend:
    """A backend whose logits are the mean over the TTA views of ``backend``'s logits
    (per level for a hierarchical model); otherwise it behaves as ``backend``."""

    def __init__(self, backend, mode: str):
        if mode not in TTA_MODES or mode == "none":
            raise ValueError(f"TtaBackend needs a TTA mode, got {mode!r}")
        self.backend, self.mode = backend, mode
        self.name = backend.name
        self.device = backend.device
        self.memory_format = backend.memory_format
        self.hierarchical = backend.hierarchical
        self.chunked_inference = backend.chunked_inference

    @property
    def module(self):
        return getattr(self.backend, "module", None)

    def __call__(self, images: torch.Tensor, levels: bool = False):
        outputs = [self.backend(view, levels=levels) if levels else self.backend(view)
                   for view in tta_views(images, self.mode)]
        if levels:
            return tuple(torch.stack([out[i].float() for out in outputs]).mean(0) for i in range(2))
        return torch.stack([out.float() for out in outputs]).mean(0)
