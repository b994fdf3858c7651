"""--track mlflow: a run logged to MLflow and read back through MLflow's client API."""

from __future__ import annotations

import json

import pytest

import imgcls
from conftest import FAST

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def _only_run(uri: str, experiment: str = "imgcls"):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_run_holds_params_epoch_metrics_card_report_and_model(flat_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    result = imgcls.train(flat_dataset, out_dir=str(runs), name="tracked", track="mlflow", lr=0.003, **FAST)
    uri = f"sqlite:///{runs.resolve() / 'mlflow.db'}"
    client, run = _only_run(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.name"] == "test_efficientnet"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([row["val_acc"] for row in result.history])
    assert run.data.metrics["val_top1"] == pytest.approx(result.metrics["val"]["top1"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model_card.json", "report.html", "config.yaml", "metrics.csv", "model"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best.safetensors"]
    card = json.loads(open(client.download_artifacts(run.info.run_id, "model_card.json", str(tmp_path))).read())
    assert card["classes"] == ["blue", "green", "red"]
    assert (runs / "mlartifacts").is_dir()  # artifacts beside the database, not in the working folder
    assert json.loads((result.run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id

    # --resume continues the same MLflow run: epoch 3 joins the history
    imgcls.train(resume=result.run_dir, epochs=3, evaluate=False)
    client, resumed = _only_run(uri)
    assert resumed.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]


def test_mlflow_tracking_uri_from_the_environment_is_honoured(flat_dataset, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DEFAULT_ARTIFACT_ROOT", str(tmp_path / "art"))
    runs = tmp_path / "runs"
    imgcls.train(flat_dataset, out_dir=str(runs), name="env", track="mlflow", track_experiment="exp",
                 report=False, evaluate=False, **{**FAST, "epochs": 1})
    _, run = _only_run(uri, "exp")
    assert run.data.metrics["val_acc"] >= 0.0
    assert not (runs / "mlflow.db").exists()
