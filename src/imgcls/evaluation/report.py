"""``imgcls report RUN``: one self-contained HTML page that lets a person read and trust a run.

Written at the end of every ``train`` (``<run>/report.html``) and ``eval``
(``<eval folder>/report.html``). Everything is inline (CSS, a few lines of JS for sorting,
figures and images as data URIs), so the file can be mailed, archived or opened offline.
The page is rendered by a Jinja2 template (``templates/report.html.j2``); this module
gathers what it shows (for a multilabel model, :mod:`imgcls.evaluation.multilabel_report`
gathers the sections that differ).
"""

from __future__ import annotations

import csv
import datetime
import json
import time
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from imgcls.data.images import ImageDecodeError, load_rgb
from imgcls.data.sources import DatasetError, Sample, discover_run
from imgcls.errors import CheckpointError
from imgcls.evaluation import figures
from imgcls.evaluation.calibration import raw_logits
from imgcls.evaluation.evaluate import Evaluation
from imgcls.evaluation.explain import GradCamExplainer, display_crop, overlay
from imgcls.evaluation.model_size import hardware_summary, model_size
from imgcls.evaluation.multilabel_report import multilabel_sections
from imgcls.inference.classifier import Classifier
from imgcls.inference.predictions import Predictions
from imgcls.metrics.calibration import calibration_summary
from imgcls.runtime import log
from imgcls.training.plan import PLAN_FILE, read_plan
from imgcls.training.state import STATE_FILE, TrainState, load_state

TEMPLATES = Path(__file__).parent / "templates"
GALLERY_SIZE = 16
LATENCY_BUDGET_S = 2.0  # seconds of timed forward passes for the latency row
CONFUSED_PAIRS = 6
EXAMPLES_PER_PAIR = 5


def write_report(classifier: Classifier, evaluation: Evaluation, out_path: str | Path,
                 gallery_size: int = GALLERY_SIZE, latency_budget_s: float | None = None) -> Path:
    """Render the report of one evaluated set (:func:`imgcls.evaluation.evaluate.evaluate`)
    for a PyTorch model; returns the written path."""
    started = time.perf_counter()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metrics, predictions, samples = evaluation.metrics, evaluation.predictions, evaluation.samples
    state = _training_state(classifier)
    history = _history(classifier.run_dir, state)
    counts = _split_counts(classifier)
    card = classifier.card
    context = {
        "title": _run_name(classifier),
        "task": card.task,
        "metrics": metrics,
        "summary": _summary(classifier, metrics, history, evaluation.data, counts),
        "config_yaml": yaml.safe_dump(card.config, sort_keys=False),
        "curves": figures.training_curves(history, _best_epoch(card)),
        "training_extras": _training_extras(classifier),
        "plan": _plan(classifier),
    }
    if classifier.multilabel:
        context.update(multilabel_sections(classifier, evaluation, counts, min(gallery_size, 12)))
    else:
        context.update({
            "headline": _headline(metrics, classifier),
            "metric_rows": _metric_rows(metrics),
            "per_class": _per_class_rows(metrics, counts),
            "best_worst": _best_worst(metrics),
            "confusion": figures.confusion_figures(np.array(metrics["confusion_matrix"]), classifier.classes),
            "pairs": _confused_pairs(classifier, metrics, predictions, samples),
            "calibration": _calibration(classifier, metrics, predictions, own_val=metrics["split"] == "val"
                                        and evaluation.data is None),
            "gallery": _gallery(classifier, predictions, samples, gallery_size),
        })
    context.update({
        "size": _size_rows(classifier, state, LATENCY_BUDGET_S if latency_budget_s is None else latency_budget_s),
        "skipped": metrics.get("skipped", []),
    })
    context["generated"] = {"at": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                            "seconds": time.perf_counter() - started}
    out_path.write_text(render(context), encoding="utf-8")
    log.info("report: %s", out_path)
    return out_path


