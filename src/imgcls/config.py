"""One typed configuration for a run, saved as ``config.yaml`` in every run folder.

Each field carries its CLI help in ``metadata`` so that ``cli.py`` generates its flags
from this file: a setting is declared once, here, and is automatically available as a
flag, a YAML key and a Python keyword.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.errors import UserError


# The accepted values of choice options, declared here once; the modules that act on them
# import these names, so the check when a config is read and the code cannot drift apart.
AUGMENT_PRESETS = ("default", "none", "keras", "color", "randaugment", "trivialaugment")
CACHE_MODES = ("auto", "ram", "disk", "none")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "plateau", "none")
BALANCE_MODES = ("none", "weights", "sampler", "oversample", "undersample")
FINETUNE_MODES = ("auto", "always", "never")
UNKNOWN_SCORES = ("msp", "energy")
TTA_MODES = ("none", "flip", "flip+crops")
TRACKERS = ("none", "mlflow")
SINGLE_LABEL, MULTILABEL = "single-label", "multilabel"
TASKS = ("auto", SINGLE_LABEL, MULTILABEL)
LABEL_SEPARATORS = (";", "|", "space")
LOSSES = ("auto", "ce", "bce", "asl")
FREEZE_PATTERN = r"none|backbone|half|all-but-last:(\d+)"
HEAD_PATTERN = r"linear|mlp:\d+(,\d+)*"
MONITOR_PATTERN = r"(train|val)_(loss|acc|f1)|val_top\d+|val_coarse_(loss|acc)|val_consistency|val_map"
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def _opt(default: Any, help: str, flag: str | None = None, *, choices: tuple | None = None,
         pattern: str | None = None, low: float | None = None, high: float | None = None,
         open_low: bool = False, open_high: bool = False, **extra: Any) -> Any:
    """A dataclass field with CLI metadata; ``flag`` overrides the derived ``--field-name``.

    The value checks (``choices``, a regular expression ``pattern`` over the whole value,
    a numeric range [``low``, ``high``], open at either end when asked) run whenever a
    config is built, so a bad value stops the run before any image is opened.

    ``extra`` metadata the CLI reads: ``cli=False`` (a file or Python setting, no flag),
    ``positional=True`` (a positional argument; a list takes one or more values, a default
    makes it optional), ``switch=True`` (a bool flag that only turns it on: no ``--no-``
    form), ``metavar``. ``default=dataclasses.MISSING`` makes the option required.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "pattern": pattern, "low": low, "high": high,
                "open_low": open_low, "open_high": open_high, **extra}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    path: str | None = _opt(None, "dataset folder or CSV manifest", cli=False)
    train_dirs: list[str] = _opt([], "extra train folder(s) merged by class name (repeatable)", flag="--train")
    val_dir: str | None = _opt(None, "explicit validation folder of class folders", flag="--val")
    val_fraction: float = _opt(0.15, "share of each class held out for validation when no val split exists",
                               low=0.0, high=1.0, open_low=True, open_high=True)
    split_seed: int = _opt(0, "seed of the reproducible train/val split")
    task: str = _opt("auto", "single-label | multilabel (a set of labels per image, from a manifest's labels "
                             "column; docs/multilabel.md) | auto (multilabel when the manifest has a labels column)",
                     choices=TASKS)
    label_sep: str = _opt(";", "what separates the labels in a manifest's labels column: ';' (default), '|' or "
                               "'space'", choices=LABEL_SEPARATORS)
    image_size: int | None = _opt(None, "image size of the model: features, evaluation, predict (default: the plan's: "
                                        "the backbone's pretrained size, less for small images; docs/performance.md)",
                                  low=8)
    train_size: int | None = _opt(None, "crop size while fine-tuning (default: the plan's; see docs/performance.md)",
                                  low=8)
    mean: list[float] | None = _opt(None, "normalisation mean (default: from the backbone)", cli=False)
    std: list[float] | None = _opt(None, "normalisation std (default: from the backbone)", cli=False)
    augment: str = _opt("default", "train augmentation preset: default | none | keras | color | randaugment | "
                                   "trivialaugment (see imgcls augment-preview)", choices=AUGMENT_PRESETS)
    random_erasing: float = _opt(0.0, "probability of erasing a random rectangle of each training image",
                                 low=0.0, high=1.0)
    batch_size: int = _opt(32, "images per optimisation step, over all devices and accumulation steps", low=1)
    workers: int | None = _opt(None, "data-loading worker processes (default: one per CPU core, at most 8)", low=0)
    cache: str = _opt("auto", "decode images once: ram | disk (numpy memmap) | none | auto (ram if it fits, "
                              "else disk)", choices=CACHE_MODES)
    cache_dir: str | None = _opt(None, "folder of the disk pixel cache (default: $IMGCLS_CACHE or ~/.cache/imgcls)")
    shuffle_buffer: int = _opt(1000, "wds: shards: training samples each loader worker holds to shuffle the stream "
                                     "(on top of a new shard order every epoch; docs/data.md)", low=1)
    hierarchy: str | None = _opt(None, "coarse labels over the classes: folders (<coarse>/<fine>/ layout) | cifar100 | "
                                       "a fine,coarse CSV file (docs/hierarchy.md)")
    hierarchy_map: dict[str, str] | None = _opt(None, "fine -> coarse class mapping; filled in from hierarchy "
                                                      "when training starts", cli=False)


