"""The training plan: what fine-tunes, at which image size, how fast and for how long,
chosen from measurements of the data instead of one fixed policy.

The loop measures (:class:`Measurements`: the dataset listing and file headers before
training; the head phase's clean train and val top-1 and the first BatchNorm layers' shift
on the way), then :func:`choose_plan` (a pure function of the measurements and the options
the user left unset) decides; the loop applies the :class:`Plan`, logs it with the
measurements behind it and writes both to ``plan.json``, which the report shows as "why
this plan". Every choice has its own flag, and a flag the user sets always wins.

The rules and the measurements that justified them are in docs/performance.md
("The training plan").
"""

from __future__ import annotations

import math
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgcls.config import RunConfig

PLAN_FILE = "plan.json"

# --- thresholds of the rules (docs/performance.md gives the measurements behind each) ---
# A first-layer BatchNorm shift (mean KL, nats, efficientnet_lite0's first 6 BatchNorm
# layers, 256 train images at the planned size) above this: the pixels are unlike the
# pretraining images. Measured 2026-11-30: hymenoptera (ImageNet photos) 0.06;
# cifar10-small 0.18 at 128 px (0.31 upsampled to 224); sign-digits 0.35; mnist-small 0.53.
FAR_SHIFT = 0.2
# Small sources are upsampled by about this factor at most: above it the extra pixels add
# cost (quadratic in the side), not detail: a 28 px digit at 224 px shows the network no
# more than at 112 px, for 4x the compute per step.
UPSCALE = 4
MIN_SIZE = 64  # below this the backbone's last feature map is 2x2 or smaller
SIZE_STEP = 16  # sizes are multiples of this (a stride-32 backbone stays aligned at /2)
# Fine-tuning length: about this many images seen, between the bounds in epochs.
FINETUNE_IMAGES = 8_000
MIN_FINETUNE_EPOCHS, MAX_FINETUNE_EPOCHS = 4, 12
DEFAULT_HEAD_EPOCHS = 8  # on cached features eight head epochs cost about one image pass


@dataclass
class Measurements:
    """What the plan is chosen from. The first group is known before training; the second
    comes from the head phase (None without one)."""

    classes: int
    train_images: int
    smallest_class: int  # images in the smallest training class
    image_side: int | None  # median shorter side of the training images, px (file headers)
    pretrained: bool  # the backbone starts from learned weights
    pretrained_size: int  # the input size the backbone was pretrained at, px
    head_train_top1: float | None = None  # the head's clean train top-1 on frozen features (eval mode)
    head_val_top1: float | None = None  # the head's val top-1 on frozen features
    bn_shift: float | None = None  # first BatchNorm layers: mean KL of the data's statistics from the stored ones
    gray_share: float | None = None  # share of training images whose three channels are equal
    fit_metric: str = "top-1"  # what head_*_top1 measure: top-1, or micro-F1 for multilabel data

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """The choices, each with the rule (or flag) that made it."""

    image_size: int  # eval / feature size, px
    train_size: int  # fine-tuning crop size, px
    head_epochs: int
    finetune: bool
    freeze: str  # --freeze spec for fine-tuning
    bn_eval: bool  # backbone BatchNorm keeps its pretrained statistics while fine-tuning
    backbone_lr: float
    epochs: int  # in all, head phase included
    why: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_plan(m: Measurements, config: RunConfig) -> Plan:
    """The plan for data measured as ``m``; options set in ``config`` (not None, or not
    ``auto`` for ``--finetune``) are kept as they are. Pure: no I/O, no randomness."""
    why: dict[str, str] = {}
    image_size = _image_size(m, config, why)
    train_size = _train_size(image_size, config, why)
    head = _head_epochs(m, config, why)
    finetune = _finetune(m, config, head, why)
    far = _far(m)
    freeze = _freeze(m, config, far, why)
    bn_eval = _bn_eval(m, config, far, why)
    backbone_lr = _backbone_lr(m, config, bn_eval, why)
    epochs = _epochs(m, config, head, finetune, train_size, why)
    return Plan(image_size, train_size, head, finetune, freeze, bn_eval, backbone_lr, epochs, why)


