"""Optimiser with separate backbone/head learning rates, and its LR schedule (both from timm)."""

from __future__ import annotations

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from imgcls.config import OPTIMIZERS, SCHEDULERS, TrainConfig
from imgcls.models.classifier import ImageClassifier



def param_groups(model: ImageClassifier, cfg: TrainConfig, from_scratch: bool = False) -> list[dict]:
    """Four groups: {backbone, head} x {decayed weights, biases and norms (no decay)}.

    Every parameter is in a group from the start, frozen or not, so the optimiser state
    keeps one layout across phases and an exact resume can load it (frozen parameters
    have no gradient, and torch's optimisers skip them).
    """
    # A pretrained backbone is nudged (lr / 10); one learning from random weights needs the
    # full rate like the head (a hand-built CNN: 48.4% val on cifar10-small at lr / 10,
    # 51.1% at lr).
    backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr if from_scratch else cfg.lr / 10
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


def create_optimizer(model: ImageClassifier, cfg: TrainConfig, from_scratch: bool = False):
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"--optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    return create_optimizer_v2(param_groups(model, cfg, from_scratch), opt=cfg.optimizer, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, **extra)


def plan_schedule(cfg: TrainConfig, head_epochs: int = 0, planned: list[int] | None = None) -> list[int]:
    """Epochs of each learning-rate segment.

    A new run: one segment, or two with a head phase under cosine (the cosine restarts when
    fine-tuning begins, as Keras users recompile for phase two: one long cosine would leave
    the backbone only the tail of the schedule). A resumed run keeps the segments it
    ``planned``; epochs added on resume (``--epochs`` above the plan) form one more segment,
    a new cosine from the base rates without warm-up, so that they learn instead of running
    at the end of the old cosine's rate (zero).
    """
    if planned:
        extra = cfg.epochs - sum(planned)
        return list(planned) + ([extra] if extra > 0 else [])
    if cfg.scheduler == "cosine" and 0 < head_epochs < cfg.epochs:
        return [head_epochs, cfg.epochs - head_epochs]
    return [cfg.epochs]


def create_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int, segments: list[int]):
    """A timm scheduler stepped per update (cosine) or per epoch (plateau); None for 'none'.

    ``segments`` comes from :func:`plan_schedule`; a cosine gets one timm schedule per segment.
    """
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {cfg.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "plateau":
        return _timm_scheduler(optimizer, cfg, steps_per_epoch, sum(segments), cfg.warmup_epochs)
    # Warm-up only where the run starts (and where fine-tuning starts): not for added epochs.
    warmups = [cfg.warmup_epochs if i < 2 else 0.0 for i in range(len(segments))]
    return SegmentedScheduler([_timm_scheduler(optimizer, cfg, steps_per_epoch, epochs, warmup)
                               for epochs, warmup in zip(segments, warmups)],
                              [epochs * steps_per_epoch for epochs in segments])


def _timm_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int, epochs: int, warmup_epochs: float):
    mode = "min" if "loss" in cfg.monitor else "max"
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.scheduler,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=cfg.lr * 0.01,
        min_lr=0.0,
        decay_rate=cfg.plateau_factor,
        patience_epochs=cfg.plateau_patience,
        plateau_mode=mode,
        step_on_epochs=cfg.scheduler == "plateau",
        updates_per_epoch=steps_per_epoch,
    )
    return scheduler


class SegmentedScheduler:
    """timm schedules back to back, each from its own start: the first for ``lengths[0]``
    updates, then the next, and so on. timm's schedules are functions of the update count,
    so the state to save is only that count, which the training loop keeps."""

    def __init__(self, phases: list, lengths: list[int]):
        self.phases, self.lengths = phases, lengths
        self.step_update(0)

    def step_update(self, num_updates: int) -> None:
        # The update that ends a segment still belongs to it, so the segment's last epoch
        # logs the rate it ended with, not the next segment's starting rate.
        start = 0
        for phase, length in zip(self.phases, self.lengths):
            if num_updates <= start + length or phase is self.phases[-1]:
                phase.step_update(num_updates - start)
                return
            start += length

    def state_dict(self) -> dict:
        return {"phases": [phase.state_dict() for phase in self.phases], "lengths": list(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        # Segments added on resume have no saved state: they keep their fresh one.
        for phase, saved in zip(self.phases, state["phases"]):
            phase.load_state_dict(saved)
