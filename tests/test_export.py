"""ONNX export: self-describing metadata, dynamic batch, fp32 parity, int8 agreement, and
``predict``/``eval`` on an .onnx file giving the same results as on the checkpoint."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import onnx
import pytest
from deploy_support import exported, sample_image, trained_run  # noqa: F401 - fixtures
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.data.sources import list_images
from imgcls.deploy import export as export_module
from imgcls.errors import CheckpointError
from imgcls.inference import artifact
from imgcls.inference.backends import providers_for
from imgcls.inference.card import ModelCard
from run_files import card


def _metadata(path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_is_self_describing(trained_run, exported):
    stored = card(trained_run.checkpoint)
    meta = _metadata(exported.path)
    assert meta["classes"] == stored.classes == trained_run.classes
    assert meta["input_size"] == [3, 32, 32]
    pre = stored.preprocessing
    assert meta["mean"] == list(pre["mean"]) and meta["std"] == list(pre["std"])
    assert meta["crop_pct"] == pre["crop_pct"] and meta["interpolation"] == pre["interpolation"]
    assert meta["temperature"] == stored.temperature
    assert meta["imgcls_version"] == imgcls.__version__
    assert meta["precision"] == "fp32"
    # The whole model card travels with the export: what predict and serve need, unchanged.
    exported_card = ModelCard.from_dict(meta["imgcls.card"])
    assert exported_card.config["model"]["name"] == "test_efficientnet"
    assert exported_card.unknown is None and exported_card.classes == stored.classes
    int8_meta = _metadata(exported.int8_path)
    assert int8_meta["classes"] == meta["classes"] and int8_meta["precision"] == "int8-static"


def test_export_has_a_dynamic_batch_axis(exported):
    model = imgcls.load(exported.path, device="cpu")
    assert model.backend.name == "onnx"
    batch_dim = model.backend.session.get_inputs()[0].shape[0]
    assert not isinstance(batch_dim, int)  # a symbolic name, not a fixed size
    for n in (1, 3, 7):
        images = [Image.new("RGB", (40, 30), (n * 30, 90, 200)) for _ in range(n)]
        assert model.predict_proba(images).shape == (n, 3)


def test_fp32_parity_and_int8_agreement_on_the_validation_split(trained_run, exported):
    # The export's own checks...
    assert exported.parity_source == "validation split" and exported.parity_images == 30
    assert exported.parity_max_abs_diff <= 1e-4
    assert exported.int8_images == 30 and exported.int8_agreement >= 0.99
    # ...and the same checks made independently, through the public API.
    paths = list_images([trained_run.data / "val"])
    images = [Image.open(p).convert("RGB") for p in paths]
    torch_probs = imgcls.load(trained_run.checkpoint, device="cpu").predict_proba(images)
    onnx_probs = imgcls.load(exported.path, device="cpu").predict_proba(images)
    int8_probs = imgcls.load(exported.int8_path, device="cpu").predict_proba(images)
    # A model that learned the task (not near-uniform or one-class output), or agreement means little.
    assert (torch_probs.argmax(1) == [trained_run.classes.index(p.parent.name) for p in paths]).mean() >= 0.9
    assert torch_probs.max(1).mean() > 0.6
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert (int8_probs.argmax(1) == torch_probs.argmax(1)).mean() >= 0.99


def test_export_command_prints_both_checks(trained_run, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(trained_run.checkpoint), "--format", "onnx", "--out", str(out),
                 "--int8", "--int8-mode", "dynamic"]) == 0
    printed = capsys.readouterr().out
    assert "fp32 parity: max |p_onnx - p_torch|" in printed and "-> OK" in printed
    agreement = re.search(r"int8 top-1 agreement with PyTorch fp32: ([\d.]+)% on (\d+) validation images", printed)
    assert agreement and float(agreement.group(1)) >= 99 and int(agreement.group(2)) > 0
    assert out.is_file() and (tmp_path / "cli.int8.onnx").is_file()
    assert _metadata(tmp_path / "cli.int8.onnx")["precision"] == "int8-dynamic"


def test_predict_and_eval_accept_an_onnx_file(trained_run, exported, tmp_path):
    folder = trained_run.data / "val"
    assert main(["predict", str(trained_run.checkpoint), str(folder), "--out", str(tmp_path / "pt.csv")]) == 0
    assert main(["predict", str(exported.path), str(folder), "--out", str(tmp_path / "onnx.csv")]) == 0
    pt, ox = _rows(tmp_path / "pt.csv"), _rows(tmp_path / "onnx.csv")
    assert list(pt[0]) == list(ox[0])  # same columns
    assert [r["path"] for r in pt] == [r["path"] for r in ox]
    assert [r["label"] for r in pt] == [r["label"] for r in ox]
    for a, b in zip(pt, ox):
        assert abs(float(a["probability"]) - float(b["probability"])) <= 1e-4

    assert main(["eval", str(exported.path), str(trained_run.data), "--split", "val",
                 "--out", str(tmp_path / "ev-onnx")]) == 0
    assert main(["eval", str(trained_run.checkpoint), str(trained_run.data), "--split", "val",
                 "--out", str(tmp_path / "ev-pt")]) == 0
    onnx_eval = json.loads((tmp_path / "ev-onnx" / "eval.json").read_text())
    pt_eval = json.loads((tmp_path / "ev-pt" / "eval.json").read_text())
    assert onnx_eval["n"] == pt_eval["n"] == 30
    assert onnx_eval["top1"] == pt_eval["top1"] and onnx_eval["f1_macro"] == pt_eval["f1_macro"]


def test_onnx_model_evaluates_the_runs_own_split_by_default(trained_run, exported, tmp_path):
    metrics = imgcls.evaluate(imgcls.load(exported.path, device="cpu"), split="val", out_dir=tmp_path / "ev")
    assert metrics["n"] == 30 and metrics["model"] == str(exported.path)
    assert (tmp_path / "ev" / "eval_predictions.csv").is_file()


def test_onnx_predict_reports_unreadable_files_like_the_checkpoint(exported, tmp_path):
    good = sample_image(tmp_path / "imgs" / "good.png")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    rows = imgcls.load(exported.path, device="cpu").predict([tmp_path / "imgs"])
    by_name = {r["path"].split("/")[-1]: r for r in rows}
    assert by_name["good.png"]["label"] == "red" and not by_name["good.png"]["error"]
    assert by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["label"] == ""
    assert good.exists()


def test_bad_onnx_files_are_one_line_errors(tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        imgcls.load(garbage)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX graph without imgcls metadata
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(CheckpointError, match="not an ONNX export of imgcls"):
        imgcls.load(foreign)
    assert main(["predict", str(tmp_path / "missing.onnx"), str(tmp_path)]) == 2
    assert "ONNX model not found" in capsys.readouterr().err


def test_cuda_device_needs_a_cuda_provider():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(ValueError, match="no CUDA provider"):
            providers_for("cuda")
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_failed_checks_fail_the_command(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)  # nothing can pass
    assert main(["export", str(trained_run.checkpoint), "--out", str(tmp_path / "a.onnx")]) == 2
    err = capsys.readouterr().err
    assert "ONNX probabilities differ from PyTorch" in err and err.count("\n") == 1


def test_int8_needs_the_dataset_and_fp32_falls_back_to_random_inputs(trained_run, tmp_path, capsys):
    # A copy of the model file whose dataset has gone away.
    moved = tmp_path / "moved.safetensors"
    shutil.copy(trained_run.checkpoint, moved)
    config = card(moved).config
    artifact.update_card(moved, config={**config, "data": {**config["data"], "path": str(tmp_path / "gone")}})
    assert main(["export", str(moved), "--int8"]) == 2
    assert "--int8 needs the run's validation images" in capsys.readouterr().err
    assert main(["export", str(moved)]) == 0
    printed = capsys.readouterr().out
    assert "random inputs (no dataset" in printed and (tmp_path / "moved.onnx").is_file()
