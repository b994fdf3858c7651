"""The options of every ``imgcls`` subcommand, one typed dataclass each, declared once here.

``train``'s settings are :class:`imgcls.config.RunConfig`; this module holds the rest.
Each field carries its help and its checks (choices, pattern, range) with the same
:func:`imgcls.config._opt` machinery, so ``cli.py`` generates every flag from these
classes, ``scripts/gen_usage.py`` generates the tables of ``docs/usage.md`` from them, and
a bad value is refused with one line naming the flag when the options are built (from the
command line, a mapping, or a plain constructor call), before any file is opened.

The functions that do the work take these defaults from here (``EvalCommand.batch_size``)
instead of repeating them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from imgcls.config import (AUGMENT_PRESETS, DEVICE_PATTERN, TTA_MODES, UNKNOWN_SCORES, ConfigError, DataConfig,
                           RunConfig, _opt, build, check_fields)

SPLITS = ("train", "val", "test", "all")
EXPORT_FORMATS = ("onnx", "timm", "torchscript", "openvino")
INT8_FORMATS = ("onnx", "openvino")  # the formats with a quantiser whose int8 model imgcls checks
HUB_REPO_PATTERN = r"([\w.-]+/)?[\w.-]+"  # a Hugging Face Hub repository id: [owner/]name
INT8_MODES = ("static", "dynamic")
# The columns of `imgcls runs` (imgcls.evaluation.leaderboard.KEYS, which sits above this
# layer; a test keeps the two equal).
LEADERBOARD_KEYS = ("name", "model", "lr", "epochs", "train_acc", "val_top1", "topk", "val_topk", "val_f1_macro",
                    "params_m", "mb", "wall_s", "options")
THRESHOLD_OVERRIDE_PATTERN = r"none|off|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
PREVIEW_IMAGE_SIZE = 224  # augment-preview without a recipe: the common ImageNet training size


class CommandOptions:
    """Base of the subcommand option dataclasses: checked when built, buildable from a mapping."""

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """Build from ``{"field": value, "section": {...}}``; unknown keys and bad values raise ConfigError."""
        return build(cls, values)


def _device(what: str = "device to run the model on") -> Any:
    return _opt("auto", f"{what}: auto | cpu | cuda | cuda:N | mps", pattern=DEVICE_PATTERN)


def _batch_size(default: int) -> Any:
    return _opt(default, "images per model call", low=1)


def _model(help: str = "run folder, .safetensors model file, or exported .onnx or OpenVINO .xml file",
           name: str = "checkpoint") -> Any:
    return _opt(MISSING, help, positional=True, metavar=name)


@dataclass
class RecipeCommand(CommandOptions):
    """A command that trains: a dataset and where its settings start from; the settings
    themselves are the flags of :class:`RunConfig` (its ``run_flags_skipped`` excepted)."""

    run_flags_skipped = ()  # RunConfig flags this command declares differently
    data: str | None = _opt(None, "dataset folder (class folders, or train/ val/ test/) or CSV manifest",
                            positional=True)
    config: str | None = _opt(None, "YAML config to start from (e.g. a run's config.yaml)")
    recipe: str | None = _opt(None, "named recipe from recipes/ or a YAML path")


@dataclass
class TrainCommand(RecipeCommand):
    """``imgcls train``'s own arguments; its settings are the flags of :class:`RunConfig`."""

    resume: str | None = _opt(None, "continue the run in this folder from its last.safetensors", metavar="RUN")


@dataclass
class CvCommand(RecipeCommand):
    """``imgcls cv``: k-fold cross-validation of one training recipe."""

    folds: int = _opt(5, "number of stratified folds", low=2)


@dataclass
class TuneCommand(RecipeCommand):
    """``imgcls tune``: an Optuna search; every trial is a run of the recipe with sampled settings."""

    run_flags_skipped = ("train.time_limit",)  # --time-limit is the whole study's budget here
    trials: int = _opt(20, "finished trials the study should hold (an interrupted study continues)", low=1)
    time_limit: float | None = _opt(None, "minutes the search may run in all (no new trial starts after it)",
                                    low=0.0, open_low=True)
    space: str | None = _opt(None, "YAML search space replacing the default one (docs/practice.md)", metavar="FILE")
    study: str | None = _opt(None, "study folder name under --out-dir (default: --name, else tune-<model>)")


