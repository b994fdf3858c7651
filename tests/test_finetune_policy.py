"""Two-phase training: how long the head phase is, whether fine-tuning follows, and its schedule."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

import imgcls
from imgcls.training import plan
from imgcls.config import DataConfig, ModelConfig, TrainConfig
from imgcls.models.classifier import build_model
from imgcls.training.optim import SegmentedScheduler, create_optimizer, create_scheduler, plan_schedule


@pytest.fixture()
def backbone_weights(tmp_path):
    """A saved backbone state dict: a run given ``weights=`` starts 'pretrained'."""
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False), DataConfig(), 3)
    path = tmp_path / "backbone.pt"
    torch.save(model.backbone.state_dict(), path)
    return str(path)


def _phases(data, tmp_path, name, **options):
    settings = dict(FAST, out_dir=str(tmp_path), name=name, epochs=4)
    settings.pop("head_epochs")
    settings.update(options)
    result = imgcls.train(data, evaluate=False, **settings)
    return [row["phase"] for row in result.history], (result.run_dir / "train.log").read_text()


def test_default_head_phase_only_for_a_backbone_with_learned_weights(flat_dataset, tmp_path, backbone_weights):
    scratch, _ = _phases(flat_dataset, tmp_path, "scratch")
    assert scratch == ["finetune"] * 4  # random features: no head phase
    started, _ = _phases(flat_dataset, tmp_path, "weights", pretrained=True, weights=backbone_weights,
                         finetune="always")
    assert started == ["head"] * 4  # the default head phase (8) is capped by the 4 epochs


@pytest.mark.parametrize("finetune, below, expected", [
    ("always", 0.95, ["head", "head", "finetune", "finetune"]),
    ("never", 0.95, ["head", "head"]),
    ("auto", 0.0, ["head", "head"]),  # any fit clears a threshold of 0: on near data the head suffices
    ("auto", 1.01, ["head", "head", "finetune", "finetune"]),  # no fit clears 1.01: fine-tune
])
def test_finetune_policy(flat_dataset, tmp_path, backbone_weights, finetune, below, expected, monkeypatch):
    monkeypatch.setattr(plan, "FAR_SHIFT", float("inf"))  # whatever the BatchNorm shift, the data counts as near
    phases, log = _phases(flat_dataset, tmp_path, f"{finetune}{below}", pretrained=True, weights=backbone_weights,
                          head_epochs=2, finetune=finetune, finetune_below=below)
    assert phases == expected
    if phases == ["head", "head"]:
        assert "no fine-tuning:" in log


def test_auto_fine_tunes_a_fitting_head_on_far_data(flat_dataset, tmp_path, backbone_weights, monkeypatch):
    monkeypatch.setattr(plan, "FAR_SHIFT", -1.0)  # any BatchNorm shift counts as far
    phases, log = _phases(flat_dataset, tmp_path, "far", pretrained=True, weights=backbone_weights, head_epochs=2,
                          finetune_below=0.0)
    assert phases == ["head", "head", "finetune", "finetune"]
    assert "the data is far from the pretraining images" in log


def test_bad_finetune_value_is_one_clear_error(flat_dataset, tmp_path):
    with pytest.raises(ValueError, match="--finetune 'sometimes'"):
        _phases(flat_dataset, tmp_path, "bad", finetune="sometimes")


def test_cosine_restarts_when_fine_tuning_begins():
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False), DataConfig(), 3)
    cfg = TrainConfig(epochs=5, lr=1e-2)
    optimizer = create_optimizer(model, cfg)
    assert plan_schedule(cfg, head_epochs=2) == [2, 3]
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch=10, segments=[2, 3])
    assert isinstance(scheduler, SegmentedScheduler)

    def head_lr(step):
        scheduler.step_update(step)
        return next(g["lr"] for g in optimizer.param_groups if g["part"] == "head")

    assert head_lr(0) == pytest.approx(1e-2)
    assert head_lr(20) < 1e-3  # end of the 2-epoch head cosine
    assert head_lr(21) == pytest.approx(1e-2, rel=1e-2)  # fine-tuning starts again from the full rate
    assert head_lr(35) == pytest.approx(0.5e-2, rel=1e-3)  # half-way through its own 3-epoch cosine
    restored = create_scheduler(optimizer, cfg, steps_per_epoch=10, segments=[2, 3])
    restored.load_state_dict(scheduler.state_dict())
    restored.step_update(35)
    assert next(g["lr"] for g in optimizer.param_groups if g["part"] == "head") == pytest.approx(0.5e-2, rel=1e-3)
    assert plan_schedule(cfg, head_epochs=0) == [5]


def test_backbone_learning_rate_defaults_to_a_tenth_only_when_pretrained():
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False), DataConfig(), 3)
    cfg = TrainConfig(lr=1e-2)

    def rates(**kw):
        return {g["part"]: g["lr"] for g in create_optimizer(model, cfg, **kw).param_groups}

    assert rates() == {"backbone": pytest.approx(1e-3), "head": pytest.approx(1e-2)}
    assert rates(from_scratch=True) == {"backbone": pytest.approx(1e-2), "head": pytest.approx(1e-2)}
    cfg.backbone_lr = 5e-4
    assert rates(from_scratch=True)["backbone"] == pytest.approx(5e-4)  # an explicit rate always wins
