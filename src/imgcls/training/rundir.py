"""Where a run's files go: ``<out_dir>/<name>/``, never overwriting an earlier run."""

from __future__ import annotations

import time
from pathlib import Path

from imgcls.config import RunConfig


def open_run_dir(config: RunConfig) -> Path:
    """Create the run folder; a taken name gets ``-2``, ``-3``... so old runs survive."""
    name = config.name or f"{config.model.name.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    base = Path(config.out_dir) / name
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    config.name = candidate.name
    return candidate
