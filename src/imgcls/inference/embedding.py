"""Pooled backbone features of image files: what the doctor compares and probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.config import DataConfig, ModelConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.loaders import DeviceLoader, make_loader
from imgcls.data.transforms import eval_transform
from imgcls.models.classifier import build_model
from imgcls.runtime import memory_format_for, progress, select_device


class BackboneEmbedder:
    """``embedder(paths) -> (vectors, decoded)``: L2-normalised (n_decoded, d) float32 features
    of the files that decoded (eval preprocessing), and the (n,) bool mask of which did.

    A backbone without pretrained weights (tests) is initialised from seed 0, so the same
    files give the same features every run.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", pretrained: bool = True, image_size: int | None = None,
                 batch_size: int = 64, workers: int | None = None, device: str = "auto"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, self.preprocessing = build_model(ModelConfig(name=backbone, pretrained=pretrained),
                                                    DataConfig(image_size=image_size), num_classes=1)
        self.name, self.batch_size, self.workers = backbone, batch_size, workers
        self.device = select_device(device)
        self.net = model.backbone.eval().to(self.device, memory_format=memory_format_for(self.device))

    @torch.no_grad()
    def __call__(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        dataset = ImageDataset(paths, None, eval_transform(self.preprocessing),
                               draft_size=self.preprocessing.resize_size)
        loader = make_loader(dataset, self.batch_size, train=False, workers=self.workers)
        vectors = np.zeros((len(paths), self.net.num_features), dtype=np.float32)
        decoded = np.zeros(len(paths), dtype=bool)
        device_loader = DeviceLoader(loader, self.device, memory_format_for(self.device))
        for batch in progress(device_loader, desc=f"{self.name} features", total=len(loader)):
            if len(batch):
                vectors[batch.indices.numpy()] = self.net(batch.images).float().cpu().numpy()
                decoded[batch.indices.numpy()] = True
        vectors = vectors[decoded]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, decoded
