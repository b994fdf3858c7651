"""docs/quickstart.ipynb runs headless (nbclient), and the notebook helpers return figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

import imgcls
from conftest import FAST

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_quickstart_notebook_runs_headless(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs)
    assert "epoch 1 [head]" in text and "val top-1" in text and "quickstart.onnx" in text
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 3  # samples, confusion matrix, predictions
    assert (tmp_path / "quickstart-runs" / "quickstart.onnx").is_file()


def test_helpers_return_figures(flat_dataset, tmp_path):
    samples = imgcls.show_samples(flat_dataset, n=6, columns=3)
    assert isinstance(samples, Figure) and len(samples.axes) == 6
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path / "runs"), name="nb", report=False,
                          **{**FAST, "epochs": 1})
    images = sorted((flat_dataset / "red").glob("*.jpg"))[:3]
    predictions = imgcls.show_predictions(result.run_dir, images, topk=2)
    assert isinstance(predictions, Figure) and len(predictions.axes) == 3
    assert all("%" in ax.get_title() for ax in predictions.axes)
    confusion = imgcls.show_confusion(result.metrics["val"])
    assert isinstance(confusion, Figure)
    assert [t.get_text() for t in confusion.axes[0].get_yticklabels()] == ["blue", "green", "red"]
