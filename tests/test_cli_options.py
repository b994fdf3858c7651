"""Every subcommand's flags come from its options dataclass: exactly its fields, its
defaults, and its checks, which refuse a bad value with one line naming the flag (exit 2)
before anything is read or written."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing

import pytest

from imgcls import api
from imgcls.apps.augment_preview import augment_preview
from imgcls.apps.doctor import DoctorOptions as DoctorOptionsFromApps
from imgcls.cli import _options, build_parser, main
from imgcls.config import ConfigError, RunConfig
from imgcls.deploy.export import export_checkpoint
from imgcls.deploy.serve import ServeSettings as ServeSettingsFromDeploy
from imgcls.evaluation.explain import explain_files
from imgcls.evaluation.leaderboard import KEYS, leaderboard
from imgcls.options import (COMMANDS, AugmentPreviewCommand, Cifar100Command, ConvertCommand, CvCommand, DemoCommand,
                            DoctorCommand, DoctorOptions, EvalCommand, ExplainCommand, ExportCommand, LrFindCommand,
                            PredictCommand, RecipeCommand, ReportCommand, RunsCommand, ServeCommand, ServeSettings,
                            ToShardsCommand, TrainCommand, TuneCommand)


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf subcommand's parser, by its full name (``data cifar100``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subparsers(sub, f"{prefix}{name} ")
                found.update(nested or {f"{prefix}{name}": sub})
    return found


def _declared(cls: type, prefix: str = "") -> set[str]:
    """The arguments a dataclass declares: flags (with ``--no-`` forms) and positional names."""
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names |= _declared(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("cli") is False:
            continue
        elif f.metadata.get("positional"):
            names.add(prefix + f.name)
        else:
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            names.add(flag)
            if hints[f.name] in (bool, bool | None) and not f.metadata.get("switch"):  # None: the plan's
                names.add("--no-" + flag[2:])
    return names


def _arguments(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names |= set(action.option_strings) if action.option_strings else {action.dest}
    return names


def test_every_subcommand_has_exactly_the_flags_of_its_dataclass():
    parsers = _subparsers(build_parser())
    assert set(parsers) == set(COMMANDS)
    for name, cls in COMMANDS.items():
        run_flags = set()
        if issubclass(cls, RecipeCommand):  # commands that train take every train flag
            skipped = {"--" + key.rpartition(".")[2].replace("_", "-") for key in cls.run_flags_skipped}
            run_flags = _declared(RunConfig) - skipped
        expected = _declared(cls) | run_flags
        assert _arguments(parsers[name]) == expected, name
    # train's own arguments stay; switches have no --no- form, settings that default to on have one
    assert {"--config", "--recipe", "--resume", "data", "--lr", "--no-amp", "--train"} <= _arguments(parsers["train"])
    assert "--no-fix" not in _arguments(parsers["doctor"]) and "--no-report" in _arguments(parsers["eval"])


# The least each subcommand needs, what that sets, and the options object it must give.
MINIMAL = {
    "train": (["D"], {"data"}, TrainCommand(data="D")),
    "eval": (["RUN"], {"checkpoint"}, EvalCommand(checkpoint="RUN")),
    "predict": (["RUN", "a.jpg", "b/"], {"checkpoint", "paths"},
                PredictCommand(checkpoint="RUN", paths=["a.jpg", "b/"])),
    "data cifar100": (["--to", "OUT"], {"to"}, Cifar100Command(to="OUT")),
    "data to-shards": (["D", "--out", "OUT"], {"data", "out"}, ToShardsCommand(data="D", out="OUT")),
    "report": (["RUN"], {"checkpoint"}, ReportCommand(checkpoint="RUN")),
    "explain": (["RUN", "a.jpg"], {"checkpoint", "paths"}, ExplainCommand(checkpoint="RUN", paths=["a.jpg"])),
    "runs": ([], set(), RunsCommand()),
    "doctor": (["D"], {"data"}, DoctorCommand(data="D")),
    "augment-preview": (["D"], {"data"}, AugmentPreviewCommand(data="D")),
    "convert": (["old.pt"], {"checkpoint"}, ConvertCommand(checkpoint="old.pt")),
    "demo": ([], set(), DemoCommand()),
    "export": (["RUN"], {"checkpoint"}, ExportCommand(checkpoint="RUN")),
    "serve": (["RUN"], {"settings.model"}, ServeCommand(settings=ServeSettings(model="RUN"))),
    "cv": (["D"], {"data"}, CvCommand(data="D")),
    "tune": (["D"], {"data"}, TuneCommand(data="D")),
    "lr-find": (["D"], {"data"}, LrFindCommand(data="D")),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_defaults_come_from_the_dataclass(name):
    argv, given, expected = MINIMAL[name]
    args = build_parser().parse_args(name.split() + argv)
    # The parser holds no defaults of its own: only what was given is in the namespace.
    assert set(vars(args)) - {"command", "subcommand", "dataset"} == given
    assert _options(COMMANDS[name], args) == expected


def test_the_declared_defaults():
    assert (EvalCommand("r").batch_size, EvalCommand("r").device, EvalCommand("r").report) == (64, "auto", True)
    predict = PredictCommand("r", ["x"])
    assert (predict.out, predict.topk, predict.batch_size) == ("predictions.csv", 3, 32)
    settings = ServeSettings("m")
    assert (settings.host, settings.port, settings.workers, settings.max_batch, settings.max_images,
            settings.max_body_mb, settings.topk, settings.max_pixels) == ("127.0.0.1", 8000, 1, 32, 32, 20.0, 5,
                                                                           40_000_000)
    checks = DoctorOptions()
    assert (checks.min_size, checks.near_distance, checks.deep_threshold, checks.imbalance_ratio, checks.folds,
            checks.backbone) == (32, 4, 0.95, 3.0, 5, "efficientnet_lite0")
    assert (RunsCommand().folder, RunsCommand().sort) == ("runs", "val_top1")
    assert (ExportCommand("r").opset, ExportCommand("r").int8_mode, ExportCommand("r").calibration_images) == \
        (18, "static", 128)
    assert (DemoCommand().out, DemoCommand().epochs) == ("runs", None)


def test_the_functions_take_their_defaults_from_the_declaration():
    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert default(api.evaluate, "batch_size") == EvalCommand("r").batch_size
    assert default(api.report, "device") == ReportCommand("r").device
    assert default(export_checkpoint, "opset") == 18 and default(export_checkpoint, "int8_mode") == "static"
    assert default(explain_files, "size") == 320 and default(augment_preview, "per_image") == 4
    assert default(leaderboard, "sort") == "val_top1"


def test_moved_classes_keep_their_import_paths():
    assert DoctorOptionsFromApps is DoctorOptions and ServeSettingsFromDeploy is ServeSettings


def test_sort_choices_are_the_leaderboard_columns():
    assert list(RunsCommand.__dataclass_fields__["sort"].metadata["choices"]) == KEYS


BAD = [
    # choices
    (["runs", "--sort", "nope"], "--sort 'nope': choose one of name, model"),
    (["eval", "RUN", "--split", "tests"], "--split 'tests': choose one of train, val, test, all"),
    (["report", "RUN", "--split", "x"], "--split 'x': choose one of"),
    (["export", "RUN", "--int8-mode", "fast"], "--int8-mode 'fast': choose one of static, dynamic"),
    (["export", "RUN", "--format", "tflite"], "--format 'tflite': choose one of onnx"),
    (["predict", "RUN", "a.jpg", "--unknown-score", "logit"], "--unknown-score 'logit': choose one of msp, energy"),
    (["augment-preview", "D", "--preset", "fancy"], "--preset 'fancy': choose one of default"),
    (["train", "D", "--optimizer", "adamm"], "--optimizer 'adamm': choose one of adamw, adam, sgd"),
    # patterns
    (["eval", "RUN", "--device", "gpu"], "--device 'gpu': not a valid value"),
    (["serve", "RUN", "--device", "cuda:x"], "--device 'cuda:x': not a valid value"),
    (["predict", "RUN", "a.jpg", "--unknown-threshold", "high"], "--unknown-threshold 'high': not a valid value"),
    # ranges: below, above, open ends
    (["predict", "RUN", "a.jpg", "--topk", "0"], "--topk 0: must be in [1, inf)"),
    (["explain", "RUN", "a.jpg", "--topk", "0"], "--topk 0: must be in [1, inf)"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size 0: must be in [1, inf)"),
    (["serve", "RUN", "--port", "0"], "--port 0: must be in [1, 65535]"),
    (["serve", "RUN", "--port", "65536"], "--port 65536: must be in [1, 65535]"),
    (["serve", "RUN", "--max-batch", "0"], "--max-batch 0: must be in [1, inf)"),
    (["serve", "RUN", "--max-body-mb", "0"], "--max-body-mb 0.0: must be in (0, inf)"),
    (["serve", "RUN", "--workers", "0"], "--workers 0: must be in [1, inf)"),
    (["doctor", "D", "--deep-threshold", "1.5"], "--deep-threshold 1.5: must be in (0, 1]"),
    (["doctor", "D", "--near-distance", "65"], "--near-distance 65: must be in [0, 64]"),
    (["doctor", "D", "--min-size", "0"], "--min-size 0: must be in [1, inf)"),
    (["augment-preview", "D", "--random-erasing", "1.5"], "--random-erasing 1.5: must be in [0, 1]"),
    (["augment-preview", "D", "--n", "0"], "--n 0: must be in [1, inf)"),
    (["export", "RUN", "--calibration-images", "0"], "--calibration-images 0: must be in [1, inf)"),
    (["demo", "--epochs", "0"], "--epochs 0: must be in [1, inf)"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(argv) for argv, _ in BAD])
def test_bad_values_exit_2_naming_the_flag_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    # RUN, D and a.jpg do not exist: had any work started, the error would name them instead.
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgcls: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_checks_run_when_options_are_built_in_python_too():
    with pytest.raises(ConfigError, match=r"^--port 0: must be in \[1, 65535\]$"):
        ServeSettings(model="m", port=0)
    with pytest.raises(ConfigError, match="--near-distance -1"):
        DoctorOptions(near_distance=-1)
    with pytest.raises(ConfigError, match="--split 'dev'"):
        EvalCommand.from_dict({"checkpoint": "r", "split": "dev"})
    with pytest.raises(ConfigError, match="unknown config key"):
        EvalCommand.from_dict({"checkpoint": "r", "batchsize": 8})
    assert ServeCommand.from_dict({"settings": {"model": "m", "port": 9000}}).settings.port == 9000


def test_help_is_generated_from_the_declarations(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "FPR@95%TPR" in out and "images per model call (default: 64)" in out
