"""``imgcls export --format torchscript``: a traced TorchScript module, checked against PyTorch.

The module takes preprocessed images ``(batch, 3, H, W)`` and returns ``(logits,
probabilities)``, as the ONNX graph does; the model card travels inside the archive as the
extra file ``imgcls.card.json`` (``torch.jit.load(path, _extra_files={"imgcls.card.json":
""})`` reads it back). It is for runtimes that take TorchScript (LibTorch in C++, older
mobile and serving stacks); PyTorch itself now deprecates TorchScript in favour of
``torch.export``.

A TorchScript file is a program: loading it runs its code. imgcls writes such files but
never loads one a user gives it; the only ``torch.jit.load`` here reads back the file this
export has just written, to check it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from imgcls.deploy.export import (ExportedGraph, TargetReport, file_mb, output_path, parity_batches, quiet,
                                  require_parity, target_parity, validation_images)
from imgcls.inference.loading import load

SUFFIXES = (".torchscript", ".pt")
CARD_FILE = "imgcls.card.json"  # the extra file inside the archive that holds the model card


def export_torchscript(model: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
                       parity_images: int = 64) -> TargetReport:
    """Trace a model file or run folder to TorchScript, check it against PyTorch on the
    validation split (random inputs when the dataset is not at hand), and report.

    Raises :class:`~imgcls.deploy.export.ExportError` when the traced module's
    probabilities differ from PyTorch's by more than the tolerance.
    """
    classifier = load(model, device="cpu")
    card, preprocessing = classifier.card, classifier.preprocessing
    path = output_path(out, classifier.source, SUFFIXES[0], SUFFIXES)
    val, why = validation_images(classifier, data)
    graph = ExportedGraph(classifier.torch_module, card.temperature).eval()
    # Batch 2: traced at one size, the graph is checked below at the sizes of the parity batches.
    example = torch.randn(2, 3, preprocessing.image_size, preprocessing.image_size)
    with torch.no_grad(), quiet():
        traced = torch.jit.trace(graph, example)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path), _extra_files={CARD_FILE: card.to_json()})
        # The file just written, read back to check it (never a user's TorchScript file).
        written = torch.jit.load(str(path), map_location="cpu")
    batches, source = parity_batches(val, why, preprocessing, parity_images)
    parity, logits = target_parity(classifier.torch_module, lambda images: written(images)[0], batches,
                                   card.temperature)
    report = TargetReport("TorchScript", "torchscript", path, file_mb(path), parity, logits,
                          sum(len(b) for b in batches), source)
    require_parity(report)
    return report
