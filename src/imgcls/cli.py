"""The ``imgcls`` command: argument parsing only; the work is done by the package API.

Every flag is generated from a typed dataclass: ``train``'s from :mod:`imgcls.config`,
every other subcommand's from :mod:`imgcls.options`. Each handler first builds its options
object from the parsed arguments, which runs the declared checks, so a bad value is one
line naming the flag (exit 2) before anything is read or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from imgcls import api
from imgcls.apps import doctor
from imgcls.apps.augment_preview import augment_preview
from imgcls.apps.cifar100 import convert_cifar100
from imgcls.apps.convert import convert_legacy
from imgcls.apps.cv import cross_validate
from imgcls.apps.demo import run_demo
from imgcls.apps.shards import write_shards
from imgcls.apps.tune import load_space, tune
from imgcls.apps.doctor.report import blocking_note, summary
from imgcls.config import ConfigError, DataConfig, RunConfig
from imgcls.data.hf import is_hf
from imgcls.data.hf import materialise as materialise_hf
from imgcls.deploy.formats import export_model
from imgcls.errors import UserError
from imgcls.evaluation import figures
from imgcls.evaluation.figures import figure_bytes
from imgcls.evaluation.explain import explain_files
from imgcls.evaluation.leaderboard import format_table, leaderboard, write_csv, write_markdown
from imgcls.evaluation.openset import format_openset_lines
from imgcls.inference.rows import write_predictions_csv
from imgcls.metrics.classification import format_metrics_table
from imgcls.metrics.hierarchy import format_hierarchy_lines
from imgcls.metrics.multilabel import format_multilabel_table
from imgcls.runtime import require
from imgcls.options import (COMMANDS, PREVIEW_IMAGE_SIZE, AugmentPreviewCommand, Cifar100Command, ConvertCommand,
                            CvCommand, DemoCommand, DoctorCommand, EvalCommand, ExplainCommand, ExportCommand,
                            LrFindCommand, PredictCommand, RecipeCommand, ReportCommand, RunsCommand, ServeCommand,
                            ToShardsCommand, TrainCommand, TuneCommand)
from imgcls.training import distributed
from imgcls.training.loop import DEFAULT_LR, find_lr

# ValueError too: option checks (--freeze, --optimizer, ...) raise it with a message that
# names the flag and the accepted values.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, PermissionError)

RECIPES = Path(__file__).parent / "recipes"

COMMAND_HELP = {
    "train": "train a classifier on a dataset",
    "eval": "metrics of a model on a dataset split, or on a whole folder of class folders",
    "predict": "predict files and folders to CSV",
    "data": "prepare public datasets as class folders",
    "data cifar100": "CIFAR-100 python archive -> DIR/{train,test}/<fine>/*.png + hierarchy.csv (fine,coarse)",
    "data to-shards": "a dataset -> WebDataset tar shards DIR/{train,val,test}-NNNNNN.tar + _info.json "
                      "(train with imgcls train wds:DIR)",
    "report": "self-contained HTML report of a run: metrics, curves, calibration, hardest images with Grad-CAM, "
              "model size",
    "explain": "Grad-CAM overlays (PNG) for the top-k classes of images",
    "runs": "leaderboard of the runs in a folder (table, CSV and Markdown)",
    "doctor": "check a dataset before training: broken files, duplicates, leakage, balance, label errors; --fix "
              "moves blocking files to a quarantine",
    "augment-preview": "grid image of augmented training samples: see what a preset does",
    "convert": "convert an old pickled checkpoint (imgcls < 0.2: best.pt / last.pt) to safetensors model files, "
               "reading it with a restricted unpickler",
    "demo": "train, evaluate and predict on the bundled sample dataset",
    "export": "export a checkpoint to ONNX, OpenVINO, TorchScript or a timm model folder, checked against PyTorch",
    "serve": "HTTP prediction server with an upload page",
    "cv": "k-fold cross-validation: one run per fold, out-of-fold predictions, mean and std of every metric",
    "tune": "hyperparameter search with Optuna (TPE, median pruning); resumable; writes the best recipe",
    "lr-find": "LR range test: a suggested learning rate and its plot",
}


def _value_type(kind: Any) -> Any:
    """The type an option's value is parsed as (``int | None`` -> int, ``str | float`` -> str)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return [t for t in options if t is not type(None)][0]