@dataclass
class ModelConfig:
    name: str = _opt("efficientnet_lite0", "any timm model name, or a hand-built CNN cnn:SPEC (docs/recipes.md)",
                     flag="--model")
    pretrained: bool = _opt(True, "start from pretrained weights (offline package, --weights, or the timm hub)")
    weights: str | None = _opt(None, "path to a backbone state dict to start from")
    head: str = _opt("linear", "classifier head: linear | mlp:512,256", pattern=HEAD_PATTERN)
    dropout: float = _opt(0.2, "dropout before the classifier (and in MLP heads)", low=0.0, high=1.0, open_high=True)
    head_l2: float = _opt(0.0, "L2 penalty on the MLP head's dense weights (Keras-style, added to the loss)", low=0.0)
    freeze: str | None = _opt(None, "what stays frozen while fine-tuning: none | backbone | half | all-but-last:N "
                                    "(default: the plan's)", pattern=FREEZE_PATTERN)


@dataclass
class TrainConfig:
    epochs: int | None = _opt(None, "total epochs, including the head-only phase (default: the plan's, from the "
                                    "dataset's size)", low=1)
    head_epochs: int | None = _opt(None, "first phase: epochs with the whole backbone frozen (0 = single phase; "
                                         "default: 8 for a pretrained backbone, 0 for one trained from scratch)",
                                   low=0)
    finetune: str = _opt("auto", "after the head phase: always | never | auto (the plan's: fine-tune unless the head "
                                 "fits the frozen features, clean train top-1 >= --finetune-below, on data near the "
                                 "pretraining images)",
                         choices=FINETUNE_MODES)
    bn_eval: bool | None = _opt(None, "fine-tuning a pretrained backbone: its BatchNorm layers keep their pretrained "
                                      "statistics (default: the plan's: kept on data near the pretraining images, "
                                      "adapted on data far from them)")
    finetune_below: float = _opt(0.95, "--finetune auto: fine-tune when the head's clean train top-1 is below this",
                                 low=0.0)
    optimizer: str = _opt("adamw", "adamw | adam | sgd", choices=OPTIMIZERS)
    lr: str | float = _opt(1e-3, "learning rate of the head; auto: the LR range test's suggestion (imgcls lr-find)",
                           low=0.0, open_low=True, pattern=r"auto|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
    backbone_lr: float | None = _opt(None, "learning rate of the backbone (default: lr / 10 for a pretrained "
                                                         "backbone, lr from scratch)", low=0.0)
    weight_decay: float = _opt(0.01, "decoupled weight decay (not applied to biases and norms)", low=0.0)
    momentum: float = _opt(0.9, "SGD momentum", low=0.0, high=1.0, open_high=True)
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy loss", low=0.0, high=1.0, open_high=True)
    loss: str = _opt("auto", "auto (ce for single-label, bce for multilabel) | ce (cross-entropy) | bce (sigmoid "
                             "binary cross-entropy per label) | asl (asymmetric loss, multilabel; Ridnik et al., 2021)",
                     choices=LOSSES)
    asl_gamma_neg: float = _opt(4.0, "--loss asl: focusing exponent of the negatives (down-weights easy ones)", low=0.0)
    asl_gamma_pos: float = _opt(0.0, "--loss asl: focusing exponent of the positives", low=0.0)
    asl_clip: float = _opt(0.05, "--loss asl: probability margin by which easy negatives are discarded", low=0.0,
                           high=1.0, open_high=True)
    balance: str = _opt("none", "class imbalance: none | weights (class-weighted loss) | sampler (class-balanced "
                                "draws) | oversample | undersample (equal class counts; docs/doctor.md)",
                        choices=BALANCE_MODES)
    coarse_weight: float = _opt(1.0, "hierarchical models: weight of the coarse cross-entropy in the loss", low=0.0)
    fine_weight: float = _opt(1.0, "hierarchical models: weight of the fine cross-entropy in the loss", low=0.0)
    unknown_threshold: str | float | None = _opt(None, "open-set rejection: auto (fitted on val) or a score "
                                                       "value; below it predict says unknown (docs/openset.md)",
                                                 pattern=r"auto|none|off|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
    unknown_score: str = _opt("msp", "open-set score: msp (max softmax probability) | energy (logsumexp of logits)",
                              choices=UNKNOWN_SCORES)
    unknown_keep: float = _opt(0.95, "--unknown-threshold auto: share of known validation images kept",
                               low=0.0, high=1.0, open_low=True)
    mixup: float = _opt(0.0, "MixUp alpha (0 = off; 0.2 is typical): blend image pairs and their labels", low=0.0)
    cutmix: float = _opt(0.0, "CutMix alpha (0 = off; 1.0 is typical): paste a patch of another image", low=0.0)
    mix_prob: float = _opt(1.0, "probability that a batch is mixed (MixUp / CutMix)", low=0.0, high=1.0)
    mix_switch_prob: float = _opt(0.5, "with both MixUp and CutMix on: probability of CutMix for a mixed batch",
                                  low=0.0, high=1.0)
    scheduler: str = _opt("cosine", "cosine | plateau | none", choices=SCHEDULERS)
    warmup_epochs: float = _opt(0.0, "linear warm-up length in epochs (cosine)", low=0.0)
    plateau_factor: float = _opt(0.5, "LR multiplier on plateau", low=0.0, high=1.0, open_low=True, open_high=True)
    plateau_patience: int = _opt(2, "epochs without improvement before the LR drops", low=0)
    monitor: str = _opt("val_acc", "metric that picks best.safetensors and drives early stopping / plateau: "
                                   "val_acc | val_loss | val_topK | train_acc | train_loss | val_coarse_acc ...; "
                                   "multilabel: val_map (what val_acc means there) | val_f1 | val_loss | train_f1",
                        pattern=MONITOR_PATTERN)
    feature_cache: bool = _opt(True, "while the backbone is frozen, train the head on features computed once")
    cut_cache: bool = _opt(True, "partial fine-tuning (--freeze half | all-but-last:N): compute the frozen blocks' "
                                 "output once per augmented view and train the rest on it (EfficientNet and ResNet "
                                 "families)")
    cut_views: int = _opt(2, "--cut-cache: augmented views kept, reused in turn after the first epochs", low=1)
    feature_views: int = _opt(1, "cached feature views per train image: 1 = the clean eval view, K = K augmented "
                                 "views used in turn", low=1)
    early_stopping: int | None = _opt(None, "stop after this many epochs without improvement", low=1)
    time_limit: float | None = _opt(None, "time budget in minutes: the run measures its step time and plans its "
                                          "epochs so the whole schedule ends within it", low=0.0, open_low=True)
    ema: bool = _opt(False, "keep an exponential moving average of the weights (timm ModelEmaV3); validation "
                            "and best.safetensors use it")
    ema_decay: float = _opt(0.999, "EMA decay per optimiser step (warmed up: small steps start faster)",
                            low=0.0, high=1.0, open_high=True)
    tta: str = _opt("none", "test-time augmentation stored with the model and used by eval, predict and serve: "
                            "none | flip | flip+crops (logits averaged over the views)", choices=TTA_MODES)
    grad_clip: float | None = _opt(None, "clip the gradient norm to this value", low=0.0, open_low=True)
    amp: bool = _opt(True, "mixed precision on CUDA (bf16 where supported, else fp16)")
    topk: int = _opt(3, "k of the top-k accuracy", low=1)
    report: bool = _opt(True, "write report.html after training (metrics, curves, calibration, Grad-CAM, size)")
    track: str = _opt("none", "experiment tracking: none | mlflow (parameters, per-epoch metrics, model card, "
                              "report.html and best model; store: $MLFLOW_TRACKING_URI, else sqlite:///<out-dir>/"
                              "mlflow.db)", choices=TRACKERS)
    track_experiment: str = _opt("imgcls", "--track mlflow: the experiment the run is logged under")
    seed: int = _opt(0, "seed of weights init, data order and augmentation")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N | mps", pattern=DEVICE_PATTERN)
    devices: int = _opt(1, "processes (GPUs) to train on; >1 launches torchrun with DDP", low=1)
    accumulate: int = _opt(1, "gradient accumulation: micro-batches per optimiser step", low=1)
    sync_bn: bool = _opt(False, "synchronise BatchNorm statistics across DDP processes")
    channels_last: bool = _opt(True, "channels_last memory format (faster convolutions on CUDA and CPU)")
    compile: bool = _opt(False, "torch.compile the model (CUDA; slow first epoch)")


@dataclass
class RunConfig:
    name: str | None = _opt(None, "run name (default: <model>-<timestamp>)")
    out_dir: str = _opt("runs", "folder that holds run folders")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        return _build(cls, values, "")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
        return cls.from_dict(values)

    def value(self, key: str) -> Any:
        """The value of one option, named as :meth:`with_overrides` names it (``"train.lr"``
        or ``"lr"``). Raises ConfigError for an unknown key."""
        section, name = _locate(key)
        return getattr(getattr(self, section) if section else self, name)

    def with_overrides(self, flat: dict[str, Any]) -> "RunConfig":
        """Return a copy with ``{"lr": 0.01, "model.name": "resnet18"}``-style overrides applied."""
        merged = self.to_dict()
        for key, value in flat.items():
            section, name = _locate(key)
            (merged[section] if section else merged)[name] = value
        return RunConfig.from_dict(merged)


class ConfigError(UserError, ValueError):
    """A configuration value or file that cannot be used."""


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def iter_options():
    """Yield ``(section, dataclass_field)`` for every user-settable option ('' = top level)."""
    for f in dataclasses.fields(RunConfig):
        if f.name not in SECTIONS:
            yield "", f
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield section, f


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}, "name": "r"}`` -> ``{"train.lr": 0.1, "name": "r"}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in SECTIONS and not prefix:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[prefix + key] = value
    return flat


