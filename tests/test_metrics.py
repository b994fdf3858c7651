"""Tests for imgcls.metrics.classification, checked against scikit-learn or by hand."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from imgcls.metrics.classification import (
    classification_metrics,
    format_metrics_table,
    write_metrics,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_data(
    n: int, num_classes: int, seed: int = 0, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Random labels and probabilities that are informative but imperfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n) if labels is None else labels
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 1.5  # bias towards the truth so scores are non-trivial
    names = [f"class_{i}" for i in range(num_classes)]
    return y, _softmax(logits), names


def _assert_plain_json_types(obj) -> None:
    """Recursively check that only builtin JSON types appear (no numpy scalars)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert type(key) is str
            _assert_plain_json_types(value)
    elif isinstance(obj, list):
        for value in obj:
            _assert_plain_json_types(value)
    else:
        assert obj is None or type(obj) in (str, int, float, bool), type(obj)


# --------------------------------------------------------------------------
# Headline metrics against scikit-learn
# --------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [3, 5, 10])
@pytest.mark.parametrize("topk", [1, 2, 3])
def test_headline_metrics_match_sklearn(num_classes: int, topk: int) -> None:
    y, probs, names = make_data(400, num_classes, seed=num_classes * 10 + topk)
    m = classification_metrics(y, probs, names, topk=topk)
    labels = list(range(num_classes))
    pred = probs.argmax(axis=1)

    assert m["n"] == 400
    assert m["num_classes"] == num_classes
    assert m["topk"] == topk
    assert m["top1"] == pytest.approx(accuracy_score(y, pred))
    if topk < num_classes:
        expected_topk = top_k_accuracy_score(y, probs, k=topk, labels=labels)
    else:
        expected_topk = 1.0  # sklearn agrees but warns that the score is meaningless
    assert m["topk_accuracy"] == pytest.approx(expected_topk)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average=average, zero_division=0
        )
        assert m[f"precision_{average}"] == pytest.approx(p)
        assert m[f"recall_{average}"] == pytest.approx(r)
        assert m[f"f1_{average}"] == pytest.approx(f)
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=labels))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()


@pytest.mark.parametrize("num_classes", [3, 4, 7])
def test_roc_auc_matches_sklearn_ovr_when_all_classes_present(num_classes: int) -> None:
    y, probs, names = make_data(300, num_classes, seed=num_classes)
    assert set(y.tolist()) == set(range(num_classes))
    m = classification_metrics(y, probs, names)
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert m["roc_auc_ovr"] == pytest.approx(expected)


def test_per_class_matches_sklearn() -> None:
    y, probs, names = make_data(250, 6, seed=1)
    m = classification_metrics(y, probs, names)
    p, r, f, s = precision_recall_fscore_support(
        y, probs.argmax(axis=1), labels=list(range(6)), average=None, zero_division=0
    )
    assert [row["class"] for row in m["per_class"]] == names
    for c, row in enumerate(m["per_class"]):
        assert row["precision"] == pytest.approx(p[c])
        assert row["recall"] == pytest.approx(r[c])
        assert row["f1"] == pytest.approx(f[c])
        assert row["support"] == s[c]


def test_topk_clipped_to_num_classes() -> None:
    y, probs, names = make_data(50, 3, seed=2)
    m = classification_metrics(y, probs, names, topk=5)
    assert m["topk"] == 3
    assert m["topk_accuracy"] == 1.0


def test_topk_equal_to_num_classes_is_one() -> None:
    y, probs, names = make_data(50, 3, seed=3)
    m = classification_metrics(y, probs, names, topk=3)
    assert m["topk"] == 3
    assert m["topk_accuracy"] == 1.0


def test_result_is_json_serialisable_with_plain_types() -> None:
    y, probs, names = make_data(120, 5, seed=4)
    m = classification_metrics(y, probs, names)
    _assert_plain_json_types(m)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


# --------------------------------------------------------------------------
# Two classes and absent classes
# --------------------------------------------------------------------------


def test_two_class_case() -> None:
    y, probs, names = make_data(200, 2, seed=5)
    m = classification_metrics(y, probs, names, topk=3)
    pred = probs.argmax(axis=1)
    assert m["num_classes"] == 2
    assert m["topk"] == 2
    assert m["topk_accuracy"] == 1.0
    assert m["top1"] == pytest.approx(accuracy_score(y, pred))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=[0, 1]))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()


