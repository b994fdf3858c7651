"""Evaluating other data scores all of it and never touches the run's own results."""

from __future__ import annotations

import json

import pytest
from conftest import FAST, make_class_folders

import imgcls
from imgcls.cli import main
from imgcls.evaluation.leaderboard import leaderboard


@pytest.fixture
def run(split_dataset, tmp_path):
    return imgcls.train(split_dataset, out_dir=str(tmp_path / "runs"), name="r", **dict(FAST, epochs=1, report=False))


def _own_results(run_dir):
    return {name: (run_dir / name / "eval.json").read_text() for name in ("eval-val", "eval-test")}


def test_a_folder_of_class_folders_is_one_evaluation_set(run, tmp_path):
    new_test = make_class_folders(tmp_path / "new_test", per_class=10, start_seed=500)  # 30 images, no split folders
    own, row = _own_results(run.run_dir), leaderboard(run.run_dir.parent)[0]
    assert main(["eval", str(run.run_dir), str(new_test), "--no-report"]) == 0
    metrics = json.loads((run.run_dir / "eval-on-new_test" / "eval.json").read_text())
    assert metrics["n"] == 30 and metrics["split"] == "all" and metrics["data"] == str(new_test)
    assert _own_results(run.run_dir) == own  # eval-val/ and eval-test/ untouched
    assert leaderboard(run.run_dir.parent)[0] == row


def test_a_split_of_other_data_gets_its_own_folder_too(run, tmp_path):
    other = tmp_path / "other"
    make_class_folders(other / "train", per_class=2)
    make_class_folders(other / "val", per_class=4, start_seed=600)  # named like the run's own split
    own = _own_results(run.run_dir)
    assert main(["eval", str(run.run_dir), str(other), "--split", "val", "--no-report"]) == 0
    assert json.loads((run.run_dir / "eval-on-other-val" / "eval.json").read_text())["n"] == 12
    assert _own_results(run.run_dir) == own
    # Another model file of the run (last, not best) keeps its results apart as well.
    assert main(["eval", str(run.run_dir / "last.safetensors"), "--split", "val", "--no-report"]) == 0
    assert (run.run_dir / "eval-last-val" / "eval.json").is_file() and _own_results(run.run_dir) == own


def test_a_split_flag_on_a_folder_evaluated_whole_is_an_error(run, tmp_path, capsys):
    flat = make_class_folders(tmp_path / "flat", per_class=2)
    assert main(["eval", str(run.run_dir), str(flat), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "evaluated whole" in err and err.count("\n") == 1


def test_a_set_of_one_image_is_evaluated(run, tmp_path):
    # A one-element mask once read as the index 1 (IndexError) in the loss at the temperature.
    single = make_class_folders(tmp_path / "single", per_class=1, classes={"red": (200, 40, 40)})
    metrics = imgcls.evaluate(run.run_dir, single, out_dir=tmp_path / "ev", device="cpu")
    assert metrics["n"] == 1 and metrics["loss"] > 0 and metrics["absent_classes"] == ["blue", "green"]
