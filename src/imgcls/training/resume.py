"""What ``--resume`` may change, checked before anything in the run folder is touched.

A resumed run continues the weights, optimiser and schedule that were saved, so it must
train on the same classes with the same settings. The settings below only change how or
how long it runs; any other difference from the run's own configuration is refused with
one line naming the option (the run folder must never record a setting that was not
applied). More ``--epochs`` than planned add a new cosine segment over the extra epochs
(:func:`imgcls.training.optim.plan_schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgcls.config import ConfigError, RunConfig, flag_name, flatten
from imgcls.errors import CheckpointError
from imgcls.inference import artifact
from imgcls.inference.card import ModelCard
from imgcls.training.state import STATE_FILE, TrainState, load_state

# Settings a resumed run may change: how long it trains and where, not what it learns.
CHANGEABLE_ON_RESUME = frozenset({
    "train.epochs", "train.early_stopping", "train.device", "train.devices", "train.report", "train.compile",
    "data.workers", "data.cache", "data.cache_dir", "train.track", "train.track_experiment",
    "data.path",  # a moved dataset; its classes are checked against the run's (check_same_classes)
})
# Filled in by training itself, never by the user.
DERIVED = frozenset({"name", "out_dir", "data.hierarchy_map"})


@dataclass
class ResumePoint:
    """The last finished epoch of a run: its folder, weights, card and training state."""

    run_dir: Path
    card: ModelCard
    state_dict: dict
    state: TrainState

    @property
    def config(self) -> RunConfig:
        return self.card.run_config


def read_resume_point(resume: str | Path) -> ResumePoint:
    """``last.safetensors`` and ``last.state.pt`` of the run folder ``resume`` (or of the
    folder holding the file ``resume``); raises :class:`CheckpointError` when either is
    missing, damaged or from another epoch."""
    path = Path(resume)
    run_dir = path if path.is_dir() else path.parent
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {resume}: no such run folder")
    last = run_dir / artifact.LAST
    if not last.is_file():
        artifact.model_path(run_dir)  # an old pickled run gets the message that names `imgcls convert`
        raise CheckpointError(f"--resume {run_dir}: no {artifact.LAST} (the run never finished an epoch)")
    state_dict, card, _ = artifact.load_model_file(last)
    state = load_state(run_dir / STATE_FILE)
    if state.epoch != card.epoch:
        raise CheckpointError(f"--resume {run_dir}: {artifact.LAST} is from epoch {card.epoch} but {STATE_FILE} from "
                              f"epoch {state.epoch}; the run was interrupted while saving")
    return ResumePoint(run_dir, card, state_dict, state)


def check_resume_config(saved: RunConfig, asked: RunConfig, finished_epochs: int) -> RunConfig:
    """The configuration to resume with: ``asked`` if it differs from ``saved`` only in
    :data:`CHANGEABLE_ON_RESUME` (and keeps at least the finished epochs); else ConfigError."""
    before, after = flatten(saved.to_dict()), flatten(asked.to_dict())
    for key in sorted(after):
        if key in DERIVED or key in CHANGEABLE_ON_RESUME or after[key] == before.get(key):
            continue
        allowed = ", ".join(sorted(flag_name(k) for k in CHANGEABLE_ON_RESUME))
        raise ConfigError(f"{flag_name(key)} {after[key]!r}: cannot change when resuming (the run was trained with "
                          f"{before.get(key)!r}); a resumed run may change only {allowed}. To train with it, start "
                          "a new run: imgcls train DATA --config RUN/config.yaml with the new option")
    if asked.train.epochs < finished_epochs:
        raise ConfigError(f"--epochs {asked.train.epochs}: the run already finished {finished_epochs} epochs")
    resumed = RunConfig.from_dict(asked.to_dict())
    resumed.name, resumed.out_dir = saved.name, saved.out_dir
    if resumed.data.path is None:
        resumed.data.path = saved.data.path
    return resumed


def check_same_classes(run_classes: list[str], data_classes: list[str], where) -> None:
    """A class index must always name the class it was trained as."""
    if list(run_classes) != list(data_classes):
        gone = sorted(set(run_classes) - set(data_classes))
        new = sorted(set(data_classes) - set(run_classes))
        detail = f"missing {gone}, new {new}" if gone or new else "same names in another order"
        raise ConfigError(f"{where}: its classes {list(data_classes)} are not the run's {list(run_classes)} "
                          f"({detail}); a run resumes only on data with exactly its classes")
