"""``imgcls runs [DIR]``: one row per run folder, sortable, as a table, CSV and Markdown.

A run is any folder below DIR holding a ``config.yaml`` and a ``metrics.csv`` or a
checkpoint. Everything is read from files the run already wrote: ``config.yaml`` (model,
learning rate, epochs), ``metrics.csv`` (train accuracy and wall time at the best epoch),
``eval-val/eval.json`` (validation metrics of ``best.safetensors``; the best epoch's row of
``metrics.csv`` stands in when there is none) and the model file's header (parameters, MB).
No file is unpickled: model files are safetensors, whose header gives every tensor's shape.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import CheckpointError
from imgcls.inference import artifact
from imgcls.options import RunsCommand
from imgcls.runtime import log


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    digits: int | None = None  # None: text, or an integer shown as is
    higher_is_better: bool = True


COLUMNS = [
    Column("name", "run"),
    Column("model", "model"),
    Column("lr", "lr", digits=-1),  # -1: general format (1e-3 stays readable)
    Column("epochs", "epochs"),
    Column("train_acc", "train acc", 4),
    Column("val_top1", "val top-1", 4),
    Column("topk", "k"),
    Column("val_topk", "val top-k", 4),
    Column("val_f1_macro", "val macro-F1", 4),
    Column("params_m", "params (M)", 2, higher_is_better=False),
    Column("mb", "MB", 1, higher_is_better=False),
    Column("wall_s", "wall time (s)", 0, higher_is_better=False),
    Column("options", "options"),
]
KEYS = [c.key for c in COLUMNS]
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def find_runs(root: str | Path) -> list[Path]:
    """Run folders below ``root`` (``root`` itself included), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    runs = []
    for config in sorted(root.rglob("config.yaml")):
        folder = config.parent
        if any((folder / name).is_file() for name in ("metrics.csv", artifact.BEST, artifact.LAST, "best.pt")):
            runs.append(folder)
    return runs


def _read_metrics_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _best_row(rows: list[dict[str, str]], monitor: str) -> dict[str, str]:
    """The epoch ``best.pt`` holds: the best monitored value, earliest on ties (as the loop picks)."""
    scored = [(value, i) for i, r in enumerate(rows) if (value := _number(r.get(monitor))) is not None]
    if not scored:
        return rows[-1] if rows else {}
    sign = 1 if "loss" in monitor else -1
    return rows[min(scored, key=lambda vi: (sign * vi[0], vi[1]))[1]]


_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _weights(run: Path) -> tuple[float | None, float | None]:
    """(parameters in millions, MB of weights) of the run's model file, from its header."""
    try:
        shapes = artifact.weight_shapes(run)
    except CheckpointError as err:  # a damaged or old-format file must not hide the other runs
        log.warning("%s", err)
        return None, None
    params = sum(math.prod(shape) for name, (shape, _) in shapes.items() if not name.endswith(_BUFFER_SUFFIXES))
    nbytes = sum(math.prod(shape) * _BYTES.get(dtype, 4) for shape, dtype in shapes.values())
    return params / 1e6, nbytes / 1e6


def run_row(run: Path) -> dict[str, Any]:
    """One leaderboard row; missing pieces (a run still training, no eval yet) stay None."""
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    train_cfg, model_cfg = config.get("train", {}) or {}, config.get("model", {}) or {}
    rows = _read_metrics_csv(run / "metrics.csv")
    best = _best_row(rows, train_cfg.get("monitor", "val_acc"))
    k = int(train_cfg.get("topk", 3))
    topk_column = next((c for c in best if c.startswith("val_top")), None)
    row: dict[str, Any] = {
        "name": run.name,
        "model": model_cfg.get("name"),
        "lr": _number(train_cfg.get("lr")),
        "epochs": len(rows) or None,
        "train_acc": _number(best.get("train_acc")),
        "val_top1": _number(best.get("val_acc")),
        "topk": int(topk_column[len("val_top"):]) if topk_column else k,
        "val_topk": _number(best.get(topk_column)) if topk_column else None,
        "val_f1_macro": None,
        "wall_s": sum(_number(r.get("seconds")) or 0.0 for r in rows) or None,
    }
    eval_json = run / "eval-val" / "eval.json"
    if eval_json.is_file():
        metrics = json.loads(eval_json.read_text())
        row.update(val_top1=metrics.get("top1"), topk=metrics.get("topk", row["topk"]),
                   val_topk=metrics.get("topk_accuracy"), val_f1_macro=metrics.get("f1_macro"))
    row["params_m"], row["mb"] = _weights(run)
    row["options"] = _options_cell(train_cfg, run)
    return row


