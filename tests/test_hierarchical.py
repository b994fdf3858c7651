"""Coarse + fine classification: dataset layouts, the two-level head and loss, consistency,
training end to end, and checkpoint -> eval / predict with coarse columns."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST, make_image
from run_files import card

import imgcls
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.data.hierarchy import (CIFAR100_SUPERCLASSES, Hierarchy, attach_hierarchy, cifar100_map,
                                   read_mapping_csv)
from imgcls.data.sources import DatasetError, discover
from imgcls.metrics.hierarchy import consistency_rate, hierarchy_metrics
from imgcls.models.classifier import build_model
from imgcls.training.losses import HierarchicalLoss, build_criterion

# Two coarse classes of two colours each; the fine colours within a group stay separable.
TREE = {"warm": {"red": (210, 40, 40), "orange": (230, 150, 30)},
        "cool": {"blue": (40, 60, 210), "green": (40, 190, 60)}}


def make_nested(root, per_class=6, start_seed=0):
    for g, (coarse, fines) in enumerate(TREE.items()):
        for f, (fine, colour) in enumerate(fines.items()):
            for i in range(per_class):
                make_image(root / coarse / fine / f"{fine}_{i:02d}.jpg", colour, seed=start_seed + 100 * (2 * g + f) + i)
    return root


@pytest.fixture
def nested_dataset(tmp_path):
    root = tmp_path / "nested"
    make_nested(root / "train", per_class=8)
    make_nested(root / "val", per_class=3, start_seed=50)
    make_nested(root / "test", per_class=3, start_seed=80)
    return root


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- layouts


def test_nested_folders_give_fine_classes_and_their_coarse_folder(nested_dataset):
    data = discover(nested_dataset, nested=True)
    assert data.classes == ["blue", "green", "orange", "red"]
    assert {s.coarse for s in data.splits["train"] if s.label == "orange"} == {"warm"}
    config = RunConfig().with_overrides({"data.hierarchy": "folders"})
    hierarchy = attach_hierarchy(config.data, data)
    assert hierarchy.coarse_classes == ["cool", "warm"]
    assert hierarchy.parent.tolist() == [0, 0, 1, 1]
    assert config.data.hierarchy_map == {"blue": "cool", "green": "cool", "orange": "warm", "red": "warm"}
    # Without nested=True the same tree reads as two classes (the old, unchanged behaviour).
    assert discover(nested_dataset).classes == ["cool", "warm"]


def test_nested_folder_errors_name_the_problem(tmp_path):
    root = make_nested(tmp_path / "a")
    make_image(root / "cool" / "stray.jpg", (0, 0, 0))
    with pytest.raises(DatasetError, match="stray.jpg.*coarse folder 'cool'"):
        discover(root, nested=True)
    twice = make_nested(tmp_path / "b")
    make_image(twice / "cool" / "red" / "x.jpg", (200, 40, 40))
    data = discover(twice, nested=True)
    with pytest.raises(DatasetError, match="'red' appears under coarse folders"):
        attach_hierarchy(RunConfig().with_overrides({"data.hierarchy": "folders"}).data, data)


def test_csv_mapping_with_header_and_clear_errors(tmp_path, split_dataset):
    mapping = tmp_path / "h.csv"
    mapping.write_text("fine,coarse\nred,warm\ngreen,cool\n\nblue,cool\nunused,other\n")
    assert read_mapping_csv(mapping) == {"red": "warm", "green": "cool", "blue": "cool", "unused": "other"}
    config = RunConfig().with_overrides({"data.hierarchy": str(mapping)})
    hierarchy = attach_hierarchy(config.data, discover(split_dataset))
    assert hierarchy.coarse_classes == ["cool", "warm"]  # 'other' has no class in the data: no coarse class
    assert config.data.hierarchy_map == {"blue": "cool", "green": "cool", "red": "warm"}

    (tmp_path / "missing.csv").write_text("red,warm\ngreen,cool\n")
    with pytest.raises(DatasetError, match="no coarse class for \\['blue'\\]"):
        attach_hierarchy(RunConfig().with_overrides({"data.hierarchy": str(tmp_path / "missing.csv")}).data,
                         discover(split_dataset))
    (tmp_path / "conflict.csv").write_text("red,warm\nred,cool\n")
    with pytest.raises(DatasetError, match="conflict.csv:2: 'red' is mapped to both"):
        read_mapping_csv(tmp_path / "conflict.csv")
    (tmp_path / "bad.csv").write_text("red;warm\n")
    with pytest.raises(DatasetError, match="bad.csv:1: expected 'fine,coarse'"):
        read_mapping_csv(tmp_path / "bad.csv")


def test_builtin_cifar100_mapping():
    mapping = cifar100_map()
    assert len(mapping) == 100 and len(CIFAR100_SUPERCLASSES) == 20
    assert all(len(fines) == 5 for fines in CIFAR100_SUPERCLASSES.values())
    assert mapping["maple_tree"] == "trees" and mapping["lawn_mower"] == "vehicles_2"


# ----------------------------------------------------------------------------- model, loss, metrics


def test_head_sees_features_and_coarse_softmax_and_forward_returns_fine():
    config = RunConfig().with_overrides({"model.name": "test_efficientnet", "pretrained": False,
                                         "data.hierarchy_map": {"a": "x", "b": "x", "c": "y"}})
    model, _ = build_model(config.model, config.data, 3)
    model.eval()
    assert model.hierarchical
    images = torch.randn(2, 3, 32, 32)
    coarse, fine = model(images, levels=True)
    assert coarse.shape == (2, 2) and fine.shape == (2, 3)
    assert torch.equal(model(images), fine)
    features = model.backbone.num_features
    assert model.head.fine.layers[-1].in_features == features + 2


def test_hierarchical_loss_by_hand():
    parent = torch.tensor([0, 0, 1])
    coarse = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    fine = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([1, 2])
    loss = HierarchicalLoss(parent, coarse_weight=0.3, fine_weight=0.7)((coarse, fine), targets)

    def ce(logits, target):
        return math.log(sum(math.exp(v) for v in logits)) - logits[target]

    expected_coarse = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    expected_fine = (ce([1.0, 0.0, -1.0], 1) + ce([0.0, 0.0, 3.0], 2)) / 2
    assert loss.item() == pytest.approx(0.3 * expected_coarse + 0.7 * expected_fine, rel=1e-6)
    # Soft (MixUp) targets: the coarse target is the fine mass summed per coarse class.
    soft = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    soft_loss = HierarchicalLoss(parent, 1.0, 0.0)((coarse, fine), soft)
    logp = torch.log_softmax(coarse, 1)
    assert soft_loss.item() == pytest.approx(-(0.75 * logp[0, 0] + 0.25 * logp[0, 1] + logp[1, 1]).item() / 2)
    with pytest.raises(ValueError, match="coarse-weight"):
        HierarchicalLoss(parent, 0.0, 0.0)


def test_criterion_is_hierarchical_only_with_a_map(split_dataset):
    data = discover(split_dataset)
    flat = RunConfig()
    assert not getattr(build_criterion(flat, data), "wants_levels", False)
    levels = RunConfig().with_overrides({"data.hierarchy_map": {"red": "warm", "green": "cool", "blue": "cool"}})
    assert build_criterion(levels, data).wants_levels


def test_consistency_and_coarse_metrics_by_hand():
    hierarchy = Hierarchy.from_map(["a", "b", "c", "d"], {"a": "x", "b": "x", "c": "y", "d": "y"})
    fine = np.array([[0.7, 0.1, 0.1, 0.1],   # a (x)
                     [0.1, 0.2, 0.6, 0.1],   # c (y)
                     [0.1, 0.45, 0.3, 0.15],  # b (x); summed x 0.55 > y 0.45
                     [0.0, 0.1, 0.2, 0.7]])  # d (y)
    coarse = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])  # x, x, y, y
    targets = np.array([0, 1, 3, 3])  # a, b, d, d -> coarse x, x, y, y
    # predicted fine's parent: x, y, x, y vs predicted coarse x, x, y, y -> rows 0 and 3 agree
    assert consistency_rate(fine, coarse, hierarchy) == 0.5
    m = hierarchy_metrics(targets, fine, coarse, hierarchy, topk=1)
    assert m["consistency"] == 0.5
    assert m["coarse"]["top1"] == 1.0  # coarse head: x, x, y, y all right
    assert m["coarse_top1_from_fine"] == 0.5  # summed: x, y, x, y vs x, x, y, y
    assert m["both_top1"] == 0.5  # rows 0 (a, x) and 3 (d, y) are right at both levels


# ----------------------------------------------------------------------------- end to end


def test_train_eval_predict_hierarchical_model(nested_dataset, tmp_path, capsys):
    result = imgcls.train(nested_dataset, out_dir=str(tmp_path / "runs"), name="h", hierarchy="folders",
                          coarse_weight=0.5, evaluate=False,
                          **dict(FAST, epochs=3, lr=0.01, backbone_lr=0.01, label_smoothing=0.0))
    rows = _read_csv(result.run_dir / "metrics.csv")
    assert len(rows) == 3
    for row in rows:
        for key in ("train_loss", "val_loss", "val_coarse_loss", "val_coarse_acc", "val_consistency"):
            assert math.isfinite(float(row[key])), key
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # 0.5 * coarse CE + fine CE

    config = RunConfig.load(result.run_dir / "config.yaml")
    assert config.data.hierarchy_map == {"blue": "cool", "green": "cool", "orange": "warm", "red": "warm"}
    assert card(result.best_checkpoint).hierarchy == config.data.hierarchy_map

    assert main(["eval", str(result.run_dir), "--no-report", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "coarse top-1" in printed and "consistency" in printed
    test = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert test["split"] == "test" and test["coarse"]["num_classes"] == 2 and 0.0 <= test["consistency"] <= 1.0
    assert (tmp_path / "ev" / "eval_coarse_confusion_matrix.csv").is_file()
    eval_rows = _read_csv(tmp_path / "ev" / "eval_predictions.csv")
    assert {r["coarse_label"] for r in eval_rows} == {"cool", "warm"}
    assert np.mean([int(r["consistent"]) for r in eval_rows]) == pytest.approx(test["consistency"])
    assert np.mean([r["coarse_label"] == r["coarse_predicted"] for r in eval_rows]) == \
        pytest.approx(test["coarse"]["top1"])

    classifier = imgcls.load(result.run_dir)
    assert classifier.hierarchy.coarse_classes == ["cool", "warm"]
    predictions = classifier.predict(nested_dataset / "test")
    assert {r["coarse_label"] for r in predictions} <= {"cool", "warm"}
    assert all(0.0 < r["coarse_probability"] <= 1.0 for r in predictions)

    out = tmp_path / "pred.csv"
    assert main(["predict", str(result.run_dir), str(nested_dataset / "test" / "warm"), "--out", str(out)]) == 0
    written = _read_csv(out)
    assert len(written) == 6 and {"coarse_label", "coarse_probability"} <= set(written[0])
