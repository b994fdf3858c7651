"""Fixtures shared by the export and serving tests: one tiny trained model and its ONNX export.

Training and exporting take a few seconds each, so they happen once per test session.
The model is trained until it separates the colour classes, so its probabilities are far
from uniform and parity/agreement checks compare something meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAST, make_class_folders, make_image

import imgcls


@dataclass
class TrainedRun:
    data: Path
    checkpoint: Path
    classes: list[str]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    root = tmp_path_factory.mktemp("deploy")
    data = root / "colours"
    make_class_folders(data / "train", per_class=10)
    make_class_folders(data / "val", per_class=10, start_seed=50)
    # 8 short epochs: confident, correct predictions, so int8 agreement is not decided by ties.
    options = dict(FAST, epochs=8, lr=0.01, backbone_lr=0.01, label_smoothing=0.0)
    result = imgcls.train(data, out_dir=str(root / "runs"), name="tiny", evaluate=False, **options)
    checkpoint = result.best_checkpoint
    return TrainedRun(data, checkpoint, imgcls.load(checkpoint, device="cpu").classes)


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """fp32 + static int8 export of the trained run (the ExportReport)."""
    from imgcls.deploy.export import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export_checkpoint(trained_run.checkpoint, out, int8=True)


def sample_image(path: Path, colour=(200, 40, 40), size=(160, 120), fmt: str | None = None) -> Path:
    return make_image(path, colour, size=size, seed=7, fmt=fmt)
