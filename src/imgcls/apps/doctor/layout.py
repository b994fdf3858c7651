"""Layout findings: what training's layout validation says about the dataset, as doctor codes.

The dataset is read exactly as ``imgcls train`` reads it (:func:`imgcls.data.sources.read_dataset`
with train's default 15% automatic validation split), so the doctor reports what training
would refuse (``one_class``, ``empty_split``, ``small_split``, ``ambiguous_layout``,
``extra_level``: :func:`imgcls.data.validate.training_problems`), what it would drop
(``empty_class`` folders, ``unused`` files) and which folders it read as splits under other
names (``split_folder``). Nothing is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imgcls.apps.doctor.checks import PROBLEMS
from imgcls.apps.doctor.groups import Finding
from imgcls.apps.doctor.scan import FileRecord
from imgcls.data.layout import EMPTY_CLASS, SPLIT_FOLDERS, DatasetError, Unused
from imgcls.data.sources import read_dataset
from imgcls.data.validate import describe, training_problems


@dataclass
class LayoutReport:
    findings: list[Finding] = field(default_factory=list)
    understood: list[str] = field(default_factory=list)  # the layout as training reads it (validate.describe)
    unused: list[Unused] = field(default_factory=list)


def layout_checks(data: Path, root: Path, records: list[FileRecord]) -> LayoutReport:
    """Findings about the dataset at ``data`` as a whole; files training leaves unused (and
    that carry no other problem) get ``unused`` on their records. ``root``: where the
    records' relative paths start."""
    try:
        found = read_dataset(data)
    except DatasetError as err:
        if err.code not in PROBLEMS:
            raise
        return LayoutReport([Finding(err.code, [], [], str(err))])
    findings = [Finding(p.code, [_rel(Path(p.where), root)], [], str(p)) for p in training_problems(found)]
    if found.layout == SPLIT_FOLDERS:
        for split, source in found.sources.items():
            rel = _rel(Path(source), root)
            if rel.rstrip("/") != split:
                findings.append(Finding("split_folder", [rel], [], f"{rel} read as the {split} split"))
    for item in found.unused:
        if item.reason == EMPTY_CLASS:
            rel = _rel(item.path, root)
            findings.append(Finding("empty_class", [rel], [], f"{rel}: class folder without images; training has "
                                    f"no class '{item.path.name}' there"))
    _flag_unused(records, found.unused)
    return LayoutReport(findings, describe(found), found.unused)


def _flag_unused(records: list[FileRecord], unused: list[Unused]) -> None:
    """``unused`` on each file training leaves out, itself or with its folder (extras/...),
    unless another problem already says why."""
    reasons = {item.path: item.reason for item in unused if item.reason != EMPTY_CLASS}
    for record in records:
        if record.problems:
            continue
        reason = next((reasons[p] for p in (record.path, *record.path.parents) if p in reasons), None)
        if reason is not None:
            record.flag("unused", reason)


def _rel(path: Path, root: Path) -> str:
    if path == root:
        return "."
    if not path.is_relative_to(root):
        return str(path)
    return path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
