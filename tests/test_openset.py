"""Open-set rejection: scores, threshold calibration, AUROC / FPR@95%TPR against
scikit-learn and a brute-force count, unknown/ folders, and ``unknown`` predictions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import FAST, make_class_folders, make_image
from sklearn.metrics import roc_auc_score

import imgcls
from imgcls.cli import main
from imgcls.data.sources import discover
from imgcls.evaluation.openset import fit_threshold
from imgcls.inference.unknown import UnknownRule, known_scores, parse_threshold
from imgcls.metrics.openset import openset_metrics
from run_files import card

TWO = {"red": (200, 40, 40), "green": (40, 190, 60)}


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scores_match_softmax_and_logsumexp():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [10.0, -3.0, 1.0]])
    tensor = torch.tensor(logits)
    assert known_scores(logits, "msp") == pytest.approx(tensor.softmax(1).max(1).values.numpy())
    assert known_scores(logits, "energy") == pytest.approx(torch.logsumexp(tensor, 1).numpy())
    # A rule fitted at T = 2 scores logits that were divided by T = 1 as if divided by 2.
    rule = UnknownRule(0.5, "msp", temperature=2.0)
    assert rule.scores(logits, 1.0) == pytest.approx(known_scores(logits / 2.0, "msp"))
    with pytest.raises(ValueError, match="--unknown-score"):
        known_scores(logits, "entropy")


def test_threshold_keeps_the_requested_share_by_hand():
    scores = np.random.default_rng(0).permutation(np.arange(100.0))
    threshold = fit_threshold(scores, keep=0.95)
    assert threshold == 5.0 and (scores >= threshold).sum() == 95  # the 5 lowest go
    assert fit_threshold(np.arange(10.0), keep=0.9) == 1.0
    assert fit_threshold(np.arange(7.0), keep=0.5) == 3.0  # floor(0.5 * 7) = 3 dropped, 4 >= 50% kept
    ties = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    assert (ties >= fit_threshold(ties, keep=0.5)).mean() >= 0.5
    assert fit_threshold(np.arange(5.0), keep=1.0) == 0.0
    with pytest.raises(ValueError, match="--unknown-keep"):
        fit_threshold(scores, keep=1.5)


def test_parse_threshold():
    assert parse_threshold(None) is None and parse_threshold("none") is None
    assert parse_threshold("AUTO") == "auto" and parse_threshold("0.4") == 0.4 and parse_threshold(-3) == -3.0
    with pytest.raises(ValueError, match="--unknown-threshold 'high'"):
        parse_threshold("high")


def test_auroc_and_fpr_at_95_against_sklearn_and_brute_force():
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(1.0, 1.0, 200), rng.normal(-0.5, 1.0, 150)
    m = openset_metrics(known, unknown, threshold=0.0)
    y = np.r_[np.ones(200), np.zeros(150)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[known, unknown]))
    # The highest threshold that still accepts >= 95% of known images, and the unknowns it accepts.
    candidates = [t for t in np.sort(np.r_[known, unknown]) if (known >= t).mean() >= 0.95]
    assert m["fpr_at_95_tpr"] == pytest.approx((unknown >= max(candidates)).mean())
    assert m["known_accepted"] == (known >= 0).mean() and m["unknown_rejected"] == (unknown < 0).mean()
    perfect = openset_metrics(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert perfect["auroc"] == 1.0 and perfect["fpr_at_95_tpr"] == 0.0


def test_unknown_folder_is_set_aside_not_a_class(split_dataset):
    for i in range(3):
        make_image(split_dataset / "test" / "unknown" / f"u{i}.jpg", (128, 128, 128), seed=i)
    data = discover(split_dataset)
    assert "unknown" not in data.classes and len(data.unknown["test"]) == 3
    assert all(s.label != "unknown" for s in data.splits["test"])
    make_image(split_dataset / "train" / "unknown" / "u.jpg", (128, 128, 128))  # now a trained class
    assert "unknown" in discover(split_dataset).classes


@pytest.fixture
def openset_dataset(tmp_path):
    """Two known colours; the blue images of test/unknown/ are a class the model never saw."""
    root = tmp_path / "openset"
    make_class_folders(root / "train", per_class=10, classes=TWO)
    make_class_folders(root / "val", per_class=10, classes=TWO, start_seed=50)
    make_class_folders(root / "test", per_class=4, classes=TWO, start_seed=80)
    for i in range(5):
        make_image(root / "test" / "unknown" / f"blue_{i}.jpg", (40, 60, 210), seed=300 + i)
    return root


def test_threshold_fitted_on_val_stored_and_applied(openset_dataset, tmp_path, capsys):
    # A model that learned something: a degenerate one gets T = 20, which squeezes every energy
    # score into a sliver where float noise between two passes decides ties.
    result = imgcls.train(openset_dataset, out_dir=str(tmp_path / "runs"), evaluate=False, unknown_threshold="auto",
                          unknown_score="energy", unknown_keep=0.8,
                          **dict(FAST, epochs=3, lr=0.01, backbone_lr=0.01, label_smoothing=0.0))
    rule = card(result.best_checkpoint).unknown
    assert rule.score == "energy" and rule.fit["keep"] == 0.8
    classifier = imgcls.load(result.run_dir)
    # Hand check on val (20 known images): floor(0.2 * 20) = 4 fall below the threshold, 16 stay.
    val = imgcls.evaluate(classifier, split="val", out_dir=tmp_path / "val")
    assert val["unknown_rule"]["known_rejected"] == pytest.approx(4 / 20)
    scores = np.array([row["unknown_score"] for row in classifier.predict(openset_dataset / "val")])
    assert len(scores) == 20 and (scores >= rule.threshold - 1e-5).sum() == 16

    # eval finds test/unknown/ and reports AUROC / FPR@95 for both scores.
    assert main(["eval", str(result.run_dir), "--no-report", "--out", str(tmp_path / "ev")]) == 0
    assert "AUROC" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())["openset"]
    assert metrics["msp"]["n_unknown"] == 5 and metrics["msp"]["n_known"] == 8
    assert 0.0 <= metrics["energy"]["auroc"] <= 1.0 and metrics["score"] == "energy"
    unknown_rows = _read_csv(tmp_path / "ev" / "eval_unknown_predictions.csv")
    assert len(unknown_rows) == 5 and "energy_score" in unknown_rows[0]

    # predict: an MSP threshold above 1 rejects everything; 'none' turns rejection off.
    out = tmp_path / "pred.csv"
    assert main(["predict", str(result.run_dir), str(openset_dataset / "test" / "unknown"), "--out", str(out),
                 "--unknown-threshold", "1.01", "--unknown-score", "msp"]) == 0
    rows = _read_csv(out)
    assert {r["label"] for r in rows} == {"unknown"} and {r["top_class"] for r in rows} <= set(TWO)
    assert main(["predict", str(result.run_dir), str(openset_dataset / "test" / "red"), "--out", str(out),
                 "--unknown-threshold", "none"]) == 0
    assert "unknown" not in {r["label"] for r in _read_csv(out)}


def test_bad_unknown_options_fail_before_training(flat_dataset, tmp_path):
    with pytest.raises(ValueError, match="--unknown-score"):
        imgcls.train(flat_dataset, out_dir=str(tmp_path / "runs"), unknown_threshold="auto", unknown_score="maxlogit",
                     **FAST)
    assert main(["train", str(flat_dataset), "--unknown-threshold", "high", "--out-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()  # no run folder: nothing was trained
