"""``imgcls convert``: old pickled checkpoints (imgcls < 0.2) to safetensors model files.

The explicit opt-in for old files: nothing else in imgcls opens them. The file is read with
torch's weights-only unpickler, allowing only the numpy types the old format stored (see
:func:`imgcls.inference.artifact.read_legacy_checkpoint`), so a file that would run code is
refused here too. ``best.pt`` becomes ``best.safetensors``; ``last.pt`` becomes
``last.safetensors`` plus ``last.state.pt``, so the run can be resumed.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.config import RunConfig
from imgcls.errors import CheckpointError
from imgcls.inference import artifact
from imgcls.training.loop import head_epochs
from imgcls.training.optim import plan_schedule
from imgcls.training.state import STATE_FILE, TrainState, save_state


def convert_legacy(path: Path) -> list[str]:
    """Convert ``path`` (a ``.pt`` file, or a run folder's ``best.pt`` and ``last.pt``);
    returns one line per file written. Raises CheckpointError when there is nothing to convert."""
    files = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()] if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{path}: no best.pt or last.pt to convert")
    return [line for file in files for line in _convert_file(file)]


def _convert_file(path: Path) -> list[str]:
    content = artifact.read_legacy_checkpoint(path)
    card = artifact.card_from_legacy(content)
    target = path.with_suffix(artifact.SUFFIX)
    artifact.save_model(target, content["model"], card)
    lines = [f"{path} -> {target} ({len(card.classes)} classes, epoch {card.epoch})"]
    if path.stem == "last" and content.get("optimizer") is not None:
        config = RunConfig.from_dict(content["config"])
        plan = plan_schedule(config.train, head_epochs(config))
        state = TrainState(epoch=content["epoch"], step=content.get("step", 0), optimizer=content["optimizer"],
                           scheduler=content.get("scheduler"), scaler=content.get("scaler") or {}, schedule=plan,
                           monitor=artifact.plain(content.get("monitor") or {}),
                           history=artifact.plain(content.get("history") or []), head_fit=content.get("head_fit"))
        lines.append(f"{path} -> {save_state(path.parent / STATE_FILE, state)} (training state for --resume)")
    return lines