@dataclass
class LrFindCommand(RecipeCommand):
    """``imgcls lr-find``: the LR range test on the run the flags describe."""

    phase: str = _opt("auto", "auto | head (on cached features) | finetune (image batches)",
                      choices=("auto", "head", "finetune"))
    steps: int | None = _opt(None, "updates of the test (default: 100 head, 30 fine-tuning)", low=2)


@dataclass
class SplitCommand(CommandOptions):
    """What ``eval`` and ``report`` share: a model, a dataset split, and how to run it."""

    checkpoint: str = _model()
    data: str | None = _opt(None, "dataset (default: the run's own)", positional=True)
    split: str | None = _opt(None, "train | val | test | all (default: test if present, else val)", choices=SPLITS)
    out: str | None = _opt(None, "where to write")
    batch_size: int = _batch_size(64)
    device: str = _device()


@dataclass
class EvalCommand(SplitCommand):
    """``imgcls eval``."""

    out: str | None = _opt(None, "folder for eval.json and CSVs (default: <run>/eval-<split> for the run's own data, "
                                 "<run>/eval-on-<data>[-<split>] for other data)")
    report: bool = _opt(True, "also write report.html beside eval.json (not for .onnx files)")
    tta: str | None = _opt(None, "test-time augmentation for this evaluation: none | flip | flip+crops "
                                 "(default: the model's own)", choices=TTA_MODES)
    unknown: str | None = _opt(None, "out-of-distribution images for open-set AUROC / FPR@95%TPR (default: the "
                                     "split's unknown/ folder, e.g. DATA/test/unknown/)", metavar="DIR")


@dataclass
class ReportCommand(SplitCommand):
    """``imgcls report``."""

    checkpoint: str = _model("run folder or .safetensors model file")
    out: str | None = _opt(None, "HTML file to write (default: <run>/report.html)")


@dataclass
class PredictCommand(CommandOptions):
    """``imgcls predict``."""

    checkpoint: str = _model()
    paths: list[str] = _opt(MISSING, "image files and/or folders (searched recursively)", positional=True)
    out: str = _opt("predictions.csv", "CSV to write")
    topk: int = _opt(3, "classes (with probabilities) listed per image", low=1)
    batch_size: int = _batch_size(32)
    device: str = _device()
    unknown_threshold: str | None = _opt(None, "override the checkpoint's open-set threshold (a score value, or "
                                               "'none' to turn rejection off)", metavar="VALUE",
                                         pattern=THRESHOLD_OVERRIDE_PATTERN)
    unknown_score: str | None = _opt(None, "score the threshold applies to: msp | energy (default: the "
                                           "checkpoint's, else msp)", choices=UNKNOWN_SCORES)
    tta: str | None = _opt(None, "test-time augmentation: none | flip | flip+crops (default: the model's own)",
                           choices=TTA_MODES)


@dataclass
class ExplainCommand(CommandOptions):
    """``imgcls explain``."""

    checkpoint: str = _model("run folder or .safetensors model file")
    paths: list[str] = _opt(MISSING, "image files and/or folders (searched recursively)", positional=True,
                            metavar="IMAGE")
    topk: int = _opt(3, "classes to explain per image", low=1)
    out: str = _opt("explanations", "folder for the PNG files")
    size: int = _opt(320, "side of the overlay images in pixels", low=8)
    device: str = _device()


@dataclass
class RunsCommand(CommandOptions):
    """``imgcls runs``."""

    folder: str = _opt(RunConfig.out_dir, "folder searched for runs", positional=True)
    sort: str = _opt("val_top1", "column key to sort by: " + ", ".join(LEADERBOARD_KEYS), choices=LEADERBOARD_KEYS)
    reverse: bool = _opt(False, "reverse the order (default: best first)", switch=True)
    out: str | None = _opt(None, "path prefix of the CSV and Markdown files (default: FOLDER/leaderboard)")


