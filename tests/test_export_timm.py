"""``--format timm``: a folder that timm alone loads (in a process that never imports imgcls)
with imgcls's logits, its model card, the heads timm cannot express refused, and
``--push-to-hub`` failing at once offline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from deploy_support import trained_run  # noqa: F401 - fixtures
from PIL import Image
from safetensors.torch import load_file, save_file

import imgcls
from imgcls.cli import main
from imgcls.data.sources import list_images
from imgcls.deploy import export_timm as export_timm_module
from imgcls.deploy.export_timm import export_timm
from imgcls.inference import artifact
from imgcls.models.classifier import build_model

# Runs in a fresh interpreter: timm and torch only. It loads the folder, runs the tensors
# imgcls preprocessed, and also preprocesses the image files with timm's own transform.
TIMM_ALONE = """
import json, sys
import timm, torch
from PIL import Image
from safetensors.torch import load_file, save_file

folder, tensors, paths, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**config)
own = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
with torch.no_grad():
    save_file({"logits": model(load_file(tensors)["images"]), "own_logits": model(own), "own_images": own}, out)
print(json.dumps({"labels": model.pretrained_cfg["label_names"], "config": config,
                  "imgcls_imported": any(m.split(".")[0] == "imgcls" for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def timm_folder(trained_run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("timm") / "tiny-timm"
    report = export_timm(trained_run.checkpoint, folder)
    assert report.parity_max_abs_diff <= 1e-4 and report.parity_source == "validation split"
    return folder


def test_timm_alone_loads_the_folder_with_imgcls_logits(trained_run, timm_folder, tmp_path):
    model = imgcls.load(trained_run.checkpoint, device="cpu")
    paths = list_images([trained_run.data / "val"])
    images = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = model.torch_module(images)
    save_file({"images": images}, str(tmp_path / "in.safetensors"))
    done = subprocess.run([sys.executable, "-c", TIMM_ALONE, str(timm_folder), str(tmp_path / "in.safetensors"),
                           json.dumps([str(p) for p in paths]), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["imgcls_imported"] is False
    assert info["labels"] == trained_run.classes
    pre = model.preprocessing
    assert info["config"]["input_size"] == [3, pre.image_size, pre.image_size]
    assert info["config"]["mean"] == list(pre.mean) and info["config"]["crop_pct"] == pre.crop_pct
    out = load_file(str(tmp_path / "out.safetensors"))
    assert len(paths) == 30 and (out["logits"] - expected).abs().max() < 1e-4
    # timm's own preprocessing of the files gives imgcls's tensors, hence its predictions.
    assert (out["own_images"] - images).abs().max() < 1e-5
    assert torch.equal(out["own_logits"].argmax(1), expected.argmax(1))


def test_the_folder_is_timms_hub_layout_with_a_model_card(trained_run, timm_folder):
    assert sorted(p.name for p in timm_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((timm_folder / "config.json").read_text())
    assert config["architecture"] == "test_efficientnet" and config["num_classes"] == 3
    assert config["label_names"] == trained_run.classes
    assert config["pretrained_cfg"]["crop_mode"] == "center" and "tag" not in config["pretrained_cfg"]
    weights = load_file(str(timm_folder / "model.safetensors"))
    assert weights["classifier.weight"].shape[0] == 3  # the timm classifier, not imgcls's head
    assert not any(key.startswith(("backbone.", "head.")) for key in weights)
    readme = (timm_folder / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: timm\npipeline_tag: image-classification\n")
    for section in ("## Training data", "## Metrics", "## Intended use", "## Limits"):
        assert section in readme
    assert "`colours`" in readme and "`blue`, `green`, `red`" in readme


def test_heads_timm_cannot_express_are_refused_naming_the_formats_that_work(trained_run, tmp_path, capsys):
    stored = artifact.read_card(trained_run.checkpoint)
    for head, model_name in (("mlp:16", "test_efficientnet"), ("linear", "cnn:blocks=2,filters=8-16")):
        config = stored.run_config
        config.model.head, config.model.name = head, model_name
        network, _ = build_model(config.model, config.data, 3, load_weights=False)
        path = tmp_path / f"{head.partition(':')[0]}-{model_name.partition(':')[0]}.safetensors"
        artifact.save_model(path, network.state_dict(), stored.replace(config=config.to_dict()))
        assert main(["export", str(path), "--format", "timm"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--format timm:" in err
        assert "use --format onnx, openvino or torchscript" in err
    assert "hand-built backbone" in err


def test_push_to_hub_offline_fails_at_once(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    assert main(["export", str(trained_run.checkpoint), "--format", "timm", "--out", str(tmp_path / "f"),
                 "--push-to-hub", "someone/tiny"]) == 2
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert "--push-to-hub someone/tiny: HF_HUB_OFFLINE is set" in err and err.count("\n") == 1
    assert not (tmp_path / "f").exists()  # refused before any work
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(export_timm_module, "_reachable", lambda host: False)  # no network, without waiting
    assert main(["export", str(trained_run.checkpoint), "--format", "timm", "--push-to-hub", "someone/tiny"]) == 2
    assert "cannot reach huggingface.co (offline?)" in capsys.readouterr().err


def test_push_to_hub_uploads_the_folder(trained_run, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:  # the Hub's client, recording instead of uploading
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, exist_ok):
            calls["create"] = (repo_id, exist_ok)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(export_timm_module, "_reachable", lambda host: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    report = export_timm(trained_run.checkpoint, tmp_path / "up", push_to_hub="someone/tiny")
    assert calls["create"] == ("someone/tiny", True)
    assert calls["upload"] == ("someone/tiny", ["README.md", "config.json", "model.safetensors"])
    assert "uploaded to https://huggingface.co/someone/tiny" in report.summary()