def _user(why: dict, key: str, flag: str, value) -> None:
    why[key] = f"{flag} {value}"


def _far(m: Measurements) -> bool | None:
    """Whether the data is far from the pretraining images; None when unmeasured."""
    return None if m.bn_shift is None else m.bn_shift > FAR_SHIFT


def _image_size(m: Measurements, config: RunConfig, why: dict) -> int:
    """Rule: the pretraining size, unless the images are much smaller: then about UPSCALE
    times their side. Upsampling a 28 px digit to 224 px costs 7x the pixels of 80 px and
    shows the network no more than the 28 px it has."""
    if config.data.image_size is not None:
        _user(why, "image_size", "--image-size", config.data.image_size)
        return config.data.image_size
    if m.image_side is None or m.image_side * UPSCALE >= m.pretrained_size:
        why["image_size"] = (f"the images ({m.image_side} px) are within {UPSCALE}x of the pretraining size"
                             if m.image_side else "image size unknown: the pretraining size")
        return m.pretrained_size
    size = max(MIN_SIZE, min(m.pretrained_size, SIZE_STEP * math.ceil(m.image_side * UPSCALE / SIZE_STEP)))
    why["image_size"] = (f"small images ({m.image_side} px): {UPSCALE}x their side instead of "
                         f"{m.pretrained_size} px")
    return size


def _train_size(image_size: int, config: RunConfig, why: dict) -> int:
    if config.data.train_size is not None:
        _user(why, "train_size", "--train-size", config.data.train_size)
        return config.data.train_size
    why["train_size"] = "the image size"
    return image_size


def _head_epochs(m: Measurements, config: RunConfig, why: dict) -> int:
    """Rule: a head phase on cached features (cheap, and its fit is the main measurement)
    whenever the backbone's features mean something, i.e. it starts pretrained."""
    epochs = config.train.epochs
    if config.train.head_epochs is not None:
        _user(why, "head_epochs", "--head-epochs", config.train.head_epochs)
        return min(config.train.head_epochs, epochs) if epochs is not None else config.train.head_epochs
    if not m.pretrained:
        why["head_epochs"] = "random backbone weights: frozen features mean nothing"
        return 0
    why["head_epochs"] = "pretrained backbone: the head learns on cached features first"
    return min(DEFAULT_HEAD_EPOCHS, epochs) if epochs is not None else DEFAULT_HEAD_EPOCHS


def _finetune(m: Measurements, config: RunConfig, head_epochs: int, why: dict) -> bool:
    """Rule: fine-tune unless the frozen features already do the job, i.e. the head fits
    the training images (clean train top-1 >= --finetune-below) on data near the
    pretraining images. Far from them (a large BatchNorm shift) a head that fits still
    generalises worse than a fine-tuned backbone. (Measured: far data fine-tuned this way
    beat the old fixed policy, mnist-small 0.944 against 0.903 test top-1;
    docs/performance.md.)"""
    cfg = config.train
    if cfg.finetune != "auto":
        _user(why, "finetune", "--finetune", cfg.finetune)
        return cfg.finetune == "always"
    if head_epochs == 0 or m.head_train_top1 is None:
        why["finetune"] = "no head phase to judge the frozen features by"
        return True
    fit, far, measure = m.head_train_top1, _far(m), m.fit_metric
    if fit < cfg.finetune_below:
        why["finetune"] = (f"the head underfits the frozen features (train {measure} {fit:.3f} < --finetune-below "
                           f"{cfg.finetune_below:g})")
        return True
    if far:
        why["finetune"] = (f"the head fits (train {measure} {fit:.3f}) but the data is far from the pretraining "
                           f"images (BatchNorm shift {m.bn_shift:.2f} > {FAR_SHIFT:g})")
        return True
    why["finetune"] = (f"the head already fits the frozen features (train {measure} {fit:.3f} >= --finetune-below "
                       f"{cfg.finetune_below:g}){' on data near the pretraining images' if far is False else ''}: "
                       "fine-tuning would add variance, not remove it; --finetune always overrides")
    return False


