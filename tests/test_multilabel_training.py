"""Multilabel end to end on tiny tile mosaics: train (cached-feature head epochs, then
fine-tuning), thresholds fitted on val, eval files, report, predict, ONNX export with the
same label sets, the server, resume, EMA/TTA, DDP, and one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from multilabel_support import LABELS, make_manifest, mosaic, read_rows

import imgcls
from conftest import FAST, make_class_folders
from imgcls.cli import main
from imgcls.deploy.export import export_checkpoint
from imgcls.deploy.serve import create_app
from imgcls.training import loop
from run_files import card, state, weights

OPTIONS = dict(FAST, epochs=12, head_epochs=2, finetune="always", lr=0.01, backbone_lr=0.01)


@dataclass
class MultilabelRun:
    manifest: Path
    run_dir: Path
    result: object


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> MultilabelRun:
    root = tmp_path_factory.mktemp("multilabel")
    manifest = make_manifest(root / "data", {"train": 60, "val": 24, "test": 24})
    result = imgcls.train(manifest, out_dir=str(root / "runs"), name="ml", **OPTIONS)
    return MultilabelRun(manifest, result.run_dir, result)


def test_train_learns_label_sets_and_fits_thresholds(run):
    saved = card(run.run_dir / "best.safetensors")
    assert saved.task == "multilabel" and saved.classes == LABELS
    assert saved.thresholds is not None and len(saved.thresholds.per_label) == 3
    assert saved.thresholds.fit["split"] == "val" and saved.temperature == 1.0 and saved.calibration is None
    config = imgcls.RunConfig.load(run.run_dir / "config.yaml")
    assert config.data.task == "multilabel" and config.train.monitor == "val_map"  # resolved, and recorded
    rows = read_rows(run.run_dir / "metrics.csv")
    assert [r["phase"] for r in rows] == ["head"] * 2 + ["finetune"] * 10
    assert {"train_loss", "train_f1", "val_loss", "val_map", "val_f1"} <= set(rows[0]) and "val_acc" not in rows[0]
    test = run.result.metrics["test"]
    assert test["task"] == "multilabel" and test["n"] == 24
    assert test["map_macro"] > 0.9 and test["f1_samples"] > 0.8  # the tiles are easy to tell apart


def test_eval_files_and_the_report(run):
    folder = run.run_dir / "eval-test"
    metrics = json.loads((folder / "eval.json").read_text())
    assert metrics["thresholds"] == card(run.run_dir / "best.safetensors").thresholds.per_label
    per_label = read_rows(folder / "eval_per_label.csv")
    assert [r["class"] for r in per_label] == LABELS
    images = read_rows(folder / "eval_predictions.csv")
    assert len(images) == 24 and {"path", "labels", "predicted", "exact", "loss", "p_red"} <= set(images[0])
    assert np.mean([int(r["exact"]) for r in images]) == pytest.approx(metrics["subset_accuracy"])
    assert len(read_rows(folder / "eval_cooccurrence.csv")) == 3
    html = (run.run_dir / "report.html").read_text()
    for section in ('id="labels"', 'id="pr"', 'id="cooccurrence"', 'id="thresholds"', 'id="gallery"',
                    "mAP (macro)", "Grad-CAM of", "predicted but not true"):
        assert section in html, section
    assert 'id="confusion"' not in html and 'id="calibration"' not in html


def test_cli_eval_prints_the_multilabel_table(run, tmp_path, capsys):
    assert main(["eval", str(run.run_dir), "--split", "val", "--out", str(tmp_path / "ev"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "mAP (macro / micro)" in out and "Hamming loss" in out and "Per label" in out


def test_predict_and_onnx_give_the_same_label_sets(run, tmp_path):
    images = [str(p) for p in sorted((run.manifest.parent / "img").glob("*.png"))[::2]]  # test, train and val
    assert main(["predict", str(run.run_dir), *images, "--out", str(tmp_path / "torch.csv")]) == 0
    report = export_checkpoint(run.run_dir)
    assert report.parity_max_abs_diff < 1e-4
    assert main(["predict", str(report.path), *images, "--out", str(tmp_path / "onnx.csv")]) == 0
    torch_rows, onnx_rows = read_rows(tmp_path / "torch.csv"), read_rows(tmp_path / "onnx.csv")
    assert list(torch_rows[0]) == ["path", "labels", "p_blue", "p_green", "p_red", "error"]
    assert [r["labels"] for r in torch_rows] == [r["labels"] for r in onnx_rows] and len(torch_rows) == 54
    onnx = imgcls.load(report.path)
    meta = {p.key: p.value for p in __import__("onnx").load(str(report.path)).metadata_props}
    assert json.loads(meta["task"]) == "multilabel"
    assert json.loads(meta["thresholds"]) == card(run.run_dir / "best.safetensors").thresholds.per_label
    assert onnx.multilabel and onnx.thresholds.tolist() == json.loads(meta["thresholds"])


def test_the_server_returns_the_set_and_every_probability(run):
    model = imgcls.load(run.run_dir, device="cpu")
    image = run.manifest.parent / "img" / "test_0084.png"
    expected = model.predict([image])[0]
    with TestClient(create_app(model)) as client:
        body = client.post("/predict", files={"file": ("x.png", image.read_bytes(), "image/png")}).json()
        info = client.get("/model").json()
    prediction = body["predictions"][0]
    assert prediction["labels"] == expected["labels"]
    assert prediction["probabilities"] == pytest.approx(expected["probabilities"])
    assert info["task"] == "multilabel" and info["thresholds"] == pytest.approx(model.thresholds.tolist())


def test_python_api_predicts_pil_images_as_files(run, tmp_path):
    model = imgcls.load(run.run_dir, device="cpu")
    images = [mosaic(["red", "red", "blue", None], seed=1), mosaic(["green", None, None, None], seed=2)]
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for image, path in zip(images, paths):
        image.save(path)
    from_memory, from_files = model.predict(images), model.predict(paths)
    assert [r["labels"] for r in from_memory] == [r["labels"] for r in from_files]
    assert from_memory[0]["probabilities"] == pytest.approx(from_files[0]["probabilities"], abs=1e-6)


def test_resume_ends_with_the_same_weights(tmp_path):
    manifest = make_manifest(tmp_path / "data", {"train": 24, "val": 8})
    options = dict(FAST, epochs=3, head_epochs=1, out_dir=str(tmp_path / "runs"))
    whole = imgcls.train(manifest, name="whole", evaluate=False, **options)

    def stop_after_two(trainer, row):
        trainer.stop_requested = row["epoch"] >= 2

    stopped = loop.train(imgcls.make_config(manifest, name="stopped", **options), callbacks=[stop_after_two])
    resumed = imgcls.train(resume=stopped.run_dir, evaluate=False)
    a, b = weights(whole.run_dir / "last.safetensors"), weights(resumed.run_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_map"] for r in state(whole.run_dir).history] == [r["val_map"] for r in state(resumed.run_dir).history]


def test_asl_balance_ema_and_tta(tmp_path):
    manifest = make_manifest(tmp_path / "data", {"train": 24, "val": 8})
    result = imgcls.train(manifest, out_dir=str(tmp_path / "runs"), loss="asl", balance="weights", ema=True,
                          tta="flip", report=False, **dict(FAST, epochs=1))
    val = result.metrics["val"]
    assert val["tta"] == "flip" and set(val["without_tta"]) == {"map_macro", "map_micro", "f1_samples", "f1_micro",
                                                               "loss"}
    saved = card(result.best_checkpoint)
    assert saved.ema and saved.tta == "flip" and np.isfinite(state(result.run_dir).history[0]["train_loss"])


def test_refusals_are_one_line_before_any_work(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", {"train": 16})
    assert main(["train", str(manifest), "--mixup", "0.2", "--out-dir", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == ("imgcls: error: --mixup: not available for multilabel data (label "
                                               "sets; see docs/multilabel.md): use --loss bce|asl and --balance "
                                               "none|weights")
    folders = make_class_folders(tmp_path / "folders", per_class=3)
    assert main(["train", str(folders), "--task", "multilabel", "--out-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"imgcls: error: {folders}: --task multilabel reads label sets") and "\n" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_match_single_process_eval(tmp_path):
    manifest = make_manifest(tmp_path / "data", {"train": 24, "val": 9})
    command = [sys.executable, "-m", "imgcls", "train", str(manifest), "--out-dir", str(tmp_path / "runs"), "--name",
               "ddp", "--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
               "--workers", "0", "--head-epochs", "0", "--epochs", "1", "--device", "cpu", "--devices", "2",
               "--no-report"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ddp"
    row = state(run_dir).history[-1]
    single = imgcls.evaluate(run_dir / "last.safetensors", split="val", out_dir=tmp_path / "ev", device="cpu")
    assert single["n"] == 9
    assert row["val_map"] == pytest.approx(single["map_macro"], abs=1e-9)
    assert row["val_loss"] == pytest.approx(single["loss"], rel=1e-5)
