"""Checkpoints: everything needed to resume exactly, or to predict with no other file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from imgcls.config import RunConfig
from imgcls.data.transforms import Preprocessing
from imgcls.models.classifier import ImageClassifier, build_model

FORMAT = "imgcls-checkpoint/1"


class CheckpointError(RuntimeError):
    pass


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **content) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **content}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # Our own files hold numpy RNG state and config dicts, so not weights_only.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imgcls checkpoint")
    checkpoint["path"] = str(path)
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> tuple[ImageClassifier, Preprocessing]:
    config = RunConfig.from_dict(checkpoint["config"])
    model, _ = build_model(config.model, config.data, len(checkpoint["classes"]), load_weights=False)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, Preprocessing.from_dict(checkpoint["preprocessing"])
