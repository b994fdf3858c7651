"""Tiny generated datasets: colour classes a small CNN separates in a few steps."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}

# Small, fast settings every training test starts from.
FAST = dict(model="test_efficientnet", pretrained=False, image_size=32, batch_size=8, workers=0,
            epochs=2, head_epochs=0)


def make_image(path: Path, colour, size=(40, 36), seed: int = 0, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_class_folders(root: Path, per_class: int = 8, classes=COLOURS, start_seed: int = 0) -> Path:
    for c, (name, colour) in enumerate(classes.items()):
        for i in range(per_class):
            make_image(root / name / f"{name}_{i:03d}.jpg", colour, seed=start_seed + 100 * c + i)
    return root


@pytest.fixture
def flat_dataset(tmp_path) -> Path:
    """One folder of class folders (no splits)."""
    return make_class_folders(tmp_path / "flat", per_class=10)


@pytest.fixture
def split_dataset(tmp_path) -> Path:
    """train/ val/ test/ sub-folders of class folders."""
    root = tmp_path / "splits"
    make_class_folders(root / "train", per_class=8)
    make_class_folders(root / "val", per_class=3, start_seed=50)
    make_class_folders(root / "test", per_class=3, start_seed=80)
    return root


# Tiny test models gain nothing from intra-op threads, and spinning OpenMP threads make
# them many times slower whenever another process shares the two cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    """Disk pixel caches go to the test's own folder, never the user's ~/.cache."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "imgcls-cache"))


# The browser tests (report page, upload page) share one fixture, so that whichever runs
# first on a fresh CI machine installs the browser for both.
def _find_chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing and allowed (root)."""
    path = _find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(command, env=env, capture_output=True, timeout=1200, check=False)
        path = _find_chromium()
    if path is None:
        pytest.skip("the browser check needs Debian's chromium, which is not installed and cannot be "
                    "installed here (needs root and apt-get: apt-get install chromium)")
    return path
