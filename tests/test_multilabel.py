"""Multilabel units: reading label sets, targets, the seeded val split, metrics against
scikit-learn, threshold fitting, the model card, prediction rows, losses and option checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from multilabel_support import LABELS, make_manifest, read_rows
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss,
                             precision_recall_fscore_support, roc_auc_score)
from timm.loss import AsymmetricLossMultiLabel

from conftest import make_class_folders
from imgcls.config import ConfigError, RunConfig
from imgcls.data.balance import positive_weights
from imgcls.data.sources import DatasetError, discover, read_manifest
from imgcls.errors import CheckpointError
from imgcls.evaluation.thresholds import fit_thresholds
from imgcls.inference.card import LabelThresholds, ModelCard
from imgcls.inference.predictions import Predictions
from imgcls.inference.rows import format_predictions, write_predictions_csv
from imgcls.inference.unknown import UnknownRule
from imgcls.metrics.multilabel import (best_f1_threshold, mean_average_precision, multilabel_metrics,
                                       write_multilabel_metrics)
from imgcls.training.losses import build_criterion, check_task_options


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _images(root, names):
    from conftest import make_image
    for name in names:
        make_image(root / name, (100, 100, 100))


# --- reading label sets ----------------------------------------------------------------

def test_a_labels_column_makes_the_dataset_multilabel(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    manifest = _write(tmp_path / "m.csv", "path,labels,split\na.png,dog;cat,train\nb.png,cat; cat ;,train\n"
                                          "c.png,,train\nd.png,dog,val\ne.png,cat;dog,val\n")
    data = discover(manifest)
    assert data.task == "multilabel" and data.multilabel
    assert data.classes == ["cat", "dog"]  # the sorted union of the training labels
    assert [s.labels for s in data.splits["train"]] == [("cat", "dog"), ("cat",), ()]  # sorted, deduplicated
    assert data.splits["train"][0].label == "cat;dog"
    assert data.targets("train") == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]  # an empty set is a valid negative
    assert data.counts("val") == {"cat": 1, "dog": 2}


@pytest.mark.parametrize("separator, option", [("|", "|"), (" ", "space")])
def test_other_label_separators(tmp_path, separator, option):
    _images(tmp_path, ["a.png", "b.png"])
    # a tab-delimited manifest, so that a space or a bar inside a cell is not the field delimiter
    manifest = _write(tmp_path / "m.tsv", f"path\tlabels\na.png\tcat{separator}dog\nb.png\tdog\n")
    samples = read_manifest(manifest, label_sep=option)["train"]
    assert [s.labels for s in samples] == [("cat", "dog"), ("dog",)]


def test_task_multilabel_splits_a_label_column_and_single_label_refuses_sets(tmp_path):
    _images(tmp_path, ["a.png"])
    plain = _write(tmp_path / "plain.csv", "path,label\na.png,cat;dog\n")
    assert read_manifest(plain)["train"][0].labels is None  # auto: a label column holds one label
    assert read_manifest(plain, task="multilabel")["train"][0].labels == ("cat", "dog")
    sets = _write(tmp_path / "sets.csv", "path,labels\na.png,cat;dog\n")
    with pytest.raises(DatasetError, match=r"sets.csv: .*'labels' column holds label sets: --task multilabel"):
        read_manifest(sets, task="single-label")


def test_multilabel_needs_a_manifest_and_known_labels(tmp_path):
    folders = make_class_folders(tmp_path / "folders", per_class=3)
    with pytest.raises(DatasetError, match=r"folders: --task multilabel reads label sets from a CSV manifest"):
        discover(folders, task="multilabel")
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    manifest = _write(tmp_path / "m.csv", "path,labels,split\na.png,cat,train\nb.png,dog,train\n"
                                          "c.png,cat;bird,val\n")
    with pytest.raises(DatasetError, match=r"val split has labels that no training image carries: \['bird'\]"):
        discover(manifest)


def test_the_automatic_val_split_is_seeded_and_random(tmp_path):
    manifest = make_manifest(tmp_path, {"train": 40})
    first, again, other = discover(manifest), discover(manifest), discover(manifest, split_seed=1)
    val = {s.path for s in first.splits["val"]}
    assert len(val) == 6 and not val & {s.path for s in first.splits["train"]}  # round(40 * 0.15)
    assert val == {s.path for s in again.splits["val"]} and val != {s.path for s in other.splits["val"]}
    assert "seeded, --split-seed 0" in first.automatic_val


def test_positive_weights_are_negatives_over_positives():
    targets = [[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert positive_weights(targets).tolist() == pytest.approx([1 / 3, 3.0, 1.0])  # no positive: weight 1


# --- metrics against scikit-learn ------------------------------------------------------

def _random_set(seed=0, n=60, c=4):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < [0.5, 0.3, 0.2, 0.1]).astype(int)
    probs = np.clip(0.45 * y + rng.random((n, c)) * 0.6, 0, 1)
    return y, probs


def test_multilabel_metrics_match_scikit_learn():
    y, probs = _random_set()
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    m = multilabel_metrics(y, probs, ["a", "b", "c", "d"], thresholds)
    pred = (probs >= thresholds).astype(int)
    assert m["map_macro"] == pytest.approx(average_precision_score(y, probs, average="macro"))
    assert m["map_micro"] == pytest.approx(average_precision_score(y, probs, average="micro"))
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert (m[f"precision_{average}"], m[f"recall_{average}"], m[f"f1_{average}"]) == pytest.approx((p, r, f))
    assert m["f1_samples"] == pytest.approx(f1_score(y, pred, average="samples", zero_division=1.0))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["cardinality_true"] == pytest.approx(y.sum(1).mean())
    assert m["cardinality_pred"] == pytest.approx(pred.sum(1).mean())
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for c, row in enumerate(m["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[c], r[c], f[c], s[c]))
        assert row["ap"] == pytest.approx(average_precision_score(y[:, c], probs[:, c]))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]))
        assert row["threshold"] == thresholds[c]
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert np.array_equal(m["cooccurrence_true"], y.T @ y) and np.array_equal(m["cooccurrence_pred"], pred.T @ pred)


def test_labels_absent_from_the_set_are_left_out_of_the_averages(tmp_path):
    y, probs = _random_set()
    y[:, 3] = 0
    m = multilabel_metrics(y, probs, ["a", "b", "c", "d"])
    assert m["absent_labels"] == ["d"] and m["per_class"][3]["ap"] is None and m["per_class"][3]["roc_auc"] is None
    assert m["map_macro"] == pytest.approx(average_precision_score(y[:, :3], probs[:, :3], average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(y, probs >= 0.5, labels=[0, 1, 2], average="macro",
                                                   zero_division=0))
    assert np.isnan(mean_average_precision(np.zeros((3, 2), int), np.full((3, 2), 0.5)))
    files = write_multilabel_metrics(m, tmp_path)
    assert json.loads(files["json"].read_text())["per_class"][3]["ap"] is None  # strict JSON
    rows = read_rows(files["per_label"])
    assert [r["class"] for r in rows] == ["a", "b", "c", "d"] and rows[0]["ap"] != ""


def test_an_image_with_no_label_and_no_prediction_scores_one():
    y = np.array([[0, 0], [1, 0]])
    probs = np.array([[0.1, 0.2], [0.9, 0.1]])
    assert multilabel_metrics(y, probs, ["a", "b"])["f1_samples"] == 1.0


def test_best_f1_threshold_is_the_best_candidate():
    y, probs = _random_set(seed=3, n=80)
    for c in range(3):
        threshold, best = best_f1_threshold(y[:, c], probs[:, c])
        every = max(f1_score(y[:, c], probs[:, c] >= t, zero_division=0) for t in np.unique(probs[:, c]))
        assert best == pytest.approx(every)
        assert f1_score(y[:, c], probs[:, c] >= threshold) == pytest.approx(best)
    with pytest.raises(ValueError, match="no positive"):
        best_f1_threshold([0, 0], [0.1, 0.2])


def test_thresholds_fitted_on_val_maximise_f1_and_fall_back_for_rare_labels():
    y, probs = _random_set(seed=1, n=100)
    y[:, 3] = 0
    y[:2, 3] = 1  # two positives: too few to fit a threshold of its own
    fitted = fit_thresholds(Predictions(probs=probs, targets=y, indices=np.arange(100), multilabel=True),
                            ["a", "b", "c", "d"])
    assert fitted.global_threshold == pytest.approx(best_f1_threshold(y, probs)[0])
    for c in range(3):
        assert fitted.per_label[c] == pytest.approx(best_f1_threshold(y[:, c], probs[:, c])[0])
    assert fitted.per_label[3] == fitted.global_threshold and fitted.fit["global_for"] == ["d"]
    assert fitted.fit["f1_micro_per_label"] >= fitted.fit["f1_micro_0.5"]


# --- card, rows --------------------------------------------------------------------------

def _card(**changes) -> ModelCard:
    config = RunConfig().to_dict()
    config["data"]["task"] = "multilabel"
    return ModelCard(classes=["cat", "dog", "owl"], preprocessing={"image_size": 32, "mean": [0.5] * 3,
                     "std": [0.5] * 3}, config=config, task="multilabel", **changes)


def test_the_card_keeps_the_task_and_thresholds():
    card = _card(thresholds=LabelThresholds([0.3, 0.5, 0.7], 0.45, {"split": "val"}))
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.multilabel and again.label_thresholds() == [0.3, 0.5, 0.7]
    assert _card().label_thresholds() == [0.5, 0.5, 0.5]  # not fitted yet
    broken = json.loads(card.to_json())
    broken["thresholds"]["per_label"] = [0.3, 2.0, 0.7]
    with pytest.raises(CheckpointError, match="thresholds are not one number in"):
        ModelCard.from_dict(broken, "m.safetensors")


def test_multilabel_rows_hold_the_predicted_set_and_every_probability(tmp_path):
    logits = np.array([[2.0, -1.0, 0.1], [-3.0, -2.0, -0.5]])
    rows = format_predictions(logits, ["cat", "dog", "owl"], 2, UnknownRule(), 1.0, ["a.png", "b.png"],
                              thresholds=[0.5, 0.5, 0.6])
    assert rows[0]["labels"] == ["cat"] and rows[0]["label"] == "cat"  # owl: sigmoid(0.1) = 0.525 < 0.6
    assert rows[1]["labels"] == [] and rows[1]["label"] == ""
    assert rows[0]["probabilities"]["owl"] == pytest.approx(1 / (1 + np.exp(-0.1)))
    assert [name for name, _ in rows[0]["topk"]] == ["cat", "owl"]
    out = write_predictions_csv(rows + [{"path": "bad.png", "label": "", "probability": float("nan"), "topk": [],
                                         "unknown": False, "error": "truncated"}], tmp_path / "p.csv", 2)
    written = read_rows(out)
    assert list(written[0]) == ["path", "labels", "p_cat", "p_dog", "p_owl", "error"]
    assert written[0]["labels"] == "cat" and float(written[0]["p_cat"]) == pytest.approx(1 / (1 + np.exp(-2)), 1e-5)
    assert written[2] == {"path": "bad.png", "labels": "", "p_cat": "", "p_dog": "", "p_owl": "",
                          "error": "truncated"}


# --- losses and option checks --------------------------------------------------------------

def _multilabel_setup(tmp_path, **train):
    manifest = make_manifest(tmp_path, {"train": 12, "val": 4})
    config = RunConfig.from_dict({"data": {"path": str(manifest)}, "train": train})
    data = discover(manifest)
    config.data.task = data.task
    return config, data


def test_bce_with_positive_weights_and_asl(tmp_path):
    config, data = _multilabel_setup(tmp_path, balance="weights")
    check_task_options(config)
    logits, targets = torch.randn(5, 3), torch.tensor(data.targets("train")[:5])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=positive_weights(data.targets("train")))(logits, targets)
    assert build_criterion(config, data)(logits, targets).item() == pytest.approx(expected.item())
    config, data = _multilabel_setup(tmp_path / "asl", loss="asl")
    check_task_options(config)
    asl = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")
    assert build_criterion(config, data)(logits, targets).item() == pytest.approx(asl(logits, targets).item())


def test_the_default_monitor_becomes_val_map(tmp_path):
    config, _ = _multilabel_setup(tmp_path)
    check_task_options(config)
    assert config.train.monitor == "val_map"


@pytest.mark.parametrize("train, flag", [
    ({"mixup": 0.2}, "--mixup"), ({"cutmix": 1.0}, "--cutmix"), ({"balance": "sampler"}, "--balance sampler"),
    ({"loss": "ce"}, "--loss ce"), ({"unknown_threshold": "auto"}, "--unknown-threshold"),
    ({"monitor": "val_top3"}, "--monitor val_top3")])
def test_single_label_options_are_refused_for_multilabel(tmp_path, train, flag):
    config, _ = _multilabel_setup(tmp_path, **train)
    with pytest.raises(ConfigError, match=f"^{flag}"):
        check_task_options(config)


def test_multilabel_options_are_refused_for_single_label():
    config = RunConfig.from_dict({"train": {"loss": "bce"}})
    config.data.task = "single-label"
    with pytest.raises(ConfigError, match=r"^--loss bce: a multilabel loss"):
        check_task_options(config)


def test_labels_are_the_sorted_union(tmp_path):
    data = discover(make_manifest(tmp_path, {"train": 30, "val": 5}))
    assert data.classes == LABELS
