"""The model file: weights in safetensors, the model card as JSON in the same file's header.

This module is the one place that reads, writes and updates model files. Nothing in it can
run code from a file: safetensors holds raw tensors and a JSON header, and the card is
plain JSON. A run folder holds ``best.safetensors`` (the monitored best epoch, the file
``predict``, ``eval``, ``serve`` and ``export`` use) and ``last.safetensors`` (the last
finished epoch, which ``--resume`` continues from with ``last.state.pt``, see
:mod:`imgcls.training.state`).

Checkpoints of imgcls < 0.2 (``best.pt``/``last.pt``, pickled) are refused with a message
that names ``imgcls convert``, which reads them with a restricted unpickler.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from imgcls.config import RunConfig
from imgcls.errors import CheckpointError
from imgcls.inference.card import CARD_METADATA_KEY as CARD_KEY
from imgcls.inference.card import ModelCard, UnknownSetting
from imgcls.models.classifier import ImageClassifier, build_model

SUFFIX = ".safetensors"
BEST, LAST = "best" + SUFFIX, "last" + SUFFIX
LEGACY_SUFFIXES = (".pt", ".pth")


class LegacyCheckpointError(CheckpointError):
    """A pickled checkpoint of imgcls < 0.2: opening it directly could run code."""


def model_path(path: str | Path) -> Path:
    """The model file meant by ``path``: a ``.safetensors`` file, or a run folder (its
    ``best.safetensors``, else ``last.safetensors``).

    Raises :class:`LegacyCheckpointError` for an old pickled checkpoint (a ``.pt`` file or a
    run folder holding only those) and :class:`CheckpointError` when there is no model.
    """
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        legacy = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        if legacy:
            raise _legacy_error(legacy[0])
        raise CheckpointError(f"{path}: no {BEST} or {LAST} in this folder (is it a run folder?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    if path.suffix.lower() in LEGACY_SUFFIXES:
        raise _legacy_error(path)
    return path


def _legacy_error(path: Path) -> LegacyCheckpointError:
    return LegacyCheckpointError(
        f"{path}: a pickled checkpoint (imgcls < 0.2, or not from imgcls); imgcls does not open pickle files "
        f"because unpickling can run code. If you made it yourself, convert it once with: imgcls convert {path}")


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], card: ModelCard) -> Path:
    """Write weights and card atomically: a crash mid-write leaves the previous file intact."""
    path = Path(path)
    tensors = {name: _own_storage(tensor) for name, tensor in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={CARD_KEY: card.to_json()})
    os.replace(tmp, path)
    return path


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors that share memory (views, tied weights); a contiguous
    # CPU copy of each is the plainest thing to store.
    return tensor.detach().to("cpu").contiguous().clone()


def read_card(path: str | Path) -> ModelCard:
    """The card of a model file (only the header is read)."""
    path = model_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    if CARD_KEY not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without an imgcls model card (not made by imgcls?)")
    return ModelCard.from_json(metadata[CARD_KEY], str(path))


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard, Path]:
    """(state dict, card, resolved path) of a model file or run folder."""
    path = model_path(path)
    card = read_card(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged weights ({_first_line(err)})") from None
    return state, card, path


def update_card(path: str | Path, **changes) -> ModelCard:
    """Apply ``changes`` to the card of an existing model file, atomically; returns the new card."""
    state, card, path = load_model_file(path)
    card = card.replace(**changes)
    save_model(path, state, card)
    return card


def weight_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every tensor of a model file, read from its header alone."""
    path = model_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                    for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def build_from_card(card: ModelCard, state_dict: dict[str, torch.Tensor], source: str = "model") -> ImageClassifier:
    """The network a card describes, with ``state_dict`` loaded, in eval mode.

    Raises :class:`CheckpointError` when the weights do not fit the architecture.
    """
    config = card.run_config
    model, _ = build_model(config.model, config.data, len(card.classes), load_weights=False)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: the weights do not fit a {config.model.name} with {len(card.classes)} "
                              f"classes ({_first_line(err)[:200]})") from None
    return model.eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else err.__class__.__name__


# --------------------------------------------------------------------------
# Old pickled checkpoints (imgcls < 0.2)
# --------------------------------------------------------------------------


def _legacy_safe_globals() -> list:
    """The only non-tensor types the old checkpoints pickled: numpy arrays, dtypes and scalars
    (the numpy RNG state, numpy floats in the history). Allow-listing them for torch's
    ``weights_only`` unpickler reads those files while still refusing any other callable."""
    from numpy import dtypes

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def read_legacy_checkpoint(path: str | Path) -> dict:
    """The content of an old ``best.pt``/``last.pt``, read with torch's restricted
    (``weights_only``) unpickler and the numpy types above; anything else is refused.

    Raises :class:`CheckpointError` when the file holds other objects or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals(_legacy_safe_globals()):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many types; all mean "refused"
        raise CheckpointError(f"{path}: refused: it holds more than tensors, numbers and numpy arrays, or is not "
                              f"a checkpoint ({_first_line(err)[:160]})") from None
    if not isinstance(content, dict) or content.get("format") != "imgcls-checkpoint/1":
        raise CheckpointError(f"{path}: not an imgcls checkpoint")
    return content


def card_from_legacy(content: dict) -> ModelCard:
    """The model card of an old checkpoint's content (see :func:`read_legacy_checkpoint`)."""
    config = RunConfig.from_dict(content["config"]).to_dict()  # validates, fills new defaults
    unknown = None
    if content.get("unknown_threshold") is not None:
        unknown = UnknownSetting(float(content["unknown_threshold"]), content.get("unknown_score") or "msp",
                                 content.get("unknown_temperature"), content.get("unknown_fit"))
    history = content.get("history") or []
    epoch = content.get("epoch")
    phase = next((row.get("phase") for row in history if row.get("epoch") == epoch), None)
    monitor = content.get("monitor") or None
    return ModelCard(classes=list(content["classes"]), preprocessing=dict(content["preprocessing"]), config=config,
                     temperature=float(content.get("temperature", 1.0)), calibration=plain(content.get("calibration")),
                     unknown=unknown, hierarchy=content.get("hierarchy"), epoch=epoch, phase=phase,
                     monitor=plain(monitor), head_fit=content.get("head_fit"))


def plain(value):
    """numpy scalars and arrays -> Python numbers and lists (JSON can hold those)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
