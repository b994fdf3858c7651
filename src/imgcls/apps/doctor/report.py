"""What the doctor writes: ``overview.csv``, ``doctor.json`` and the on-screen summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from imgcls.apps.doctor.checks import BLOCKING, DATASET_LEVEL, ERROR, INFO, PROBLEMS
from imgcls.apps.doctor.doctor import DoctorReport
from imgcls.apps.doctor.labelsets import summary_lines as label_set_lines

OVERVIEW_COLUMNS = ["path", "split", "class", "format", "width", "height", "mode", "bytes", "content_hash",
                    "perceptual_hash", "problems", "details"]


def write_overview(report: DoctorReport, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OVERVIEW_COLUMNS)
        for r in report.records:
            writer.writerow([r.rel, r.split, r.label, r.format, r.width or "", r.height or "", r.mode, r.bytes,
                             r.content_hash, r.perceptual_hash, ";".join(r.problems),
                             " | ".join(f"{code}: {detail}" for code, detail in r.problems.items())])
    return path


def report_dict(report: DoctorReport) -> dict:
    counts = report.counts()
    return {
        "dataset": str(report.root),
        "layout": report.layout,
        "files": len(report.records),
        "options": report.options_dict(),
        "seconds": {k: round(v, 3) for k, v in report.seconds.items()},
        "problems": {code: {"severity": PROBLEMS[code].severity, "count": n, "meaning": PROBLEMS[code].meaning}
                     for code, n in counts.items()},
        "blocking_files": len(report.blocking),
        "balance": _json_safe(report.balance),
        "findings": [f.to_dict() for f in report.findings],
        "understood": report.dataset.understood,
        **({"label_sets": report.labels} if report.labels is not None else {}),
        "unused": [{"path": _rel(u.path, report.root), "reason": u.reason} for u in report.dataset.unused],
        "flagged": [{"path": r.rel, "split": r.split, "class": r.label, "problems": r.problems}
                    for r in report.flagged],
    }


def write_json(report: DoctorReport, path: Path) -> Path:
    path.write_text(json.dumps(report_dict(report), indent=2))
    return path


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def bar_chart(counts: dict[str, int], width: int = 40) -> list[str]:
    """Horizontal bars in eighth-blocks, one line per class."""
    if not counts:
        return []
    largest = max(counts.values()) or 1
    name_width = max(len(name) for name in counts)
    lines = []
    for name, n in counts.items():
        eighths = round(n / largest * width * 8)
        bar = "█" * (eighths // 8) + (" ▏▎▍▌▋▊▉"[eighths % 8] if eighths % 8 else "")
        lines.append(f"  {name:<{name_width}} {n:>7,} {bar}")
    return lines


def summary(report: DoctorReport, shown: int = 20) -> str:
    """The text printed after a scan: problems, class balance, the first flagged files."""
    splits = report.balance["counts"]
    sizes = ", ".join(f"{split} {sum(c.values()):,}" for split, c in splits.items())
    kind = "classes"
    if report.labels is not None:  # label sets: images per split, not label occurrences
        sizes = ", ".join(f"{split} {s['images']:,}" for split, s in report.labels["splits"].items())
        kind = "labels"
    lines = [f"{report.root}: {report.layout}; {len(report.balance['classes'])} {kind}; {sizes} images; "
             f"{len(report.records):,} files checked in {sum(report.seconds.values()):.1f}s"]
    lines += [f"  {line}" for line in report.dataset.understood]
    counts = report.counts()
    if counts:
        lines.append("\nproblem                files  severity meaning")
        for code, n in counts.items():
            problem = PROBLEMS[code]
            count = f"{n} cls" if code == "imbalance" else str(n)  # imbalance counts minority classes
            lines.append(f"  {code:<20} {count:>5}  {problem.severity:<8} {problem.meaning}")
    if not any(PROBLEMS[code].severity != INFO for code in counts):
        lines.append("\nno problems found")
    refusals = [f.detail for f in report.findings if f.code in DATASET_LEVEL and PROBLEMS[f.code].severity == ERROR]
    lines += [f"\ntraining refuses this dataset: {refusals[0]}"] if refusals else []
    lines += _balance_lines(report.balance)
    lines += label_set_lines(report.labels)
    flagged = report.flagged
    if flagged:
        lines.append(f"\nflagged files ({len(flagged)}{', first ' + str(shown) if len(flagged) > shown else ''}):")
        for record in flagged[:shown]:
            problems = "; ".join(f"{code}: {detail}" if detail else code for code, detail in record.problems.items())
            lines.append(f"  {record.rel}  {problems}")
    return "\n".join(lines)


def _balance_lines(balance: dict) -> list[str]:
    train = balance["counts"].get("train")
    if not train:
        return []
    verdict = (f"imbalanced (ratio >= {balance['ratio_limit']:g}; consider imgcls train --balance)"
               if balance["imbalanced"] else "ok")
    head = f"\nclass balance (train): largest/smallest = {balance['ratio']:.1f} -> {verdict}"
    return [head] + bar_chart(train)


def blocking_note(report: DoctorReport) -> str:
    n = len(report.blocking)
    codes = sorted({c for r in report.blocking for c in r.problems if c in BLOCKING})
    return f"{n} file(s) with blocking problems ({', '.join(codes)})" if n else "no files with blocking problems"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
