"""Optimiser with separate backbone/head learning rates, and its LR schedule (both from timm)."""

from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from imgcls.config import TrainConfig
from imgcls.models.classifier import ImageClassifier

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")


def param_groups(model: ImageClassifier, cfg: TrainConfig) -> list[dict]:
    """Four groups: {backbone, head} x {decayed weights, biases and norms (no decay)}.

    Every parameter is in a group from the start, frozen or not, so the optimiser state
    keeps one layout across phases and an exact resume can load it (frozen parameters
    have no gradient, and torch's optimisers skip them).
    """
    backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr / 10
    groups = []
    for part, module, lr in (("backbone", model.backbone, backbone_lr), ("head", model.head, cfg.lr)):
        decay, no_decay = _split_decay(module)
        groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "part": part})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "part": part})
    return [g for g in groups if g["params"]]


def _split_decay(module: nn.Module) -> tuple[list, list]:
    decay, no_decay = [], []
    for param in module.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return decay, no_decay


def create_optimizer(model: ImageClassifier, cfg: TrainConfig):
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    return create_optimizer_v2(param_groups(model, cfg), opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               **extra)


def create_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A timm scheduler stepped per update (cosine) or per epoch (plateau); None for 'none'."""
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {cfg.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if cfg.scheduler == "none":
        return None
    mode = "min" if "loss" in cfg.monitor else "max"
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr * 0.01,
        min_lr=0.0,
        decay_rate=cfg.plateau_factor,
        patience_epochs=cfg.plateau_patience,
        plateau_mode=mode,
        step_on_epochs=cfg.scheduler == "plateau",
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler
