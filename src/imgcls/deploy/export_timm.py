"""``imgcls export --format timm``: a folder that plain timm (and the Hugging Face Hub) loads.

The folder is timm's own Hub layout, written by timm's ``save_for_hf``: ``config.json``
(the architecture, the number of classes, ``label_names`` and the preprocessing as timm's
``pretrained_cfg``) and ``model.safetensors`` (the weights under the timm architecture's
own state-dict names: imgcls's backbone keys, and its linear head as the architecture's
classifier), plus a model card ``README.md``. With timm alone::

    model = timm.create_model("local-dir:FOLDER", pretrained=True)      # or "hf-hub:OWNER/NAME"

Only what timm can express is exported: a timm backbone with imgcls's linear head. An MLP
or hierarchical head, or a hand-built ``cnn:`` backbone, is refused with a one-line error
naming the formats that export any model (onnx, openvino, torchscript).

The export is checked like the others: the folder is loaded back with
``timm.create_model("local-dir:...")`` and its logits compared with imgcls's.
``push_to_hub`` uploads the folder with ``huggingface_hub``; offline it fails at once,
before any work, never after a minute of retries.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import timm
import yaml
from timm.models import save_for_hf
from torch import nn

from imgcls.deploy.export import TargetReport, file_mb, parity_batches, require_parity, target_parity, validation_images
from imgcls.errors import UserError
from imgcls.inference.classifier import Classifier
from imgcls.inference.loading import load
from imgcls.models.backbones import CUSTOM_BACKBONES
from imgcls.models.heads import parse_head_spec
from imgcls.runtime import require

CONFIG, WEIGHTS, README = "config.json", "model.safetensors", "README.md"
OTHER_FORMATS = "--format onnx, openvino or torchscript (they export any imgcls model)"
HUB_TIMEOUT_S = 3.0  # one connection probe before uploading: huggingface_hub itself retries for about a minute


class HubError(UserError):
    """The Hugging Face Hub cannot be reached, or refused the upload."""


def default_folder(model_file: Path) -> Path:
    """``--out``'s default: ``<model name>-timm/`` beside the model file."""
    return model_file.with_name(model_file.stem + "-timm")


def export_timm(model: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
                parity_images: int = 64, push_to_hub: str | None = None) -> TargetReport:
    """Write a model file or run folder as a timm model folder, load it back with timm and
    compare its logits with imgcls's, and (``push_to_hub``) upload it to that Hub repository.

    Raises :class:`~imgcls.errors.UserError` for a model timm cannot express, and
    :class:`HubError` (before any work) when ``push_to_hub`` cannot reach the Hub.
    """
    hub = hub_client(push_to_hub) if push_to_hub else None
    classifier = load(model, device="cpu")
    network = timm_network(classifier)
    folder = Path(out) if out else default_folder(classifier.source)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: --format timm writes a folder, and this is a file")
    write_folder(network, classifier, folder)

    reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    val, why = validation_images(classifier, data)
    batches, source = parity_batches(val, why, classifier.preprocessing, parity_images)
    parity, logits = target_parity(classifier.torch_module, reloaded, batches, classifier.temperature)
    report = TargetReport("timm folder", "timm", folder, file_mb(*folder.iterdir()), parity, logits,
                          sum(len(b) for b in batches), source)
    require_parity(report)
    report.notes.append(f'load it with timm alone: timm.create_model("local-dir:{folder}", pretrained=True)')
    if hub is not None:
        url = upload(hub, folder, push_to_hub)
        report.notes.append(f"uploaded to {url} (timm.create_model(\"hf-hub:{push_to_hub}\", pretrained=True))")
    return report


def timm_network(classifier: Classifier) -> nn.Module:
    """The timm architecture of ``classifier`` with its weights: the backbone's keys as they
    are, the linear head as the architecture's own classifier. Refuses what timm cannot express."""
    name = classifier.config.model.name
    module = classifier.torch_module
    if name.partition(":")[0].strip().lower() in CUSTOM_BACKBONES:
        _refuse(f"{name} is a hand-built backbone, not a timm architecture")
    if getattr(module, "hierarchical", False):
        _refuse("a hierarchical (coarse + fine) head has no timm equivalent")
    kind, _ = parse_head_spec(classifier.config.model.head)
    if kind != "linear":
        _refuse(f"the {classifier.config.model.head} head has no timm equivalent (only a linear head does)")
    network = timm.create_model(name, pretrained=False, num_classes=len(classifier.classes))
    head = network.pretrained_cfg.get("classifier")
    if not isinstance(head, str):  # e.g. distilled models with two classifiers
        _refuse(f"{name} has {head!r} as its classifier, which one linear head cannot fill")
    state = module.state_dict()
    mapped = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    linear = [key for key in state if key.startswith("head.") and key.endswith(".weight")]
    mapped[f"{head}.weight"] = state[linear[-1]]
    mapped[f"{head}.bias"] = state[linear[-1].removesuffix("weight") + "bias"]
    try:
        network.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        _refuse(f"its weights do not map onto timm's {name} ({str(err).splitlines()[0][:160]})")
    return network.eval()


def _refuse(why: str) -> None:
    raise UserError(f"--format timm: {why}; use {OTHER_FORMATS}")


def write_folder(network: nn.Module, classifier: Classifier, folder: Path) -> None:
    """``config.json`` and ``model.safetensors`` by timm's ``save_for_hf``, then the README."""
    pre = classifier.preprocessing
    data_config = {"input_size": (3, pre.image_size, pre.image_size), "mean": tuple(pre.mean), "std": tuple(pre.std),
                   "crop_pct": pre.crop_pct, "interpolation": pre.interpolation, "crop_mode": "center"}
    save_for_hf(network, str(folder), model_config={"label_names": list(classifier.classes)},
                safe_serialization=True, data_config=data_config)
    config_path = folder / CONFIG
    config = json.loads(config_path.read_text())
    # The tag names timm's pretrained weights the backbone started from; these are other weights.
    config["pretrained_cfg"].pop("tag", None)
    config["imgcls"] = {"temperature": classifier.temperature, "task": classifier.card.task,
                        "imgcls_version": classifier.card.imgcls_version}
    config_path.write_text(json.dumps(config, indent=2))
    (folder / README).write_text(model_card_text(classifier, folder), encoding="utf-8")


def model_card_text(classifier: Classifier, folder: Path) -> str:
    """The Hub model card: front matter, use, data, metrics, intended use and limits."""
    card, config, pre = classifier.card, classifier.config, classifier.preprocessing
    front = {"library_name": "timm", "pipeline_tag": "image-classification",
             "tags": ["image-classification", "timm", "imgcls"]}
    classes = ", ".join(f"`{c}`" for c in classifier.classes[:50]) + (" ..." if len(classifier.classes) > 50 else "")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", f"# {folder.name}", "",
             f"An image classifier trained with [imgcls](https://pypi.org/project/imgcls/) on timm's "
             f"`{config.model.name}` architecture: {len(classifier.classes)} classes ({classes}).", "",
             "## Use it with timm", "", "```python", "import timm, torch", "from PIL import Image", "",
             f'model = timm.create_model("local-dir:{folder.name}", pretrained=True).eval()  '
             '# or "hf-hub:OWNER/NAME"',
             "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))",
             "with torch.no_grad():",
             '    logits = model(transform(Image.open("photo.jpg").convert("RGB")).unsqueeze(0))',
             f"probabilities = (logits / {card.temperature:.4g}).softmax(-1)  # the calibrated temperature",
             'label = model.pretrained_cfg["label_names"][int(logits.argmax())]', "```", "",
             f"Preprocessing: shorter side resized to {pre.resize_size} px ({pre.interpolation}), centre crop "
             f"{pre.image_size} px, RGB scaled to [0, 1] and normalised with mean {list(pre.mean)} and std "
             f"{list(pre.std)}.", ""]
    lines += _data_and_metrics(classifier) + _intended_use_and_limits(classifier)
    return "\n".join(lines) + "\n"


def _data_and_metrics(classifier: Classifier) -> list[str]:
    card, config = classifier.card, classifier.config
    data_name = Path(config.data.path).name if config.data.path else "(not recorded)"
    metrics = []
    if card.monitor and isinstance(card.monitor.get("best"), (int, float)):
        metrics.append(f"- best {card.monitor.get('metric', 'monitored metric')} during training: "
                       f"{card.monitor['best']:.4f} (epoch {card.monitor.get('best_epoch', card.epoch)})")
    metrics += [_eval_line(path) for path in _eval_files(classifier)]
    if card.calibration:
        metrics.append(f"- temperature {card.temperature:.4g} fitted on the validation split "
                       f"(ECE {_number(card.calibration.get('ece_before'))} -> "
                       f"{_number(card.calibration.get('ece_after'))})")
    metrics = [line for line in metrics if line] or ["- no evaluation was recorded with this model"]
    return ["## Training data", "",
            f"The image folder `{data_name}`, one class per folder; training settings: {config.train.epochs} "
            f"epochs, `{config.model.head}` head, `{config.data.augment}` augmentation, learning rate "
            f"{config.train.lr}, image size {classifier.preprocessing.image_size}, "
            f"{'pretrained' if config.model.pretrained else 'random'} initial backbone weights.", "",
            "## Metrics", "", *metrics, ""]


def _eval_files(classifier: Classifier) -> list[Path]:
    """The ``eval.json`` files of the model's own run folder (none for a loose model file)."""
    if classifier.source is None or classifier.source.name != "best.safetensors":
        return []
    return sorted(classifier.source.parent.glob("eval-*/eval.json"))


def _eval_line(path: Path) -> str:
    try:
        metrics = json.loads(path.read_text())
        return (f"- `{metrics.get('split', path.parent.name)}` split ({metrics['n']} images): top-1 "
                f"{metrics['top1']:.4f}, macro-F1 {_number(metrics.get('f1_macro'))}")
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # an eval folder of another tool or version: its numbers are not reported


def _intended_use_and_limits(classifier: Classifier) -> list[str]:
    card = classifier.card
    lines = ["## Intended use", "",
             "Sorting images like the training images into the classes above. It is not a general-purpose "
             "classifier, and its numbers hold for images like the validation split's only.", "",
             "## Limits", "",
             f"- It knows only these {len(classifier.classes)} classes: every image gets one of them, including "
             "images of none."]
    if card.unknown is not None:
        lines.append(f"- imgcls answers `unknown` below a {card.unknown.score} score of "
                     f"{card.unknown.threshold:.4g}; plain timm does not apply that rule.")
    if card.tta != "none":
        lines.append(f"- imgcls averages the logits over test-time augmentation `{card.tta}`; plain timm runs "
                     "one view.")
    if card.multilabel:
        lines.append("- A multilabel model: apply a sigmoid per label (not a softmax); the thresholds fitted by "
                     "imgcls are in its own model file.")
    lines.append("- It inherits the biases of its training images: classes, viewpoints, lighting and cameras "
                 "missing there are not recognised reliably.")
    return lines


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "?"


def hub_client(repo_id: str) -> ModuleType:
    """``huggingface_hub``, once the Hub is known to be reachable and a token is set; fails
    at once with one line otherwise (no export work is done first)."""
    hub = require("huggingface_hub", "hub", "--push-to-hub")
    if _offline_env() or hub.constants.HF_HUB_OFFLINE:
        raise HubError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set; unset it to upload")
    host = urlparse(hub.constants.ENDPOINT).hostname or "huggingface.co"
    if not _reachable(host):
        raise HubError(f"--push-to-hub {repo_id}: cannot reach {host} (offline?); export without --push-to-hub "
                       "and upload the folder later")
    if not hub.get_token():
        raise HubError(f"--push-to-hub {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    return hub


def _offline_env() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE when it is first imported; a later setting counts too.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def upload(hub: ModuleType, folder: Path, repo_id: str) -> str:
    """Create the repository if needed and upload ``folder``; returns the repository's URL."""
    api = hub.HfApi(library_name="imgcls")
    try:
        repo = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="Upload imgcls model")
    except Exception as err:  # noqa: BLE001 - HTTP, auth and repository errors all end the upload the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise HubError(f"--push-to-hub {repo_id}: the Hub refused the upload ({first[:200]})") from None
    return str(repo)
