"""What practitioners reach for after the first run, measured on cifar10-small (issue 13).

    .venv/bin/python benchmarks/practitioner.py cv      # 5-fold cv of the default train vs one split's test top-1
    .venv/bin/python benchmarks/practitioner.py ema-tta # EMA and TTA against the same run without them
    .venv/bin/python benchmarks/practitioner.py tune    # 12 trials at 64 px, killed after 5 and resumed; best vs defaults
    .venv/bin/python benchmarks/practitioner.py budget  # --time-limit 3: wall time and the plan

Each part prints a markdown table; the baseline of each is measured in the same run. Runs
go to a temporary folder unless ``--out`` is given. Every figure is from the test split of
``../shared/datasets/cifar10-small`` (100 images a class).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-small"
IMGCLS = [sys.executable, "-m", "imgcls.cli"]


def _imgcls(*args: str, timeout: float | None = None) -> tuple[float, str]:
    """Run ``imgcls ARGS`` in a subprocess; (wall seconds, stdout+stderr)."""
    started = time.perf_counter()
    done = subprocess.run([*IMGCLS, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise SystemExit(f"imgcls {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout + done.stderr


def _eval_json(path: Path) -> dict:
    return json.loads(path.read_text())


def part_cv(out: Path, folds: int, extra: list[str]) -> None:
    seconds, _ = _imgcls("cv", str(DATA), "--folds", str(folds), "--out-dir", str(out), "--name", "cv", "--no-report",
                         *extra)
    summary = json.loads((out / "cv" / "cv.json").read_text())
    print(f"\n### {folds}-fold cross-validation of `imgcls train {' '.join(extra) or '(defaults)'}` on cifar10-small "
          f"({seconds / 60:.1f} min)\n")
    print("| fold | held-out top-1 | held-out macro-F1 | test top-1 |")
    print("| --- | --- | --- | --- |")
    tests = []
    for i, fold in enumerate(summary["per_fold"], start=1):
        tests.append(fold["test"]["top1"])
        print(f"| {i} | {fold['val']['top1']:.4f} | {fold['val']['f1_macro']:.4f} | {fold['test']['top1']:.4f} |")
    val, test = summary["mean_std"]["val"], summary["mean_std"]["test"]
    print(f"| mean ± std | {val['top1']['mean']:.4f} ± {val['top1']['std']:.4f} | "
          f"{val['f1_macro']['mean']:.4f} ± {val['f1_macro']['std']:.4f} | "
          f"{test['top1']['mean']:.4f} ± {test['top1']['std']:.4f} |")
    inside = min(tests) <= val["top1"]["mean"] <= max(tests)
    print(f"\ncv mean {val['top1']['mean']:.4f} {'lies within' if inside else 'lies outside'} the spread of one "
          f"split's test top-1 over the folds ({min(tests):.4f} .. {max(tests):.4f}); out-of-fold pooled top-1 "
          f"{summary['out_of_fold']['top1']:.4f} on {summary['images']} images.")


def part_ema_tta(out: Path, extra: list[str]) -> None:
    rows = []
    for name, flags in (("plain", []), ("ema", ["--ema"])):
        seconds, _ = _imgcls("train", str(DATA), "--out-dir", str(out), "--name", name, "--no-report", *extra, *flags)
        rows.append((name, _eval_json(out / name / "eval-test" / "eval.json"), seconds))
    for mode in ("flip", "flip+crops"):
        seconds, _ = _imgcls("eval", str(out / "plain"), "--split", "test", "--tta", mode, "--no-report",
                             "--out", str(out / f"tta-{mode}"))
        rows.append((f"plain + TTA {mode}", _eval_json(out / f"tta-{mode}" / "eval.json"), seconds))
    print(f"\n### EMA and TTA against the same run without them (cifar10-small test split, seed 0; train flags: "
          f"{' '.join(extra) or 'defaults'})\n")
    print("| run | test top-1 | test log loss | ECE | wall s |")
    print("| --- | --- | --- | --- | --- |")
    for name, metrics, seconds in rows:
        print(f"| {name} | {metrics['top1']:.4f} | {metrics['log_loss']:.4f} | {metrics['ece']:.4f} | {seconds:.0f} |")


def part_tune(out: Path, trials: int, kill_after: int, size: int) -> None:
    base = ["--image-size", str(size), "--out-dir", str(out), "--no-report"]
    started = time.perf_counter()
    process = subprocess.Popen([*IMGCLS, "tune", str(DATA), "--trials", str(trials), "--study", "study", *base],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    study = out / "study"
    while _finished_trials(study) < kill_after and process.poll() is None:
        time.sleep(5)
    os.killpg(process.pid, signal.SIGKILL)  # an interruption: no clean-up of any kind
    process.wait()
    print(f"\n### `imgcls tune` on cifar10-small at {size} px: {trials} trials, killed after {kill_after}\n")
    print(f"killed after {_finished_trials(study)} finished trials ({time.perf_counter() - started:.0f} s)")
    seconds, printed = _imgcls("tune", str(DATA), "--trials", str(trials), "--study", "study", *base)
    summary = json.loads((study / "tune.json").read_text())
    print(f"rerun: {seconds:.0f} s; trials in order: "
          + " ".join(f"{t['trial']}:{t['state'][0]}{'*' if t['baseline'] else ''}" for t in summary["trials"])
          + " (C complete, P pruned, F interrupted by the kill: its settings ran again as the next trial; "
            "* the baseline, the configuration as given)")
    print(f"search wall time (first run until killed + rerun): {(time.perf_counter() - started) / 60:.1f} min")
    print("\n| trial | state | val top-1 (best epoch) | settings |\n| --- | --- | --- | --- |")
    for t in summary["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        shown = "as given" if t["baseline"] else ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in t["params"].items())
        print(f"| {t['trial']} | {t['state']} | {value} | {shown} |")
    # The baseline trial is `imgcls train --image-size SIZE` (same seed, same weights); each
    # trial's own checkpoint is scored on the test split, the split no trial saw.
    baseline = next(t for t in summary["trials"] if t["baseline"])
    rows = [("defaults (trial %d, the baseline)" % baseline["trial"], baseline["run"]),
            ("best trial (trial %d)" % summary["best_trial"], summary["best_run"])]
    print("\n| configuration | test top-1 | test macro-F1 | test log loss |\n| --- | --- | --- | --- |")
    for name, run in rows:
        _imgcls("eval", run, "--split", "test", "--no-report", "--out", str(Path(run) / "eval-test"))
        m = _eval_json(Path(run) / "eval-test" / "eval.json")
        print(f"| {name} | {m['top1']:.4f} | {m['f1_macro']:.4f} | {m['log_loss']:.4f} |")
    print(f"\nbest.yaml: {study / 'best.yaml'} (imgcls train DATA --recipe it)")


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _finished_trials(study: Path) -> int:
    if not (study / "study.db").is_file():
        return 0
    import sqlite3

    try:
        with sqlite3.connect(study / "study.db") as db:
            return db.execute("select count(*) from trials where state in ('COMPLETE', 'PRUNED')").fetchone()[0]
    except sqlite3.Error:
        return 0


def part_budget(out: Path, minutes: float) -> None:
    seconds, printed = _imgcls("train", str(DATA), "--time-limit", str(minutes), "--out-dir", str(out), "--name",
                               "budget", "--no-report")
    plan = json.loads((out / "budget" / "budget.json").read_text())
    lines = [line for line in printed.splitlines() if "time budget" in line or "no fine-tuning" in line]
    metrics = _eval_json(out / "budget" / "eval-test" / "eval.json")
    epochs = len((out / "budget" / "metrics.csv").read_text().splitlines()) - 1
    print(f"\n### `imgcls train cifar10-small --time-limit {minutes:g}`\n")
    print(f"wall time {seconds:.0f} s (budget {minutes * 60:.0f} s + the final evaluation); {epochs} epochs; "
          f"test top-1 {metrics['top1']:.4f}; best.safetensors written: {(out / 'budget' / 'best.safetensors').is_file()}")
    for line in lines:
        print(f"    {line.split('INFO ')[-1]}")
    print("plans: " + json.dumps(plan["plans"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["cv", "ema-tta", "tune", "budget"])
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kill-after", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--train-flags", default="", help="cv and ema-tta: extra train flags, e.g. '--image-size 64'")
    args = parser.parse_args()
    extra = shlex.split(args.train_flags)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="imgcls-practitioner-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"runs in {out}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    {"cv": lambda: part_cv(out, args.folds, extra), "ema-tta": lambda: part_ema_tta(out, extra),
     "tune": lambda: part_tune(out, args.trials, args.kill_after, args.size),
     "budget": lambda: part_budget(out, args.minutes)}[args.part]()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
