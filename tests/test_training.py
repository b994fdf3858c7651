"""End to end on tiny generated data: train, resume exactly, survive bad files, eval, predict."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from conftest import FAST, make_class_folders, make_image
from run_files import card, state, weights
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.training import loop


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_a_complete_run(split_dataset, tmp_path):
    result = imgcls.train(split_dataset, out_dir=str(tmp_path / "runs"), name="r", **dict(FAST, epochs=2))
    run = result.run_dir
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "last.state.pt", "train.log"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = _read_csv(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "lr", "seconds"} <= set(rows[0])
    assert set(result.metrics) == {"val", "test"}
    assert json.loads((run / "eval-test" / "eval.json").read_text())["n"] == 9
    config = imgcls.RunConfig.load(run / "config.yaml")
    assert config.model.name == "test_efficientnet" and config.data.path == str(split_dataset)
    saved = state(run)
    assert saved.epoch == 2 and saved.optimizer["state"] and saved.scheduler is not None and saved.schedule == [2]
    last = card(run / "last.safetensors")
    assert last.classes == ["blue", "green", "red"] and last.epoch == 2 and last.preprocessing["image_size"] == 32


def test_learns_the_colour_task(flat_dataset, tmp_path):
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), val_fraction=0.3,
                          **dict(FAST, epochs=6, lr=0.01, backbone_lr=0.01, label_smoothing=0.0))
    assert result.metrics["val"]["top1"] >= 0.8


def _stop_after(epochs: int):
    def callback(trainer, row):
        if row["epoch"] >= epochs:
            trainer.stop_requested = True
    return callback


def test_resume_ends_with_the_same_weights(flat_dataset, tmp_path):
    options = dict(FAST, epochs=3, head_epochs=1, out_dir=str(tmp_path), workers=0)
    whole = imgcls.train(flat_dataset, name="whole", evaluate=False, **options)
    stopped = loop.train(imgcls.make_config(flat_dataset, name="stopped", **options), callbacks=[_stop_after(2)])
    assert state(stopped.run_dir).epoch == 2
    resumed = imgcls.train(resume=stopped.run_dir, evaluate=False)
    a, b = state(whole.run_dir), state(resumed.run_dir)
    assert a.epoch == b.epoch == 3
    weights_a, weights_b = weights(whole.run_dir / "last.safetensors"), weights(resumed.run_dir / "last.safetensors")
    for key, tensor in weights_a.items():
        assert torch.equal(tensor, weights_b[key]), key
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    assert len(_read_csv(resumed.run_dir / "metrics.csv")) == 3


def test_resume_can_extend_a_finished_run(flat_dataset, tmp_path):
    first = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False, **dict(FAST, epochs=1))
    longer = imgcls.train(resume=first.run_dir, epochs=2, evaluate=False)
    assert [r["epoch"] for r in longer.history] == [1, 2]


def _plant_bad_files(train_dir):
    cls = train_dir / "red"
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "text.jpg").write_text("not really a jpeg\n" * 20)
    good = make_image(cls / "to_truncate.jpg", (200, 40, 40), size=(64, 64), seed=5)
    data = good.read_bytes()
    (cls / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.unlink()
    base = Image.fromarray(np.full((30, 30, 3), (200, 40, 40), np.uint8))
    base.convert("CMYK").save(cls / "cmyk.jpg")
    Image.fromarray((np.ones((30, 30)) * 50000).astype(np.uint16)).save(cls / "deep16.png")
    base.convert("L").save(cls / "gray.png")
    palette = base.convert("P")
    palette.save(cls / "palette.png", transparency=0)
    return {"zero.jpg", "text.jpg", "truncated.jpg"}


def test_bad_files_are_skipped_and_named(split_dataset, tmp_path, capsys):
    bad = _plant_bad_files(split_dataset / "train")
    result = imgcls.train(split_dataset, out_dir=str(tmp_path), **dict(FAST, epochs=2, batch_size=4))
    assert len(result.history) == 2
    listed = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in _read_csv(result.run_dir / "bad_files.csv")}
    assert set(listed) == bad
    assert "empty" in listed["zero.jpg"] and "not an image" in listed["text.jpg"]
    log = (result.run_dir / "train.log").read_text()
    assert all(log.count(name) == 1 for name in bad)  # one warning per file, not per epoch


def test_cli_train_eval_predict(split_dataset, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["train", str(split_dataset), "--out-dir", str(runs), "--name", "cli", "--model", "test_efficientnet",
            "--no-pretrained", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--epochs", "1",
            "--head-epochs", "0", "--head", "mlp:16"]
    assert main(args) == 0
    run = runs / "cli"
    assert "best checkpoint" in capsys.readouterr().out

    assert main(["eval", str(run), "--split", "test", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out.lower() or "top1" in out.lower()
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    rows = _read_csv(tmp_path / "ev" / "eval_predictions.csv")
    assert metrics["top1"] == np.mean([r["label"] == r["predicted"] for r in rows])

    folder = tmp_path / "unlabelled"
    make_class_folders(folder, per_class=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    assert main(["predict", str(run / "best.safetensors"), str(folder), "--out", str(tmp_path / "p.csv"), "--topk", "2"]) == 0
    preds = {r["path"].rsplit("/", 1)[-1]: r for r in _read_csv(tmp_path / "p.csv")}
    assert len(preds) == 7 and preds["broken.jpg"]["error"] and not preds["broken.jpg"]["label"]
    good = [r for name, r in preds.items() if name != "broken.jpg"]
    assert all(r["label"] in ("blue", "green", "red") and r["label_2"] and not r["error"] for r in good)
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in good)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error:") and "missing" in err and "\n" not in err
    assert main(["eval", str(tmp_path / "nothing.safetensors")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_api_predict_in_memory_images(flat_dataset, tmp_path):
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False, **FAST)
    classifier = imgcls.load(result.run_dir)
    image = Image.open(next((flat_dataset / "red").iterdir()))
    rows = classifier.predict([image, image.convert("L")], topk=2)
    assert len(rows) == 2 and all(len(r["topk"]) == 2 for r in rows)
    probs = classifier.predict_proba([image])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0, atol=1e-5)
