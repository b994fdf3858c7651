"""The training plan's decision rules, on synthetic measurements (training/plan.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from imgcls.config import RunConfig
from imgcls.training import plan as plans
from imgcls.training.plan import (FAR_SHIFT, Measurements, PlanRecord, asked_options, choose_plan, describe_plan,
                                  read_plan, with_asked)

NEAR, FAR = FAR_SHIFT / 4, FAR_SHIFT * 3


def _measured(**values) -> Measurements:
    base = dict(classes=10, train_images=1000, smallest_class=100, image_side=400, pretrained=True,
                pretrained_size=224)
    base.update(values)
    return Measurements(**base)


def _config(**train) -> RunConfig:
    config = RunConfig()
    for key, value in train.items():
        section = "data" if key in ("image_size", "train_size") else "model" if key == "freeze" else "train"
        setattr(getattr(config, section), key, value)
    return config


@pytest.mark.parametrize("side, expected", [
    (400, 224),  # large photos: the pretraining size
    (56, 224),  # 4x 56 = 224: still the pretraining size
    (28, 112),  # MNIST: 4x its side
    (32, 128),  # CIFAR: 4x its side
    (10, 64),  # never below the smallest useful size
    (None, 224),  # unreadable headers: the pretraining size
])
def test_image_size_follows_small_images(side, expected):
    chosen = choose_plan(_measured(image_side=side), _config())
    assert chosen.image_size == expected and chosen.train_size == expected
    assert chosen.image_size % plans.SIZE_STEP == 0


def test_a_size_the_user_sets_wins():
    chosen = choose_plan(_measured(image_side=28), _config(image_size=200, train_size=160))
    assert (chosen.image_size, chosen.train_size) == (200, 160)
    assert chosen.why["image_size"] == "--image-size 200"


@pytest.mark.parametrize("fit, shift, finetune", [
    (0.80, NEAR, True),  # the head underfits: features lack something
    (0.99, NEAR, False),  # the head fits, near data: the head alone
    (0.99, FAR, True),  # the head fits, far data: fine-tune anyway
    (0.99, None, False),  # no shift measured: today's rule
    (None, None, True),  # no head phase to judge by
])
def test_finetune_decision(fit, shift, finetune):
    chosen = choose_plan(_measured(head_train_top1=fit, bn_shift=shift), _config())
    assert chosen.finetune is finetune
    assert chosen.why["finetune"]


def test_finetune_flag_wins_over_the_measurements():
    assert choose_plan(_measured(head_train_top1=0.5, bn_shift=FAR), _config(finetune="never")).finetune is False
    assert choose_plan(_measured(head_train_top1=1.0, bn_shift=NEAR), _config(finetune="always")).finetune is True


@pytest.mark.parametrize("shift, pretrained, bn_eval, backbone_lr", [
    (NEAR, True, True, 1e-4),  # near: statistics kept, the backbone nudged at lr / 10
    (FAR, True, False, 1e-3),  # far: statistics adapt, the backbone moves at the full rate
    (None, True, True, 1e-4),  # unmeasured: kept
    (FAR, False, False, 1e-3),  # random weights: nothing to keep
])
def test_batchnorm_and_backbone_rate(shift, pretrained, bn_eval, backbone_lr):
    chosen = choose_plan(_measured(bn_shift=shift, pretrained=pretrained), _config(lr=1e-3))
    assert chosen.bn_eval is bn_eval
    assert chosen.backbone_lr == pytest.approx(backbone_lr)


def test_batchnorm_and_rate_flags_win():
    chosen = choose_plan(_measured(bn_shift=FAR), _config(lr=1e-3, bn_eval=True, backbone_lr=5e-5))
    assert (chosen.bn_eval, chosen.backbone_lr) == (True, 5e-5)
    assert choose_plan(_measured(bn_shift=NEAR), _config(bn_eval=False)).bn_eval is False


@pytest.mark.parametrize("images, finetune_epochs", [
    (100, plans.MAX_FINETUNE_EPOCHS),  # few images: the most epochs
    (1000, 8),  # about FINETUNE_IMAGES images seen
    (100_000, plans.MIN_FINETUNE_EPOCHS),  # many images: the fewest
])
def test_epochs_from_the_dataset_size(images, finetune_epochs):
    chosen = choose_plan(_measured(train_images=images, head_train_top1=0.5), _config())
    assert chosen.head_epochs == plans.DEFAULT_HEAD_EPOCHS
    assert chosen.epochs == plans.DEFAULT_HEAD_EPOCHS + finetune_epochs


def test_head_only_plan_is_the_head_phase_and_random_weights_skip_it():
    fits = choose_plan(_measured(head_train_top1=1.0, bn_shift=NEAR), _config())
    assert (fits.finetune, fits.epochs) == (False, plans.DEFAULT_HEAD_EPOCHS)
    scratch = choose_plan(_measured(pretrained=False), _config())
    assert scratch.head_epochs == 0 and scratch.finetune


def test_epochs_flag_caps_the_head_phase():
    chosen = choose_plan(_measured(), _config(epochs=3))
    assert (chosen.epochs, chosen.head_epochs) == (3, 3)


def test_choices_are_pure_and_the_record_round_trips(tmp_path):
    m = _measured(head_train_top1=0.9, head_val_top1=0.8, bn_shift=FAR, gray_share=1.0)
    config = _config()
    assert choose_plan(m, config) == choose_plan(dataclasses.replace(m), config)
    record = PlanRecord(asked=asked_options(config), measurements=m, plan=choose_plan(m, config), stage="finetune")
    (tmp_path / plans.PLAN_FILE).write_text(json.dumps(record.to_dict()))
    assert read_plan(tmp_path) == record
    lines = describe_plan(record)
    assert f"BatchNorm shift {FAR:.3f} (far: above" in lines[0] and "grayscale 100%" in lines[0]
    near = PlanRecord(asked=record.asked, measurements=dataclasses.replace(m, bn_shift=NEAR), plan=record.plan)
    assert "(near: at most" in describe_plan(near)[0]
    assert any(line.startswith("plan: bn_eval = False") for line in lines)


def test_with_asked_restores_what_the_user_left_to_the_plan():
    config = _config()
    asked = asked_options(config)
    applied = choose_plan(_measured(head_train_top1=0.5, bn_shift=FAR), config)
    config.train.bn_eval, config.train.epochs, config.train.finetune = applied.bn_eval, applied.epochs, "always"
    again = with_asked(config, asked)
    assert (again.train.bn_eval, again.train.epochs, again.train.finetune) == (None, None, "auto")
    assert config.train.bn_eval is False  # the original is left alone
