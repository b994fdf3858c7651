"""Experiment tracking in MLflow: ``imgcls train --track mlflow``.

One MLflow run per imgcls run, in the experiment ``--track-experiment`` (default
``imgcls``): the run's settings as parameters (``train.lr``, ``model.name``...), every
epoch's row of ``metrics.csv`` as metrics at ``step = epoch``, and at the end the
evaluation's headline figures (``val_top1``, ``test_f1_macro``...) and, as artifacts, the
model card (``model_card.json``), ``report.html``, ``config.yaml``, ``metrics.csv`` and the
best model (``model/best.safetensors``). TensorBoard events are written as before.

The store is ``$MLFLOW_TRACKING_URI`` when set (a server, a database, a folder), else a
SQLite database beside the runs, ``sqlite:///<out_dir>/mlflow.db``, whose artifacts go to
``<out_dir>/mlartifacts/``: ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``
shows them. Writing goes through an ``MlflowClient`` bound to that store, not MLflow's
process-wide active run, so a failed or interrupted training leaves nothing active behind
(in a notebook, the next run starts cleanly; its MLflow run is marked FAILED).
``<run>/mlflow.json`` records the MLflow run, so ``--resume`` continues logging into it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from imgcls.config import RunConfig, flatten
from imgcls.inference import artifact
from imgcls.runtime import log, require

RUN_FILE = "mlflow.json"
DB_FILE = "mlflow.db"
ARTIFACTS = "mlartifacts"
FINAL_KEYS = ("top1", "topk_accuracy", "f1_macro", "log_loss", "ece", "mcc", "roc_auc_ovr", "loss")
PARAM_LIMIT = 500  # characters of a parameter value kept (a long class map is cut, not refused)


def tracking_uri(out_dir: str | Path) -> str:
    """Where runs are logged: ``$MLFLOW_TRACKING_URI``, else SQLite beside the runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / DB_FILE}"


def make_tracker(config: RunConfig, resume: str | Path | None = None) -> "MlflowTracker | None":
    """The tracker ``config.train.track`` asks for (None for ``none``); fails at once, in one
    line naming the extra, when MLflow is not installed."""
    if config.train.track == "none":
        return None
    return MlflowTracker(config, resume)


class MlflowTracker:
    """An epoch callback ``(trainer, row)`` that logs to one MLflow run (started at the first
    epoch, on rank 0 only), and :meth:`finish` / :meth:`fail` to close it."""

    def __init__(self, config: RunConfig, resume: str | Path | None = None):
        require("mlflow", "track", "--track mlflow")
        self.tracking = require("mlflow.tracking", "track", "--track mlflow")
        self.entities = require("mlflow.entities", "track", "--track mlflow")
        self.config = config
        self.uri = tracking_uri(config.out_dir)
        self.client = self.tracking.MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self._started = False
        if resume is not None:
            saved = Path(resume) if Path(resume).is_dir() else Path(resume).parent
            if (saved / RUN_FILE).is_file():
                self.run_id = json.loads((saved / RUN_FILE).read_text()).get("run_id")

    def __call__(self, trainer, row: dict) -> None:
        if not trainer.ctx.is_main:
            return
        if not self._started:
            self._start(trainer.config)
        metrics = {key: float(value) for key, value in row.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"}
        self._log_metrics(metrics, step=int(row["epoch"]))

    def _start(self, config: RunConfig) -> None:
        """Create the MLflow run (or reopen the resumed one) and log the parameters it lacks."""
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
        else:
            run = self.client.create_run(self._experiment_id(), run_name=config.name,
                                         tags={"imgcls.data": str(config.data.path), "imgcls.model": config.model.name})
            self.run_id, logged = run.info.run_id, {}
        params = {key: str(value)[:PARAM_LIMIT] for key, value in flatten(config.to_dict()).items()
                  if value is not None and key not in logged}
        Param = self.entities.Param
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        self._started = True
        run_dir = Path(config.out_dir) / str(config.name)
        if run_dir.is_dir():  # recorded now, so that --resume after a crash continues this MLflow run
            self._record(run_dir)
        log.info("tracking: MLflow run %s in %s", self.run_id, self.uri)

    def _record(self, run_dir: Path) -> None:
        (run_dir / RUN_FILE).write_text(json.dumps({"run_id": self.run_id, "tracking_uri": self.uri,
                                                    "experiment": self.config.train.track_experiment}, indent=2))

    def _experiment_id(self) -> str:
        name = self.config.train.track_experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # our SQLite store: artifacts beside it, not in the cwd
            location = (Path(self.config.out_dir).resolve() / ARTIFACTS).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        Metric = self.entities.Metric
        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value in metrics.items() if not math.isinf(value)]
        self.client.log_batch(self.run_id, metrics=items)

    def finish(self, result) -> None:
        """Log the evaluation's figures and the artifacts, record the run, mark it FINISHED."""
        if self.run_id is None:
            return  # rank > 0, or no epoch ran
        final = {f"{split}_{key}": float(metrics[key]) for split, metrics in result.metrics.items()
                 for key in FINAL_KEYS if isinstance(metrics.get(key), (int, float))}
        if final:
            self._log_metrics(final, step=len(result.history))
        run_dir = Path(result.run_dir)
        with tempfile.TemporaryDirectory() as scratch:
            card = Path(scratch) / "model_card.json"
            card.write_text(artifact.read_card(result.best_checkpoint).to_json())
            self.client.log_artifact(self.run_id, str(card))
        for name in ("report.html", "config.yaml", "metrics.csv"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        self.client.log_artifact(self.run_id, str(result.best_checkpoint), artifact_path="model")
        self._record(run_dir)
        self.client.set_terminated(self.run_id, status="FINISHED")
        log.info("tracking: logged to MLflow run %s (%s)", self.run_id, self.uri)

    def fail(self) -> None:
        """Mark the run FAILED (training raised or was interrupted)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED")