def _add_option_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple = ()) -> None:
    """One argument per option of the dataclass ``cls``; a nested dataclass is a section whose
    options become flags too, with the destination ``section.name``.

    No argparse defaults (``SUPPRESS``): what was not given is left out, so the defaults come
    from the dataclass when :func:`_options` builds it, and a config file is not overridden.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dest, kind, meta = prefix + f.name, hints[f.name], f.metadata
        if dataclasses.is_dataclass(kind):
            _add_option_flags(parser, kind, dest + ".", skip)
            continue
        if dest in skip:
            continue
        if meta.get("cli") is False or "help" not in meta:
            continue
        base = _value_type(kind)
        many = typing.get_origin(base) is list
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        shown = "" if f.default in (None, dataclasses.MISSING) or meta.get("switch") else f" (default: {f.default})"
        kwargs: dict = {"help": (meta["help"] + shown).replace("%", "%%")}
        if meta.get("positional"):
            kwargs["metavar"] = meta.get("metavar") or f.name
            if many:
                kwargs["nargs"] = "+"
            elif not required:
                kwargs.update(nargs="?", default=argparse.SUPPRESS)
            parser.add_argument(dest, **kwargs)
            continue
        kwargs.update(dest=dest, default=argparse.SUPPRESS, required=required)
        if base is bool:
            kwargs["action"] = "store_true" if meta.get("switch") else argparse.BooleanOptionalAction
        elif many:
            kwargs.update(action="append", type=typing.get_args(base)[0], metavar=meta.get("metavar") or "DIR")
        else:
            kwargs.update(type=base, metavar=meta.get("metavar") or f.name.upper())
        parser.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kwargs)


def _given(cls: type, args: argparse.Namespace, prefix: str = "") -> dict:
    """The values of ``cls``'s options present in ``args``, nested by section."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        dest = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _given(hints[f.name], args, dest + ".")
        elif hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    return values


def _options(cls: type, args: argparse.Namespace) -> Any:
    """The options object of one subcommand: the flags given, the declared defaults for the
    rest; raises ConfigError naming the flag of a bad value."""
    return cls.from_dict(_given(cls, args))


def build_parser() -> argparse.ArgumentParser:
    """The ``imgcls`` parser: one subparser per entry of :data:`imgcls.options.COMMANDS`."""
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and use image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for name, cls in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            groups[group] = sub.add_parser(group, help=COMMAND_HELP[group]).add_subparsers(dest="dataset",
                                                                                           required=True)
        command = (groups[group] if group else sub).add_parser(leaf, help=COMMAND_HELP[name])
        command.set_defaults(subcommand=name)
        _add_option_flags(command, cls)
        if issubclass(cls, RecipeCommand):
            _add_option_flags(command, RunConfig, skip=cls.run_flags_skipped)
    return parser


