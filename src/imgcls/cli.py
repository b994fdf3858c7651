"""The ``imgcls`` command: argument parsing only; the work is done by the package API.

Training flags are generated from :mod:`imgcls.config`, so every config field is a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path

from imgcls import api
from imgcls.apps import doctor
from imgcls.apps.augment_preview import augment_preview
from imgcls.apps.cifar100 import convert_cifar100
from imgcls.apps.convert import convert_legacy
from imgcls.apps.demo import run_demo
from imgcls.apps.doctor.report import blocking_note, summary
from imgcls.config import SECTIONS, ConfigError, RunConfig, iter_options
from imgcls.deploy.export import export_checkpoint
from imgcls.deploy.serve import ServeSettings, serve
from imgcls.errors import UserError
from imgcls.evaluation.explain import explain_files
from imgcls.evaluation.leaderboard import format_table, leaderboard, write_csv, write_markdown
from imgcls.evaluation.openset import format_openset_lines
from imgcls.inference.rows import write_predictions_csv
from imgcls.metrics.classification import format_metrics_table
from imgcls.metrics.hierarchy import format_hierarchy_lines
from imgcls.training import distributed

# ValueError too: option checks (--freeze, --optimizer, ...) raise it with a message that
# names the flag and the accepted values.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, PermissionError)

RECIPES = Path(__file__).parent / "recipes"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = {section: typing.get_type_hints(cls) for section, cls in (("", RunConfig), *SECTIONS.items())}
    for section, f in iter_options():
        if f.metadata.get("cli") is False or "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        dest = f"{section}.{f.name}" if section else f.name
        kind = hints[section][f.name]
        options = [t for t in (typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,))
                   if t is not type(None)]
        base = options[0]
        shown = f" (default: {f.default})" if f.default not in (None, dataclasses.MISSING) else ""
        kwargs: dict = {"dest": dest, "default": argparse.SUPPRESS, "help": f.metadata["help"] + shown}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kwargs.update(action="append", type=typing.get_args(base)[0], metavar="DIR")
        else:
            kwargs.update(type=base, metavar=f.name.upper())
        parser.add_argument(flag, **kwargs)


def _add_split_args(parser: argparse.ArgumentParser, checkpoint_help: str, out_help: str) -> None:
    """What ``eval`` and ``report`` share: a model, a dataset split, and where to write."""
    parser.add_argument("checkpoint", help=checkpoint_help)
    parser.add_argument("data", nargs="?", help="dataset (default: the run's own)")
    parser.add_argument("--split", help="train | val | test | all (default: test if present, else val)")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and use image classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a classifier on a dataset")
    train.add_argument("data", nargs="?", help="dataset folder (class folders, or train/ val/ test/) or CSV manifest")
    train.add_argument("--config", help="YAML config to start from (e.g. a run's config.yaml)")
    train.add_argument("--recipe", help=f"named recipe from {RECIPES.name}/ or a YAML path")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last.pt")
    _add_config_flags(train)

    ev = sub.add_parser("eval", help="metrics of a model on a dataset split, or on a whole folder of class folders")
    _add_split_args(ev, "run folder, .safetensors model file or exported .onnx file",
                    "folder for eval.json and CSVs (default: <run>/eval-<split> for the run's own data, "
                    "<run>/eval-on-<data>[-<split>] for other data)")
    ev.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                    help="also write report.html beside eval.json (default: yes; not for .onnx files)")
    ev.add_argument("--unknown", metavar="DIR", help="out-of-distribution images for open-set AUROC / FPR@95%%TPR "
                    "(default: the split's unknown/ folder, e.g. DATA/test/unknown/)")

    pr = sub.add_parser("predict", help="predict files and folders to CSV")
    pr.add_argument("checkpoint", help="run folder, .safetensors model file or exported .onnx file")
    pr.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    pr.add_argument("--out", default="predictions.csv", help="CSV to write")
    pr.add_argument("--topk", type=int, default=3)
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--unknown-threshold", metavar="VALUE", help="override the checkpoint's open-set threshold "
                    "(a score value, or 'none' to turn rejection off)")
    pr.add_argument("--unknown-score", choices=["msp", "energy"], help="score the threshold applies to "
                    "(default: the checkpoint's, else msp)")

    dt = sub.add_parser("data", help="prepare public datasets as class folders")
    dt_sub = dt.add_subparsers(dest="dataset", required=True)
    c100 = dt_sub.add_parser("cifar100", help="CIFAR-100 python archive -> DIR/{train,test}/<fine>/*.png + "
                             "hierarchy.csv (fine,coarse)")
    c100.add_argument("--to", required=True, metavar="DIR", help="folder to write (train/, test/, hierarchy.csv)")
    c100.add_argument("--archive", metavar="PATH", help="local cifar-100-python.tar.gz (default: DIR/ if there, "
                      "else downloaded from the official URL)")

    rp = sub.add_parser("report", help="self-contained HTML report of a run: metrics, curves, calibration, "
                                       "hardest images with Grad-CAM, model size")
    _add_split_args(rp, "run folder or .safetensors model file", "HTML file to write (default: <run>/report.html)")

    xp = sub.add_parser("explain", help="Grad-CAM overlays (PNG) for the top-k classes of images")
    xp.add_argument("checkpoint", help="run folder or .safetensors model file")
    xp.add_argument("paths", nargs="+", metavar="IMAGE", help="image files and/or folders (searched recursively)")
    xp.add_argument("--topk", type=int, default=3, help="classes to explain per image")
    xp.add_argument("--out", default="explanations", help="folder for the PNG files")
    xp.add_argument("--size", type=int, default=320, help="side of the overlay images in pixels")
    xp.add_argument("--device", default="auto")

    rn = sub.add_parser("runs", help="leaderboard of the runs in a folder (table, CSV and Markdown)")
    rn.add_argument("folder", nargs="?", default="runs", help="folder searched for runs (default: runs)")
    rn.add_argument("--sort", default="val_top1", help="column key to sort by: name, model, lr, epochs, "
                    "train_acc, val_top1, val_topk, val_f1_macro, params_m, mb, wall_s (default: val_top1)")
    rn.add_argument("--reverse", action="store_true", help="reverse the order (default: best first)")
    rn.add_argument("--out", help="path prefix of the CSV and Markdown files (default: FOLDER/leaderboard)")

    dr = sub.add_parser("doctor", help="check a dataset before training: broken files, duplicates, leakage, "
                                       "balance, label errors; --fix moves blocking files to a quarantine")
    dr.add_argument("data", help="dataset folder (class folders, or train/ val/ test/) or CSV manifest")
    dr.add_argument("--out", help="folder for overview.csv, doctor.json, doctor.html (default: doctor-<dataset>)")
    dr.add_argument("--fix", action="store_true", help="move files with blocking problems to <dataset>.quarantine/")
    dr.add_argument("--restore", action="store_true", help="move every quarantined file back, then stop")
    dr.add_argument("--full", action="store_true", help="also decode every image at full size, as training does")
    dr.add_argument("--deep", action="store_true", help="also find near-duplicates by backbone-embedding cosine")
    dr.add_argument("--label-check", action="store_true", help="flag likely label errors (cross-validated probe)")
    dr.add_argument("--min-size", type=int, default=32, help="shorter side below which an image is tiny")
    dr.add_argument("--near-distance", type=int, default=4, help="dHash bits near-duplicates may differ in")
    dr.add_argument("--deep-threshold", type=float, default=0.95, help="embedding cosine of near-duplicates")
    dr.add_argument("--imbalance-ratio", type=float, default=3.0, help="largest/smallest class to report")
    dr.add_argument("--backbone", default="efficientnet_lite0", help="timm model for --deep / --label-check")
    dr.add_argument("--feature-size", type=int, help="backbone input size (default: the backbone's own)")
    dr.add_argument("--workers", type=int, help="processes for scanning and loading (default: all cores)")
    dr.add_argument("--device", default="auto")

    ap = sub.add_parser("augment-preview", help="grid image of augmented training samples: see what a preset does")
    ap.add_argument("data", help="dataset folder (class folders, or train/ val/ test/) or CSV manifest")
    ap.add_argument("--preset", help="augmentation preset (default: the recipe's, else 'default')")
    ap.add_argument("--recipe", help="take preset, image size and random erasing from this recipe")
    ap.add_argument("--out", default="augment-preview.png", help="PNG file to write")
    ap.add_argument("--n", type=int, default=16, help="augmented views in the grid")
    ap.add_argument("--per-image", type=int, default=4, help="augmented views per image (one row each)")
    ap.add_argument("--image-size", type=int, help="augmented image size (default: the recipe's, else 224)")
    ap.add_argument("--random-erasing", type=float, help="random erasing probability (default: the recipe's, else 0)")
    ap.add_argument("--seed", type=int, default=0)

    cv = sub.add_parser("convert", help="convert an old pickled checkpoint (imgcls < 0.2: best.pt / last.pt) "
                        "to safetensors model files, reading it with a restricted unpickler")
    cv.add_argument("checkpoint", help="the .pt file, or a run folder holding best.pt / last.pt")

    demo = sub.add_parser("demo", help="train, evaluate and predict on the bundled sample dataset")
    demo.add_argument("--out", default="runs", help="folder for the run and the extracted data")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")

    ex = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch")
    ex.add_argument("checkpoint", help="run folder or .safetensors model file")
    ex.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    ex.add_argument("--out", help="file to write (default: the checkpoint's name with .onnx)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    ex.add_argument("--int8", action="store_true", help="also write an int8-quantised <out>.int8.onnx")
    ex.add_argument("--int8-mode", default="static", choices=["static", "dynamic"],
                    help="static: calibrated on training images (best for CNNs); dynamic: weights only")
    ex.add_argument("--data", help="dataset for sample, calibration and validation images (default: the run's own)")
    ex.add_argument("--calibration-images", type=int, default=128, help="training images to calibrate --int8 on")

    sv = sub.add_parser("serve", help="HTTP prediction server with an upload page")
    sv.add_argument("model", help="run folder, .safetensors model file or exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs an API key)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy")
    sv.add_argument("--api-key", help="key clients send in the X-API-Key header (default: $IMGCLS_API_KEY)")
    sv.add_argument("--max-batch", type=int, default=32, help="images per model call; 1 turns batching off")
    sv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    sv.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body accepted (413 above)")
    sv.add_argument("--max-images", type=int, default=32, help="most images in one request")
    sv.add_argument("--topk", type=int, default=5, help="labels per image unless the request says ?topk=")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--threads", type=int, help="CPU threads per worker for inference")
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


def _train_config(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    overrides = {k: v for k, v in vars(args).items() if "." in k or k in ("name", "out_dir")}
    overrides = {k: v for k, v in overrides.items() if k != "command"}
    if args.resume:
        base = RunConfig.load(Path(args.resume) / "config.yaml")
    elif args.config:
        base = RunConfig.load(args.config)
    elif args.recipe:
        base = RunConfig.load(_resolve_recipe(args.recipe))
    else:
        base = RunConfig()
    if args.data:
        overrides["data.path"] = args.data
    config = base.with_overrides(overrides)
    if not args.resume and not config.data.path and not config.data.train_dirs:
        raise ConfigError("give a dataset: imgcls train DATA (or --train DIR)")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    config, _ = _train_config(args)
    if config.train.devices > 1 and not distributed.launched_by_torchrun():
        return distributed.launch(config.train.devices, args.argv)
    result = api.train(config=config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_outputs(result)
    return 0


def _print_outputs(result) -> None:
    print(f"\nrun folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"metrics per epoch: {result.run_dir / 'metrics.csv'}   tensorboard: {result.run_dir / 'tensorboard'}")
    for split, metrics in result.metrics.items():
        print(f"{split:5s} top-1 {metrics['top1']:.4f}  top-{metrics['topk']} {metrics['topk_accuracy']:.4f}  "
              f"macro-F1 {metrics['f1_macro']:.4f}  -> {metrics['files']['json']}")
        if "coarse" in metrics:
            print(f"{'':5s} coarse top-1 {metrics['coarse']['top1']:.4f}  consistency {metrics['consistency']:.4f}")


def cmd_eval(args: argparse.Namespace) -> int:
    metrics = api.evaluate(args.checkpoint, args.data, split=args.split, out_dir=args.out,
                           batch_size=args.batch_size, report=args.report, unknown=args.unknown, device=args.device)
    print(format_metrics_table(metrics))
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
    metrics = api.report(args.checkpoint, args.data, split=args.split, out=args.out, device=args.device,
                         batch_size=args.batch_size)
    print(f"{metrics['split']}: top-1 {metrics['top1']:.4f}  top-{metrics['topk']} {metrics['topk_accuracy']:.4f}  "
          f"macro-F1 {metrics['f1_macro']:.4f}  ECE {metrics['ece']:.4f}")
    print(f"report: {metrics['files']['report']}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    rows = explain_files(api.load(args.checkpoint, device=args.device), args.paths, args.out, topk=args.topk,
                         size=args.size)
    for row in rows:
        if row["error"]:
            print(f"could not read {row['path']}: {row['error']}", file=sys.stderr)
        else:
            print(f"{row['path']}  top-{row['rank']} {row['label']} {row['probability']:.3f} -> {row['file']}")
    return 0 if any(not row["error"] for row in rows) else 1


def cmd_runs(args: argparse.Namespace) -> int:
    rows = leaderboard(args.folder, sort=args.sort, reverse=args.reverse)
    if not rows:
        print(f"no runs found under {args.folder}", file=sys.stderr)
        return 1
    print(format_table(rows))
    prefix = args.out or str(Path(args.folder) / "leaderboard")
    print(f"\n{len(rows)} runs -> {write_csv(rows, prefix + '.csv')}, {write_markdown(rows, prefix + '.md')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    classifier = api.load(args.checkpoint, device=args.device)
    if args.unknown_threshold is not None or args.unknown_score is not None:
        threshold = classifier.unknown.threshold if args.unknown_threshold is None else args.unknown_threshold
        classifier = classifier.with_unknown_rule(classifier.unknown.replaced(threshold, args.unknown_score))
    rows = classifier.predict(args.paths, topk=args.topk, batch_size=args.batch_size, workers=None)
    out = write_predictions_csv(rows, args.out, args.topk)
    errors = [r for r in rows if r["error"]]
    for row in errors:
        print(f"could not read {row['path']}: {row['error']}", file=sys.stderr)
    rejected = sum(bool(r.get("unknown")) for r in rows)
    note = f" ({rejected} unknown: {classifier.unknown.score} < {classifier.unknown.threshold:.4g})" \
        if classifier.unknown.active else ""
    print(f"{len(rows) - len(errors)} images predicted{note}, {len(errors)} unreadable -> {out}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    result = convert_cifar100(args.to, archive=args.archive)
    counts = ", ".join(f"{n} {split}" for split, n in result["counts"].items())
    print(f"CIFAR-100: {counts} images, {result['fine_classes']} fine / {result['coarse_classes']} coarse classes "
          f"-> {result['root']}")
    print(f"train with: imgcls train {result['root']} --hierarchy {result['hierarchy']}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    data = RunConfig.load(_resolve_recipe(args.recipe)).data if args.recipe else RunConfig().data
    out = augment_preview(args.data, args.out, preset=args.preset or data.augment, n=args.n, per_image=args.per_image,
                          image_size=args.image_size or data.image_size or 224,
                          random_erasing=data.random_erasing if args.random_erasing is None else args.random_erasing,
                          seed=args.seed)
    print(f"augment preview: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), epochs=args.epochs)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.restore:
        result = doctor.restore(Path(args.data))
        for path, why in result.left:
            print(f"left in quarantine: {path}: {why}", file=sys.stderr)
        print(f"restored {len(result.restored)} file(s) from {doctor.quarantine_dir(Path(args.data))}")
        return 1 if result.left else 0
    options = doctor.DoctorOptions(full=args.full, deep=args.deep, label_check=args.label_check,
                                   min_size=args.min_size, near_distance=args.near_distance,
                                   deep_threshold=args.deep_threshold, imbalance_ratio=args.imbalance_ratio,
                                   backbone=args.backbone, feature_size=args.feature_size, workers=args.workers,
                                   device=args.device)
    report = doctor.run_doctor(args.data, options)
    files = doctor.write_reports(report, args.out or f"doctor-{Path(args.data).resolve().name}")
    print(summary(report))
    print(f"\nwritten: {files['overview']}, {files['json'].name}, {files['html'].name}")
    moves, target = doctor.plan_fix(report), doctor.quarantine_dir(report.root)
    if moves and args.fix:
        doctor.apply_fix(report.root, moves)
        print(f"moved {len(moves)} file(s) to {target} (list: quarantine.csv; undo: imgcls doctor DATA --restore)")
    elif moves:
        print(f"dry run: {blocking_note(report)}; --fix moves them to {target}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    report = export_checkpoint(args.checkpoint, args.out, opset=args.opset, int8=args.int8,
                               int8_mode=args.int8_mode, data=args.data, calibration_images=args.calibration_images)
    print(report.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(model=args.model, host=args.host, port=args.port, workers=args.workers,
                             max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb,
                             max_images=args.max_images, topk=args.topk, device=args.device, threads=args.threads)
    serve(settings, api_key=args.api_key)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    for line in convert_legacy(Path(args.checkpoint)):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    handler = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "demo": cmd_demo, "doctor": cmd_doctor,
               "export": cmd_export, "serve": cmd_serve, "report": cmd_report, "explain": cmd_explain,
               "runs": cmd_runs, "augment-preview": cmd_augment_preview, "data": cmd_data,
               "convert": cmd_convert}[args.command]
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
