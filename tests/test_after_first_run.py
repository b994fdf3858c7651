"""EMA of weights, test-time augmentation, the LR range test and the time budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST
from PIL import Image
from run_files import card, state, weights

import imgcls
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.inference.tta import TtaBackend, tta_views
from imgcls.training import loop
from imgcls.training.budget import evaluation_reserve, phase_epochs
from imgcls.training.lr_finder import SUGGESTION_RULE, range_test

# --------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------


def test_ema_weights_follow_the_hand_computation(flat_dataset, tmp_path, monkeypatch):
    after_step = []
    original = loop._optimizer_step

    def recording(trainer):
        original(trainer)
        after_step.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    monkeypatch.setattr(loop, "_optimizer_step", recording)
    decay = 0.9
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False,
                          **dict(FAST, epochs=1, ema=True, ema_decay=decay))
    assert len(after_step) == 3  # 24 training images, batch 8
    # timm ModelEmaV3 with warm-up: step 1 copies the weights; step k blends with decay
    # min(decay, 1 - k^(-2/3)), i.e. ema += (1 - d) * (w - ema).
    expected = {k: v.clone() for k, v in after_step[0].items()}
    for k, snapshot in enumerate(after_step[1:], start=2):
        d = min(decay, 1 - k ** (-2 / 3))
        for name, value in snapshot.items():
            if value.is_floating_point():
                expected[name] += (1 - d) * (value - expected[name])
            else:
                expected[name] = value.clone()
    best = weights(result.best_checkpoint)
    for name, value in expected.items():
        assert torch.allclose(best[name].float(), value.float(), atol=1e-6), name
    raw = weights(result.run_dir / "last.safetensors")
    assert any(not torch.equal(raw[n], best[n]) for n in best if raw[n].is_floating_point())  # last = raw weights
    assert card(result.best_checkpoint).ema is True


def test_ema_validates_the_averaged_weights_and_resumes_exactly(flat_dataset, tmp_path):
    options = dict(FAST, epochs=3, ema=True, out_dir=str(tmp_path), evaluate=False)
    whole = imgcls.train(flat_dataset, name="whole", **options)
    stopped = loop.train(imgcls.make_config(flat_dataset, name="stopped", **{k: v for k, v in options.items()
                                                                              if k != "evaluate"}),
                         callbacks=[_stop_after(2)])
    resumed = imgcls.train(resume=stopped.run_dir, evaluate=False)
    a, b = state(whole.run_dir).ema, state(resumed.run_dir).ema
    assert all(torch.equal(a[k], b[k]) for k in a)
    val = imgcls.evaluate(whole.run_dir, split="val", out_dir=tmp_path / "ev", device="cpu")
    history = state(whole.run_dir).history
    best_epoch = card(whole.best_checkpoint).epoch
    assert val["top1"] == pytest.approx(history[best_epoch - 1]["val_acc"])  # the EMA was what was validated


def _stop_after(epochs: int):
    def callback(trainer, row):
        if row["epoch"] >= epochs:
            trainer.stop_requested = True
    return callback


# --------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------


class _Linear:
    """A backend whose logits are a fixed linear map of the image: views are told apart."""

    name, device, memory_format = "pytorch", torch.device("cpu"), torch.contiguous_format
    hierarchical, chunked_inference = False, True

    def __init__(self):
        self.weight = torch.randn(3 * 8 * 8, 4, generator=torch.Generator().manual_seed(0))

    def __call__(self, images):
        return images.flatten(1) @ self.weight


def test_tta_averages_the_logits_of_its_views():
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    base = _Linear()
    flip = TtaBackend(base, "flip")(images)
    assert torch.allclose(flip, (base(images) + base(images.flip(-1))) / 2, atol=1e-5)
    views = tta_views(images, "flip+crops")
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[2][..., 0, 0], images[..., 0, 0])  # top-left corner crop keeps the corner pixel
    crops = TtaBackend(base, "flip+crops")(images)
    assert torch.allclose(crops, torch.stack([base(v) for v in views]).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="--tta"):
        tta_views(images, "rotations")


def test_tta_is_stored_with_the_model_and_used_by_predict(split_dataset, tmp_path):
    result = imgcls.train(split_dataset, out_dir=str(tmp_path), **dict(FAST, epochs=1, tta="flip", report=False))
    assert card(result.best_checkpoint).tta == "flip"
    test = result.metrics["test"]
    assert test["tta"] == "flip" and set(test["without_tta"]) >= {"top1", "log_loss", "f1_macro"}
    model = imgcls.load(result.run_dir, device="cpu")
    image = next((split_dataset / "test" / "red").iterdir())
    batch = model.transform(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        net = model.torch_module
        logits = (net(batch) + net(batch.flip(-1))) / 2
    expected = torch.softmax(logits / model.temperature, 1).numpy()
    np.testing.assert_allclose(model.predict([image])[0]["probability"], expected.max(), atol=1e-5)
    plain = model.with_tta("none").predict([image])[0]["probability"]
    assert plain != pytest.approx(expected.max(), abs=1e-7)


# --------------------------------------------------------------------------
# LR range test
# --------------------------------------------------------------------------


def test_range_test_finds_the_minimum_of_a_known_curve():
    # A loss that is lowest at lr = 1e-2 and rises on both sides: without smoothing the
    # minimum is found on the grid point nearest to it, and the suggestion is a tenth of it.
    def step(lr):
        return (math.log10(lr) + 2) ** 2 + 1

    test = range_test(step, 1e-6, 1.0, steps=61, beta=0.0, diverge=100.0)
    at_min = test.lrs[int(np.argmin(test.smoothed))]
    assert at_min == pytest.approx(1e-2, rel=1e-6) and test.suggestion == pytest.approx(1e-3, rel=1e-6)
    assert test.rule == SUGGESTION_RULE and test.stopped == "end of range"


def test_range_test_stops_when_the_loss_diverges():
    # Gradient descent on w^2 diverges once lr > 1: the loss explodes and the test stops there.
    w = [5.0]

    def step(lr):
        w[0] -= lr * 2 * w[0]
        return w[0] ** 2

    test = range_test(step, 1e-4, 100.0, steps=100)
    assert test.stopped.startswith("diverged") and test.lrs[-1] > 1.0 and test.lrs[-1] < 100.0
    assert test.suggestion < 1.0


def test_lr_auto_applies_the_suggestion_and_records_the_test(flat_dataset, tmp_path):
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False,
                          **dict(FAST, epochs=2, head_epochs=1, lr="auto"))
    found = json.loads((result.run_dir / "lr_find.json").read_text())
    applied = RunConfig.load(result.run_dir / "config.yaml").train.lr
    assert found["applied"] and found["phase"] == "head" and applied == pytest.approx(found["suggestion"])
    assert len(found["lrs"]) == len(found["losses"]) > 10
    rows = state(result.run_dir).history
    assert rows[0]["lr"] <= applied * 1.0001  # the head trained at the suggested rate (cosine from it)


def test_lr_find_command_writes_the_test_and_its_plot(flat_dataset, tmp_path, capsys):
    assert main(["lr-find", str(flat_dataset), "--model", "test_efficientnet", "--no-pretrained", "--image-size",
                 "32", "--workers", "0", "--out-dir", str(tmp_path), "--phase", "finetune", "--steps", "8"]) == 0
    printed = capsys.readouterr().out
    found = json.loads(next(tmp_path.rglob("lr_find.json")).read_text())
    assert f"suggested learning rate: {found['suggestion']:.3g}" in printed and not found["applied"]
    assert next(tmp_path.rglob("lr_find.png")).stat().st_size > 1000 and len(found["lrs"]) == 8


# --------------------------------------------------------------------------
# Time budget
# --------------------------------------------------------------------------


def test_budget_planner_arithmetic():
    # 100 s left, 30 s kept for the evaluation, 20 s an epoch: 3 epochs fit.
    assert phase_epochs(100, 20, 30, asked=10) == 3
    assert phase_epochs(100, 20, 30, asked=2) == 2  # never more than asked
    assert phase_epochs(10, 20, 30, asked=5) == 0 and phase_epochs(10, 20, 30, asked=5, at_least=1) == 1
    assert evaluation_reserve(0.3, 32, 320) == pytest.approx(2 * 320 * 0.3 / 32 / 3 + 5)


def test_a_tiny_budget_plans_one_epoch_and_says_so(flat_dataset, tmp_path):
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False,
                          **dict(FAST, epochs=6, time_limit=0.001))
    plan = json.loads((result.run_dir / "budget.json").read_text())
    assert plan["plans"][0]["asked_epochs"] == 6 and plan["plans"][0]["planned_epochs"] == 1
    assert len(result.history) == 1 and RunConfig.load(result.run_dir / "config.yaml").train.epochs == 1
    assert result.history[0]["lr"] < 1e-6  # the one planned epoch ran a whole cosine
    assert (result.run_dir / "best.safetensors").is_file()


def test_a_roomy_budget_keeps_the_asked_epochs(flat_dataset, tmp_path):
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False,
                          **dict(FAST, epochs=2, time_limit=30))
    plan = json.loads((result.run_dir / "budget.json").read_text())["plans"][0]
    assert plan["planned_epochs"] == 2 and plan["seconds_per_step"] > 0 and len(result.history) == 2
