"""``--format torchscript``: parity printed by the command, the card inside the archive, any
batch size; and the export options a format does not use refused before any work."""

from __future__ import annotations

import re

import pytest
import torch
from deploy_support import trained_run  # noqa: F401 - fixtures

import imgcls
from imgcls.cli import main
from imgcls.config import ConfigError
from imgcls.inference.card import ModelCard
from imgcls.options import ExportCommand


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_is_checked_and_carries_the_card(trained_run, tmp_path, capsys):
    out = tmp_path / "tiny.torchscript"
    assert main(["export", str(trained_run.checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    parity = re.search(r"fp32 parity: max \|p_torchscript - p_torch\| = ([\d.e+-]+) .* on 30 images from the "
                       r"validation split .* -> OK", printed)
    assert parity and float(parity.group(1)) <= 1e-4
    # What a TorchScript user does (imgcls itself never loads a user's TorchScript file).
    extra = {"imgcls.card.json": ""}
    module = torch.jit.load(str(out), map_location="cpu", _extra_files=extra)
    card = ModelCard.from_json(extra["imgcls.card.json"])
    assert card.classes == trained_run.classes
    reference = imgcls.load(trained_run.checkpoint, device="cpu").torch_module
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32)
        logits, probabilities = module(images)
        with torch.no_grad():
            assert (logits - reference(images)).abs().max() < 1e-5
        assert torch.allclose(probabilities, torch.softmax(logits / card.temperature, 1))


def test_default_names_and_refused_names(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run.checkpoint), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")]) \
        == 2
    assert "must end in .torchscript or .pt" in capsys.readouterr().err
    assert main(["export", str(trained_run.checkpoint), "--format", "openvino", "--out", str(tmp_path / "m.bin")]) \
        == 2
    assert "must end in .xml" in capsys.readouterr().err


@pytest.mark.parametrize("values, message", [
    (dict(format="torchscript", int8=True), "--int8: --format torchscript has no int8 variant (use onnx or openvino)"),
    (dict(format="timm", int8=True), "--int8: --format timm has no int8 variant"),
    (dict(format="openvino", int8=True, int8_mode="dynamic"), "--int8-mode dynamic: ONNX only"),
    (dict(format="onnx", push_to_hub="me/model"), "--push-to-hub: uploads a --format timm folder"),
    (dict(format="timm", push_to_hub="not a repo id"), "--push-to-hub 'not a repo id': not a valid value"),
])
def test_flags_a_format_does_not_use_are_refused(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExportCommand("RUN", **values)


def test_refused_before_any_file_is_read(tmp_path, capsys):
    # The model does not exist: the option check comes first and names the flag.
    assert main(["export", str(tmp_path / "nothing"), "--format", "torchscript", "--int8"]) == 2
    err = capsys.readouterr().err
    assert "--int8: --format torchscript has no int8 variant" in err and err.count("\n") == 1