def _freeze(m: Measurements, config: RunConfig, far: bool | None, why: dict) -> str:
    if config.model.freeze is not None:
        _user(why, "freeze", "--freeze", config.model.freeze)
        return config.model.freeze
    why["freeze"] = "the whole backbone adapts"
    return "none"


def _bn_eval(m: Measurements, config: RunConfig, far: bool | None, why: dict) -> bool:
    """Rule: BatchNorm keeps its pretrained statistics on data near the pretraining images
    and adapts to data far from them. With kept statistics a far domain's activations
    drift under a backbone that must move; near data keeps them (cifar10-small: adapting
    them dropped the first fine-tuning epoch from 68% to 61% val; docs/performance.md)."""
    if config.train.bn_eval is not None:
        _user(why, "bn_eval", "--bn-eval" if config.train.bn_eval else "--no-bn-eval", "")
        return config.train.bn_eval
    if not m.pretrained:
        why["bn_eval"] = "random weights have no statistics to keep"
        return False
    if far is None:
        why["bn_eval"] = "no shift measured: the pretrained statistics are kept"
        return True
    if far:
        why["bn_eval"] = f"far data (BatchNorm shift {m.bn_shift:.2f} > {FAR_SHIFT:g}): the statistics adapt"
        return False
    why["bn_eval"] = f"near data (BatchNorm shift {m.bn_shift:.2f} <= {FAR_SHIFT:g}): pretrained statistics kept"
    return True


def _backbone_lr(m: Measurements, config: RunConfig, bn_eval: bool, why: dict) -> float:
    """Rule: adapted BatchNorm goes with the full rate, kept statistics with a tenth. With
    adapting statistics at lr/10 the features moved under the head faster than the backbone
    learned. The pair (adapted statistics, full rate) is what the far-data rows of
    docs/performance.md measured."""
    cfg = config.train
    if cfg.backbone_lr is not None:
        _user(why, "backbone_lr", "--backbone-lr", f"{cfg.backbone_lr:g}")
        return cfg.backbone_lr
    lr = float(cfg.lr)
    if not bn_eval or not m.pretrained:
        why["backbone_lr"] = "the full --lr: the backbone must move" if m.pretrained else "the full --lr: random weights"
        return lr
    why["backbone_lr"] = "--lr / 10: a pretrained backbone with kept statistics is nudged"
    return lr / 10


def _epochs(m: Measurements, config: RunConfig, head_epochs: int, finetune: bool, train_size: int,
            why: dict) -> int:
    if config.train.epochs is not None:
        _user(why, "epochs", "--epochs", config.train.epochs)
        return config.train.epochs
    if not finetune:
        why["epochs"] = "head phase only"
        return max(head_epochs, 1)
    ft = max(MIN_FINETUNE_EPOCHS, min(MAX_FINETUNE_EPOCHS, math.ceil(FINETUNE_IMAGES / max(m.train_images, 1))))
    why["epochs"] = f"{ft} fine-tuning epochs: about {FINETUNE_IMAGES:,} images seen, {m.train_images:,} per epoch"
    return head_epochs + ft


# Options the plan chooses when the user leaves them unset (config key -> the unset value).
PLAN_OPTIONS = {"data.image_size": None, "data.train_size": None, "train.head_epochs": None, "train.epochs": None,
                "train.finetune": "auto", "model.freeze": None, "train.bn_eval": None, "train.backbone_lr": None}


