"""Hand-built plain CNNs (seed 001), described by a spec string and used like a timm backbone.

``--model cnn:blocks=4,filters=32-256,order=inc,bn=1,dropout=0.3,dense=256``

Keys (all optional, ``key=value`` separated by commas; ``--model cnn`` alone is the default):

=========  =========  ==================================================================
key        default    meaning
=========  =========  ==================================================================
blocks     4          number of conv blocks
filters    32-256     ``A-B``: filters grow geometrically from A to B over the blocks;
                      ``64``: the same in every block; ``32/64/64/128``: one per block
order      inc        ``inc``: in the order given; ``inv``: reversed (wide first, narrow last)
convs      1          3x3 conv layers per block
kernel     3          conv kernel size (odd)
bn         1          BatchNorm after each conv (1/0)
pool       max        down-sampling at the end of each block: ``max``, ``avg`` or ``none``
dropout    0          dropout after each block (``Dropout2d``, whole feature maps)
dense      0          hidden dense layer width(s) after global average pooling, ``256`` or
                      ``512/256`` (ReLU + dropout); 0 = none. ``--head`` still adds the classifier
size       128        default input size (``--image-size`` overrides it)
=========  =========  ==================================================================

A block is ``convs x [Conv -> BN -> ReLU] -> pool -> dropout``; the network ends with global
average pooling (any input size works) and the optional dense layers. There are no
pretrained weights: a CNN always starts from random weights (or ``--weights``).

Written by hand because no library builds Keras-style plain CNNs from a description; the
model exposes timm's backbone interface (``num_features``, ``group_matcher``) so freezing,
two-phase training, checkpoints and the leaderboard treat it like any timm model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PREFIX = "cnn"
NORM = (0.5, 0.5, 0.5)  # inputs scaled to [-1, 1]; a model trained from scratch needs no ImageNet statistics


class CnnSpecError(ValueError):
    """A ``cnn:...`` model spec that cannot be parsed."""


@dataclass(frozen=True)
class CnnSpec:
    filters: tuple[int, ...] = (32, 64, 128, 256)
    convs: int = 1
    kernel: int = 3
    bn: bool = True
    pool: str = "max"
    dropout: float = 0.0
    dense: tuple[int, ...] = ()
    size: int = 128


_KEYS = ("blocks", "filters", "order", "convs", "kernel", "bn", "pool", "dropout", "dense", "size")


def parse_cnn_spec(name: str) -> CnnSpec:
    """Parse ``cnn`` or ``cnn:key=value,...`` (see the module docstring)."""
    prefix, _, body = name.partition(":")
    if prefix.strip().lower() != PREFIX:
        raise CnnSpecError(f"--model {name!r}: a hand-built CNN spec starts with 'cnn:'")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS:
            raise CnnSpecError(f"--model {name!r}: '{item}' is not key=value with a key among {', '.join(_KEYS)}")
        values[key] = value.strip()
    try:
        return _spec_from_values(values)
    except (ValueError, TypeError) as err:
        raise CnnSpecError(f"--model {name!r}: {err}") from None


def _spec_from_values(values: dict[str, str]) -> CnnSpec:
    blocks = int(values.get("blocks", 4))
    if not 1 <= blocks <= 12:
        raise ValueError("blocks must be between 1 and 12")
    filters = _filters(values.get("filters", "32-256"), blocks)
    order = values.get("order", "inc").lower()
    if order not in ("inc", "inv"):
        raise ValueError("order must be inc or inv")
    if order == "inv":
        filters = filters[::-1]
    pool = values.get("pool", "max").lower()
    if pool not in ("max", "avg", "none"):
        raise ValueError("pool must be max, avg or none")
    dense = () if values.get("dense", "0") in ("0", "") else tuple(_ints(values["dense"]))
    spec = CnnSpec(filters=filters, convs=int(values.get("convs", 1)), kernel=int(values.get("kernel", 3)),
                   bn=_flag(values.get("bn", "1")), pool=pool, dropout=float(values.get("dropout", 0.0)),
                   dense=dense, size=int(values.get("size", 128)))
    if spec.convs < 1 or spec.kernel < 1 or spec.kernel % 2 == 0 or spec.size < 8:
        raise ValueError("convs >= 1, an odd kernel and size >= 8 are required")
    if not 0.0 <= spec.dropout < 1.0:
        raise ValueError("dropout must be in [0, 1)")
    return spec


def _ints(text: str) -> list[int]:
    numbers = [int(part) for part in text.split("/")]
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"'{text}' must be positive whole numbers separated by '/'")
    return numbers


def _filters(text: str, blocks: int) -> tuple[int, ...]:
    if "-" in text:
        first, last = (int(part) for part in text.split("-", 1))
        if first < 1 or last < 1:
            raise ValueError("filters must be positive")
        if blocks == 1:
            return (first,)
        # Geometric steps (32-256 over 4 blocks = 32, 64, 128, 256), rounded to multiples of 8
        # where the values allow it, as hand-designed networks usually are.
        ratio = (last / first) ** (1 / (blocks - 1))
        steps = [first * ratio**i for i in range(blocks)]
        return tuple(max(1, int(8 * round(s / 8)) if s >= 8 else int(round(s))) for s in steps)
    numbers = _ints(text)
    if len(numbers) == 1:
        return tuple(numbers * blocks)
    if len(numbers) != blocks:
        raise ValueError(f"filters lists {len(numbers)} widths for {blocks} blocks")
    return tuple(numbers)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"'{text}' is not 1 or 0")


class PlainCNN(nn.Module):
    """Conv blocks -> global average pooling -> optional dense layers; outputs pooled features."""

    def __init__(self, spec: CnnSpec):
        super().__init__()
        self.spec = spec
        blocks, channels = [], 3
        for width in spec.filters:
            blocks.append(_conv_block(channels, width, spec))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        dense: list[nn.Module] = []
        for width in spec.dense:
            dense += [nn.Linear(channels, width), nn.ReLU(inplace=True), nn.Dropout(spec.dropout)]
            channels = width
        self.dense = nn.Sequential(*dense)
        self.num_features = channels
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.flatten(self.pool(self.blocks(images)), 1))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's grouping convention: one group per conv block, then the dense layers."""
        return {"blocks": r"^blocks\.(\d+)", "dense": r"^dense"}


def _conv_block(channels: int, width: int, spec: CnnSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(spec.convs):
        layers += [nn.Conv2d(channels, width, spec.kernel, padding=spec.kernel // 2, bias=not spec.bn)]
        if spec.bn:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        channels = width
    if spec.pool == "max":
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    elif spec.pool == "avg":
        layers.append(nn.AvgPool2d(2, ceil_mode=True))
    if spec.dropout:
        layers.append(nn.Dropout2d(spec.dropout))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    # He initialisation for ReLU convs (as torchvision's ResNets); linear layers keep torch's default.
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def create_cnn(name: str) -> tuple[PlainCNN, dict]:
    """Build the CNN of a ``cnn:...`` spec and its timm-style data config."""
    spec = parse_cnn_spec(name)
    data_config = {"input_size": (3, spec.size, spec.size), "mean": NORM, "std": NORM, "crop_pct": 0.875,
                   "interpolation": "bilinear"}
    return PlainCNN(spec), data_config