def test_absent_class() -> None:
    num_classes = 4
    rng = np.random.default_rng(6)
    y_present = rng.integers(0, 3, size=200)  # class 3 never occurs
    y, probs, names = make_data(200, num_classes, seed=6, labels=y_present)
    labels = list(range(num_classes))
    pred = probs.argmax(axis=1)

    # sklearn's built-in one-vs-rest refuses this input, which is why the
    # module computes the per-class AUCs itself.
    with pytest.raises(ValueError):
        roc_auc_score(y, probs, multi_class="ovr", average="macro")

    m = classification_metrics(y, probs, names)
    expected_auc = np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(3)])
    assert m["roc_auc_ovr"] == pytest.approx(expected_auc)
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=labels))
    assert m["per_class"][3]["support"] == 0
    assert m["confusion_matrix"][3] == [0] * num_classes
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    # Macro averages run over the classes present in y (sklearn's labels=), not all four.
    p, r, f, _ = precision_recall_fscore_support(
        y, pred, labels=[0, 1, 2], average="macro", zero_division=0
    )
    assert m["f1_macro"] == pytest.approx(f) and m["absent_classes"] == ["class_3"]
    assert "class_3" not in m["best_classes"]
    assert "class_3" not in m["worst_classes"]


def test_roc_auc_none_when_only_one_class_present() -> None:
    y, probs, names = make_data(30, 3, seed=7, labels=np.zeros(30, dtype=int))
    m = classification_metrics(y, probs, names)
    assert m["roc_auc_ovr"] is None
    _assert_plain_json_types(m)


# --------------------------------------------------------------------------
# Hand-computed metrics
# --------------------------------------------------------------------------


def test_ece_hand_computed() -> None:
    # 15 bins of width 1/15. Confidences 0.95 and 0.97 fall in the last bin
    # (14/15, 1], confidences 0.55 and 0.58 both in (8/15, 9/15].
    probs = np.array([
        [0.95, 0.05],  # pred 0, true 0 -> correct
        [0.03, 0.97],  # pred 1, true 0 -> wrong
        [0.55, 0.45],  # pred 0, true 0 -> correct
        [0.42, 0.58],  # pred 1, true 1 -> correct
    ])
    y = np.array([0, 0, 0, 1])
    high_bin = abs(0.5 - (0.95 + 0.97) / 2) * 2 / 4  # accuracy 1/2
    mid_bin = abs(1.0 - (0.55 + 0.58) / 2) * 2 / 4  # accuracy 2/2
    m = classification_metrics(y, probs, ["a", "b"])
    assert m["ece"] == pytest.approx(high_bin + mid_bin)
    # Sanity check that binning matters: pooling all four would give another value.
    pooled = abs(0.75 - (0.95 + 0.97 + 0.55 + 0.58) / 4)
    assert m["ece"] != pytest.approx(pooled)


def test_ece_single_bin_and_perfect_calibration() -> None:
    # Every prediction confident 0.7 and 70% correct -> perfectly calibrated.
    probs = np.tile([0.7, 0.2, 0.1], (10, 1))
    y = np.array([0] * 7 + [1] * 3)
    assert classification_metrics(y, probs, ["a", "b", "c"])["ece"] == pytest.approx(0.0)
    # All wrong at confidence 0.7 -> ECE equals the confidence.
    y_wrong = np.ones(10, dtype=int)
    assert classification_metrics(y_wrong, probs, ["a", "b", "c"])["ece"] == pytest.approx(0.7)


def test_most_confused_hand_example() -> None:
    names = ["cat", "dog", "fox"]
    # (true, pred) pairs; one-hot-ish probabilities make argmax the prediction.
    pairs = (
        [(0, 0)] * 3 + [(0, 1)] * 2        # cat: support 5, 2 -> dog
        + [(1, 1)] * 1 + [(1, 0)] * 2 + [(1, 2)] * 1  # dog: support 4, 2 -> cat, 1 -> fox
        + [(2, 2)] * 4 + [(2, 0)] * 1      # fox: support 5, 1 -> cat
    )
    y = np.array([t for t, _ in pairs])
    probs = np.full((len(pairs), 3), 0.1)
    probs[np.arange(len(pairs)), [p for _, p in pairs]] = 0.8
    m = classification_metrics(y, probs, names)

    # Two cells with count 2: dog->cat (rate 2/4) ranks above cat->dog (2/5).
    # Two with count 1: dog->fox (1/4) above fox->cat (1/5).
    assert m["most_confused"] == [
        {"true": "dog", "pred": "cat", "count": 2, "rate": pytest.approx(2 / 4)},
        {"true": "cat", "pred": "dog", "count": 2, "rate": pytest.approx(2 / 5)},
        {"true": "dog", "pred": "fox", "count": 1, "rate": pytest.approx(1 / 4)},
        {"true": "fox", "pred": "cat", "count": 1, "rate": pytest.approx(1 / 5)},
    ]