def _plan(classifier: Classifier) -> dict[str, Any] | None:
    """"Why this plan": the run's ``plan.json`` (training/plan.py) as the measurements and,
    per choice, its value and the rule or flag that made it; None for runs without one."""
    if classifier.run_dir is None:
        return None
    try:
        record = read_plan(classifier.run_dir)
    except (OSError, ValueError, TypeError, KeyError) as err:
        log.warning("report: %s unreadable (%s)", classifier.run_dir / PLAN_FILE, err)
        return None
    if record is None or record.plan is None or record.measurements is None:
        return None
    m = record.measurements
    measured = [("classes", m.classes), ("train images", f"{m.train_images:,} (smallest class {m.smallest_class})"),
                ("median image side", f"{m.image_side} px" if m.image_side else "unknown"),
                ("pretraining size", f"{m.pretrained_size} px" + ("" if m.pretrained else " (random weights)"))]
    if m.head_train_top1 is not None:
        measured.append((f"head on frozen features, train / val {m.fit_metric}",
                         f"{m.head_train_top1:.3f} / " + (f"{m.head_val_top1:.3f}" if m.head_val_top1 is not None
                                                          else "n/a")))
    if m.bn_shift is not None:
        measured.append(("BatchNorm shift of the first layers (KL, nats)", f"{m.bn_shift:.3f}"))
    if m.gray_share is not None:
        measured.append(("grayscale images", f"{m.gray_share:.0%}"))
    values = {key: getattr(record.plan, key) for key in record.plan.why}
    choices = [(key, format(v, "g") if isinstance(v, float) else str(v), record.plan.why[key]) for key, v in values.items()]
    return {"stage": record.stage, "measured": measured, "choices": choices}


def _training_extras(classifier: Classifier) -> dict[str, Any]:
    """What the run planned for itself: the LR range test and the time budget, when used."""
    extras: dict[str, Any] = {"lr_plot": None, "lr_test": None, "budget": None}
    run_dir = classifier.run_dir
    if run_dir is None:
        return extras
    for name, key in (("lr_find.json", "lr_test"), ("budget.json", "budget")):
        try:
            extras[key] = json.loads((run_dir / name).read_text()) if (run_dir / name).is_file() else None
        except (OSError, json.JSONDecodeError) as err:
            log.warning("report: %s unreadable (%s)", run_dir / name, err)
    if extras["lr_test"] and extras["lr_test"].get("lrs"):
        extras["lr_plot"] = figures.lr_range_test(extras["lr_test"])
    return extras


def _training_state(classifier: Classifier) -> TrainState | None:
    """The run's saved training state (optimiser size, history), when it is still there."""
    if classifier.run_dir is None or not (classifier.run_dir / STATE_FILE).is_file():
        return None
    try:
        return load_state(classifier.run_dir / STATE_FILE)
    except CheckpointError as err:
        log.warning("report: %s", err)
        return None


def render(context: dict) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                     autoescape=jinja2.select_autoescape(["html", "j2"]),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["pct"] = lambda v, d=1: "n/a" if v is None else f"{100 * v:.{d}f}%"
    environment.filters["num"] = lambda v, d=4: "n/a" if v is None else f"{v:.{d}f}"
    return environment.get_template("report.html.j2").render(**context)


# --------------------------------------------------------------------------
# Run summary
# --------------------------------------------------------------------------


def _run_name(classifier: Classifier) -> str:
    return classifier.config.name or (classifier.run_dir.name if classifier.run_dir else "model")


def _history(run_dir: Path | None, state: TrainState | None) -> list[dict]:
    """Per-epoch rows: ``metrics.csv`` (what the user sees) or the training state's copy."""
    path = run_dir / "metrics.csv" if run_dir is not None else None
    if path is not None and path.is_file():
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            return rows
    return list(state.history) if state is not None else []


def _best_epoch(card) -> int | None:
    return (card.monitor or {}).get("best_epoch") or card.epoch


def _headline(metrics: dict, classifier: Classifier) -> list[dict[str, str]]:
    ece = metrics["ece"]
    return [
        {"label": "top-1 accuracy", "value": f"{100 * metrics['top1']:.1f}%"},
        {"label": f"top-{metrics['topk']} accuracy", "value": f"{100 * metrics['topk_accuracy']:.1f}%"},
        {"label": "macro F1", "value": f"{metrics['f1_macro']:.3f}"},
        {"label": "calibration error (ECE)", "value": f"{100 * ece:.1f}%"},
        {"label": f"{metrics['split']} images", "value": f"{metrics['n']:,}"},
        {"label": "classes", "value": str(len(classifier.classes))},
    ]