def asked_options(config: RunConfig) -> dict:
    """The plan's options as the user gave them (the unset value where not given)."""
    return {key: config.value(key) for key in PLAN_OPTIONS}


def with_asked(config: RunConfig, asked: dict) -> RunConfig:
    """A copy of ``config`` with the plan's options back as the user gave them, so that
    :func:`choose_plan` tells what the user set from what an earlier plan filled in."""
    return config.with_overrides(asked)


@dataclass
class PlanRecord:
    """What ``plan.json`` holds: the options as asked, the measurements, the plan, and how
    far the run has got (``start``: before training, sizes and length provisional;
    ``finetune`` or ``head only``: decided after the head phase)."""

    asked: dict
    measurements: Measurements | None = None
    plan: Plan | None = None
    stage: str = "start"

    def to_dict(self) -> dict:
        return {"stage": self.stage, "asked": self.asked,
                "measurements": self.measurements.to_dict() if self.measurements else None,
                "plan": self.plan.to_dict() if self.plan else None}

    @classmethod
    def from_dict(cls, values: dict) -> "PlanRecord":
        m, p = values.get("measurements"), values.get("plan")
        return cls(asked=dict(values["asked"]), measurements=Measurements(**m) if m else None,
                   plan=Plan(**p) if p else None, stage=values.get("stage", "start"))


def describe_plan(record: PlanRecord) -> list[str]:
    """The plan and the measurements behind it, as log lines."""
    m, p = record.measurements, record.plan
    if m is None or p is None:
        return []
    seen = [f"{m.classes} classes", f"{m.train_images:,} train images (smallest class {m.smallest_class})",
            f"median side {m.image_side} px" if m.image_side else "image side unknown"]
    if m.head_train_top1 is not None:
        seen.append(f"head on frozen features: train {m.fit_metric} {m.head_train_top1:.3f}"
                    + (f", val {m.head_val_top1:.3f}" if m.head_val_top1 is not None else ""))
    if m.bn_shift is not None:
        far = m.bn_shift > FAR_SHIFT
        seen.append(f"BatchNorm shift {m.bn_shift:.3f} ({'far: above' if far else 'near: at most'} {FAR_SHIFT:g})")
    if m.gray_share is not None:
        seen.append(f"grayscale {m.gray_share:.0%}")
    lines = ["plan: measured " + "; ".join(seen)]
    for key in ("image_size", "train_size", "head_epochs", "finetune", "freeze", "bn_eval", "backbone_lr", "epochs"):
        value = getattr(p, key)
        shown = f"{value:g}" if isinstance(value, float) else value
        lines.append(f"plan: {key} = {shown}  ({p.why.get(key, '')})")
    return lines


def read_plan(run_dir: Path) -> PlanRecord | None:
    """The run folder's ``plan.json``; None when there is none (a run from before plans)."""
    path = Path(run_dir) / PLAN_FILE
    return PlanRecord.from_dict(json.loads(path.read_text())) if path.is_file() else None


def reconcile_resumed(asked: RunConfig, saved: RunConfig, run_dir: Path) -> RunConfig:
    """The config to resume with, where the plan's choices are concerned: an option the
    plan chose (unset by the user) takes the value the last saved epoch trained with, when
    the resumed config leaves it unset or holds the plan's later choice (config.yaml is
    rewritten when fine-tuning is planned, one epoch before a checkpoint carries it). A
    value the user sets on resume is left for the resume check to judge."""
    record = read_plan(run_dir)
    if record is None or record.plan is None:
        return asked
    kept = {}
    for key, unset in PLAN_OPTIONS.items():
        if key == "train.epochs" or record.asked.get(key, unset) != unset:
            continue  # --epochs may change on resume; a user's own value is judged as given
        now, then = asked.value(key), saved.value(key)
        if now != then and (now == unset or now == getattr(record.plan, key.split(".")[1], unset)):
            kept[key] = then
    return asked.with_overrides(kept)