def test_most_confused_consistent_with_confusion_matrix() -> None:
    y, probs, names = make_data(500, 12, seed=8)
    m = classification_metrics(y, probs, names)
    cm = np.array(m["confusion_matrix"])
    off_diag = cm.copy()
    np.fill_diagonal(off_diag, 0)
    entries = m["most_confused"]

    assert len(entries) == min(10, int((off_diag > 0).sum()))
    keys = [(-e["count"], -e["rate"]) for e in entries]
    assert keys == sorted(keys)
    assert entries[0]["count"] == off_diag.max()
    for e in entries:
        t, p = names.index(e["true"]), names.index(e["pred"])
        assert t != p
        assert e["count"] == cm[t, p]
        assert e["rate"] == pytest.approx(cm[t, p] / cm[t].sum())


def test_no_mistakes_gives_empty_most_confused() -> None:
    y = np.array([0, 1, 2, 1])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["most_confused"] == []
    assert m["top1"] == 1.0
    assert "no misclassifications" in format_metrics_table(m)


def test_best_and_worst_classes_follow_f1() -> None:
    y, probs, names = make_data(600, 9, seed=9)
    m = classification_metrics(y, probs, names)
    f1 = {row["class"]: row["f1"] for row in m["per_class"]}
    by_f1 = sorted(names, key=lambda c: f1[c])
    assert len(m["best_classes"]) == 5 and len(m["worst_classes"]) == 5
    assert [f1[c] for c in m["best_classes"]] == sorted(
        (f1[c] for c in by_f1[-5:]), reverse=True
    )
    assert [f1[c] for c in m["worst_classes"]] == [f1[c] for c in by_f1[:5]]


# --------------------------------------------------------------------------
# Probability handling and validation
# --------------------------------------------------------------------------


def test_unnormalised_and_zero_probabilities_are_handled() -> None:
    y, probs, names = make_data(100, 4, seed=10)
    ref = classification_metrics(y, probs, names)
    scaled = classification_metrics(y, probs * 3.0, names)
    for key in ("top1", "log_loss", "roc_auc_ovr", "ece", "f1_macro"):
        assert scaled[key] == pytest.approx(ref[key])

    hard = np.eye(4)[probs.argmax(axis=1)]  # exact zeros, some on the true class
    m = classification_metrics(y, hard, names)
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] > ref["log_loss"]


def test_whole_float_labels_accepted() -> None:
    y, probs, names = make_data(60, 3, seed=11)
    assert classification_metrics(y.astype(float), probs, names) == classification_metrics(
        y, probs, names
    )