def _resolve_recipe(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    candidate = RECIPES / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml"))) or "none"
    raise ConfigError(f"--recipe {name}: no such recipe (known: {known})")


def _train_config(args: argparse.Namespace, command: RecipeCommand | None = None) -> tuple[RunConfig, dict]:
    """The run's config: defaults < ``--config``/``--recipe`` (or the resumed run's) < flags."""
    command = command or _options(TrainCommand, args)
    overrides = {k: v for k, v in vars(args).items() if "." in k or k in ("name", "out_dir")}
    resume = getattr(command, "resume", None)
    if resume:
        base = RunConfig.load(Path(resume) / "config.yaml")
    elif command.config:
        base = RunConfig.load(command.config)
    elif command.recipe:
        base = RunConfig.load(_resolve_recipe(command.recipe))
    else:
        base = RunConfig()
    if command.data:
        overrides["data.path"] = command.data
    config = base.with_overrides(overrides)
    if not resume and not config.data.path and not config.data.train_dirs:
        raise ConfigError("give a dataset: imgcls train DATA (or --train DIR)")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    command = _options(TrainCommand, args)
    config, _ = _train_config(args, command)
    if config.train.devices > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(config.train.devices, args.argv)
    result = api.train(config=config, resume=command.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_outputs(result)
    return 0


def _print_outputs(result) -> None:
    print(f"\nrun folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics per epoch: {result.run_dir / 'metrics.csv'}   tensorboard: {result.run_dir / 'tensorboard'}")
    for split, metrics in result.metrics.items():
        if metrics.get("task") == "multilabel":
            print(f"{split:5s} mAP {metrics['map_macro']:.4f}  samples-F1 {metrics['f1_samples']:.4f}  "
                  f"micro-F1 {metrics['f1_micro']:.4f}  -> {metrics['files']['json']}")
            continue
        print(f"{split:5s} top-1 {metrics['top1']:.4f}  top-{metrics['topk']} {metrics['topk_accuracy']:.4f}  "
              f"macro-F1 {metrics['f1_macro']:.4f}  -> {metrics['files']['json']}")
        if "coarse" in metrics:
            print(f"{'':5s} coarse top-1 {metrics['coarse']['top1']:.4f}  consistency {metrics['consistency']:.4f}")


def cmd_eval(args: argparse.Namespace) -> int:
    o = _options(EvalCommand, args)
    metrics = api.evaluate(o.checkpoint, o.data, split=o.split, out_dir=o.out, batch_size=o.batch_size,
                           report=o.report, unknown=o.unknown, device=o.device, tta=o.tta)
    print(format_multilabel_table(metrics) if metrics.get("task") == "multilabel" else format_metrics_table(metrics))
    if "coarse" in metrics:
        print("\n" + "\n".join(format_hierarchy_lines(metrics)))
    if "openset" in metrics:
        print("\n" + "\n".join(format_openset_lines(metrics["openset"])))
    for item in metrics["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"\nwritten: {metrics['files']['json']} (and CSVs beside it)")
    if "report" in metrics["files"]:
        print(f"report:  {metrics['files']['report']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    o = _options(ReportCommand, args)
    metrics = api.report(o.checkpoint, o.data, split=o.split, out=o.out, device=o.device, batch_size=o.batch_size)
    if metrics.get("task") == "multilabel":
        print(f"{metrics['split']}: mAP {metrics['map_macro']:.4f}  samples-F1 {metrics['f1_samples']:.4f}  "
              f"micro-F1 {metrics['f1_micro']:.4f}")
        print(f"report: {metrics['files']['report']}")
        return 0
    print(f"{metrics['split']}: top-1 {metrics['top1']:.4f}  top-{metrics['topk']} {metrics['topk_accuracy']:.4f}  "
          f"macro-F1 {metrics['f1_macro']:.4f}  ECE {metrics['ece']:.4f}")
    print(f"report: {metrics['files']['report']}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    o = _options(ExplainCommand, args)
    rows = explain_files(api.load(o.checkpoint, device=o.device), o.paths, o.out, topk=o.topk, size=o.size)
    for row in rows:
        if row["error"]:
            print(f"could not read {row['path']}: {row['error']}", file=sys.stderr)
        else:
            print(f"{row['path']}  top-{row['rank']} {row['label']} {row['probability']:.3f} -> {row['file']}")
    return 0 if any(not row["error"] for row in rows) else 1


def cmd_runs(args: argparse.Namespace) -> int:
    o = _options(RunsCommand, args)
    rows = leaderboard(o.folder, sort=o.sort, reverse=o.reverse)
    if not rows:
        print(f"no runs found under {o.folder}", file=sys.stderr)
        return 1
    print(format_table(rows))
    prefix = o.out or str(Path(o.folder) / "leaderboard")
    print(f"\n{len(rows)} runs -> {write_csv(rows, prefix + '.csv')}, {write_markdown(rows, prefix + '.md')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    o = _options(PredictCommand, args)
    classifier = api.load(o.checkpoint, device=o.device)
    if o.unknown_threshold is not None or o.unknown_score is not None:
        threshold = classifier.unknown.threshold if o.unknown_threshold is None else o.unknown_threshold
        classifier = classifier.with_unknown_rule(classifier.unknown.replaced(threshold, o.unknown_score))
    if o.tta is not None:
        classifier = classifier.with_tta(o.tta)
    rows = classifier.predict(o.paths, topk=o.topk, batch_size=o.batch_size, workers=None)
    out = write_predictions_csv(rows, o.out, o.topk)
    errors = [r for r in rows if r["error"]]
    for row in errors:
        print(f"could not read {row['path']}: {row['error']}", file=sys.stderr)
    rejected = sum(bool(r.get("unknown")) for r in rows)
    note = f" ({rejected} unknown: {classifier.unknown.score} < {classifier.unknown.threshold:.4g})" \
        if classifier.unknown.active else ""
    print(f"{len(rows) - len(errors)} images predicted{note}, {len(errors)} unreadable -> {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    o = _options(Cifar100Command, args)
    result = convert_cifar100(o.to, archive=o.archive)
    counts = ", ".join(f"{n} {split}" for split, n in result["counts"].items())
    print(f"CIFAR-100: {counts} images, {result['fine_classes']} fine / {result['coarse_classes']} coarse classes "
          f"-> {result['root']}")
    print(f"train with: imgcls train {result['root']} --hierarchy {result['hierarchy']}")
    return 0


def cmd_to_shards(args: argparse.Namespace) -> int:
    o = _options(ToShardsCommand, args)
    result = write_shards(o.data, o.out, shard_size=o.shard_size, val_fraction=o.val_fraction,
                          split_seed=o.split_seed, seed=o.seed)
    written = ", ".join(f"{split} {n} images in {result.shards[split]} shard(s)" for split, n in result.counts.items())
    print(f"{written}; {len(result.classes)} classes -> {result.out} (_info.json beside the shards)")
    print(f"train with: imgcls train wds:{result.out}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    o = _options(AugmentPreviewCommand, args)
    data = RunConfig.load(_resolve_recipe(o.recipe)).data if o.recipe else DataConfig()
    out = augment_preview(o.data, o.out, preset=o.preset or data.augment, n=o.n, per_image=o.per_image,
                          image_size=o.image_size or data.image_size or PREVIEW_IMAGE_SIZE,
                          random_erasing=data.random_erasing if o.random_erasing is None else o.random_erasing,
                          seed=o.seed)
    print(f"augment preview: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    o = _options(DemoCommand, args)
    run_demo(Path(o.out), epochs=o.epochs)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    o = _options(DoctorCommand, args)
    if o.restore:
        result = doctor.restore(Path(o.data))
        for path, why in result.left:
            print(f"left in quarantine: {path}: {why}", file=sys.stderr)
        print(f"restored {len(result.restored)} file(s) from {doctor.quarantine_dir(Path(o.data))}")
        return 1 if result.left else 0
    data = materialise_hf(o.data) if is_hf(o.data) else o.data  # hf:PATH: the doctor reads its files' manifest
    report = doctor.run_doctor(data, o.checks)
    files = doctor.write_reports(report, o.out or f"doctor-{Path(o.data).resolve().name}")
    print(summary(report))
    print(f"\nwritten: {files['overview']}, {files['json'].name}, {files['html'].name}")
    moves, target = doctor.plan_fix(report), doctor.quarantine_dir(report.root)
    if moves and o.fix:
        doctor.apply_fix(report.root, moves)
        print(f"moved {len(moves)} file(s) to {target} (list: quarantine.csv; undo: imgcls doctor DATA --restore)")
    elif moves:
        print(f"dry run: {blocking_note(report)}; --fix moves them to {target}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    o = _options(ExportCommand, args)  # a flag the format does not use is refused here, before any work
    report = export_model(o)
    print(report.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    o = _options(ServeCommand, args)
    # FastAPI and uvicorn are the 'serve' extra: the server module is imported only to serve.
    require("imgcls.deploy.serve", "serve", "imgcls serve").serve(o.settings, api_key=o.api_key)
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    o = _options(CvCommand, args)
    config, _ = _train_config(args, o)
    result = cross_validate(config, o.folds)
    summary = result.summary
    for split, aggregate in summary["mean_std"].items():
        per_fold = "  ".join(f"{fold[split]['top1']:.4f}" for fold in summary["per_fold"] if split in fold)
        print(f"{split:5s} top-1 per fold: {per_fold}   mean {aggregate['top1']['mean']:.4f} "
              f"± {aggregate['top1']['std']:.4f}   macro-F1 {aggregate['f1_macro']['mean']:.4f} "
              f"± {aggregate['f1_macro']['std']:.4f}")
    pooled = summary["out_of_fold"]
    print(f"out-of-fold ({summary['images']} images): top-1 {pooled['top1']:.4f}, macro-F1 {pooled['f1_macro']:.4f}")
    print(f"\ncv folder: {result.folder} (folds.csv, oof_predictions.csv, cv.json, cv.html; fold runs fold-1..)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    o = _options(TuneCommand, args)
    config, _ = _train_config(args, o)
    result = tune(config, o.trials, load_space(o.space), o.time_limit, o.study)
    print(f"\n{result.trials} finished trials in {result.folder / 'study.db'}")
    settings = "the configuration as given (no trial beat it)" if result.best_is_baseline else result.best_params
    print(f"best {result.monitor} {result.best_value:.4f} with {settings}")
    print(f"best configuration: {result.best_recipe} (imgcls train DATA --recipe {result.best_recipe})")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    o = _options(LrFindCommand, args)
    config, _ = _train_config(args, o)
    if config.train.lr == "auto":
        config.train.lr = DEFAULT_LR  # the range test does not need a rate to start from
    test, run_dir = find_lr(config, o.phase, o.steps)
    plot = run_dir / "lr_find.png"
    plot.write_bytes(figure_bytes(figures.lr_range_test(test.to_dict())))
    print(f"suggested learning rate: {test.suggestion:.3g} ({test.rule}; {test.phase} phase, {len(test.lrs)} steps, "
          f"{test.stopped})")
    print(f"written: {run_dir / 'lr_find.json'}, {plot}; train with --lr {test.suggestion:.3g} (or --lr auto)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    o = _options(ConvertCommand, args)
    for line in convert_legacy(Path(o.checkpoint)):
        print(line)
    return 0


HANDLERS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "data cifar100": cmd_data,
            "data to-shards": cmd_to_shards,
            "report": cmd_report, "explain": cmd_explain, "runs": cmd_runs, "doctor": cmd_doctor,
            "augment-preview": cmd_augment_preview, "convert": cmd_convert, "demo": cmd_demo, "export": cmd_export,
            "serve": cmd_serve, "cv": cmd_cv, "tune": cmd_tune, "lr-find": cmd_lr_find}


def main(argv: list[str] | None = None) -> int:
    """Run ``imgcls ARGV``; returns the exit code (2 for bad input, with one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = HANDLERS[args.subcommand]
    try:
        return handler(args)
    except USER_ERRORS as err:
        if os.environ.get("IMGCLS_DEBUG"):
            raise
        print(f"imgcls: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgcls: interrupted (the last finished epoch is in last.pt; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
