"""Temperature scaling and reliability bins, checked against scikit-learn, brute force and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

import imgcls
from imgcls.evaluation.calibration import fit_temperature, logits_from_probs
from imgcls.metrics.calibration import calibration_summary, negative_log_likelihood, reliability_bins, softmax
from imgcls.metrics.classification import classification_metrics
from run_files import card


def _overconfident(n: int, classes: int, true_temperature: float, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / T): the right T is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, classes))
    p = softmax(logits, true_temperature)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_fit_recovers_a_known_temperature():
    logits, labels = _overconfident(6000, 5, true_temperature=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)


def test_fitted_temperature_minimises_nll_like_a_grid_search():
    logits, labels = _overconfident(800, 4, true_temperature=0.6, seed=1)
    fitted = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 2001))
    best = grid[np.argmin([negative_log_likelihood(logits, labels, t) for t in grid])]
    assert fitted == pytest.approx(best, rel=0.01)
    assert negative_log_likelihood(logits, labels, fitted) < negative_log_likelihood(logits, labels)


def test_temperature_scaling_reduces_nll_and_ece_of_an_overconfident_model():
    logits, labels = _overconfident(3000, 10, true_temperature=3.0, seed=2)
    summary = calibration_summary(logits, labels, fit_temperature(logits, labels))
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["ece_after"] < summary["ece_before"] / 2
    # Dividing by T never changes the arg-max: accuracy is untouched.
    assert (softmax(logits).argmax(1) == softmax(logits, summary["temperature"]).argmax(1)).all()


def test_nll_matches_sklearn_log_loss():
    logits, labels = _overconfident(300, 4, 1.0, seed=3)
    for t in (0.5, 1.0, 2.0):
        expected = log_loss(labels, softmax(logits, t), labels=range(4))
        assert negative_log_likelihood(logits, labels, t) == pytest.approx(expected, rel=1e-9)


def test_logits_recovered_from_probabilities_at_any_temperature():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, size=(50, 6))
    for t in (0.7, 1.0, 1.8):
        probs = softmax(logits, t).astype(np.float32)  # inference keeps float32 probabilities
        np.testing.assert_allclose(softmax(logits_from_probs(probs, t)), softmax(logits), atol=1e-5)


def test_ece_by_hand():
    # Two images at confidence 0.95 (one right) and two at 0.55 (both right):
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.55| * 2/4 = 0.45
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = np.array([0, 1, 0, 1])
    bins = reliability_bins(labels, probs)
    assert bins["ece"] == pytest.approx(0.45)
    assert sum(bins["count"]) == 4
    filled = [i for i, c in enumerate(bins["count"]) if c]
    assert [bins["accuracy"][i] for i in filled] == [1.0, 0.5]
    assert [bins["confidence"][i] for i in filled] == pytest.approx([0.55, 0.95])


def test_bins_agree_with_sklearn_calibration_curve_and_metrics_ece():
    logits, labels = _overconfident(2000, 3, 2.0, seed=5)
    probs = softmax(logits)
    bins = reliability_bins(labels, probs)
    confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(int)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    ours = [(a, c) for a, c, n in zip(bins["accuracy"], bins["confidence"], bins["count"]) if n]
    np.testing.assert_allclose([a for a, _ in ours], prob_true, atol=1e-12)
    np.testing.assert_allclose([c for _, c in ours], prob_pred, atol=1e-12)
    # One ECE in imgcls: the eval metrics report the same number.
    assert bins["ece"] == pytest.approx(classification_metrics(labels, probs, ["a", "b", "c"])["ece"], abs=1e-12)


def test_fit_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, int))


def test_training_stores_the_temperature_and_predict_uses_it(split_dataset, tmp_path):
    result = imgcls.train(split_dataset, out_dir=str(tmp_path / "runs"), name="t", **dict(FAST, epochs=1))
    stored = card(result.best_checkpoint)
    temperature = stored.temperature
    assert stored.calibration["temperature"] == temperature
    assert stored.calibration["nll_after"] <= stored.calibration["nll_before"] + 1e-9
    assert temperature != 1.0  # a 1-epoch model is never exactly calibrated

    classifier = imgcls.load(result.run_dir)
    assert classifier.temperature == temperature
    image = Image.open(next((split_dataset / "val" / "red").iterdir()))
    with torch.no_grad():
        logits = classifier.torch_module(classifier.transform(image.convert("RGB"))[None]).double()
    expected = torch.softmax(logits / temperature, 1).numpy()
    np.testing.assert_allclose(classifier.predict_proba([image]), expected, atol=1e-5)
