"""How fast ``imgcls doctor`` checks headers and hashes files, on the 60,000 CIFAR-10 JPEGs.

Extracts ``../shared/datasets/cifar10-full.tar.gz`` to a temporary folder, then times, in
this one run:
  * baseline: reading every file's bytes in one process (what any scan pays at least);
  * the doctor's per-file scan (header checks, BLAKE2b content hash, dHash) in one
    process: images/s per core, against the issue's goal of 500;
  * the same scan over all cores (a process pool), and the cross-file checks
    (duplicates, conflicting labels, leakage search) on the results.

    python benchmarks/doctor_speed.py [--tar PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from imgcls.apps.doctor.groups import class_balance, dataset_checks
from imgcls.apps.doctor.scan import find_files, scan_files

GOAL_PER_CORE = 500.0
DEFAULT_TAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-full.tar.gz"


def extract(tar: Path, into: Path) -> Path:
    started = time.perf_counter()
    with tarfile.open(tar) as archive:
        archive.extractall(into, filter="data")
    root = next(p for p in into.iterdir() if p.is_dir())
    print(f"extracted {tar.name} in {time.perf_counter() - started:.1f}s -> {root}")
    return root


def timed(label: str, count: int, work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    print(f"{label:<44} {count:>7,} files {seconds:7.2f}s {count / seconds:9,.0f} files/s")
    return count / seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tar", type=Path, default=DEFAULT_TAR)
    parser.add_argument("--limit", type=int, help="scan only the first N files (quick check)")
    args = parser.parse_args()
    if not args.tar.exists():
        print(f"{args.tar}: not found", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="doctor-speed-") as tmp:
        root = extract(args.tar, Path(tmp))
        records = find_files(root).records[: args.limit]
        n = len(records)
        print(f"{n:,} files, {cores} cores, load average before: {os.getloadavg()[0]:.1f}\n")
        baseline, _ = timed("baseline: read bytes, 1 process", n, lambda: [r.path.read_bytes() for r in records])
        fresh = find_files(root).records[:n]  # records are filled in place: a fresh list per scan, found untimed
        per_core, _ = timed("doctor scan, 1 process", n, lambda: scan_files(fresh, workers=1))
        fresh = find_files(root).records[:n]
        _, scanned = timed(f"doctor scan, {cores} processes", n, lambda: scan_files(fresh, workers=cores))
        _, findings = timed("cross-file checks (duplicates, leakage)", n,
                            lambda: dataset_checks(scanned, near_distance=4))
        class_balance(scanned, 3.0)
    flagged = sum(bool(r.problems) for r in scanned)
    print(f"\nheader checks + hashing: {per_core:,.0f} images/s per core = {per_core / GOAL_PER_CORE:.1f}x the goal "
          f"of {GOAL_PER_CORE:.0f}; {per_core / baseline:.2f}x the read-only baseline")
    print(f"findings: {len(findings)} groups, {flagged} files flagged "
          f"({sum('leak' in r.problems for r in scanned)} leak, "
          f"{sum('duplicate' in r.problems for r in scanned)} duplicate)")
    print(f"load average after: {os.getloadavg()[0]:.1f} (the machine is shared: more load, lower figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
