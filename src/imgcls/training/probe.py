"""Cheap measurements of how far a dataset is from the backbone's pretraining.

They feed the training plan (:mod:`imgcls.training.plan`) and cost next to nothing:
the image sides come from file headers; the BatchNorm shift and the grayscale share are
taken from the batches of the feature extraction the head phase runs anyway.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imgcls.config import RunConfig
from imgcls.data.images import load_rgb
from imgcls.data.loaders import DeviceLoader
from imgcls.data.sources import DatasetSplits
from imgcls.models.backbones import create_backbone, starts_pretrained
from imgcls.runtime import autocast, infer
from imgcls.training.plan import Measurements

HEADER_SAMPLE = 400  # image sides are read from this many headers at most, spread over the list
GRAY_TOLERANCE = 2 / 255  # channels closer than this (on a 0..1 scale) count as equal


def median_short_side(paths: list[Path], sample: int = HEADER_SAMPLE) -> int | None:
    """Median shorter side, in pixels, of the images at ``paths`` (read from the headers of at
    most ``sample`` files spread evenly over the list); None when none can be read."""
    if not paths:
        return None
    step = max(len(paths) // sample, 1)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sides:  # headers PIL cannot read (e.g. formats behind a plugin): decode a few
        for path in paths[:8]:
            try:
                sides.append(min(load_rgb(path).size))
            except Exception:  # noqa: BLE001 - any undecodable file just gives no side
                continue
    return int(statistics.median(sides)) if sides else None


def gray_count(images: torch.Tensor, mean, std) -> int:
    """How many of the normalised ``images`` (N, 3, H, W) have three equal channels once the
    normalisation (``mean``, ``std`` per channel) is undone: grayscale pictures stored as RGB."""
    if images.shape[1] != 3 or not len(images):
        return 0
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    pixels = images * s + m
    spread = (pixels.amax(1) - pixels.amin(1)).flatten(1).amax(1)
    return int((spread <= GRAY_TOLERANCE).sum())


class BatchNormShift:
    """Distance between the inputs a backbone's first BatchNorm layers see on this data and
    the running statistics they stored in pretraining.

    Used as a context manager around eval-mode forward passes: forward pre-hooks on the first
    ``layers`` BatchNorm modules (in module order: the stem first) accumulate each channel's
    mean and variance over every pixel of every image. :meth:`kl` is then, per layer, the
    mean over channels of KL(N(data mean, data var) || N(running mean, running var)) in nats,
    the divergence of the data's per-channel Gaussian from the stored one (0: the data looks
    like the pretraining data to that layer). The first layers see low-level statistics
    (colour, contrast, texture, scale), so a large value means pixels unlike the pretraining
    images, before any question of classes.
    """

    def __init__(self, backbone: nn.Module, layers: int = 6):
        self.modules = [m for m in backbone.modules() if isinstance(m, _BatchNorm) and m.running_var is not None]
        self.modules = self.modules[:layers]
        self.sums: list[torch.Tensor | None] = [None] * len(self.modules)
        self.squares: list[torch.Tensor | None] = [None] * len(self.modules)
        self.counts = [0] * len(self.modules)
        self.handles: list = []

    def __enter__(self) -> "BatchNormShift":
        for i, module in enumerate(self.modules):
            self.handles.append(module.register_forward_pre_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, i: int):
        def hook(module, inputs):
            x = inputs[0].detach().float()
            dims = [d for d in range(x.dim()) if d != 1]
            s, q = x.sum(dims).cpu(), (x * x).sum(dims).cpu()
            self.sums[i] = s if self.sums[i] is None else self.sums[i] + s
            self.squares[i] = q if self.squares[i] is None else self.squares[i] + q
            self.counts[i] += x.numel() // x.shape[1]
        return hook

    def kl(self) -> list[float]:
        """Per probed layer, the channel-mean KL divergence (nats); empty before any forward."""
        out = []
        for module, s, q, n in zip(self.modules, self.sums, self.squares, self.counts):
            if s is None or n == 0:
                continue
            mean = s / n
            var = (q / n - mean * mean).clamp_min(0) + module.eps
            ref_mean, ref_var = module.running_mean.float().cpu(), module.running_var.float().cpu() + module.eps
            kl = 0.5 * (var / ref_var + (mean - ref_mean) ** 2 / ref_var - 1 + torch.log(ref_var / var))
            out.append(float(kl.mean()))
        return out

    def shift(self) -> float | None:
        """The mean of :meth:`kl` over the probed layers; None when nothing was measured."""
        values = self.kl()
        return sum(values) / len(values) if values else None


class DomainProbe:
    """The measurements one clean pass of a frozen backbone over the training images gives
    for free: the :class:`BatchNormShift` of its first layers and the share of grayscale
    images. A context manager around the pass; :meth:`observe` sees each batch's images."""

    def __init__(self, backbone: nn.Module, mean, std, layers: int = 6):
        self.bn = BatchNormShift(backbone, layers)
        self.mean, self.std = mean, std
        self.images = self.gray = 0

    def __enter__(self) -> "DomainProbe":
        self.bn.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bn.__exit__(*exc)

    def observe(self, images: torch.Tensor) -> None:
        self.images += len(images)
        self.gray += gray_count(images, self.mean, self.std)

    @property
    def gray_share(self) -> float | None:
        return self.gray / self.images if self.images else None

    @property
    def bn_shift(self) -> float | None:
        return self.bn.shift()


def measure_dataset(config: RunConfig, data: DatasetSplits) -> Measurements:
    """What is known before training: the listing, the image sides from file headers, and
    the backbone's pretraining size."""
    counts = data.counts("train")
    paths = [sample.path for sample in data.splits["train"]]
    return Measurements(classes=len(data.classes), train_images=len(paths),
                        smallest_class=min(counts.values()) if counts else 0,
                        image_side=median_short_side(paths), pretrained=starts_pretrained(config.model),
                        pretrained_size=pretrained_input_size(config))


def pretrained_input_size(config: RunConfig) -> int:
    """The square input size the backbone was pretrained at (timm's data config), px."""
    _, data_config = create_backbone(config.model.name, pretrained=False)
    return int(data_config["input_size"][-1])


@torch.no_grad()
def probe_images(backbone: nn.Module, loader, device, amp, memory_format, mean, std, limit: int = 256) -> DomainProbe:
    """A :class:`DomainProbe` over the first ``limit`` images of an eval-transform ``loader``
    (for runs without the head phase's feature pass, which measures for free)."""
    was_training = backbone.training
    backbone.eval()
    probe = DomainProbe(backbone, mean, std)
    for batch in DeviceLoader(loader, device, memory_format):
        if len(batch):
            probe.observe(batch.images)
            with autocast(device, amp), probe:
                infer(backbone, batch.images)
        if probe.images >= limit:
            break
    backbone.train(was_training)
    return probe
