"""``imgcls export``: a model to a self-describing ONNX file, checked against PyTorch.

The graph takes preprocessed images ``(batch, 3, H, W)`` (dynamic batch axis) and returns
``logits`` and temperature-scaled ``probabilities``. The model card (class names,
preprocessing, temperature, unknown rule, the run's config) is stored as JSON in the
model's ``metadata_props`` under ``imgcls.card``, beside plain keys (classes, mean, std,
input size...) for tools that do not know imgcls.

Every export is checked before it is reported as done:

* fp32: ONNX Runtime probabilities within ``PARITY_TOLERANCE`` of PyTorch on sample images
  (the run's validation images; random images when the dataset is not at hand);
* ``--int8``: ONNX Runtime quantisation (static QDQ calibrated on training images by
  default, or dynamic) must agree with the fp32 PyTorch top-1 on at least
  ``MIN_INT8_AGREEMENT`` of the validation split.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.loaders import make_loader
from imgcls.data.sources import DatasetError, Sample
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.evaluation.evaluate import load_split
from imgcls.inference.backends import INPUT_NAME, LOGITS_NAME, PROBABILITIES_NAME, open_session
from imgcls.inference.card import CARD_METADATA_KEY, ModelCard
from imgcls.inference.loading import load
from imgcls.options import ExportCommand
from imgcls.runtime import log, require

PARITY_TOLERANCE = 1e-4
MIN_INT8_AGREEMENT = 0.99
DEFAULT_OPSET = ExportCommand.opset
FORMAT = "imgcls-onnx/2"


class ExportError(ValueError):
    """An export that was written but failed its check (the message says which and by how much).

    ``report``: what was written and measured up to the failed check (None when unknown).
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    path: Path
    opset: int
    exporter: str
    parity_max_abs_diff: float
    parity_images: int
    parity_source: str  # "validation split" or why random images were used
    int8_path: Path | None = None
    int8_mode: str | None = None
    int8_agreement: float | None = None
    int8_images: int = 0
    calibration_images: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)  # top-1 on val: torch, int8

    def summary(self) -> str:
        lines = [f"wrote {self.path} (opset {self.opset}, {self.exporter} exporter, "
                 f"{self.path.stat().st_size / 1e6:.1f} MB)",
                 f"fp32 parity: max |p_onnx - p_torch| = {self.parity_max_abs_diff:.2e} on {self.parity_images} "
                 f"images from the {self.parity_source} (tolerance {PARITY_TOLERANCE:.0e}) -> OK"]
        if self.int8_path is not None:
            lines.append(f"wrote {self.int8_path} (int8, {self.int8_mode} quantisation, "
                         f"{self.int8_path.stat().st_size / 1e6:.1f} MB"
                         + (f", calibrated on {self.calibration_images} training images)" if self.calibration_images
                            else ")"))
            lines.append(_agreement_line(self.int8_agreement, self.int8_images))
            if self.accuracy:
                lines.append("validation top-1: " + ", ".join(f"{k} {v:.4f}" for k, v in self.accuracy.items()))
        return "\n".join(lines)


def _agreement_line(agreement: float, images: int) -> str:
    verdict = "OK" if agreement >= MIN_INT8_AGREEMENT else "FAILED: not shipped"
    return (f"int8 top-1 agreement with PyTorch fp32: {agreement:.2%} on {images} validation images "
            f"(required >= {MIN_INT8_AGREEMENT:.0%}) -> {verdict}")


@dataclass
class TargetReport:
    """What an export to another target (TorchScript, OpenVINO IR, a timm folder) wrote and
    measured; the ONNX export has its own :class:`ExportReport`.

    ``parity_max_abs_diff`` compares probabilities, ``softmax(logits / temperature)``, as the
    ONNX check does; ``logit_max_abs_diff`` the raw logits.
    """

    target: str  # what was written, in words: "TorchScript", "OpenVINO IR", "timm folder"
    runtime: str  # what ran it in the parity check: "torchscript", "openvino", "timm"
    path: Path
    size_mb: float
    parity_max_abs_diff: float
    logit_max_abs_diff: float
    parity_images: int
    parity_source: str
    int8_path: Path | None = None
    int8_size_mb: float = 0.0
    int8_agreement: float | None = None
    int8_images: int = 0
    calibration_images: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # further lines of the summary (e.g. the Hub URL)

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.target}, {self.size_mb:.1f} MB)",
                 f"fp32 parity: max |p_{self.runtime} - p_torch| = {self.parity_max_abs_diff:.2e} "
                 f"(max |logit difference| {self.logit_max_abs_diff:.2e}) on {self.parity_images} images from the "
                 f"{self.parity_source} (tolerance {PARITY_TOLERANCE:.0e}) -> OK"]
        if self.int8_path is not None:
            lines.append(f"wrote {self.int8_path} (int8, {self.int8_size_mb:.1f} MB, calibrated on "
                         f"{self.calibration_images} training images)")
            lines.append(_agreement_line(self.int8_agreement, self.int8_images))
            if self.accuracy:
                lines.append("validation top-1: " + ", ".join(f"{k} {v:.4f}" for k, v in self.accuracy.items()))
        return "\n".join(lines + self.notes)