@dataclass
class DoctorOptions(CommandOptions):
    """What ``imgcls doctor`` checks and how (``run_doctor``'s settings; saved in doctor.json)."""

    full: bool = _opt(False, "also decode every image at full size, as training does", switch=True)
    deep: bool = _opt(False, "also find near-duplicates by backbone-embedding cosine", switch=True)
    label_check: bool = _opt(False, "flag likely label errors (cross-validated probe)", switch=True)
    cv: str | None = _opt(None, "--label-check: take the out-of-fold probabilities of this `imgcls cv` folder "
                                "instead of fitting a probe", metavar="CV_FOLDER")
    min_size: int = _opt(32, "shorter side below which an image is tiny", low=1)
    near_distance: int = _opt(4, "dHash bits near-duplicates may differ in", low=0, high=64)
    deep_threshold: float = _opt(0.95, "embedding cosine of near-duplicates", low=0.0, high=1.0, open_low=True)
    imbalance_ratio: float = _opt(3.0, "largest/smallest class to report", low=1.0)
    backbone: str = _opt("efficientnet_lite0", "timm model for --deep / --label-check")
    pretrained: bool = _opt(True, "the backbone starts from pretrained weights", cli=False)
    feature_size: int | None = _opt(None, "backbone input size (default: the backbone's own)", low=8)
    batch_size: int = _opt(64, "images per backbone call", low=1, cli=False)
    folds: int = _opt(5, "cross-validation folds of the label-error probe", low=2, cli=False)
    workers: int | None = _opt(None, "processes for scanning and loading (default: all cores)", low=0)
    device: str = _device("device of the backbone")


@dataclass
class DoctorCommand(CommandOptions):
    """``imgcls doctor``: the dataset, what to do with the findings, and the checks."""

    data: str = _opt(MISSING, "dataset folder (class folders, or train/ val/ test/) or CSV manifest",
                     positional=True)
    out: str | None = _opt(None, "folder for overview.csv, doctor.json, doctor.html (default: doctor-<dataset>)")
    fix: bool = _opt(False, "move files with blocking problems to <dataset>.quarantine/", switch=True)
    restore: bool = _opt(False, "move every quarantined file back, then stop", switch=True)
    checks: DoctorOptions = field(default_factory=DoctorOptions)


@dataclass
class AugmentPreviewCommand(CommandOptions):
    """``imgcls augment-preview``."""

    data: str = _opt(MISSING, "dataset folder (class folders, or train/ val/ test/) or CSV manifest",
                     positional=True)
    preset: str | None = _opt(None, "augmentation preset: " + " | ".join(AUGMENT_PRESETS) + " (default: the "
                                    f"recipe's, else '{DataConfig.augment}')", choices=AUGMENT_PRESETS)
    recipe: str | None = _opt(None, "take preset, image size and random erasing from this recipe")
    out: str = _opt("augment-preview.png", "PNG file to write")
    n: int = _opt(16, "augmented views in the grid", low=1)
    per_image: int = _opt(4, "augmented views per image (one row each)", low=1)
    image_size: int | None = _opt(None, f"augmented image size (default: the recipe's, else {PREVIEW_IMAGE_SIZE})",
                                  low=8)
    random_erasing: float | None = _opt(None, "random erasing probability (default: the recipe's, else "
                                              f"{DataConfig.random_erasing:g})", low=0.0, high=1.0)
    seed: int = _opt(0, "seed of the image choice and the augmentations")


@dataclass
class DemoCommand(CommandOptions):
    """``imgcls demo``."""

    out: str = _opt(RunConfig.out_dir, "folder for the run and the extracted data")
    epochs: int | None = _opt(None, "override the demo's epochs", low=1)


@dataclass
class ExportCommand(CommandOptions):
    """``imgcls export``: one format per call; the flags a format does not use are refused."""

    checkpoint: str = _model("run folder or .safetensors model file")
    format: str = _opt("onnx", "onnx (ONNX Runtime) | timm (a folder plain timm and the Hugging Face Hub load) | "
                       "torchscript | openvino (OpenVINO IR, .xml + .bin)", choices=EXPORT_FORMATS)
    out: str | None = _opt(None, "file to write, or folder for --format timm (default: beside the checkpoint: "
                           "<name>.onnx, <name>.torchscript, <name>.xml, <name>-timm/)")
    opset: int = _opt(18, "ONNX opset version", low=7)
    int8: bool = _opt(False, "also write an int8-quantised model, checked against fp32: <out>.int8.onnx (onnx) or "
                      "<out>.int8.xml (openvino, NNCF)", switch=True)
    int8_mode: str = _opt("static", "static: calibrated on training images (best for CNNs); dynamic: weights only "
                          "(onnx only)", choices=INT8_MODES)
    data: str | None = _opt(None, "dataset for sample, calibration and validation images (default: the run's own)")
    calibration_images: int = _opt(128, "training images to calibrate --int8 on", low=1)
    push_to_hub: str | None = _opt(None, "--format timm: also upload the folder to this Hugging Face Hub repository "
                                   "(needs a token: hf auth login, or $HF_TOKEN)", pattern=HUB_REPO_PATTERN,
                                   metavar="REPO_ID")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.int8 and self.format not in INT8_FORMATS:
            raise ConfigError(f"--int8: --format {self.format} has no int8 variant (use {' or '.join(INT8_FORMATS)})")
        if self.int8_mode == "dynamic" and self.format != "onnx":
            raise ConfigError(f"--int8-mode dynamic: ONNX only (--format {self.format} quantises with calibration)")
        if self.push_to_hub and self.format != "timm":
            raise ConfigError(f"--push-to-hub: uploads a --format timm folder, not --format {self.format}")


