"""A run and the data or settings it is resumed with must agree; what may change is documented."""

from __future__ import annotations

import pytest
from conftest import COLOURS, FAST, make_class_folders
from run_files import card, state

import imgcls
from imgcls.cli import main
from imgcls.config import ConfigError, RunConfig
from imgcls.training.resume import CHANGEABLE_ON_RESUME, check_resume_config


@pytest.fixture
def finished(flat_dataset, tmp_path):
    return imgcls.train(flat_dataset, out_dir=str(tmp_path / "runs"), name="r", evaluate=False, **dict(FAST, epochs=3))


def _snapshot(run):
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}


def test_other_classes_are_refused_and_nothing_is_relabelled(finished, tmp_path, capsys):
    # bird/cat/dog vs cat/dog/frog in the issue; here red/green/blue vs red/green/yellow.
    other = make_class_folders(tmp_path / "other", per_class=6,
                               classes={"red": COLOURS["red"], "green": COLOURS["green"], "yellow": (220, 220, 30)})
    before = _snapshot(finished.run_dir)
    assert main(["train", str(other), "--resume", str(finished.run_dir)]) == 2
    err = capsys.readouterr().err
    assert "missing ['blue'], new ['yellow']" in err and err.count("\n") == 1
    assert _snapshot(finished.run_dir) == before  # not a byte of the run folder was touched
    assert imgcls.load(finished.run_dir).classes == ["blue", "green", "red"]


def test_same_classes_in_a_moved_folder_may_resume(finished, flat_dataset, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(flat_dataset, moved)
    longer = imgcls.train(moved, resume=finished.run_dir, epochs=4, evaluate=False)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3, 4]
    assert RunConfig.load(finished.run_dir / "config.yaml").data.path == str(moved)


def test_extra_epochs_learn_on_a_new_cosine(finished):
    assert state(finished.run_dir).schedule == [3]
    longer = imgcls.train(resume=finished.run_dir, epochs=5, evaluate=False)
    rates = [row["lr"] for row in longer.history]
    assert rates[2] < 1e-6  # the planned cosine ended at (almost) zero...
    assert rates[3] > 1e-4 and rates[4] < rates[3]  # ...the added epochs start from the base rate again
    assert state(finished.run_dir).schedule == [3, 2]
    assert longer.history[3]["train_loss"] != longer.history[2]["train_loss"]


def test_settings_that_were_not_applied_are_refused(finished, capsys):
    config_before = (finished.run_dir / "config.yaml").read_text()
    before = _snapshot(finished.run_dir)
    for flags, option in ((["--lr", "0.5"], "--lr 0.5"), (["--model", "resnet18"], "--model 'resnet18'"),
                          (["--head", "mlp:64"], "--head 'mlp:64'"), (["--label-smoothing", "0"], "--label-smoothing"),
                          (["--epochs", "2"], "--epochs 2")):
        assert main(["train", "--resume", str(finished.run_dir), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(f"imgcls: error: {option}") and err.count("\n") == 1, err
    assert (finished.run_dir / "config.yaml").read_text() == config_before
    assert _snapshot(finished.run_dir) == before
    # ...and the run still resumes without the flag.
    assert main(["train", "--resume", str(finished.run_dir), "--epochs", "4", "--no-report"]) == 0
    assert card(finished.run_dir / "last.safetensors").epoch == 4


def test_the_changeable_settings_are_the_documented_ones():
    documented = (imgcls.__file__.rsplit("/src/", 1)[0] + "/docs/usage.md")
    text = open(documented).read()
    for key in CHANGEABLE_ON_RESUME:
        assert f"`{key}`" in text, key
    with pytest.raises(ConfigError, match="cannot change when resuming"):
        check_resume_config(RunConfig(), RunConfig().with_overrides({"seed": 3}), 1)