def target_parity(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
                  temperature: float) -> tuple[float, float]:
    """(max |probability difference|, max |logit difference|) of ``run`` (preprocessed images
    -> logits) against the PyTorch ``model`` on ``batches``."""
    worst_p = worst_logit = 0.0
    with torch.no_grad():
        for images in batches:
            expected, actual = model(images).float(), run(images).float()
            worst_logit = max(worst_logit, float((actual - expected).abs().max()))
            difference = torch.softmax(actual / temperature, 1) - torch.softmax(expected / temperature, 1)
            worst_p = max(worst_p, float(difference.abs().max()))
    return worst_p, worst_logit


def require_parity(report: TargetReport) -> None:
    """Raise :class:`ExportError` unless the target's probabilities match PyTorch's."""
    if not report.parity_max_abs_diff <= PARITY_TOLERANCE:
        raise ExportError(f"{report.path}: {report.target} probabilities differ from PyTorch by "
                          f"{report.parity_max_abs_diff:.2e} (> {PARITY_TOLERANCE:.0e}); do not ship this file")


def require_agreement(report: TargetReport) -> None:
    """Raise :class:`ExportError` unless the int8 model agrees with fp32 PyTorch often enough."""
    if not report.int8_agreement >= MIN_INT8_AGREEMENT:
        raise ExportError(f"{report.int8_path}: int8 top-1 agrees with fp32 on only {report.int8_agreement:.2%} of "
                          f"{report.int8_images} validation images (< {MIN_INT8_AGREEMENT:.0%}); ship the fp32 "
                          f"model {report.path} instead", report)


def output_path(out: str | Path | None, model_file: Path, suffix: str, allowed: tuple[str, ...]) -> Path:
    """``--out``, or the model file's name with ``suffix``; refuses names that do not end in
    one of ``allowed`` (another format's suffix would make ``imgcls`` misread the file)."""
    path = Path(out) if out else model_file.with_suffix(suffix)
    if path.suffix.lower() not in allowed:
        raise ValueError(f"--out {path}: the file name must end in {' or '.join(allowed)}")
    return path


def file_mb(*paths: Path) -> float:
    """The size of ``paths`` together, in MB (missing files count as nothing)."""
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


class ExportedGraph(nn.Module):
    """The classifier with its outputs as every exported graph exposes them: ``logits`` and
    ``probabilities`` (``softmax(logits / temperature)``; ``multilabel``: each label's
    sigmoid, which a label's threshold then applies to)."""

    def __init__(self, model: nn.Module, temperature: float, multilabel: bool = False):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.multilabel = multilabel

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        if self.multilabel:
            return logits, torch.sigmoid(logits)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def metadata_for(card: ModelCard, source: Path, precision: str) -> dict[str, str]:
    """The ``metadata_props`` of an export: the model card, plus plain keys for other tools.
    Values are JSON so that types survive the string map."""
    pre = card.image_preprocessing()
    values = {
        "format": FORMAT,
        "classes": list(card.classes),
        "input_size": [3, pre.image_size, pre.image_size],
        "input_layout": "NCHW, float32 RGB in [0, 1] normalised with mean/std",
        "mean": list(pre.mean),
        "std": list(pre.std),
        "resize_size": pre.resize_size,
        "crop_pct": pre.crop_pct,
        "interpolation": pre.interpolation,
        "temperature": float(card.temperature),
        "outputs": {LOGITS_NAME: "raw class scores", PROBABILITIES_NAME: "softmax(logits / temperature)"},
        "task": card.task,
        "precision": precision,
        "model_name": card.architecture,
        "source_model": source.name,
        "imgcls_version": card.imgcls_version,
    }
    if card.multilabel:  # label i is predicted when probabilities[i] >= thresholds[i]
        values["outputs"] = {LOGITS_NAME: "raw label scores", PROBABILITIES_NAME: "sigmoid(logits), one per label"}
        values["thresholds"] = card.label_thresholds()
    metadata = {key: json.dumps(value) for key, value in values.items()}
    metadata[CARD_METADATA_KEY] = card.to_json()
    return metadata


