"""What runs a model: one interface over PyTorch, ONNX Runtime and OpenVINO (as Ultralytics'
AutoBackend).

A backend is called like a module: preprocessed images ``(N, 3, H, W)`` float32 in, logits
``(N, C)`` out (``(coarse, fine)`` logits with ``levels=True`` for a hierarchical PyTorch
model). It says which ``device`` its inputs go to and whether CPU inference should be
chunked (:func:`imgcls.runtime.infer`). :func:`imgcls.inference.loading.load` picks one.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from torch import nn

from imgcls.errors import CheckpointError
from imgcls.inference.card import CARD_METADATA_KEY, ModelCard
from imgcls.runtime import memory_format_for, require

INPUT_NAME = "images"
LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"
OPENVINO_CARD_PATH = ["imgcls", "card"]  # where an OpenVINO IR keeps the model card: its rt_info


class TorchBackend:
    """A PyTorch :class:`~imgcls.models.classifier.ImageClassifier` in eval mode on ``device``."""

    name = "pytorch"
    chunked_inference = True

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module.eval()
        self.device = torch.device(device)
        self.memory_format = memory_format_for(self.device)
        self.hierarchical = bool(getattr(module, "hierarchical", False))

    def __call__(self, images: torch.Tensor, levels: bool = False):
        with torch.no_grad():
            return self.module(images, levels=True) if levels else self.module(images)


class OnnxBackend:
    """An ONNX Runtime session; inputs are handed over as CPU arrays (ORT moves them itself)."""

    name = "onnx"
    chunked_inference = False  # ONNX Runtime is fastest on whole batches
    hierarchical = False  # exports carry the fine logits only
    device = torch.device("cpu")
    memory_format = torch.contiguous_format

    def __init__(self, session):
        self.session = session
        outputs = [o.name for o in session.get_outputs()]
        if LOGITS_NAME not in outputs:
            raise CheckpointError(f"the ONNX graph has no '{LOGITS_NAME}' output (outputs: {outputs})")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, images: torch.Tensor, levels: bool = False) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([LOGITS_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


def providers_for(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for an imgcls ``--device`` value."""
    ort = require("onnxruntime", "onnx", "ONNX models")  # the 'onnx' extra, imported on first use

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cpu"):
        raise ValueError(f"--device {device}: ONNX models run on cpu or cuda")
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, device: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession``; unreadable files raise a one-line CheckpointError."""
    ort = require("onnxruntime", "onnx", "ONNX models")

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for bad files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise CheckpointError(f"{path}: not a readable ONNX model ({first_line[:200]})") from None


def card_from_session(session, path: str | Path) -> ModelCard:
    """The model card stored in an imgcls ONNX export's metadata."""
    raw = session.get_modelmeta().custom_metadata_map
    if CARD_METADATA_KEY not in raw:
        raise CheckpointError(f"{path}: not an ONNX export of imgcls >= 0.2 (no model card in its metadata)")
    try:
        values = json.loads(raw[CARD_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: damaged model card in the ONNX metadata ({err})") from None
    return ModelCard.from_dict(values, str(path))


def is_onnx_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


class OpenVinoBackend:
    """An OpenVINO compiled model on the CPU, run on whole batches like ONNX Runtime."""

    name = "openvino"
    chunked_inference = False
    hierarchical = False  # exports carry the fine logits only
    device = torch.device("cpu")
    memory_format = torch.contiguous_format

    def __init__(self, compiled):
        outputs = sorted(name for output in compiled.outputs for name in output.get_names())
        if LOGITS_NAME not in outputs:
            raise CheckpointError(f"the OpenVINO model has no '{LOGITS_NAME}' output (outputs: {outputs})")
        self.compiled = compiled
        self._logits = compiled.output(LOGITS_NAME)
        # A compiled model's own call reuses one infer request, which two threads must not share.
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor, levels: bool = False) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            logits = self.compiled(array)[self._logits]  # results are copies (share_outputs=False)
        return torch.from_numpy(logits)


def open_openvino(path: str | Path, device: str = "auto", threads: int | None = None):
    """``(compiled model, model card)`` of an imgcls OpenVINO IR (``.xml`` with its ``.bin``).

    The IR is a graph and raw weights, so reading it runs no code. It is compiled with fp32
    inference precision: on CPUs with bf16 units OpenVINO would otherwise default to bf16,
    which is not what ``imgcls export`` checked.
    """
    ov = require("openvino", "openvino", "OpenVINO models")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: OpenVINO model not found")
    if not path.with_suffix(".bin").is_file():
        raise CheckpointError(f"{path}: its weights {path.with_suffix('.bin').name} are missing "
                              "(an OpenVINO model is the .xml file and the .bin file beside it)")
    if device not in ("auto", "cpu"):
        raise ValueError(f"--device {device}: OpenVINO models run on cpu")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises its own exception types for bad files
        raise CheckpointError(f"{path}: not a readable OpenVINO model ({_first_line(err)[:200]})") from None
    card = card_from_openvino(model, path)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, "CPU", config), card


def card_from_openvino(model, path: str | Path) -> ModelCard:
    """The model card stored in an imgcls OpenVINO export's runtime info."""
    if not model.has_rt_info(OPENVINO_CARD_PATH):
        raise CheckpointError(f"{path}: not an OpenVINO export of imgcls (no model card in its rt_info)")
    return ModelCard.from_json(model.get_rt_info(OPENVINO_CARD_PATH).astype(str), str(path))


def is_openvino_path(path: str | Path) -> bool:
    """Whether ``path`` names an OpenVINO IR (its ``.xml`` file)."""
    return str(path).lower().endswith(".xml")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__
