"""Grad-CAM explanations: which part of an image made the model choose a class.

The CAM computation is ``pytorch-grad-cam`` (PyPI ``grad-cam``); this module only picks the
layer to explain for any timm backbone, reshapes transformer tokens into a grid, and draws
overlays on the same centre crop the model saw.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.sources import list_images
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.inference.classifier import Classifier
from imgcls.options import ExplainCommand

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TargetLayer:
    name: str
    module: nn.Module
    reshape: ReshapeTransform | None  # activations -> (N, C, H, W) for non-NCHW layers


def _trace_outputs(backbone: nn.Module, image_size: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) for every sub-module, in the order the outputs appear;
    a container's output comes after those of its children."""
    records: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, module in backbone.named_modules():
        if not name:
            continue

        def hook(mod, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                records.append((name, mod, tuple(output.shape)))

        hooks.append(module.register_forward_hook(hook))
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in hooks:
            handle.remove()
        backbone.train(was_training)
    return records


def _token_grid(backbone: nn.Module, tokens: int) -> tuple[int, int, int]:
    """(prefix tokens, grid height, grid width) of a transformer's token sequence."""
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if grid is not None and tokens >= grid[0] * grid[1]:
        return tokens - grid[0] * grid[1], int(grid[0]), int(grid[1])
    side = math.isqrt(tokens)
    return tokens - side * side, side, side


def _tokens_to_grid(prefix: int, height: int, width: int) -> ReshapeTransform:
    def reshape(x: torch.Tensor) -> torch.Tensor:
        x = x[:, prefix:, :]
        return x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def find_target_layer(backbone: nn.Module, image_size: int) -> TargetLayer:
    """The layer whose activations Grad-CAM weighs, chosen from one traced forward pass.

    CNNs: the last module with a spatial output of at least 2x2 (the final feature map, or
    the last one still spatial when a small input shrinks it to 1x1). Vision transformers:
    the output of the second-to-last block, i.e. the input of the last one, because with a
    class-token head only the class token's final output reaches the logits; the patch
    tokens get gradients through the last block's attention. Models with channels-last
    feature maps (Swin) get a permute.
    """
    records = _trace_outputs(backbone, image_size)
    features = getattr(backbone, "num_features", None)
    # The last output that is not yet pooled tells the kind: (N, tokens, C) for transformers.
    unpooled = [r for r in records if len(r[2]) >= 3]
    if unpooled and len(unpooled[-1][2]) == 3:
        blocks = [r for r in unpooled if len(r[2]) == 3 and re.search(r"\.\d+$", r[0])]
        if not blocks:
            raise ValueError(f"{type(backbone).__name__}: no transformer blocks found for Grad-CAM")
        depth = min(name.count(".") for name, _, _ in blocks)
        blocks = [r for r in blocks if r[0].count(".") == depth]
        name, module, shape = blocks[-2] if len(blocks) >= 2 else blocks[-1]
        return TargetLayer(name, module, _tokens_to_grid(*_token_grid(backbone, shape[1])))
    spatial = [r for r in records if len(r[2]) == 4]
    if not spatial:
        raise ValueError(f"{type(backbone).__name__}: no layer with a spatial or token output for Grad-CAM")
    roomy = [r for r in spatial if _spatial_side(r[2], features) >= 2]
    name, module, shape = (roomy or spatial)[-1]
    channels_last = features is not None and shape[-1] == features and shape[1] != features
    return TargetLayer(name, module, _nhwc_to_nchw if channels_last else None)


def _spatial_side(shape: tuple[int, ...], features: int | None) -> int:
    if features is not None and shape[-1] == features and shape[1] != features:
        return min(shape[1], shape[2])
    return min(shape[2], shape[3])


def display_crop(image: Image.Image, preprocessing: Preprocessing, size: int) -> Image.Image:
    """The centre crop the model sees (same resize-then-crop geometry), at ``size`` pixels,
    so an overlay lines up with what was classified whatever the training resolution."""
    resize = max(size, round(size * preprocessing.resize_size / preprocessing.image_size))
    transform = T.Compose([T.Resize(resize, interpolation=InterpolationMode.BICUBIC, antialias=True),
                           T.CenterCrop(size)])
    return transform(image.convert("RGB"))


def overlay(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a [0, 1] heatmap (any size) onto ``image`` with the jet colour map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    mask = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(image.size, Image.BILINEAR)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    cam = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    return Image.fromarray(show_cam_on_image(rgb, cam, use_rgb=True, image_weight=1.0 - alpha))


class GradCamExplainer:
    """Grad-CAM heatmaps for chosen classes of a batch of PIL images."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing, device: torch.device,
                 layer: TargetLayer | None = None):
        self.model = model
        self.preprocessing = preprocessing
        self.device = device
        self.transform = eval_transform(preprocessing)
        self.layer = layer or find_target_layer(model.backbone, preprocessing.image_size)

    def heatmaps(self, images: list[Image.Image], class_indices: list[int], batch_size: int = 16) -> np.ndarray:
        """(n, H, W) maps in [0, 1] at the model's input size, one per (image, class)."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if len(images) != len(class_indices):
            raise ValueError("heatmaps: one class index per image is needed")
        maps = []
        with GradCAM(model=self.model, target_layers=[self.layer.module],
                     reshape_transform=self.layer.reshape) as cam:
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                batch = torch.stack([self.transform(image.convert("RGB")) for image in chunk]).to(self.device)
                targets = [ClassifierOutputTarget(int(c)) for c in class_indices[start:start + batch_size]]
                maps.append(cam(input_tensor=batch, targets=targets))
        self.model.eval()
        size = self.preprocessing.image_size
        return np.concatenate(maps) if maps else np.zeros((0, size, size), np.float32)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "class"


def explain_files(classifier: Classifier, paths: list[str | Path], out_dir: str | Path,
                  topk: int = ExplainCommand.topk, size: int = ExplainCommand.size, alpha: float = 0.5) -> list[dict]:
    """``imgcls explain``: one Grad-CAM overlay PNG per image and top-k class.

    Returns one row per (image, rank): path, rank, label, probability and the PNG written,
    or one row with ``error`` for an image that could not be decoded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    explainer = GradCamExplainer(classifier.torch_module, classifier.preprocessing, classifier.device)
    k = max(1, min(topk, len(classifier.classes)))
    rows, used_names = [], set()
    for path in list_images(paths):
        try:
            image = load_rgb(path)
        except (ImageDecodeError, OSError) as err:
            rows.append({"path": str(path), "rank": None, "label": "", "probability": float("nan"),
                         "file": None, "error": str(err)})
            continue
        probs = classifier.predict_proba([image])[0]
        top = [int(i) for i in np.argsort(-probs)[:k]]
        maps = explainer.heatmaps([image] * k, top)
        crop = display_crop(image, classifier.preprocessing, size)
        stem = _unique(_safe_name(path.stem), used_names)
        for rank, (index, heatmap) in enumerate(zip(top, maps), start=1):
            label = classifier.classes[index]
            target = out / f"{stem}_top{rank}_{_safe_name(label)}.png"
            overlay(crop, heatmap, alpha).save(target)
            rows.append({"path": str(path), "rank": rank, "label": label, "probability": float(probs[index]),
                         "file": str(target), "error": ""})
    return rows


def _unique(stem: str, used: set[str]) -> str:
    """Two inputs called ``img.jpg`` in different folders must not overwrite each other."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate
