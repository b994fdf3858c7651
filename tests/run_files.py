"""Reading what a run wrote, for assertions: model files (safetensors + card) and the state."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from imgcls.inference import artifact
from imgcls.inference.card import ModelCard
from imgcls.training.state import STATE_FILE, TrainState, load_state


def weights(path: str | Path) -> dict:
    """The state dict of a model file or run folder (its best model)."""
    return load_file(str(artifact.model_path(path)))


def card(path: str | Path) -> ModelCard:
    return artifact.read_card(path)


def state(run_dir: str | Path) -> TrainState:
    return load_state(Path(run_dir) / STATE_FILE)
