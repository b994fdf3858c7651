"""Tracking the monitored metric: best checkpoint choice and early stopping."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Monitor:
    """Remembers the best value of one metric; part of the checkpoint so resume continues it."""

    metric: str = "val_acc"
    patience: int | None = None
    best: float | None = None
    best_epoch: int = 0
    stale_epochs: int = 0

    @property
    def mode(self) -> str:
        return "min" if "loss" in self.metric else "max"

    def update(self, row: dict) -> bool:
        """Record an epoch's row; return True if it is the best so far."""
        if self.metric not in row:
            raise ValueError(f"--monitor {self.metric!r}: not a logged metric (have: {', '.join(row)})")
        value = row[self.metric]
        if value is None or math.isnan(value):
            self.stale_epochs += 1
            return False
        improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.best_epoch, self.stale_epochs = value, row["epoch"], 0
        else:
            self.stale_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