def flag_name(key: str) -> str:
    """The command-line flag of a dotted config key (``train.lr`` -> ``--lr``)."""
    if key == "data.path":
        return "DATA"
    section, _, name = key.rpartition(".")
    for sec, f in iter_options():
        if sec == section and f.name == name:
            return f.metadata.get("flag") or "--" + name.replace("_", "-")
    return "--" + name.replace("_", "-")


def _locate(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        return section, name
    for section, f in iter_options():
        if f.name == key:
            return section, key
    raise ConfigError(f"unknown config option '{key}'")


def _build(cls: type, values: dict, where: str) -> Any:
    # Hand-written rather than a dependency: 20 lines give strict unknown-key errors and
    # the few type coercions YAML needs (int -> float, scalar -> list).
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in section '{where or 'top'}'")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value or {}, name)
        else:
            kwargs[name] = _coerce(value, kind, f"{where}.{name}".strip("."))
    built = cls(**kwargs)
    check_fields(built)
    return built


def build(cls: type, values: dict) -> Any:
    """An instance of the option dataclass ``cls`` (nested dataclasses are sections) from a
    mapping, with loose YAML/CLI values coerced and every declared check run: unknown keys,
    wrong types and bad values raise :class:`ConfigError` naming the option."""
    return _build(cls, values, "")


def flag_of(f: dataclasses.Field) -> str:
    """How the user names an option: its flag (``--batch-size``), or a positional's ``METAVAR``."""
    meta = f.metadata
    if meta.get("positional"):
        return (meta.get("metavar") or f.name).upper()
    return meta.get("flag") or "--" + f.name.replace("_", "-")


def check_fields(options: Any) -> None:
    """Run the declared checks of the fields of one dataclass instance (not of its sections)."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        if not dataclasses.is_dataclass(hints[f.name]):
            _check_value(f, getattr(options, f.name))


def _check_value(f: dataclasses.Field, value: Any) -> None:
    """The declared checks of one option; raises ConfigError naming its flag."""
    meta = f.metadata
    if value is None or not meta:
        return
    flag = flag_of(f)
    choices, pattern = meta.get("choices"), meta.get("pattern")
    if choices and value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    if pattern and not re.fullmatch(pattern, str(value).strip(), flags=re.IGNORECASE):
        raise ConfigError(f"{flag} {value!r}: not a valid value ({meta['help']})")
    low, high = meta.get("low"), meta.get("high")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = low is not None and (value <= low if meta.get("open_low") else value < low)
        too_high = high is not None and (value >= high if meta.get("open_high") else value > high)
        if too_low or too_high:
            left = "(" if meta.get("open_low") or low is None else "["
            right = ")" if meta.get("open_high") or high is None else "]"
            span = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
            raise ConfigError(f"{flag} {value!r}: must be in {span}")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"config '{key}' must not be empty")
    if float in options and str in options and isinstance(value, str):
        try:  # "number or word" options (--lr auto, --unknown-threshold auto): a number stays a number
            return float(value)
        except ValueError:
            return value
    for option in options:
        if option is type(None):
            continue
        origin = typing.get_origin(option)
        if origin is dict and isinstance(value, dict):
            inner = typing.get_args(option)[1]
            return {str(k): _coerce(v, inner, key) for k, v in value.items()}
        if origin is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            inner = typing.get_args(option)[0]
            return [_coerce(item, inner, key) for item in items]
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if option is bool and isinstance(value, bool):
            return value
        if option in (int, str) and isinstance(value, option) and not isinstance(value, bool):
            return value
    raise ConfigError(f"config '{key}' = {value!r} is not a valid {kind}")