def set_metadata(model_proto, metadata: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.doc_string = "imgcls image classifier; read metadata_props for class names and preprocessing"


def export_graph(model: nn.Module, temperature: float, image_size: int, opset: int, multilabel: bool = False):
    """Trace the model to an ``onnx.ModelProto`` with a dynamic batch axis (``multilabel``:
    sigmoid probabilities).

    The torch.export-based exporter (``dynamo=True``, the default since torch 2.9) comes
    first; the TorchScript exporter is the fallback for models torch.export cannot trace.
    """
    graph = ExportedGraph(model, temperature, multilabel).eval()
    # Batch 2, not 1: torch.export specialises a dimension of size 1 to a constant.
    example = torch.randn(2, 3, image_size, image_size)
    names = dict(input_names=[INPUT_NAME], output_names=[LOGITS_NAME, PROBABILITIES_NAME], opset_version=opset)
    try:
        with quiet():
            program = torch.onnx.export(graph, (example,), dynamo=True, verbose=False,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, **names)
        return program.model_proto, "torch.export (dynamo)"
    except Exception as err:  # noqa: BLE001 - any tracing failure: try the other exporter
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                    str(err).splitlines()[0][:200])
    onnx = require("onnx", "onnx", "ONNX export")  # the 'onnx' extra

    with tempfile.TemporaryDirectory() as tmp, quiet():
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(graph, (example,), str(target), dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"},
                                        PROBABILITIES_NAME: {0: "batch"}}, **names)
        return onnx.load(str(target)), "TorchScript"


@contextlib.contextmanager
def quiet():
    """The exporters print progress lines and deprecation warnings a user cannot act on."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _save(model_proto, path: Path) -> None:
    onnx = require("onnx", "onnx", "ONNX export")  # the 'onnx' extra

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model_proto, str(path))  # one file: weights inline (< 2 GB for any timm classifier)


def _batches(samples: list[Sample], preprocessing: Preprocessing, batch_size: int = 32) -> Iterator[torch.Tensor]:
    dataset = ImageDataset([s.path for s in samples], None, eval_transform(preprocessing),
                           draft_size=preprocessing.resize_size)
    for batch in make_loader(dataset, batch_size, train=False, workers=0):
        if len(batch):
            yield batch.images


def _split_or_none(data, config: RunConfig, split: str) -> tuple[list[Sample] | None, str]:
    try:
        return load_split(data, config, split)[1], ""
    except (DatasetError, FileNotFoundError, OSError, ValueError) as err:
        return None, str(err)


def _subset(samples: list[Sample], count: int, seed: int = 0) -> list[Sample]:
    """An even, reproducible pick across classes (samples are sorted by class)."""
    if len(samples) <= count:
        return samples
    return sorted(random.Random(seed).sample(samples, count), key=lambda s: str(s.path))


def check_parity(graph: nn.Module, session, batches: list[torch.Tensor]) -> float:
    """Largest absolute difference of ONNX Runtime vs PyTorch probabilities."""
    worst = 0.0
    with torch.no_grad():
        for images in batches:
            expected = graph(images)[1].numpy()
            (actual,) = session.run([PROBABILITIES_NAME], {INPUT_NAME: images.numpy()})
            worst = max(worst, float(np.abs(actual - expected).max()))
    return worst


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed image batches."""

    def __init__(self, batches: list[torch.Tensor]):
        self._items = iter([{INPUT_NAME: images.numpy()} for images in batches])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # part of the protocol; one pass is all MinMax calibration needs
        pass


