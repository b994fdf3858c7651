"""``imgcls runs``: rows read from run folders, sorting, table, CSV and Markdown."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import FAST
from torch import nn

import imgcls
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.inference import artifact
from imgcls.inference.card import ModelCard
from imgcls.evaluation.leaderboard import KEYS, find_runs, format_table, leaderboard, run_row, write_markdown


def _fake_run(root, name, *, model="m", lr=1e-3, val_acc=(0.5, 0.7, 0.6), width=4, eval_json=None):
    """A run folder as the trainer leaves it, without training: config, metrics.csv, best.safetensors."""
    run = root / name
    run.mkdir(parents=True)
    config = RunConfig().with_overrides({"name": name, "model.name": model, "lr": lr, "epochs": len(val_acc)})
    config.save(run / "config.yaml")
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc",
                                         "val_top3", "lr", "seconds"])
        writer.writeheader()
        for epoch, acc in enumerate(val_acc, start=1):
            writer.writerow({"epoch": epoch, "phase": "finetune", "train_loss": 1.0, "train_acc": acc + 0.1,
                             "val_loss": 1.0 - acc, "val_acc": acc, "val_top3": min(1.0, acc + 0.2), "lr": lr,
                             "seconds": 10.0 * epoch})
    model = nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    pre = {"image_size": 5, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    card = ModelCard(classes=["x", "y"], preprocessing=pre, config=config.to_dict())
    artifact.save_model(run / artifact.BEST, model.state_dict(), card)
    if eval_json is not None:
        (run / "eval-val").mkdir()
        (run / "eval-val" / "eval.json").write_text(json.dumps(eval_json))
    return run, model


def test_row_is_read_from_the_run_files(tmp_path):
    run, model = _fake_run(tmp_path, "a", lr=3e-4, val_acc=(0.5, 0.8, 0.6))
    row = run_row(run)
    params = sum(p.numel() for p in model.parameters())  # BatchNorm buffers are not parameters
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert row["params_m"] == pytest.approx(params / 1e6)
    assert row["mb"] == pytest.approx(size / 1e6)
    assert row["lr"] == 3e-4 and row["model"] == "m" and row["epochs"] == 3
    # best.safetensors holds the best val_acc epoch (2): its train accuracy and val scores.
    assert row["val_top1"] == 0.8 and row["train_acc"] == pytest.approx(0.9) and row["val_topk"] == 1.0
    assert row["topk"] == 3 and row["val_f1_macro"] is None
    assert row["wall_s"] == 60.0


def test_eval_json_is_preferred_when_present(tmp_path):
    run, _ = _fake_run(tmp_path, "a", eval_json={"top1": 0.77, "topk": 5, "topk_accuracy": 0.99, "f1_macro": 0.7})
    row = run_row(run)
    assert (row["val_top1"], row["topk"], row["val_topk"], row["val_f1_macro"]) == (0.77, 5, 0.99, 0.7)


def test_sorting_best_first_and_reversed(tmp_path):
    _fake_run(tmp_path, "low", val_acc=(0.4,), width=8)
    _fake_run(tmp_path, "high", val_acc=(0.9,), width=2)
    _fake_run(tmp_path / "nested", "mid", val_acc=(0.6,), width=4)
    (tmp_path / "not-a-run").mkdir()
    assert len(find_runs(tmp_path)) == 3
    assert [r["name"] for r in leaderboard(tmp_path)] == ["high", "mid", "low"]
    assert [r["name"] for r in leaderboard(tmp_path, reverse=True)] == ["low", "mid", "high"]
    assert [r["name"] for r in leaderboard(tmp_path, sort="params_m")] == ["high", "mid", "low"]  # smallest first
    assert [r["name"] for r in leaderboard(tmp_path, sort="name")] == ["high", "low", "mid"]
    with pytest.raises(ValueError, match="--sort"):
        leaderboard(tmp_path, sort="bogus")


def test_missing_values_sort_last_and_print_as_dashes(tmp_path):
    _fake_run(tmp_path, "scored", val_acc=(0.5,))
    run, _ = _fake_run(tmp_path, "crashed", val_acc=(0.9,))
    (run / "metrics.csv").write_text("epoch,phase\n")  # died before its first epoch ended
    rows = leaderboard(tmp_path)
    assert [r["name"] for r in rows] == ["scored", "crashed"]
    table = format_table(rows).splitlines()
    assert table[0].split()[:2] == ["run", "model"] and "crashed" in table[-1] and " - " in table[-1]
    markdown = write_markdown(rows, tmp_path / "lb.md").read_text().splitlines()
    assert markdown[0].startswith("| run | model |") and len(markdown) == 4


def test_runs_command_prints_and_writes_csv_and_markdown(tmp_path, capsys):
    _fake_run(tmp_path, "b", val_acc=(0.3,))
    _fake_run(tmp_path, "a", val_acc=(0.6,))
    assert main(["runs", str(tmp_path), "--sort", "val_top1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["a", "b"]
    with (tmp_path / "leaderboard.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == KEYS and [r["name"] for r in rows] == ["a", "b"]
    assert float(rows[0]["val_top1"]) == 0.6
    assert (tmp_path / "leaderboard.md").read_text().count("\n") == 4


def test_runs_command_errors_are_one_line(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 1
    assert "no runs found" in capsys.readouterr().err
    _fake_run(tmp_path, "a")
    assert main(["runs", str(tmp_path), "--sort", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val_top1" in err


def test_a_real_run_gets_a_complete_row(split_dataset, tmp_path):
    result = imgcls.train(split_dataset, out_dir=str(tmp_path / "runs"), name="real", **dict(FAST, epochs=1))
    row = leaderboard(tmp_path / "runs")[0]
    model = imgcls.load(result.run_dir).torch_module
    assert row["name"] == "real" and row["model"] == "test_efficientnet"
    assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert row["val_top1"] == result.metrics["val"]["top1"]
    assert row["val_f1_macro"] == result.metrics["val"]["f1_macro"]
    assert all(row[key] is not None for key in KEYS)
