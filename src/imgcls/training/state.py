"""The training state that ``--resume`` needs beside the weights: ``last.state.pt``.

It holds the optimiser, scheduler and loss-scaler states (tensors, numbers, lists and
dicts: what ``torch.load(weights_only=True)`` reads without running code), the epoch and
update counts, the schedule plan, and, as JSON text, the monitor and the history.

No RNG state is saved: every epoch reseeds from (seed, epoch) and every sample's
augmentation from (seed, epoch, index), so the epoch after a resume draws exactly what it
would have drawn without the interruption.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imgcls.errors import CheckpointError

FORMAT = "imgcls-train-state/1"
STATE_FILE = "last.state.pt"


@dataclass
class TrainState:
    """Everything but the weights that the next epoch depends on.

    ``schedule``: epochs of each learning-rate segment planned so far (see
    :func:`imgcls.training.optim.create_scheduler`); ``epoch``: finished epochs.
    """

    epoch: int
    step: int
    optimizer: dict
    scheduler: dict | None
    scaler: dict
    schedule: list[int]
    monitor: dict
    history: list[dict] = field(default_factory=list)
    head_fit: float | None = None
    ema: dict | None = None  # --ema: the averaged weights (a state dict)


def save_state(path: str | Path, state: TrainState) -> Path:
    """Write atomically (a crash mid-write keeps the previous file)."""
    path = Path(path)
    content = {
        "format": FORMAT,
        "epoch": int(state.epoch),
        "step": int(state.step),
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": state.scaler,
        "schedule": [int(n) for n in state.schedule],
        # JSON text: history rows hold whatever numbers the loop logged (numpy scalars
        # included), which the weights-only unpickler would refuse.
        "monitor": json.dumps(state.monitor, default=float),
        "history": json.dumps(state.history, default=float),
        "head_fit": None if state.head_fit is None else float(state.head_fit),
        "ema": state.ema,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(content, tmp)
    os.replace(tmp, path)
    return path


def load_state(path: str | Path) -> TrainState:
    """Read a state file with the weights-only unpickler; raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found (the run cannot be resumed without it)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to a user
        raise CheckpointError(f"{path}: not a readable training state ({err.__class__.__name__})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imgcls training state")
    return TrainState(epoch=content["epoch"], step=content["step"], optimizer=content["optimizer"],
                      scheduler=content["scheduler"], scaler=content["scaler"], schedule=list(content["schedule"]),
                      monitor=json.loads(content["monitor"]), history=json.loads(content["history"]),
                      head_fit=content["head_fit"], ema=content.get("ema"))
