"""Move files with blocking problems out of the dataset (``--fix``) and back (``--restore``).

Files are only ever moved, never deleted or rewritten: into ``<dataset>.quarantine/``
beside the dataset, under the same relative path, each listed in ``quarantine.csv``
(original path, problem codes, content hash). Folders are left in place, so fix then
restore gives back a byte-identical tree.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from imgcls.apps.doctor.checks import BLOCKING
from imgcls.apps.doctor.doctor import DoctorReport
from imgcls.apps.doctor.scan import content_hash
from imgcls.data.sources import DatasetError

COLUMNS = ["original_path", "problem", "content_hash", "detail"]
LIST_NAME = "quarantine.csv"


@dataclass
class Move:
    rel: str
    problem: str  # blocking codes, ";"-joined
    detail: str


@dataclass
class RestoreResult:
    restored: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stayed in quarantine)


def quarantine_dir(root: Path) -> Path:
    root = Path(root).resolve()
    return root.parent / f"{root.name}.quarantine"


def plan_fix(report: DoctorReport) -> list[Move]:
    """The files ``--fix`` would move: every file with an error-severity problem."""
    moves = []
    for record in report.blocking:
        codes = [c for c in record.problems if c in BLOCKING]
        if _safe_rel(record.rel) and (report.root / record.rel).is_file():
            moves.append(Move(record.rel, ";".join(codes), " | ".join(record.problems[c] for c in codes)))
    return moves


def apply_fix(root: Path, moves: list[Move]) -> Path:
    """Move ``moves`` into the quarantine folder; returns the path of ``quarantine.csv``."""
    root, target = Path(root), quarantine_dir(root)
    clashes = [m.rel for m in moves if (target / m.rel).exists()]
    if clashes:
        raise DatasetError(f"{target / clashes[0]}: already in quarantine; run --restore first "
                           f"({len(clashes)} file(s) clash)")
    listing = target / LIST_NAME
    target.mkdir(parents=True, exist_ok=True)
    new_list = not listing.exists()
    with listing.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_list:
            writer.writerow(COLUMNS)
        for move in moves:
            source, destination = root / move.rel, target / move.rel
            digest = content_hash(source.read_bytes())
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, destination)
            # One row per finished move, flushed: an interrupted --fix still restores.
            writer.writerow([move.rel, move.problem, digest, move.detail])
            handle.flush()
    return listing


def restore(root: Path) -> RestoreResult:
    """Move every quarantined file back; a file whose place is taken stays in quarantine."""
    root, source_dir = Path(root), quarantine_dir(root)
    listing = source_dir / LIST_NAME
    if not listing.is_file():
        raise DatasetError(f"{source_dir}: nothing to restore (no {LIST_NAME})")
    with listing.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    result, remaining = RestoreResult(), []
    for row in rows:
        rel = row["original_path"]
        why = _restore_one(root, source_dir, rel)
        if why:
            result.left.append((rel, why))
            remaining.append(row)
        else:
            result.restored.append(rel)
    _finish(source_dir, listing, remaining)
    return result


def _restore_one(root: Path, source_dir: Path, rel: str) -> str | None:
    if not _safe_rel(rel):
        return "not a relative path inside the dataset"
    source, destination = source_dir / rel, root / rel
    if not source.is_file():
        return "missing from the quarantine folder"
    if destination.exists():
        return f"{destination} exists; move one of them by hand"
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, destination)
    return None


def _finish(source_dir: Path, listing: Path, remaining: list[dict]) -> None:
    if remaining:
        with listing.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(remaining)
        return
    listing.unlink()
    for dirpath, _, _ in sorted(os.walk(source_dir), key=lambda item: -len(item[0])):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)  # only empty folders this module created


def _safe_rel(rel: str) -> bool:
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts
