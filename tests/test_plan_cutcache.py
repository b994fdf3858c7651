"""The cut-point cache: partial fine-tuning on the frozen blocks' cached output trains the
same weights as recomputing the frozen blocks on the same augmented views."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

import imgcls
from imgcls.config import DataConfig, ModelConfig
from imgcls.inference import artifact
from imgcls.models.classifier import apply_freeze, build_model
from imgcls.models.cutpoint import cut_backbone
from imgcls.training import loop
from imgcls.training.cutcache import make_cut_cache


def _weights(run_dir):
    state, _, _ = artifact.load_model_file(run_dir / artifact.LAST)
    return state


def _train(data, tmp_path, name, **options):
    settings = dict(FAST, out_dir=str(tmp_path), name=name, epochs=4, freeze="all-but-last:2", report=False)
    settings.update(options)
    return imgcls.train(data, evaluate=False, **settings)


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


@pytest.mark.parametrize("name", ["test_efficientnet", "resnet18"])
def test_a_cut_backbone_computes_what_the_backbone_computes(name):
    model, _ = build_model(ModelConfig(name=name, pretrained=False), DataConfig(), 3)
    model.eval()
    blocks = model.backbone_blocks()
    x = torch.randn(2, 3, 64, 64)
    for frozen in range(1, len(blocks)):
        prefix, suffix = cut_backbone(model.backbone, blocks, frozen)
        assert torch.allclose(suffix(prefix(x)), model.backbone(x), atol=1e-5)
        frozen_params = {id(p) for block in blocks[:frozen] for p in block}
        assert {id(p) for p in prefix.parameters()} == frozen_params  # the prefix is exactly the frozen blocks
    assert cut_backbone(model.backbone, blocks, 0) is None and cut_backbone(model.backbone, blocks, len(blocks)) is None


def test_cut_cache_needs_a_frozen_prefix():
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False), DataConfig(), 3)
    apply_freeze(model, "none")
    assert make_cut_cache(model, 0, 2) is None  # nothing frozen: nothing to cache
    apply_freeze(model, "all-but-last:2")
    cut = make_cut_cache(model, 0, 2)
    assert cut is not None and not any(p.requires_grad for p in cut.prefix.parameters())
    assert all(p.requires_grad for p in cut.suffix.parameters())


def test_with_a_view_per_epoch_the_cache_trains_the_weights_of_recomputing(flat_dataset, tmp_path):
    cached = _train(flat_dataset, tmp_path, "cached", cut_cache=True, cut_views=4)
    recomputed = _train(flat_dataset, tmp_path, "recomputed", cut_cache=False)
    assert "cut-point cache" in (cached.run_dir / "train.log").read_text()
    assert "cut-point cache" not in (recomputed.run_dir / "train.log").read_text()
    _assert_same(_weights(cached.run_dir), _weights(recomputed.run_dir))
    assert [r["train_loss"] for r in cached.history] == pytest.approx([r["train_loss"] for r in recomputed.history],
                                                                       abs=1e-4)


def test_reused_views_train_the_weights_of_recomputing_the_same_views(flat_dataset, tmp_path, monkeypatch):
    kept = _train(flat_dataset, tmp_path, "kept", cut_views=2)
    original = loop.make_cut_cache
    monkeypatch.setattr(loop, "make_cut_cache", lambda model, start, views: original(model, start, views, keep=False))
    recomputed = _train(flat_dataset, tmp_path, "recomputed", cut_views=2)
    _assert_same(_weights(kept.run_dir), _weights(recomputed.run_dir))
    fresh = _train(flat_dataset, tmp_path, "fresh", cut_cache=False)  # new augmentations every epoch differ
    assert any(not torch.allclose(a.float(), b.float(), atol=1e-4)
               for a, b in zip(_weights(kept.run_dir).values(), _weights(fresh.run_dir).values()))
