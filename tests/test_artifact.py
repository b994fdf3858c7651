"""Model files never run code: safetensors + a JSON card; old pickles only through `imgcls convert`."""

from __future__ import annotations

import builtins
import csv
import json
import random

import numpy as np
import pytest
import torch
from conftest import FAST, make_class_folders
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.deploy.serve import ServeSettings, app_from_settings
from imgcls.errors import CheckpointError
from imgcls.evaluation.leaderboard import leaderboard
from imgcls.inference import artifact
from imgcls.inference.card import ModelCard


class _Payload:
    """Unpickling this object creates ``marker``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def _hostile_run(root, marker):
    """A run folder whose checkpoints unpickle into code: best.pt, last.pt and last.state.pt."""
    run = root / "hostile"
    run.mkdir(parents=True)
    imgcls.RunConfig().with_overrides({"name": "hostile"}).save(run / "config.yaml")
    content = {"format": "imgcls-checkpoint/1", "payload": _Payload(marker), "classes": ["a", "b"]}
    for name in ("best.pt", "last.pt", "last.state.pt"):
        torch.save(content, run / name)
    return run


def test_no_command_unpickles_a_hostile_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _hostile_run(tmp_path / "runs", marker)
    images = make_class_folders(tmp_path / "imgs", per_class=1)
    for target in (run, run / "best.pt"):
        assert main(["predict", str(target), str(images), "--out", str(tmp_path / "p.csv")]) == 2
        assert "imgcls convert" in capsys.readouterr().err
        assert main(["eval", str(target), str(images)]) == 2
        assert main(["export", str(target), "--out", str(tmp_path / "m.onnx")]) == 2
        with pytest.raises(CheckpointError, match="pickled checkpoint"):
            app_from_settings(ServeSettings(model=str(target)), api_key=None)  # what `imgcls serve` loads
    assert main(["train", "--resume", str(run)]) == 2
    rows = leaderboard(tmp_path / "runs")  # the run is listed, its size unknown; nothing is unpickled
    assert [r["name"] for r in rows] == ["hostile"] and rows[0]["params_m"] is None
    assert main(["runs", str(tmp_path / "runs")]) == 0
    # Even the explicit conversion refuses it: its unpickler allows tensors and numpy data only.
    assert main(["convert", str(run / "best.pt")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def _old_format_checkpoint(run_dir, data):
    """A best.pt exactly as imgcls 0.1 wrote it: pickled, with numpy RNG state and numpy floats."""
    result = imgcls.train(data, out_dir=str(run_dir.parent), name=run_dir.name, evaluate=False, **FAST)
    weights = artifact.load_model_file(result.best_checkpoint)[0]
    stored = artifact.read_card(result.best_checkpoint)
    content = {
        "format": "imgcls-checkpoint/1", "config": stored.config, "classes": stored.classes,
        "preprocessing": stored.preprocessing, "model": weights, "optimizer": None, "scheduler": None,
        "scaler": {}, "epoch": 2, "step": 6, "monitor": {"metric": "val_acc", "best": np.float64(0.5)},
        "history": [{"epoch": 2, "phase": "finetune", "val_acc": np.float64(0.5)}],
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "temperature": 1.7, "hierarchy": None, "head_fit": None,
    }
    for path in run_dir.glob("*.safetensors"):
        path.unlink()
    torch.save(content, run_dir / "best.pt")
    return run_dir / "best.pt", weights


def test_old_checkpoints_are_refused_then_convert_to_the_same_model(flat_dataset, tmp_path, capsys):
    old, weights = _old_format_checkpoint(tmp_path / "runs" / "old", flat_dataset)
    with pytest.raises(CheckpointError, match="imgcls convert"):
        imgcls.load(old)
    assert main(["convert", str(old.parent)]) == 0
    assert "best.safetensors" in capsys.readouterr().out
    model = imgcls.load(old.parent, device="cpu")
    assert model.temperature == 1.7 and model.card.monitor["best"] == 0.5 and model.card.epoch == 2
    converted = artifact.load_model_file(old.parent)[0]
    assert all(torch.equal(converted[k], weights[k]) for k in weights)


def test_card_round_trip_and_atomic_update(tmp_path):
    card = ModelCard(classes=["cat", "dog"], preprocessing={"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
                     config=imgcls.RunConfig().to_dict())
    path = artifact.save_model(tmp_path / "m.safetensors", {"w": torch.arange(6.0).view(2, 3)}, card)
    assert artifact.read_card(path) == card
    updated = artifact.update_card(path, temperature=2.5)
    assert artifact.read_card(path).temperature == 2.5 == updated.temperature
    assert torch.equal(artifact.load_model_file(path)[0]["w"], torch.arange(6.0).view(2, 3))
    assert not list(tmp_path.glob("*.tmp"))  # written beside, then renamed over


def test_damaged_and_foreign_model_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    for name, message in (("junk.safetensors", "not a readable safetensors"),
                          ("foreign.safetensors", "without an imgcls model card"), ("missing", "not found")):
        assert main(["predict", str(tmp_path / name), str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_weights_that_do_not_fit_the_card_are_refused(split_dataset, tmp_path):
    result = imgcls.train(split_dataset, out_dir=str(tmp_path), evaluate=False, **dict(FAST, epochs=1))
    weights, card, _ = artifact.load_model_file(result.best_checkpoint)
    artifact.save_model(tmp_path / "wrong.safetensors", weights, card.replace(classes=["a", "b"]))
    with pytest.raises(CheckpointError, match="do not fit"):
        imgcls.load(tmp_path / "wrong.safetensors")


def test_bad_option_stops_before_any_image_is_decoded(flat_dataset, tmp_path, monkeypatch, capsys):
    def no_decoding(*_args, **_kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", no_decoding)
    for flags in (["--optimizer", "adamm"], ["--monitor", "val_accuracy"], ["--augment", "strong"],
                  ["--freeze", "most"], ["--mix-prob", "2"], ["--head", "mlp:"]):
        out = tmp_path / "runs"
        assert main(["train", str(flat_dataset), "--out-dir", str(out), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(f"imgcls: error: {flags[0]}") and err.count("\n") == 1, err
        assert not out.exists()


def test_prediction_rows_match_between_csv_and_server(split_dataset, tmp_path):
    """One row formatter: the CSV of `predict` and the server's JSON say the same thing."""
    from fastapi.testclient import TestClient

    from imgcls.deploy.serve import create_app

    result = imgcls.train(split_dataset, out_dir=str(tmp_path), evaluate=False, **dict(FAST, epochs=1))
    model = imgcls.load(result.run_dir, device="cpu")
    files = sorted((split_dataset / "test").rglob("*.jpg"))
    assert main(["predict", str(result.run_dir), *map(str, files), "--out", str(tmp_path / "p.csv"),
                 "--topk", "2"]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with TestClient(create_app(model)) as client:
        served = client.post("/predict?topk=2", files=[("f", (p.name, p.read_bytes(), "image/jpeg"))
                                                       for p in files]).json()["predictions"]
    for row, answer in zip(rows, served):
        assert row["label"] == answer["label"] and row["label_2"] == answer["topk"][1]["label"]
        assert float(row["probability"]) == pytest.approx(answer["probability"], abs=1e-5)
    assert json.loads(json.dumps(served))  # plain JSON
