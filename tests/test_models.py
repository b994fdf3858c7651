"""Backbones, pretrained weights, heads and freezing."""

from __future__ import annotations

import pytest
import timm
import torch

from imgcls.config import DataConfig, ModelConfig
from imgcls.models import backbones
from imgcls.models.backbones import WeightsError, create_backbone
from imgcls.models.classifier import apply_freeze, build_model, train_mode
from imgcls.models.heads import HeadSpecError, build_head


def test_offline_efficientnet_lite0_weights_are_mapped_onto_timm():
    model, data_config = create_backbone("efficientnet_lite0", pretrained=True)
    random_init = timm.create_model("efficientnet_lite0", num_classes=0)
    assert data_config["mean"] == (0.5, 0.5, 0.5)
    assert not torch.equal(model.conv_stem.weight, random_init.conv_stem.weight)
    # The package's batch-norm statistics come along: a real trained network, not noise.
    assert not torch.allclose(model.bn2.running_var, torch.ones_like(model.bn2.running_var))
    features = model.eval()(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 1280) and torch.isfinite(features).all()


def test_weights_file_is_loaded(tmp_path):
    source = timm.create_model("test_efficientnet")
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model, _ = create_backbone("test_efficientnet", pretrained=True, weights=str(tmp_path / "w.pt"))
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="missing"):
        create_backbone("test_efficientnet", pretrained=True, weights=str(tmp_path / "bad.pt"))


def test_offline_hub_fails_fast_with_clear_message(monkeypatch):
    monkeypatch.setattr(backbones, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(WeightsError, match="--no-pretrained"):
        create_backbone("resnet18", pretrained=True)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(WeightsError, match="not_a_model"):
        create_backbone("not_a_model", pretrained=False)


def test_heads():
    linear = build_head("linear", 16, 3)
    assert linear(torch.randn(4, 16)).shape == (4, 3) and linear.l2_penalty() == 0.0
    mlp = build_head("mlp:32,8", 16, 3, dropout=0.3, l2=0.01)
    assert mlp(torch.randn(4, 16)).shape == (4, 3)
    layers = [type(m).__name__ for m in mlp.layers]
    assert layers[:5] == ["BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Dropout"]
    hidden = [m.weight for m in mlp.layers if isinstance(m, torch.nn.Linear)][:-1]
    assert torch.isclose(mlp.l2_penalty(), 0.01 * sum((w**2).sum() for w in hidden))
    for bad in ("mlp", "mlp:a,b", "conv:3", "mlp:0"):
        with pytest.raises(HeadSpecError):
            build_head(bad, 16, 3)


def _model(freeze: str = "none"):
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False, freeze=freeze), DataConfig(), 3)
    return model


@pytest.mark.parametrize("spec", ["none", "backbone", "half", "all-but-last:2"])
def test_freezing_by_blocks(spec):
    model = _model()
    apply_freeze(model, spec)
    blocks = model.backbone_blocks()
    trainable = [all(p.requires_grad for p in b) for b in blocks]
    frozen_count = {"none": 0, "backbone": len(blocks), "half": len(blocks) // 2, "all-but-last:2": len(blocks) - 2}
    assert trainable == [i >= frozen_count[spec] for i in range(len(blocks))]
    assert all(p.requires_grad for p in model.head.parameters())


def test_frozen_batchnorm_keeps_running_stats():
    model = _model()
    apply_freeze(model, "backbone")
    train_mode(model)
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(before, model.backbone.bn1.running_mean)
    assert model.head.training


def test_bad_freeze_spec():
    with pytest.raises(ValueError, match="all-but-last:N"):
        apply_freeze(_model(), "some")
