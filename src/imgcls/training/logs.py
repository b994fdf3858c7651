"""What a run writes while it trains: metrics.csv, TensorBoard events, bad_files.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from imgcls.data.dataset import BadFile
from imgcls.runtime import log


class BadFileLog:
    """Warn once per unreadable file and keep the list in ``bad_files.csv``."""

    def __init__(self, path: Path | None):
        self.path = path
        self.seen: dict[str, str] = {}
        if path is not None and path.exists():
            with path.open(newline="") as handle:
                self.seen = {row["path"]: row["reason"] for row in csv.DictReader(handle)}

    def add(self, bad: list[BadFile]) -> None:
        new = [b for b in bad if str(b.path) not in self.seen]
        for item in new:
            self.seen[str(item.path)] = item.reason
            log.warning("skipped %s: %s", item.path, item.reason)
        if new and self.path is not None:
            with self.path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "reason"])
                writer.writerows(sorted(self.seen.items()))


class MetricsLog:
    """One row per epoch in ``metrics.csv`` and the same scalars in TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.csv_path = run_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: ~1 s

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        exists = self.csv_path.exists()
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if not exists:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def truncate(self, epochs: int) -> None:
        """On resume, drop rows written after the checkpoint that is resumed from."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= epochs]
        self.csv_path.unlink()
        if rows:
            with self.csv_path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
