"""``imgcls.load``: the one place that picks a backend for a model file."""

from __future__ import annotations

from pathlib import Path

from imgcls.inference import artifact
from imgcls.inference.backends import (OnnxBackend, OpenVinoBackend, TorchBackend, card_from_session, is_onnx_path,
                                      is_openvino_path, open_openvino, open_session)
from imgcls.inference.classifier import Classifier
from imgcls.runtime import memory_format_for, select_device


def load(path: str | Path, device: str = "auto", threads: int | None = None) -> Classifier:
    """A :class:`Classifier` for a run folder, a ``.safetensors`` model file (PyTorch), an
    exported ``.onnx`` file (ONNX Runtime) or an exported OpenVINO ``.xml`` file (OpenVINO,
    CPU); ``threads``: ONNX Runtime's or OpenVINO's inference threads.

    Raises :class:`~imgcls.errors.CheckpointError` (one line, naming the file) for anything
    that is not an imgcls model, including old pickled ``.pt`` checkpoints, which are never
    unpickled here (see ``imgcls convert``).
    """
    if is_onnx_path(path):
        session = open_session(path, device, threads)
        return Classifier(card_from_session(session, path), OnnxBackend(session), path)
    if is_openvino_path(path):
        compiled, card = open_openvino(path, device, threads)
        return Classifier(card, OpenVinoBackend(compiled), path)
    state, card, file = artifact.load_model_file(path)
    module = artifact.build_from_card(card, state, str(file))
    target = select_device(device)
    module.to(target, memory_format=memory_format_for(target))
    return Classifier(card, TorchBackend(module, target), file)