def _options_cell(train_cfg: dict, run: Path) -> str | None:
    """The run's settings a reader compares runs by beyond the columns: EMA, TTA, the time
    budget, an automatic learning rate, the cv fold or tuning trial it belongs to."""
    notes = []
    if train_cfg.get("ema"):
        notes.append(f"ema {train_cfg.get('ema_decay', '')}".strip())
    if train_cfg.get("tta") not in (None, "none"):
        notes.append(f"tta {train_cfg['tta']}")
    if train_cfg.get("time_limit"):
        notes.append(f"budget {train_cfg['time_limit']:g} min")
    if (run / "lr_find.json").is_file():
        notes.append("lr auto")
    if (run.parent / CV_FILE).is_file() or run.name.startswith("fold-"):
        notes.append(f"cv {run.parent.name}")
    if run.name.startswith("trial-") and (run.parent / "study.db").is_file():
        notes.append(f"tune {run.parent.name}")
    return ", ".join(notes)


CV_FILE = "cv.json"  # written by `imgcls cv` beside its fold runs


def cv_rows(root: Path) -> list[dict[str, Any]]:
    """One row per `imgcls cv` folder below ``root``: the folds' mean (val = the held-out fold)."""
    rows = []
    for path in sorted(Path(root).rglob(CV_FILE)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("%s: skipped (%s)", path, err)
            continue
        val = summary.get("mean_std", {}).get("val", {})
        mean = {key: value["mean"] for key, value in val.items()}
        model = (summary.get("config") or {}).get("model", {}).get("name")
        rows.append({"name": f"{path.parent.name} ({summary.get('folds')}-fold mean)", "model": model,
                     "lr": _number((summary.get("config") or {}).get("train", {}).get("lr")),
                     "epochs": None, "train_acc": None, "val_top1": mean.get("top1"), "topk": mean.get("topk"),
                     "val_topk": mean.get("topk_accuracy"), "val_f1_macro": mean.get("f1_macro"),
                     "params_m": None, "mb": None, "wall_s": None,
                     "options": f"cv mean ± {val.get('top1', {}).get('std', float('nan')):.4f} (top-1 std)"})
    return rows


def leaderboard(root: str | Path, sort: str = RunsCommand.sort,
                reverse: bool = RunsCommand.reverse) -> list[dict[str, Any]]:
    """Rows of every run under ``root``, best first by ``sort`` (``reverse`` flips it).

    Scores sort best-first (highest accuracy, smallest size or time); names alphabetically.
    Runs without a value in the sort column always go last.
    """
    column = next((c for c in COLUMNS if c.key == sort), None)
    if column is None:
        raise ValueError(f"--sort {sort!r}: choose one of {', '.join(KEYS)}")
    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_row(run))
        except (OSError, ValueError, yaml.YAMLError) as err:
            log.warning("%s: skipped (%s)", run, err)
    rows += cv_rows(Path(root))
    descending = column.digits is not None and column.higher_is_better
    if reverse:
        descending = not descending
    present = [r for r in rows if r.get(sort) is not None]
    present.sort(key=lambda r: (r[sort], r["name"]) if column.digits is not None else (str(r[sort]), r["name"]),
                 reverse=descending)
    return present + [r for r in rows if r.get(sort) is None]


def _cell(row: dict, column: Column) -> str:
    value = row.get(column.key)
    if value is None:
        return "-"
    if column.digits == -1:
        return f"{value:g}"
    if column.digits is not None:
        return f"{value:.{column.digits}f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max([len(c.title)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]

    def fmt(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if c.digits is None and c.key in ("name", "model") else v.rjust(w)
                         for v, w, c in zip(values, widths, COLUMNS))

    lines = [fmt([c.title for c in COLUMNS]), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(line) for line in cells])


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in KEYS} for r in rows)
    return path


def write_markdown(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    align = ["---" if c.key in ("name", "model") else "---:" for c in COLUMNS]
    lines = ["| " + " | ".join(c.title for c in COLUMNS) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        cells = [_cell(row, c).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
    return path
