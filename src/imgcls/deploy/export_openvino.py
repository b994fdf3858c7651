"""``imgcls export --format openvino``: an OpenVINO IR (``.xml`` + ``.bin``), checked against
PyTorch, optionally with an int8 model quantised by NNCF.

OpenVINO's own converter (``openvino.convert_model``) translates the PyTorch network
directly, with a dynamic batch axis; the graph has the ONNX export's input and outputs
(``images`` -> ``logits``, ``probabilities``). The model card is stored in the IR's runtime
info (``rt_info``, under ``imgcls/card``), OpenVINO's own place for model metadata, so the
card lives inside the ``.xml`` and cannot be separated from the graph as a sidecar file
could; ``imgcls predict/eval/serve model.xml`` read it from there.

Checks, as for ONNX: fp32 probabilities within the parity tolerance of PyTorch; with
``--int8``, NNCF's post-training quantisation (calibrated on training images) must agree
with the fp32 PyTorch top-1 on at least 99% of the validation split.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from imgcls.deploy.export import (ExportedGraph, TargetReport, calibration_batches, file_mb, output_path,
                                  parity_batches, quiet, require_agreement, require_parity, target_parity,
                                  top1_agreement, validation_images)
from imgcls.inference.backends import (INPUT_NAME, LOGITS_NAME, OPENVINO_CARD_PATH, PROBABILITIES_NAME,
                                       OpenVinoBackend, open_openvino)
from imgcls.inference.loading import load
from imgcls.options import ExportCommand
from imgcls.runtime import require

SUFFIX = ".xml"
PRECISION_PATH = ["imgcls", "precision"]  # rt_info key: fp32 or int8-nncf


def int8_output(fp32_out: Path) -> Path:
    """``model.xml`` -> ``model.int8.xml`` (its weights go to ``model.int8.bin``)."""
    return fp32_out.with_name(fp32_out.stem + ".int8" + SUFFIX)


def export_openvino(model: str | Path, out: str | Path | None = None, *, int8: bool = ExportCommand.int8,
                    data: str | Path | None = None, parity_images: int = 64,
                    calibration_images: int = ExportCommand.calibration_images) -> TargetReport:
    """Convert a model file or run folder to an OpenVINO IR (and an int8 IR with ``int8``),
    check both, and report what was measured.

    Raises :class:`~imgcls.deploy.export.ExportError` when a check fails, and a one-line
    error naming the extra when ``openvino`` (or ``nncf`` for ``int8``) is not installed.
    """
    ov = require("openvino", "openvino", "--format openvino")
    if int8:
        require("nncf", "openvino", "--format openvino --int8")
    classifier = load(model, device="cpu")
    card, preprocessing, network = classifier.card, classifier.preprocessing, classifier.torch_module
    path = output_path(out, classifier.source, SUFFIX, (SUFFIX,))
    val, why = validation_images(classifier, data, needed_by="--int8" if int8 else None)

    ir = convert(ov, ExportedGraph(network, card.temperature).eval(), preprocessing.image_size)
    _save(ov, ir, path, card.to_json(), "fp32")
    compiled, _ = open_openvino(path, "cpu")  # the saved file, read back as imgcls.load reads it
    batches, source = parity_batches(val, why, preprocessing, parity_images)
    parity, logits = target_parity(network, OpenVinoBackend(compiled), batches, card.temperature)
    report = TargetReport("OpenVINO IR", "openvino", path, file_mb(path, path.with_suffix(".bin")), parity, logits,
                          sum(len(b) for b in batches), source)
    require_parity(report)
    if int8:
        _export_int8(ov, report, classifier, data, val, calibration_images)
    return report


def convert(ov, graph: nn.Module, image_size: int):
    """The ``openvino.Model`` of ``graph`` with a dynamic batch axis and named outputs."""
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad(), quiet():
        ir = ov.convert_model(graph, example_input=example, input=[ov.PartialShape([-1, 3, image_size, image_size])])
    ir.inputs[0].get_tensor().set_names({INPUT_NAME})
    ir.outputs[0].get_tensor().set_names({LOGITS_NAME})
    ir.outputs[1].get_tensor().set_names({PROBABILITIES_NAME})
    return ir


def _save(ov, ir, path: Path, card_json: str, precision: str) -> None:
    ir.set_rt_info(card_json, OPENVINO_CARD_PATH)
    ir.set_rt_info(precision, PRECISION_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fp32 weights: OpenVINO's default fp16 compression would be a different model from the one checked.
    ov.save_model(ir, str(path), compress_to_fp16=False)


def _export_int8(ov, report: TargetReport, classifier, data, val, calibration_images: int) -> None:
    """NNCF post-training quantisation of the saved fp32 IR, calibrated on training images."""
    nncf = require("nncf", "openvino", "--format openvino --int8")
    batches = calibration_batches(classifier, data, val, calibration_images)
    # One image per item: NNCF's subset_size counts items, and its statistics assume batch 1.
    items = [images[i:i + 1].numpy() for images in batches for i in range(len(images))]
    fp32 = ov.Core().read_model(str(report.path))
    with _nncf_quiet():
        quantized = nncf.quantize(fp32, nncf.Dataset(items), subset_size=len(items))
    out = int8_output(report.path)
    _save(ov, quantized, out, classifier.card.to_json(), "int8-nncf")
    compiled, _ = open_openvino(out, "cpu")
    agreement, total, accuracy = top1_agreement(ExportedGraph(classifier.torch_module, classifier.temperature).eval(),
                                                OpenVinoBackend(compiled), val, classifier.classes,
                                                classifier.preprocessing, "openvino int8")
    report.int8_path, report.int8_size_mb = out, file_mb(out, out.with_suffix(".bin"))
    report.int8_agreement, report.int8_images, report.accuracy = agreement, total, accuracy
    report.calibration_images = len(items)
    require_agreement(report)


@contextlib.contextmanager
def _nncf_quiet():
    """NNCF draws progress bars and logs its steps; the export prints its own summary."""
    previous = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        with quiet(), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.getLogger("nncf").setLevel(previous)
