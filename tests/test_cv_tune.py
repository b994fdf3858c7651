"""k-fold cross-validation and the Optuna hyperparameter search."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path

import pytest
from conftest import FAST, make_class_folders
from multilabel_support import make_manifest

import imgcls
from imgcls.cli import main
from imgcls.apps.cv import assign_folds, cross_validate, read_oof_probabilities
from imgcls.apps.tune import DEFAULT_SPACE, MULTILABEL_SPACE, check_space, default_space, tune
from imgcls.config import MULTILABEL, SINGLE_LABEL, ConfigError, RunConfig
from imgcls.data.sources import DatasetError, Sample
from imgcls.evaluation.leaderboard import leaderboard

optuna = pytest.importorskip("optuna")


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(Path(f"{label}/{i}.jpg"), label) for label, n in counts.items() for i in range(n)]


def test_folds_are_stratified_and_reproducible():
    samples = _samples({"a": 20, "b": 10, "c": 7})
    folds = assign_folds(samples, 5, seed=0)
    assert sorted(Counter(folds)) == [0, 1, 2, 3, 4]
    for label, n in {"a": 20, "b": 10, "c": 7}.items():
        per_fold = Counter(f for f, s in zip(folds, samples) if s.label == label)
        assert max(per_fold.values()) - min(per_fold.get(k, 0) for k in range(5)) <= 1, label
        assert sum(per_fold.values()) == n
    assert assign_folds(samples, 5, seed=0) == folds
    assert assign_folds(samples, 5, seed=1) != folds
    with pytest.raises(DatasetError, match=r"classes \['c'\] have fewer images than folds"):
        assign_folds(samples, 8, seed=0)


def test_cross_validation_trains_every_fold_and_predicts_every_image_once(tmp_path):
    data = make_class_folders(tmp_path / "flat", per_class=9)
    config = imgcls.make_config(data, out_dir=str(tmp_path / "runs"), name="cv", **dict(FAST, epochs=1, report=False))
    result = cross_validate(config, folds=3)
    with open(result.folder / "folds.csv", newline="") as handle:
        folds = list(csv.DictReader(handle))
    assert len(folds) == 27 and Counter(r["fold"] for r in folds) == {"1": 9, "2": 9, "3": 9}
    paths, truth, classes, probs = read_oof_probabilities(result.folder)
    assert sorted(str(p.resolve()) for p in paths) == sorted(r["path"] for r in folds)  # each image once
    assert classes == ["blue", "green", "red"] and probs.shape == (27, 3)
    summary = json.loads((result.folder / "cv.json").read_text())
    top1 = [fold["val"]["top1"] for fold in summary["per_fold"]]
    assert summary["mean_std"]["val"]["top1"]["mean"] == pytest.approx(statistics.fmean(top1))
    assert summary["mean_std"]["val"]["top1"]["std"] == pytest.approx(statistics.stdev(top1))
    assert summary["out_of_fold"]["n"] == 27
    assert "fold-1" in (result.folder / "cv.html").read_text()
    board = {row["name"]: row for row in leaderboard(tmp_path / "runs")}
    assert {"fold-1", "fold-2", "fold-3"} <= set(board) and board["fold-1"]["options"] == "cv cv"
    aggregate = board["cv (3-fold mean)"]
    assert aggregate["val_top1"] == pytest.approx(summary["mean_std"]["val"]["top1"]["mean"])
    # The doctor's label check takes the out-of-fold probabilities instead of fitting a probe.
    assert main(["doctor", str(data), "--label-check", "--cv", str(result.folder), "--out", str(tmp_path / "dr")]) == 0
    report = json.loads((tmp_path / "dr" / "doctor.json").read_text())
    assert "label check" in report["seconds"] and "features" not in report["seconds"]


def test_search_space_is_checked_before_any_trial():
    check_space(DEFAULT_SPACE)
    with pytest.raises(ConfigError, match="--optimizer"):
        check_space({"train.optimizer": {"type": "categorical", "choices": ["adamw", "adamm"]}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \[.speed.\]"):
        check_space({"train.speed": {"type": "float", "low": 0, "high": 1}})


def test_study_resumes_and_writes_a_recipe(tmp_path):
    data = make_class_folders(tmp_path / "flat", per_class=6)
    base = imgcls.make_config(data, out_dir=str(tmp_path / "runs"), **dict(FAST, epochs=1, report=False))
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "model.head": {"type": "categorical", "choices": ["linear", "mlp:16"]}}
    first = tune(base, trials=2, space=space, name="study")
    assert first.trials == 2
    # An interrupted search: a trial was asked for and never finished.
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{first.folder / 'study.db'}")
    interrupted = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                             "model.head": optuna.distributions.CategoricalDistribution(["linear", "mlp:16"])})
    again = tune(base, trials=3, space=space, name="study")
    assert again.trials == 3
    trials = optuna.load_study(study_name="study", storage=f"sqlite:///{first.folder / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].params == interrupted.params  # the interrupted settings ran again
    runs = {row["name"] for row in leaderboard(first.folder)}
    assert {"trial-001", "trial-002", "trial-004"} <= runs
    recipe = RunConfig.load(again.best_recipe)
    assert recipe.train.lr == pytest.approx(again.best_params["train.lr"])
    assert main(["train", str(data), "--recipe", str(again.best_recipe), "--epochs", "1",
                            "--out-dir", str(tmp_path / "again"), "--no-report"]) == 0


def test_a_search_on_multilabel_data_optimises_val_map(tmp_path):
    """The default monitor val_acc means nothing for label sets: the study must optimise
    val_map, the metric each trial monitors, and report it as the best value."""
    manifest = make_manifest(tmp_path / "ml", {"train": 24, "val": 12})
    base = imgcls.make_config(manifest, out_dir=str(tmp_path / "runs"), **dict(FAST, epochs=2, report=False))
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    result = tune(base, trials=2, space=space, name="study")
    assert result.monitor == "val_map"
    summary = json.loads((result.folder / "tune.json").read_text())
    assert summary["monitor"] == "val_map"
    best_run = Path(summary["best_run"])
    with (best_run / "metrics.csv").open() as handle:
        val_map = [float(row["val_map"]) for row in csv.DictReader(handle)]
    assert result.best_value == pytest.approx(max(val_map))
    assert RunConfig.load(result.best_recipe).data.task == MULTILABEL


def test_the_default_space_follows_the_task():
    assert default_space(SINGLE_LABEL) == DEFAULT_SPACE
    multilabel = default_space(MULTILABEL)
    check_space(multilabel)
    assert "train.mixup" not in multilabel and "train.label_smoothing" not in multilabel  # refused / not applied
    assert multilabel["train.loss"]["choices"] == ["bce", "asl"] and multilabel == MULTILABEL_SPACE


def test_an_option_the_task_refuses_stops_the_search_before_any_trial(tmp_path):
    manifest = make_manifest(tmp_path / "ml", {"train": 12, "val": 6})
    base = imgcls.make_config(manifest, out_dir=str(tmp_path / "runs"), **dict(FAST, mixup=0.2, report=False))
    with pytest.raises(ConfigError, match="--mixup"):
        tune(base, trials=2, name="study")
    assert not (tmp_path / "runs" / "study").exists()


def test_the_first_trial_is_the_configuration_as_given_and_a_resumed_search_draws_new_settings(tmp_path):
    data = make_class_folders(tmp_path / "flat", per_class=6)
    base = imgcls.make_config(data, out_dir=str(tmp_path / "runs"), **dict(FAST, epochs=1, report=False, lr=0.02))
    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "train.backbone_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "model.head": {"type": "categorical", "choices": ["linear", "mlp:16"]}}
    tune(base, trials=2, space=space, name="study")
    again = tune(base, trials=3, space=space, name="study")  # a rerun continues the study
    summary = json.loads((again.folder / "tune.json").read_text())
    first, second, third = summary["trials"]
    # The baseline: the values as given; backbone_lr is left to the plan, so it is not a parameter.
    assert first["baseline"] and first["params"] == {"train.lr": 0.02, "model.head": "linear"}
    assert RunConfig.load(Path(first["run"]) / "config.yaml").train.lr == 0.02
    assert not second["baseline"] and set(second["params"]) == set(space)
    assert third["params"] != second["params"]  # not the first search's draws again
    recipe = RunConfig.load(again.best_recipe)
    assert again.best_is_baseline == summary["best_is_baseline"] == (summary["best_trial"] == 1)
    if summary["best_is_baseline"]:
        assert recipe.train.lr == 0.02 and recipe.train.backbone_lr is None
    else:
        assert recipe.train.lr == pytest.approx(again.best_params["train.lr"])


def test_the_pruner_judges_fine_tuning_epochs_only(tmp_path):
    """Head epochs on cached features say little about where fine-tuning ends: the study
    sees the fine-tuning epochs' val metric, numbered from the first fine-tuning epoch."""
    data = make_class_folders(tmp_path / "flat", per_class=6)
    base = imgcls.make_config(data, out_dir=str(tmp_path / "runs"),
                              **dict(FAST, epochs=4, head_epochs=2, finetune="always", report=False))
    result = tune(base, trials=1, space={"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
                  name="study")
    trial = optuna.load_study(study_name="study", storage=f"sqlite:///{result.folder / 'study.db'}").trials[0]
    with (Path(trial.user_attrs["run"]) / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    finetune = [float(row["val_acc"]) for row in rows if row["phase"] == "finetune"]
    assert [row["phase"] for row in rows] == ["head", "head", "finetune", "finetune"]
    assert trial.intermediate_values == pytest.approx({1: finetune[0], 2: finetune[1]})
