"""OpenVINO IR export: the card in the IR's rt_info, fp32 parity and int8 (NNCF) agreement
printed by the command, and predict/eval/serve running the .xml as a backend with the same
results as the checkpoint."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys

import numpy as np
import pytest
from deploy_support import sample_image, trained_run  # noqa: F401 - fixtures
from fastapi.testclient import TestClient
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.data.sources import list_images
from imgcls.deploy.serve import create_app
from imgcls.errors import CheckpointError, UserError
from imgcls.inference.backends import OPENVINO_CARD_PATH, card_from_openvino
from run_files import card

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def openvino_export(trained_run, tmp_path_factory):
    """fp32 + int8 OpenVINO export through the command, and what it printed."""
    out = tmp_path_factory.mktemp("openvino") / "tiny.xml"
    return out, _run_export(["export", str(trained_run.checkpoint), "--format", "openvino", "--out", str(out),
                             "--int8"])


def _run_export(argv: list[str]) -> str:
    """``imgcls ARGV``'s standard output (capsys is function-scoped; the export is not)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_prints_parity_and_int8_agreement(openvino_export):
    out, printed = openvino_export
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert (out.parent / "tiny.int8.xml").is_file() and (out.parent / "tiny.int8.bin").is_file()
    parity = re.search(r"fp32 parity: max \|p_openvino - p_torch\| = ([\d.e+-]+) .* on 30 images from the "
                       r"validation split .* -> OK", printed)
    assert parity and float(parity.group(1)) <= 1e-4
    agreement = re.search(r"int8 top-1 agreement with PyTorch fp32: ([\d.]+)% on 30 validation images", printed)
    assert agreement and float(agreement.group(1)) >= 99


def test_the_card_travels_in_the_ir(trained_run, openvino_export):
    out, _ = openvino_export
    stored = card(trained_run.checkpoint)
    for path in (out, out.parent / "tiny.int8.xml"):
        model = ov.Core().read_model(str(path))
        exported = card_from_openvino(model, path)
        assert exported.classes == stored.classes and exported.preprocessing == stored.preprocessing
        assert exported.temperature == stored.temperature
        assert [o.get_any_name() for o in model.outputs] == ["logits", "probabilities"]
        assert model.inputs[0].get_partial_shape()[0].is_dynamic  # any batch size
    assert model.get_rt_info(["imgcls", "precision"]).astype(str) == "int8-nncf"


def test_load_picks_the_openvino_backend_with_the_same_probabilities(trained_run, openvino_export):
    out, _ = openvino_export
    model = imgcls.load(out, device="cpu")
    assert model.backend.name == "openvino" and model.classes == trained_run.classes
    paths = list_images([trained_run.data / "val"])
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = imgcls.load(trained_run.checkpoint, device="cpu").predict_proba(images)
    assert np.abs(model.predict_proba(images) - expected).max() <= 1e-4
    assert model.predict_proba(images[:1]).shape == (1, 3)  # batch 1 as well as 30
    int8 = imgcls.load(out.parent / "tiny.int8.xml", device="cpu").predict_proba(images)
    assert (int8.argmax(1) == expected.argmax(1)).mean() >= 0.99


def test_predict_and_eval_accept_an_openvino_file(trained_run, openvino_export, tmp_path):
    out, _ = openvino_export
    folder = trained_run.data / "val"
    assert main(["predict", str(trained_run.checkpoint), str(folder), "--out", str(tmp_path / "pt.csv")]) == 0
    assert main(["predict", str(out), str(folder), "--out", str(tmp_path / "ov.csv")]) == 0
    pt, vino = _rows(tmp_path / "pt.csv"), _rows(tmp_path / "ov.csv")
    assert [r["label"] for r in pt] == [r["label"] for r in vino] and len(pt) == 30
    for a, b in zip(pt, vino):
        assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4
    assert main(["eval", str(out), str(trained_run.data), "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert metrics["n"] == 30 and metrics["top1"] >= 0.9


def test_serve_runs_the_openvino_model(trained_run, openvino_export):
    out, _ = openvino_export
    red = sample_image(trained_run.data.parent / "serve-red.png")
    with TestClient(create_app(imgcls.load(out, device="cpu"))) as client:
        assert client.get("/model").json()["format"] == "openvino"
        response = client.post("/predict", files=[("file", ("red.png", red.read_bytes(), "image/png"))])
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "red"


def test_bad_openvino_files_are_one_line_errors(trained_run, openvino_export, tmp_path):
    out, _ = openvino_export
    missing_bin = tmp_path / "alone.xml"
    missing_bin.write_text(out.read_text())
    with pytest.raises(CheckpointError, match=r"its weights alone.bin are missing"):
        imgcls.load(missing_bin)
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("<net>not an IR")
    garbage.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable OpenVINO model"):
        imgcls.load(garbage)
    foreign = ov.Core().read_model(str(out))
    foreign_path = tmp_path / "foreign.xml"
    bare = ov.Model(foreign.outputs, foreign.get_parameters(), "bare")  # the same graph, no imgcls rt_info
    assert not bare.has_rt_info(OPENVINO_CARD_PATH)
    ov.save_model(bare, str(foreign_path))
    with pytest.raises(CheckpointError, match="not an OpenVINO export of imgcls"):
        imgcls.load(foreign_path)
    with pytest.raises(ValueError, match="OpenVINO models run on cpu"):
        imgcls.load(out, device="cuda")


def test_a_missing_extra_is_one_line_naming_it(trained_run, openvino_export, monkeypatch, capsys):
    out, _ = openvino_export
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'imgcls\[openvino\]'"):
        imgcls.load(out)
    assert main(["export", str(trained_run.checkpoint), "--format", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'imgcls[openvino]'" in err and err.count("\n") == 1
