"""An exported ``.onnx`` file used like a checkpoint: same predict / predict_proba / evaluate.

The file is self-describing (class names, preprocessing, temperature and the run's config
live in its metadata, see :mod:`imgcls.deploy.export`), so nothing else is needed to use it.
Inference runs on ONNX Runtime: the CUDA provider where it is installed and a GPU is
present, else the CPU provider.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.config import ConfigError, RunConfig
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.deploy.predict import Classifier
from imgcls.evaluation.openset import UnknownRule
from imgcls.runtime import log
from imgcls.training.checkpoint import CheckpointError

INPUT_NAME = "images"
LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"


def providers_for(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for an imgcls ``--device`` value."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"--device {device}: this onnxruntime has no CUDA provider "
                             "(install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device in ("auto",) and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cpu"):
        raise ValueError(f"--device {device}: ONNX models run on cpu or cuda")
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, device: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession``; unreadable files raise a one-line CheckpointError."""
    import onnxruntime as ort

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


class OnnxModule(nn.Module):
    """An ORT session behind the ``nn.Module`` call interface: images in, logits out.

    This lets the PyTorch inference code (``predict_loader``, ``evaluate_samples``) run an
    ONNX model unchanged, so both paths produce the same outputs and files.
    """

    chunked_inference = False  # ONNX Runtime is fastest on whole batches

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([LOGITS_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)


def read_metadata(session, path: Path) -> dict:
    """The imgcls metadata of an exported model, JSON-decoded."""
    raw = session.get_modelmeta().custom_metadata_map
    if "classes" not in raw or "preprocessing" not in raw:
        raise CheckpointError(f"{path}: not an imgcls ONNX export (no class names/preprocessing in its metadata)")
    try:
        return {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: damaged imgcls metadata ({err})") from None


def _config_from(metadata: dict, path: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(metadata.get("config") or {})
    except ConfigError as err:
        # Exported by another imgcls version: predicting needs none of the config, only
        # `eval` without a DATA argument does (it reads the run's dataset path).
        log.warning("%s: ignoring the run config in the metadata (%s)", path, err)
        return RunConfig()


class OnnxClassifier(Classifier):
    """:class:`Classifier` backed by ONNX Runtime instead of a PyTorch checkpoint."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        # Deliberately not calling Classifier.__init__: it builds a PyTorch model from a
        # checkpoint dict; everything else (predict, evaluate) is inherited unchanged.
        path = Path(path)
        self.checkpoint_path = path
        self.session = open_session(path, device, threads)
        self.metadata = read_metadata(self.session, path)
        self.config = _config_from(self.metadata, path)
        self.classes = list(self.metadata["classes"])
        self.temperature = float(self.metadata.get("temperature") or 1.0)
        self.unknown = UnknownRule.from_checkpoint(self.metadata)  # threshold, score and its temperature
        self.preprocessing = Preprocessing.from_dict(self.metadata["preprocessing"])
        self.transform = eval_transform(self.preprocessing)
        # Inputs are handed to ORT as CPU arrays; ORT moves them to the GPU itself.
        self.device = torch.device("cpu")
        self.model = OnnxModule(self.session)
        outputs = [o.name for o in self.session.get_outputs()]
        if LOGITS_NAME not in outputs:
            raise CheckpointError(f"{path}: the graph has no '{LOGITS_NAME}' output (outputs: {outputs})")

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "OnnxClassifier":
        return cls(path, device)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def is_onnx_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")
