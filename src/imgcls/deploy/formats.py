"""``imgcls export``: one entry point over every export format.

Each format has its own module and its own check against PyTorch (docs/export.md):

* ``onnx``: ``.onnx`` (+ ``.int8.onnx``), run by ``predict``, ``eval`` and ``serve``;
* ``openvino``: ``.xml`` + ``.bin`` (+ ``.int8.xml``), run by ``predict``, ``eval`` and ``serve``;
* ``torchscript``: ``.torchscript``, never loaded by imgcls (a TorchScript file is code);
* ``timm``: a folder that timm and the Hugging Face Hub load.
"""

from __future__ import annotations

from imgcls.deploy.export import ExportReport, TargetReport, export_checkpoint
from imgcls.deploy.export_openvino import export_openvino
from imgcls.deploy.export_timm import export_timm
from imgcls.deploy.export_torchscript import export_torchscript
from imgcls.options import ExportCommand


def export_model(options: ExportCommand) -> ExportReport | TargetReport:
    """Run the export ``options`` describe (a checked :class:`ExportCommand`); returns its
    report, whose ``summary()`` says what was written and measured."""
    o = options
    if o.format == "onnx":
        return export_checkpoint(o.checkpoint, o.out, opset=o.opset, int8=o.int8, int8_mode=o.int8_mode, data=o.data,
                                 calibration_images=o.calibration_images)
    if o.format == "openvino":
        return export_openvino(o.checkpoint, o.out, int8=o.int8, data=o.data, calibration_images=o.calibration_images)
    if o.format == "torchscript":
        return export_torchscript(o.checkpoint, o.out, data=o.data)
    return export_timm(o.checkpoint, o.out, data=o.data, push_to_hub=o.push_to_hub)