def head_nodes(model_proto) -> list[str]:
    """Names of the nodes from the last linear layer to the outputs (classifier, temperature
    division, softmax). They stay fp32: they cost almost nothing, and quantising the softmax
    would round every probability to a step of 1/255."""
    producer = {out: node for node in model_proto.graph.node for out in node.output}
    keep: list[str] = []
    stack = [output.name for output in model_proto.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in keep:
            continue
        keep.append(node.name)
        if node.op_type not in ("Gemm", "MatMul"):  # stop at the classifier's linear layer
            stack.extend(node.input)
    return keep


def quantize_int8(fp32_path: Path, out: Path, mode: str, calibration: list[torch.Tensor] | None) -> None:
    """Static QDQ (per-channel weights, calibrated activations) or dynamic int8 quantisation.

    Static is ONNX Runtime's recommendation for CNNs, with signed int8 activations and
    weights (S8S8, its default and first choice; unsigned activations lost top-1 agreement
    in our tests). Dynamic needs no data but quantises weights only.
    """
    onnx = require("onnx", "onnx", "ONNX export")  # the 'onnx' extra
    quantization = require("onnxruntime.quantization", "onnx", "--int8")
    CalibrationMethod, QuantFormat, QuantType = (quantization.CalibrationMethod, quantization.QuantFormat,
                                                 quantization.QuantType)
    quantize_dynamic, quantize_static = quantization.quantize_dynamic, quantization.quantize_static
    quant_pre_process = require("onnxruntime.quantization.shape_inference", "onnx", "--int8").quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, quiet():
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph fusion first, as ONNX Runtime's quantisation guide advises.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        exclude = head_nodes(onnx.load(str(prepared)))
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=exclude)
        elif mode == "static":
            quantize_static(str(prepared), str(out), _Calibration(calibration or []), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
        else:
            raise ValueError(f"--int8-mode {mode!r}: expected static or dynamic")


def compare_int8(graph: nn.Module, session, val: list[Sample], classes: list[str],
                 preprocessing: Preprocessing) -> tuple[float, int, dict[str, float]]:
    """Share of validation images whose int8 ONNX top-1 equals the fp32 PyTorch top-1, the
    number of images, and both models' top-1 accuracy (when the labels are model classes)."""

    def run(images: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([LOGITS_NAME], {INPUT_NAME: images.numpy()})
        return torch.from_numpy(logits)

    return top1_agreement(graph, run, val, classes, preprocessing, "onnx int8")


def top1_agreement(graph: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], val: list[Sample],
                   classes: list[str], preprocessing: Preprocessing,
                   name: str) -> tuple[float, int, dict[str, float]]:
    """Share of validation images on which ``run`` (preprocessed images -> logits, e.g. an
    int8 model) gives the fp32 PyTorch top-1, the number of images, and the top-1 accuracy
    of PyTorch and of ``name`` (when the labels are model classes)."""
    index = {label: i for i, label in enumerate(classes)}
    labelled = all(s.label in index for s in val)
    targets = [index[s.label] for s in val] if labelled else None
    dataset = ImageDataset([s.path for s in val], targets, eval_transform(preprocessing),
                           draft_size=preprocessing.resize_size)
    same = total = 0
    hits = {"pytorch fp32": 0, name: 0}
    with torch.no_grad():
        for batch in make_loader(dataset, 32, train=False, workers=0):
            if not len(batch):
                continue
            expected = graph(batch.images)[0].argmax(1)
            actual = run(batch.images).argmax(1)
            same += int((actual == expected).sum())
            hits["pytorch fp32"] += int((expected == batch.targets).sum())
            hits[name] += int((actual == batch.targets).sum())
            total += len(batch)
    if not total:
        raise DatasetError("no validation image could be decoded to check the int8 model")
    accuracy = {k: v / total for k, v in hits.items()} if labelled else {}
    return same / total, total, accuracy


def parity_batches(val: list[Sample] | None, why: str, preprocessing: Preprocessing,
                   count: int) -> tuple[list[torch.Tensor], str]:
    """The images an export is checked on, and where they come from: up to ``count``
    validation images, or random inputs when the dataset is not at hand (``why``)."""
    if val:
        return list(_batches(_subset(val, count), preprocessing)), "validation split"
    generator = torch.Generator().manual_seed(0)
    size = preprocessing.image_size
    return [torch.randn(min(count, 16), 3, size, size, generator=generator)], f"random inputs (no dataset: {why})"


def default_output(model_file: Path) -> Path:
    return model_file.with_suffix(".onnx")


def int8_output(fp32_out: Path) -> Path:
    return fp32_out.with_name(fp32_out.stem + ".int8.onnx")


def export_checkpoint(model: str | Path, out: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
                      int8: bool = ExportCommand.int8, int8_mode: str = ExportCommand.int8_mode,
                      data: str | Path | None = None, parity_images: int = 64,
                      calibration_images: int = ExportCommand.calibration_images) -> ExportReport:
    """Export a model file or run folder to ONNX (and int8 ONNX), check both, and report
    what was measured.

    ``data`` is the dataset whose splits provide sample, calibration and validation images
    (default: the run's own dataset); its classes must be the model's.
    """
    if int8_mode not in ("static", "dynamic"):
        raise ValueError(f"--int8-mode {int8_mode!r}: expected static or dynamic")
    classifier = load(model, device="cpu")
    card, preprocessing = classifier.card, classifier.preprocessing
    if int8 and card.multilabel:
        raise ValueError("--int8: not available for multilabel models yet (its check compares top-1 classes); "
                         "export fp32")
    fp32_out = Path(out) if out else default_output(classifier.source)
    if fp32_out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {fp32_out}: the file name must end in .onnx")

    val, why = validation_images(classifier, data, needed_by="--int8" if int8 else None)

    network = classifier.torch_module
    proto, exporter = export_graph(network, card.temperature, preprocessing.image_size, opset, card.multilabel)
    set_metadata(proto, metadata_for(card, classifier.source, "fp32"))
    _save(proto, fp32_out)

    graph = ExportedGraph(network, card.temperature, card.multilabel).eval()
    sample_batches, source = parity_batches(val, why, preprocessing, parity_images)
    parity = check_parity(graph, open_session(fp32_out, "cpu"), sample_batches)
    report = ExportReport(fp32_out, opset, exporter, parity, sum(len(b) for b in sample_batches), source)
    if not parity <= PARITY_TOLERANCE:
        raise ExportError(f"{fp32_out}: ONNX probabilities differ from PyTorch by {parity:.2e} "
                          f"(> {PARITY_TOLERANCE:.0e}); do not ship this file")
    if int8:
        _export_int8(report, classifier, graph, data, val, int8_mode, calibration_images)
    return report


def validation_images(classifier, data, needed_by: str | None = None) -> tuple[list[Sample] | None, str]:
    """The validation split of ``data`` (default: the run's own) that exports are checked on,
    or None and why there is none; ``needed_by``: the option that cannot do without it, which
    is then refused at once (before the export, which takes a while)."""
    val, why = _split_or_none(data, classifier.config, "val")
    if val:
        _check_classes(val, classifier.card.classes, data)
    if needed_by and not val:
        raise DatasetError(f"{needed_by} needs the run's validation images to check the quantised model ({why}); "
                           "give the dataset with --data")
    return val, why


def calibration_batches(classifier, data, val: list[Sample], count: int) -> list[torch.Tensor]:
    """Up to ``count`` preprocessed training images to calibrate int8 quantisation on."""
    train, _ = _split_or_none(data, classifier.config, "train")
    pool = train or val  # a dataset given as a single test folder has no train split
    return list(_batches(_subset(pool, count, seed=1), classifier.preprocessing))


def _check_classes(samples: list[Sample], classes: list[str], data) -> None:
    """Export data must be labelled with the model's classes (no index may change its name)."""
    multilabel = bool(samples) and samples[0].labels is not None
    given = {label for s in samples for label in s.labels} if multilabel else {s.label for s in samples}
    foreign = sorted(given - set(classes))
    if foreign:
        raise DatasetError(f"--data {data}: classes {foreign[:10]} are not among the model's {len(classes)} classes; "
                           "give the dataset the model was trained on")


def _export_int8(report: ExportReport, classifier, graph: nn.Module, data, val: list[Sample], mode: str,
                 calibration_images: int) -> None:
    calibration = None
    preprocessing = classifier.preprocessing
    if mode == "static":
        calibration = calibration_batches(classifier, data, val, calibration_images)
        report.calibration_images = sum(len(b) for b in calibration)
    out = int8_output(report.path)
    quantize_int8(report.path, out, mode, calibration)
    onnx = require("onnx", "onnx", "ONNX export")  # the 'onnx' extra

    proto = onnx.load(str(out))
    set_metadata(proto, metadata_for(classifier.card, classifier.source, f"int8-{mode}"))
    _save(proto, out)
    agreement, total, accuracy = compare_int8(graph, open_session(out, "cpu"), val, classifier.classes, preprocessing)
    report.int8_path, report.int8_mode = out, mode
    report.int8_agreement, report.int8_images, report.accuracy = agreement, total, accuracy
    if not agreement >= MIN_INT8_AGREEMENT:
        raise ExportError(f"{out}: int8 top-1 agrees with fp32 on only {agreement:.2%} of {total} validation "
                          f"images (< {MIN_INT8_AGREEMENT:.0%}); ship the fp32 model {report.path} instead"
                          + (" or try --int8-mode dynamic" if mode == "static" else ""), report)