@dataclass
class ServeSettings(CommandOptions):
    """How ``imgcls serve`` runs: the model, where it listens, and its limits."""

    model: str = _model(name="model")
    host: str = _opt("127.0.0.1", "address to bind (non-loopback needs an API key)")
    port: int = _opt(8000, "TCP port to listen on", low=1, high=65535)
    workers: int = _opt(1, "server processes, each with its own model copy", low=1)
    max_batch: int = _opt(32, "images per model call; 1 turns batching off", low=1)
    max_wait_ms: float = _opt(5.0, "how long a batch waits for more images", low=0.0)
    max_body_mb: float = _opt(20.0, "largest request body accepted (413 above)", low=0.0, open_low=True)
    max_images: int = _opt(32, "most images in one request", low=1)
    # 40 MP: any camera photo; a decompression bomb declares far more.
    max_pixels: int = _opt(40_000_000, "largest image accepted, in pixels (422 above)", low=1, cli=False)
    topk: int = _opt(5, "labels per image unless the request says ?topk=", low=1)
    device: str = _device()
    threads: int | None = _opt(None, "CPU threads per worker for inference", low=1)


@dataclass
class ServeCommand(CommandOptions):
    """``imgcls serve``: the settings, and the key (kept apart so it is never saved with them)."""

    settings: ServeSettings
    api_key: str | None = _opt(None, "key clients send in the X-API-Key header (default: $IMGCLS_API_KEY)")


@dataclass
class Cifar100Command(CommandOptions):
    """``imgcls data cifar100``."""

    to: str = _opt(MISSING, "folder to write (train/, test/, hierarchy.csv)", metavar="DIR")
    archive: str | None = _opt(None, "local cifar-100-python.tar.gz (default: DIR/ if there, else downloaded from "
                                     "the official URL)", metavar="PATH")


@dataclass
class ToShardsCommand(CommandOptions):
    """``imgcls data to-shards``."""

    data: str = _opt(MISSING, "dataset to write: class folders, split folders, a CSV manifest or hf:PATH",
                     positional=True)
    out: str = _opt(MISSING, "folder (or fsspec URL) for {train,val,test}-NNNNNN.tar and _info.json", metavar="DIR")
    shard_size: int = _opt(1000, "samples per shard (use at least processes x loader workers shards per split)",
                           low=1)
    val_fraction: float = _opt(DataConfig.val_fraction, "share of each class written as val shards when the "
                                                        "dataset has no val split", low=0.0, high=1.0,
                               open_low=True, open_high=True)
    split_seed: int = _opt(DataConfig.split_seed, "seed of that train/val split (the one training would make)")
    seed: int = _opt(0, "seed of the order samples are written in (every shard mixes the classes)")


@dataclass
class ConvertCommand(CommandOptions):
    """``imgcls convert``."""

    checkpoint: str = _opt(MISSING, "the .pt file, or a run folder holding best.pt / last.pt", positional=True)


# Subcommand -> its options; `imgcls data cifar100` is a subcommand of `data`.
COMMANDS: dict[str, type] = {
    "train": TrainCommand, "eval": EvalCommand, "predict": PredictCommand, "data cifar100": Cifar100Command,
    "data to-shards": ToShardsCommand,
    "report": ReportCommand, "explain": ExplainCommand, "runs": RunsCommand, "doctor": DoctorCommand,
    "augment-preview": AugmentPreviewCommand, "convert": ConvertCommand, "demo": DemoCommand,
    "export": ExportCommand, "serve": ServeCommand, "cv": CvCommand, "tune": TuneCommand, "lr-find": LrFindCommand,
}

