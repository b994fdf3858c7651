"""The cut-point cache: partial fine-tuning on the frozen blocks' activations, computed
once per augmented view.

While the first blocks of a backbone are frozen, their output for an image depends only on
the image. Fine-tuning epoch ``start + v`` computes it for the augmented view of that epoch
(the train loader's own crops, flips and jitter, seeded by (seed, epoch, image)) and keeps
it; later epochs reuse the ``views`` kept views in turn, in their own shuffled order, and
run only the trainable rest of the network: no decoding, cropping or frozen forward pass.

Equivalence: with at least as many views as fine-tuning epochs every epoch sees exactly the
images the uncached loader gives it, in the same order and batches, so the weights match
those of recomputing the frozen blocks (tests/test_plan_cutcache.py); with fewer views the
reused epochs match recomputing the frozen blocks on the same views (``keep=False``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from imgcls.data.loaders import DeviceLoader, make_loader
from imgcls.models.backbones import starts_pretrained
from imgcls.models.classifier import train_mode
from imgcls.models.cutpoint import cut_backbone
from imgcls.runtime import autocast, infer, log, progress


@dataclass
class CutCache:
    prefix: nn.Module  # the frozen blocks (eval mode: deterministic)
    suffix: nn.Module  # the rest of the backbone, which trains
    start: int  # the first fine-tuning epoch: view v is the augmentation of epoch start + v
    views: int
    keep: bool = True  # False: recompute the frozen blocks every epoch (the reference the cache must match)
    store: dict[int, torch.Tensor] = field(default_factory=dict)  # view -> (n_train, C, H, W)
    targets: torch.Tensor | None = None  # (n_train,), -1 where the image could not be decoded
    bad: list = field(default_factory=list)


def make_cut_cache(model, start: int, views: int, keep: bool = True) -> CutCache | None:
    """A cut-point cache for ``model`` as currently frozen; None when no backbone block is
    frozen, all are, or the architecture cannot be cut (models/cutpoint.py)."""
    blocks = model.backbone_blocks()
    frozen = 0
    while frozen < len(blocks) and not any(p.requires_grad for p in blocks[frozen]):
        frozen += 1
    if any(p.requires_grad for block in blocks[:frozen] for p in block):
        return None
    parts = cut_backbone(model.backbone, blocks, frozen)
    if parts is None:
        return None
    return CutCache(parts[0], parts[1], start, max(views, 1), keep)


@torch.no_grad()
def view_bytes(cut: CutCache, images: int, size: int, device) -> int:
    """Bytes one view takes: ``images`` prefix outputs for ``size`` px crops (float32)."""
    cut.prefix.eval()
    sample = cut.prefix(torch.zeros(1, 3, size, size, device=device))
    return images * sample.numel() * 4


@torch.no_grad()
def _fill(trainer, cut: CutCache, view: int) -> torch.Tensor:
    """The frozen blocks' output for every train image under the view's augmentation."""
    train = trainer.loaders["train"]
    loader = make_loader(train.dataset, train.batch_size, train=False, seed=trainer.config.train.seed,
                         workers=train.num_workers, collate_fn=train.collate_fn)
    loader.sampler.shuffle = False  # dataset order; each image's seed is that of epoch start + view
    loader.sampler.set_epoch(cut.start + view)
    cut.prefix.eval()
    size = len(train.dataset)
    acts, targets = None, torch.full((size,), -1, dtype=torch.long)
    for batch in progress(DeviceLoader(loader, trainer.device, trainer.memory_format),
                          desc=f"frozen blocks (view {view + 1}/{cut.views})", total=len(loader)):
        cut.bad.extend(batch.bad)
        if not len(batch):
            continue
        with autocast(trainer.device, trainer.amp):
            out = infer(cut.prefix, batch.images).float()
        if acts is None:
            acts = torch.zeros((size, *out.shape[1:]), device=out.device).contiguous(memory_format=trainer.memory_format)
        acts[batch.indices.to(out.device)] = out
        targets[batch.indices] = batch.targets.cpu()
    cut.targets = targets
    return acts


def _view(trainer, cut: CutCache, view: int) -> torch.Tensor:
    if view in cut.store:
        return cut.store[view]
    acts = _fill(trainer, cut, view)
    if cut.keep:
        cut.store[view] = acts
        log.info("cut-point cache: view %d of %d kept, %d images x %s activations (%.0f MB)", view + 1, cut.views,
                 len(acts), tuple(acts.shape[1:]), acts.numel() * acts.element_size() / 1e6)
    return acts


def _batches(trainer, epoch: int, targets: torch.Tensor) -> list[torch.Tensor]:
    """The train loader's batches of epoch ``epoch`` as index lists: its sampler's order,
    batch size and last-batch rule, without the images that could not be decoded."""
    loader = trainer.loaders["train"]
    loader.sampler.set_epoch(epoch)
    order = torch.tensor([index for index, _ in loader.sampler], dtype=torch.long)
    size = loader.batch_size
    count = len(order) // size if loader.drop_last else -(-len(order) // size)
    batches = [order[i * size:(i + 1) * size] for i in range(count)]
    return [index[targets[index] >= 0] for index in batches]


def train_cut_epoch(trainer, cut: CutCache, epoch: int, optimizer_step) -> dict:
    """One fine-tuning epoch of the layers after the cut, on view ``(epoch - start) % views``
    of the cached activations; the same steps as the image loader's epoch."""
    model, cfg = trainer.model, trainer.config.train
    view = (epoch - cut.start) % cut.views
    acts = _view(trainer, cut, view)
    train_mode(model, backbone_bn_eval=bool(cfg.bn_eval) and starts_pretrained(trainer.config.model))
    cut.prefix.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    trainer.optimizer.zero_grad(set_to_none=True)
    for index in progress(_batches(trainer, epoch, cut.targets), desc=f"epoch {epoch + 1}/{cfg.epochs} (cut cache)"):
        if len(index) < 2:  # BatchNorm cannot train on one image: the loader's rule
            continue
        x, y = acts[index.to(acts.device)], cut.targets[index].to(trainer.device)
        with autocast(trainer.device, trainer.amp):
            logits = model.head(cut.suffix(x))
            loss = trainer.criterion(logits, y) + model.head.l2_penalty()
        trainer.scaler.scale(loss).backward()
        optimizer_step(trainer)
        loss_sum += loss.item() * len(index)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(index)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