@pytest.mark.parametrize(
    "y, probs, names, match",
    [
        (np.array([0, 1]), np.full((3, 2), 0.5), ["a", "b"], "samples"),
        (np.array([], dtype=int), np.empty((0, 2)), ["a", "b"], "empty"),
        (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], "range"),
        (np.array([0, -1]), np.full((2, 2), 0.5), ["a", "b"], "range"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"], "class_names"),
        (np.array([0, 1]), np.full(2, 0.5), ["a", "b"], "2-D"),
        (np.array([[0], [1]]), np.full((2, 2), 0.5), ["a", "b"], "1-D"),
        (np.array([0.5, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "integer"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), ["a", "b"], "NaN"),
    ],
)
def test_invalid_inputs_raise(y, probs, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, probs, names)


def test_invalid_topk_raises() -> None:
    y, probs, names = make_data(10, 3, seed=12)
    with pytest.raises(ValueError, match="topk"):
        classification_metrics(y, probs, names, topk=0)


# --------------------------------------------------------------------------
# Output: table and files
# --------------------------------------------------------------------------


def test_table_contains_headlines_and_every_class() -> None:
    y, probs, names = make_data(150, 5, seed=13)
    m = classification_metrics(y, probs, names)
    table = format_metrics_table(m)
    for name in names:
        assert name in table
    for label in ("top-1", "top-3", "log loss", "ROC AUC", "MCC", "ECE", "Most confused"):
        assert label in table
    assert f"{m['top1']:.4f}" in table
    for e in m["most_confused"]:
        assert f"{e['true']}" in table and f"{e['pred']}" in table


def test_table_truncates_to_worst_classes() -> None:
    y, probs, names = make_data(800, 30, seed=14)
    m = classification_metrics(y, probs, names)
    table = format_metrics_table(m, max_classes=5)
    per_class = table.split("\n\n")[1]
    assert "worst 5 of 30" in per_class
    worst = sorted(m["per_class"], key=lambda r: r["f1"])[:5]
    best = sorted(m["per_class"], key=lambda r: r["f1"])[-1]
    for row in worst:
        assert row["class"] in per_class
    assert best["class"] not in per_class.split()


def test_table_handles_missing_auc() -> None:
    y, probs, names = make_data(20, 3, seed=15, labels=np.full(20, 2))
    table = format_metrics_table(classification_metrics(y, probs, names))
    assert "n/a" in table


def test_write_metrics_round_trip(tmp_path) -> None:
    y, probs, names = make_data(200, 4, seed=16)
    names = ["cat", "dog", "red fox", "owl, barn"]  # space and comma exercise CSV quoting
    m = classification_metrics(y, probs, names)
    out_dir = tmp_path / "nested" / "eval"
    paths = write_metrics(m, out_dir, prefix="val")

    assert set(paths) == {"json", "confusion_matrix", "per_class"}
    assert paths["json"] == out_dir / "val.json"
    assert paths["confusion_matrix"] == out_dir / "val_confusion_matrix.csv"
    assert paths["per_class"] == out_dir / "val_per_class.csv"
    assert all(p.is_file() for p in paths.values())

    assert json.loads(paths["json"].read_text()) == m

    with paths["confusion_matrix"].open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["true\\pred", *names]
    assert [r[0] for r in rows[1:]] == names
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == m["confusion_matrix"]

    with paths["per_class"].open(newline="") as fh:
        per_class = list(csv.DictReader(fh))
    assert list(per_class[0]) == ["class", "precision", "recall", "f1", "support"]
    for written, row in zip(per_class, m["per_class"], strict=True):
        assert written["class"] == row["class"]
        assert float(written["precision"]) == pytest.approx(row["precision"])
        assert float(written["recall"]) == pytest.approx(row["recall"])
        assert float(written["f1"]) == pytest.approx(row["f1"])
        assert int(written["support"]) == row["support"]


def _confident(labels, num_classes, predicted=None):
    """Probabilities that put 0.9 on ``predicted`` (default: the true label) in every row."""
    predicted = labels if predicted is None else predicted
    probs = np.full((len(labels), num_classes), 0.1 / (num_classes - 1))
    probs[np.arange(len(labels)), predicted] = 0.9
    return probs


def test_a_perfect_model_on_a_split_without_one_class_scores_one():
    # The case: a perfect model, a test split lacking one of three training classes.
    y = np.array([0, 0, 1, 1, 1])
    metrics = classification_metrics(y, _confident(y, 3), ["cat", "dog", "frog"])
    assert metrics["f1_macro"] == 1.0 and metrics["precision_macro"] == 1.0 and metrics["recall_macro"] == 1.0
    assert metrics["f1_weighted"] == 1.0
    assert metrics["absent_classes"] == ["frog"]
    assert metrics["per_class"][2] == {"class": "frog", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "absent from this set, left out of the averages: frog" in format_metrics_table(metrics)


def test_averages_over_present_classes_match_sklearn_labels_even_with_predictions_of_absent_ones():
    # Another case of the kind: mistakes, and one image predicted as the absent class.
    y = np.array([0, 0, 0, 1, 1, 3])
    pred = np.array([0, 0, 2, 1, 0, 3])
    metrics = classification_metrics(y, _confident(y, 4, pred), ["a", "b", "c", "d"])
    present = [0, 1, 3]
    for average in ("macro", "weighted"):
        assert metrics[f"f1_{average}"] == pytest.approx(f1_score(y, pred, labels=present, average=average))
        assert metrics[f"precision_{average}"] == pytest.approx(
            precision_score(y, pred, labels=present, average=average, zero_division=0))
        assert metrics[f"recall_{average}"] == pytest.approx(recall_score(y, pred, labels=present, average=average))
    assert metrics["absent_classes"] == ["c"]
    assert metrics["confusion_matrix"][0][2] == 1  # the mistake still shows in the matrix