def _split_counts(classifier: Classifier) -> dict[str, dict[str, int]] | None:
    try:
        splits = discover_run(classifier.config.data)
    except (DatasetError, OSError) as err:
        log.warning("report: the run's dataset is not readable any more (%s); counts left out", err)
        return None
    return {name: splits.counts(name) for name in splits.splits}


def _wall_time(history: list[dict]) -> float | None:
    seconds = []
    for row in history:
        try:
            seconds.append(float(row.get("seconds", "nan")))
        except (TypeError, ValueError):
            pass
    return float(np.nansum(seconds)) if seconds else None


def _summary(classifier: Classifier, metrics: dict, history: list[dict],
             data: str | Path | None, counts: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    config, card = classifier.config, classifier.card
    monitor = card.monitor or {}
    wall = _wall_time(history)
    classes = classifier.classes
    shown = ", ".join(classes[:30]) + (f", … ({len(classes) - 30} more)" if len(classes) > 30 else "")
    rows = [
        ("evaluated", f"{metrics['split']} split of {data or config.data.path or 'the run data'}"),
        ("labels" if classifier.multilabel else "classes", f"{len(classes)}: {shown}"),
        ("images per split", _images_per_split(classifier, counts)),
        ("model", f"{config.model.name} ({'pretrained' if config.model.pretrained else 'from scratch'}), "
                  f"head {config.model.head}, input {classifier.preprocessing.image_size} px"),
        ("training", f"{_epochs_summary(history, config)}, "
                     f"{config.train.optimizer} lr {config.train.lr:g}, batch {config.data.batch_size}, "
                     f"freeze {config.model.freeze or 'none'}"),
        ("EMA / TTA", f"{'EMA of the weights (decay ' + format(config.train.ema_decay, 'g') + ')' if card.ema else 'no EMA'}"
                      f"; {'test-time augmentation: ' + classifier.tta if classifier.tta != 'none' else 'no TTA'}"),
        ("best checkpoint", f"epoch {monitor.get('best_epoch', card.epoch)}, "
                            f"{monitor.get('metric', config.train.monitor)} = "
                            f"{_fmt(monitor.get('best'))}"),
        ("training wall time", _duration(wall) + " (sum of epochs)" if wall is not None else "n/a"),
        ("model file", str(classifier.source)),
    ]
    hardware = hardware_summary(classifier.device)
    rows.append(("hardware (this report)", f"{hardware['accelerator']}; {hardware['cpu']}, "
                                           f"{hardware['cpu_cores']} cores; torch {hardware['torch']}, "
                                           f"Python {hardware['python']}"))
    return {"rows": rows, "counts": counts}


def _images_per_split(classifier: Classifier, counts: dict[str, dict[str, int]] | None) -> str:
    if not counts:
        return "dataset not readable any more"
    if classifier.multilabel:  # the counts are per label, and an image carries several: count the images
        try:
            splits = discover_run(classifier.config.data)
        except (DatasetError, OSError):
            return "dataset not readable any more"
        return ", ".join(f"{name} {len(samples):,}" for name, samples in splits.splits.items())
    return ", ".join(f"{name} {sum(c.values()):,}" for name, c in counts.items())


def _epochs_summary(history: list[dict], config) -> str:
    head = sum(row.get("phase") == "head" for row in history)
    if history and head == len(history) < config.train.epochs:
        return f"{head} head-only epochs, no fine-tuning (--finetune {config.train.finetune})"
    return f"{len(history)} of {config.train.epochs} epochs ({head} head-only)"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def _metric_rows(m: dict) -> list[tuple[str, str, str]]:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    return [
        ("top-1 accuracy", f(m["top1"]), "share of images whose most probable class is right"),
        (f"top-{m['topk']} accuracy", f(m["topk_accuracy"]), f"true class among the {m['topk']} most probable"),
        ("precision macro / weighted", f"{f(m['precision_macro'])} / {f(m['precision_weighted'])}",
         "macro: mean over classes; weighted: by class support"),
        ("recall macro / weighted", f"{f(m['recall_macro'])} / {f(m['recall_weighted'])}", ""),
        ("F1 macro / weighted", f"{f(m['f1_macro'])} / {f(m['f1_weighted'])}", ""),
        ("log loss", f(m["log_loss"]), "mean −log p(true class); lower is better"),
        ("ROC AUC (one-vs-rest, macro)", f(m["roc_auc_ovr"]), "ranking quality per class; 0.5 = chance"),
        ("MCC", f(m["mcc"]), "Matthews correlation; 1 perfect, 0 chance"),
        ("ECE (15 bins)", f(m["ece"]), "expected calibration error of the top-1 probability"),
        ("images", str(m["n"]), f"{len(m.get('skipped', []))} unreadable file(s) skipped"),
    ] + _tta_rows(m)


def _tta_rows(m: dict) -> list[tuple[str, str, str]]:
    """The same model without test-time augmentation, when the figures above use it."""
    plain = m.get("without_tta")
    if not plain:
        return []
    return [(f"without TTA ({m['tta']} above): top-1 / log loss / ECE",
             f"{plain['top1']:.4f} / {plain['log_loss']:.4f} / {plain['ece']:.4f}",
             "the same weights on the plain centre crop")]


def _per_class_rows(metrics: dict, counts: dict | None) -> list[dict[str, Any]]:
    cm = np.array(metrics["confusion_matrix"])
    names = [r["class"] for r in metrics["per_class"]]
    rows = []
    for i, row in enumerate(metrics["per_class"]):
        errors = cm[i].copy()
        errors[i] = 0
        worst = int(errors.argmax())
        confused = f"{names[worst]} ({errors[worst]})" if errors[worst] > 0 else ""
        rows.append({**row, "train": (counts or {}).get("train", {}).get(row["class"]), "confused": confused})
    return rows


def _best_worst(metrics: dict) -> dict[str, list[dict]]:
    by_name = {r["class"]: r for r in metrics["per_class"]}
    limit = max(1, min(5, len(by_name) // 2))  # with 2 classes: one best, one worst
    return {"best": [by_name[c] for c in metrics["best_classes"][:limit]],
            "worst": [by_name[c] for c in metrics["worst_classes"][:limit]]}


# --------------------------------------------------------------------------
# Images: confused pairs and the gallery
# --------------------------------------------------------------------------


def _thumbnail(path: Path, classifier: Classifier, size: int):
    try:
        return display_crop(load_rgb(path), classifier.preprocessing, size)
    except (ImageDecodeError, OSError):
        return None  # deleted or damaged since it was evaluated: leave it out


def _confused_pairs(classifier: Classifier, metrics: dict, predictions: Predictions,
                    samples: list[Sample]) -> list[dict[str, Any]]:
    index = {name: i for i, name in enumerate(classifier.classes)}
    predicted = predictions.probs.argmax(axis=1)
    pairs = []
    for pair in metrics["most_confused"][:CONFUSED_PAIRS]:
        t, p = index[pair["true"]], index[pair["pred"]]
        rows = np.flatnonzero((predictions.targets == t) & (predicted == p))
        rows = rows[np.argsort(-predictions.probs[rows, p], kind="stable")][:EXAMPLES_PER_PAIR]
        examples = []
        for r in rows:
            image = _thumbnail(samples[predictions.indices[r]].path, classifier, 112)
            if image is not None:
                examples.append({"uri": figures.image_uri(image), "prob": float(predictions.probs[r, p]),
                                 "name": samples[predictions.indices[r]].path.name})
        pairs.append({**pair, "examples": examples})
    return pairs


def _gallery(classifier: Classifier, predictions: Predictions, samples: list[Sample], size: int) -> dict:
    """The highest-loss images (every misclassified one comes first when they are few),
    each with a Grad-CAM overlay for the predicted class."""
    rows_all = np.arange(len(predictions.targets))
    p_true = predictions.probs[rows_all, predictions.targets]
    loss = -np.log(np.maximum(p_true, 1e-12))
    predicted = predictions.probs.argmax(axis=1)
    order = np.argsort(-loss, kind="stable")[:size]
    originals, chosen = [], []
    for r in order:
        try:
            originals.append(load_rgb(samples[predictions.indices[r]].path))
            chosen.append(int(r))
        except (ImageDecodeError, OSError):
            continue  # deleted or damaged since it was evaluated: leave it out
    # Grad-CAM sees the image as the model did (the eval transform of the original); the map
    # then lies over exactly the display crop, which has the same geometry.
    images = [display_crop(image, classifier.preprocessing, 160) for image in originals]
    cards = []
    if chosen:
        try:
            explainer = GradCamExplainer(classifier.torch_module, classifier.preprocessing, classifier.device)
            maps = explainer.heatmaps(originals, [int(predicted[r]) for r in chosen])
        except Exception as err:  # noqa: BLE001 - an exotic architecture must not cost the whole report
            log.warning("report: Grad-CAM unavailable for this model (%s)", err)
            maps = [None] * len(chosen)
        for r, image, heatmap in zip(chosen, images, maps):
            sample = samples[predictions.indices[r]]
            cards.append({
                "image": figures.image_uri(image),
                "cam": figures.image_uri(overlay(image, heatmap)) if heatmap is not None else None,
                "name": sample.path.name,
                "path": str(sample.path),
                "true": classifier.classes[predictions.targets[r]],
                "pred": classifier.classes[predicted[r]],
                "p_pred": float(predictions.probs[r, predicted[r]]),
                "p_true": float(p_true[r]),
                "loss": float(loss[r]),
                "correct": bool(predicted[r] == predictions.targets[r]),
            })
    return {"cards": cards, "misclassified": int((predicted != predictions.targets).sum()),
            "n": int(len(predictions.targets))}


# --------------------------------------------------------------------------
# Calibration and size
# --------------------------------------------------------------------------


def _calibration(classifier: Classifier, metrics: dict, predictions: Predictions, own_val: bool) -> dict[str, Any]:
    """Before/after temperature scaling on the fitting split (the run's val) and on this split
    (``own_val``: this split is that fitting set, so its "after" is optimistic)."""
    temperature = classifier.temperature
    split = calibration_summary(raw_logits(predictions, temperature), predictions.targets, temperature)
    fitted = classifier.card.calibration
    rows = []
    if fitted and not own_val:
        rows.append({"split": "val (fitting set)", **_calibration_row(fitted)})
    rows.append({"split": metrics["split"] + (" (fitting set)" if fitted and own_val else ""),
                 **_calibration_row(split)})
    return {
        "temperature": temperature,
        "fitted": bool(fitted),
        "rows": rows,
        "diagrams": [figures.reliability_diagram(split["bins_before"], "before (T = 1)"),
                     figures.reliability_diagram(split["bins_after"], f"after (T = {temperature:.2f})")],
    }


def _calibration_row(summary: dict) -> dict[str, Any]:
    return {key: summary[key] for key in ("n", "nll_before", "nll_after", "ece_before", "ece_after")}


def _size_rows(classifier: Classifier, state: TrainState | None, latency_budget_s: float) -> list[tuple[str, str]]:
    config = classifier.config
    # Trainable as at the saved epoch: the head alone during the head-only phase, else --freeze.
    freeze = "backbone" if classifier.card.phase == "head" else config.model.freeze or "none"
    size = model_size(classifier.torch_module, classifier.preprocessing.image_size, freeze, latency_budget_s,
                      model_file=classifier.source, optimizer_state=state.optimizer if state else None)
    params, opt, lat = size["parameters"], size["optimizer_state"], size["latency"]
    count = figures.nice_count
    rows = [
        ("parameters", f"{count(params['total'])} ({params['total']:,})"),
        ("trainable / frozen", f"{count(params['trainable'])} / {count(params['frozen'])} (freeze: {freeze})"),
        ("optimiser state", f"{count(opt['numel'])} numbers, {opt['mb']:.1f} MB ({config.train.optimizer})"),
        ("weights on disk", f"{size['weights_mb']:.1f} MB (float32 weights and buffers)"),
        ("model file", f"{size['checkpoint_mb']:.1f} MB (weights and model card, safetensors)"
         if size["checkpoint_mb"] is not None else "n/a"),
        ("FLOPs per image", f"{count(size['flops_per_image'])}FLOPs at {size['image_size']} px "
                            "(a multiply-add counts 2)"),
    ]
    if lat:
        rows += [
            ("latency, 1 image", f"{lat['batch1_ms_median']:.1f} ms median, {lat['batch1_ms_p90']:.1f} ms p90 "
                                 f"({lat['runs']} runs on {lat['device']}, {lat['threads']} threads)"),
            ("throughput", f"{lat['throughput_images_s']:.0f} images/s at batch {lat['throughput_batch']}"),
        ]
    return rows
