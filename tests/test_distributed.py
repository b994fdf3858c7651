"""DDP on CPU (gloo): two processes train, rank 0 alone writes, metrics match one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import imgcls
from run_files import state


def _train(data, runs, *extra, timeout=300):
    command = [sys.executable, "-m", "imgcls", "train", str(data), "--out-dir", str(runs), "--name", "ddp",
               "--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
               "--workers", "0", "--head-epochs", "0", "--device", "cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_train_resume_and_match_single_process_eval(split_dataset, tmp_path):
    runs = tmp_path / "runs"
    first = _train(split_dataset, runs, "--devices", "2", "--epochs", "1")
    run = runs / "ddp"
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # one run folder, written by rank 0 only
    assert "2 processes" in (run / "train.log").read_text()
    assert first.stdout.count("best checkpoint") == 1

    # Resume the DDP run with a different number of processes: one.
    _train(split_dataset, runs, "--resume", str(run), "--epochs", "2", "--devices", "1")
    saved = state(run)
    assert saved.epoch == 2 and [r["epoch"] for r in saved.history] == [1, 2]

    # And back to two processes for a third epoch.
    _train(split_dataset, runs, "--resume", str(run), "--epochs", "3", "--devices", "2")
    row = state(run).history[-1]
    assert row["epoch"] == 3

    # The validation metrics the two ranks computed together equal a single-process evaluation.
    single = imgcls.evaluate(run / "last.safetensors", split="val", out_dir=tmp_path / "ev", device="cpu")
    assert single["n"] == 9
    assert row["val_acc"] == pytest.approx(single["top1"], abs=1e-9)
    assert row["val_loss"] == pytest.approx(single["loss"], rel=1e-5)
