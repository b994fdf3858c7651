"""Head-only epochs on cached features are the same training as recomputing the backbone."""

from __future__ import annotations

import torch
from conftest import FAST
from run_files import state, weights

import imgcls
from imgcls.inference.classifier import Classifier


def _head_run(data, tmp_path, name, **options):
    settings = dict(FAST, epochs=2, head_epochs=2, augment="none", lr=0.05, out_dir=str(tmp_path), name=name)
    settings.update(options)
    result = imgcls.train(data, evaluate=False, **settings)
    return result, {"model": weights(result.run_dir / "last.safetensors"), "history": state(result.run_dir).history}


def test_cached_features_train_the_same_head(flat_dataset, tmp_path):
    # With the eval transform for training, both paths see identical inputs, batches and
    # steps, so they must end with the same head (up to float summation order).
    cached, a = _head_run(flat_dataset, tmp_path, "cached", feature_cache=True)
    plain, b = _head_run(flat_dataset, tmp_path, "plain", feature_cache=False)
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-4), key
    for row_a, row_b in zip(a["history"], b["history"]):
        assert abs(row_a["val_loss"] - row_b["val_loss"]) < 1e-4
        assert row_a["val_acc"] == row_b["val_acc"]
    assert "feature cache" in (cached.run_dir / "train.log").read_text()
    assert "feature cache" not in (plain.run_dir / "train.log").read_text()


def test_augmented_feature_views_and_finetune_phase(flat_dataset, tmp_path):
    result, checkpoint = _head_run(flat_dataset, tmp_path, "views", augment="default", feature_views=2,
                                   epochs=3, head_epochs=2, finetune="always")
    assert [r["phase"] for r in checkpoint["history"]] == ["head", "head", "finetune"]
    log = (result.run_dir / "train.log").read_text()
    assert "x 2 view(s)" in log


def test_evaluation_after_training_reuses_the_best_epochs_val_predictions(flat_dataset, tmp_path, monkeypatch):
    # The metrics written at the end of training come from the best epoch's val predictions
    # (no second pass over the images); a fresh evaluation of best.safetensors must agree with them.
    passes = []
    original = Classifier.predictions
    monkeypatch.setattr(Classifier, "predictions", lambda *a, **k: passes.append(1) or original(*a, **k))
    settings = dict(FAST, epochs=2, head_epochs=2, augment="none", lr=0.05, out_dir=str(tmp_path), name="reuse",
                    report=False)
    result = imgcls.train(flat_dataset, **settings)
    assert passes == []  # calibration and evaluation ran on the remembered predictions
    assert result.best_val is not None and len(result.best_val.indices) == len(result.val_paths)
    monkeypatch.undo()
    fresh = imgcls.evaluate(result.best_checkpoint, split="val", out_dir=tmp_path / "ev", device="cpu")
    reused = result.metrics["val"]
    assert reused["top1"] == fresh["top1"] and reused["n"] == fresh["n"]
    assert abs(reused["loss"] - fresh["loss"]) < 1e-4


def test_chunked_cpu_inference_matches_one_pass():
    from imgcls.models.classifier import build_model
    from imgcls.config import DataConfig, ModelConfig
    from imgcls.runtime import CPU_INFERENCE_CHUNK, infer

    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(name="test_efficientnet", pretrained=False), DataConfig(), 3)
    model.eval()
    images = torch.randn(3 * CPU_INFERENCE_CHUNK + 1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(infer(model, images), model(images), atol=1e-5)
