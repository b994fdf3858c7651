"""The core install: imgcls imports and trains without any extra, and each feature whose
extra is missing stops with one line naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The top-level modules each extra installs (as their packages are imported).
EXTRA_MODULES = {
    "serve": ["fastapi", "uvicorn", "multipart", "python_multipart"],
    "onnx": ["onnx", "onnxscript", "onnxruntime"],
    "doctor": ["cleanlab"],
    "track": ["mlflow"],
    "tune": ["optuna"],
    "hf": ["datasets"],
    "wds": ["webdataset"],
    "notebook": ["nbclient", "nbformat", "ipykernel", "ipywidgets"],
}

# Runs in a fresh interpreter in which every extra's modules are blocked (None in
# sys.modules makes importing them fail as if they were not installed).
SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import imgcls, imgcls.cli
from imgcls.cli import main
from imgcls.runtime import MissingExtra
out = {{}}
def run(key, argv):
    code = main(argv)
    out[key] = code
run("serve", ["serve", "model.safetensors"])
run("wds", ["train", "wds:shards", "--epochs", "1"])
run("hf", ["train", "hf:somewhere", "--epochs", "1"])
run("tune", ["tune", "data", "--trials", "1"])
try:
    imgcls.train("data", track="mlflow")
except MissingExtra as err:
    out["track"] = str(err)
out["loaded"] = sorted(m for m in {blocked!r} if sys.modules.get(m) is not None)
print("RESULT " + json.dumps(out))
"""


def test_extras_are_declared_and_dev_installs_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRA_MODULES) <= set(extras)
    everything = " ".join(extras["all"])
    assert all(name in everything for name in EXTRA_MODULES)
    assert any("imgcls[all]" in item for item in extras["dev"])
    core = " ".join(project["dependencies"])
    for heavy in ("fastapi", "onnxruntime", "mlflow", "optuna", "cleanlab", "datasets", "webdataset"):
        assert heavy not in core


def test_core_imports_and_each_missing_extra_is_named_in_one_line(flat_dataset, tmp_path):
    blocked = [module for modules in EXTRA_MODULES.values() for module in modules]
    (tmp_path / "data").symlink_to(flat_dataset)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=blocked)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["loaded"] == []
    assert {key: result[key] for key in ("serve", "wds", "hf", "tune")} == dict.fromkeys(
        ("serve", "wds", "hf", "tune"), 2)
    errors = [line for line in done.stderr.splitlines() if line.startswith("imgcls: error:")]
    for extra in ("serve", "wds", "hf", "tune"):
        assert any(f"pip install 'imgcls[{extra}]'" in line for line in errors), (extra, errors)
    assert "pip install 'imgcls[track]'" in result["track"]
