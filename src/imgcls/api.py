"""The Python API, mirroring the CLI: ``imgcls.train``, ``imgcls.load``, ``imgcls.evaluate``.

This is where the jobs are put together: training, then the values fitted on the
validation split (temperature, unknown threshold), which are computed by evaluation code,
returned, and stored in the model card here, in one place; then evaluation and the report.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgcls.config import RunConfig
from imgcls.data.sources import DatasetError, sample_targets
from imgcls.evaluation.calibration import fit_calibration
from imgcls.evaluation.evaluate import Evaluation, evaluate as evaluate_set, load_split
from imgcls.evaluation.openset import check_config as check_openset_config
from imgcls.evaluation.openset import fit_unknown_setting
from imgcls.evaluation.notebook import show_confusion, show_predictions, show_samples
from imgcls.evaluation.report import write_report
from imgcls.evaluation.thresholds import fit_thresholds
from imgcls.inference import artifact
from imgcls.inference.classifier import Classifier
from imgcls.inference.loading import load
from imgcls.inference.predictions import Predictions, at_temperature
from imgcls.options import EvalCommand, ReportCommand
from imgcls.runtime import log
from imgcls.training.loop import TrainResult
from imgcls.training.loop import train as _train_loop
from imgcls.training.tracking import make_tracker

__all__ = ["evaluate", "load", "make_config", "report", "show_confusion", "show_predictions", "show_samples",
           "train"]


def make_config(data: str | Path | None = None, config: RunConfig | str | Path | None = None,
                **options) -> RunConfig:
    """Defaults < ``config`` (a RunConfig or YAML file) < keyword options (``lr=...``,
    ``model="resnet18"``, or dotted ``"train.lr"``)."""
    base = RunConfig.load(config) if isinstance(config, (str, Path)) else (config or RunConfig())
    if data is not None:
        options["data.path"] = str(data)
    if "model" in options and isinstance(options["model"], str):
        options["model.name"] = options.pop("model")
    return base.with_overrides(options)


def train(data: str | Path | None = None, *, config: RunConfig | str | Path | None = None,
          resume: str | Path | None = None, evaluate: bool = True, callbacks=(), **options) -> TrainResult:
    """Train on ``data``; with ``resume=RUN_DIR`` continue that run (options may extend it,
    e.g. ``epochs=10``; see ``docs/usage.md`` for what may change on resume).

    After training, the temperature (and, if asked, the unknown threshold) is fitted on val
    and stored in ``best.safetensors``; with ``evaluate`` the best model is then evaluated on
    val (and test), writing ``eval-<split>/`` and ``report.html``. ``callbacks``: functions
    ``(trainer, epoch_row)`` called after every epoch.
    """
    if resume is not None and config is None:
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        config = run_dir / "config.yaml"
    run_config = make_config(data, config, **options)
    check_openset_config(run_config)
    tracker = make_tracker(run_config, resume)  # --track mlflow: training/tracking.py
    try:
        result = _train_loop(run_config, resume=resume, callbacks=[*callbacks, *([tracker] if tracker else [])])
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 finishes alone
        return result
    classifier = load(result.best_checkpoint)
    plain_val = _reusable_val_predictions(classifier, result)
    classifier, raw_val = fit_on_validation(classifier, plain_val)
    if evaluate:
        splits = [split for split in ("val", "test") if split in result.splits]
        for split in splits:
            # The report covers the split `imgcls eval` defaults to: test when there is one.
            with_report = split == splits[-1] and run_config.train.report
            val = split == "val"
            evaluation = evaluate_set(classifier, None, split, raw=raw_val if val else None,
                                      plain_raw=plain_val if val else None)
            if with_report:
                evaluation.metrics["files"]["report"] = str(write_report(classifier, evaluation,
                                                                         result.run_dir / "report.html"))
            result.metrics[split] = evaluation.metrics
            if classifier.multilabel:
                log.info("%s: mAP %.4f  samples-F1 %.4f  micro-F1 %.4f  (%s)", split, evaluation.metrics["map_macro"],
                         evaluation.metrics["f1_samples"], evaluation.metrics["f1_micro"],
                         evaluation.metrics["files"]["json"])
                continue
            log.info("%s: top-1 %.4f  macro-F1 %.4f  (%s)", split, evaluation.metrics["top1"],
                     evaluation.metrics["f1_macro"], evaluation.metrics["files"]["json"])
    if tracker is not None:
        tracker.finish(result)
    return result


def _reusable_val_predictions(classifier: Classifier, result: TrainResult) -> Predictions | None:
    """The best epoch's val predictions when they cover exactly the split the fitting and the
    evaluation read (same files, same order, every image decoded): the model does not change
    in between, so it need not run over the same images again."""
    best = result.best_val
    if best is None or best.logits is None or len(best.indices) != len(result.val_paths):
        return None
    try:
        _, samples = load_split(None, classifier.config, "val")
    except (DatasetError, OSError):
        return None
    return best if [str(s.path) for s in samples] == [str(p) for p in result.val_paths] else None


def fit_on_validation(classifier: Classifier, plain_val: Predictions | None = None, batch_size: int = 64,
                      workers: int | None = None) -> tuple[Classifier, Predictions | None]:
    """Fit the temperature, then the unknown rule the run asks for, on the run's val split,
    through the test-time augmentation the run asks for; store them and the TTA mode in the
    model file's card (the one place fitted values are applied) and return the updated
    classifier and its temperature-1 val predictions (None when the run's val images
    cannot be read any more: the stored values are then kept). A multilabel model gets its
    decision thresholds instead (:func:`imgcls.evaluation.thresholds.fit_thresholds`).

    ``plain_val``: val predictions of the model without TTA at temperature 1, if at hand.
    """
    tta = classifier.config.train.tta
    classifier = classifier.with_tta(tta)
    raw_val = plain_val if tta == "none" else None  # plain logits cannot stand in for TTA ones
    try:
        _, samples = load_split(None, classifier.config, "val")
    except (DatasetError, OSError) as err:
        log.warning("temperature scaling skipped: the run's validation split is not readable (%s)", err)
        return classifier, None
    if raw_val is None:
        raw_val = classifier.predictions([s.path for s in samples], sample_targets(samples, classifier.classes),
                                         batch_size, workers, temperature=1.0)
    if classifier.multilabel:  # temperature scaling and the open-set rule are single-label ideas
        return _store_fitted(classifier, thresholds=fit_thresholds(raw_val, classifier.classes), tta=tta), raw_val
    calibration = fit_calibration(raw_val)
    temperature = calibration["temperature"]
    unknown = fit_unknown_setting(classifier.config.train, at_temperature(raw_val, temperature), temperature)
    return _store_fitted(classifier, temperature=temperature, calibration=calibration, unknown=unknown,
                         tta=tta), raw_val


def _store_fitted(classifier: Classifier, **changes) -> Classifier:
    """The classifier with ``changes`` applied to its card, stored in its model file."""
    try:
        card = artifact.update_card(classifier.source, **changes)
    except OSError as err:  # a read-only model file still gets a report; the values are used in memory
        log.warning("%s: cannot store the fitted values (%s); they are used for this run only", classifier.source, err)
        card = classifier.card.replace(**changes)
    return classifier.with_card(card)


def evaluate(model: Classifier | str | Path, data: str | Path | None = None, split: str | None = None,
             out_dir: str | Path | None = None, batch_size: int = EvalCommand.batch_size, workers: int | None = None,
             report: bool | str | Path = False, unknown: str | Path | None = None,
             device: str = EvalCommand.device, tta: str | None = None) -> dict:
    """Full metrics of ``model`` (a classifier or a path for :func:`load`) on one evaluation
    set; writes ``eval.json`` and CSVs (see :mod:`imgcls.evaluation.evaluate` for which set
    and where). ``report``: also write the HTML report (True: ``report.html`` beside
    eval.json, or this path); a model whose temperature was never fitted is first
    calibrated on its run's val split. Returns the metrics (``files`` lists what was written).
    """
    classifier = model if isinstance(model, Classifier) else load(model, device=device)
    if tta is not None:
        classifier = classifier.with_tta(tta)
    if classifier.backend.name != "pytorch":
        report = False  # Grad-CAM and the size table need the PyTorch network
    fitted = classifier.card.thresholds if classifier.multilabel else classifier.card.calibration
    if report and fitted is None and classifier.run_dir is not None:
        classifier, _ = fit_on_validation(classifier, batch_size=batch_size, workers=workers)
    evaluation: Evaluation = evaluate_set(classifier, data, split, out_dir, batch_size, workers, unknown)
    if report:
        target = Path(evaluation.metrics["files"]["json"]).parent / "report.html" if report is True else Path(report)
        evaluation.metrics["files"]["report"] = str(write_report(classifier, evaluation, target))
    return evaluation.metrics


def report(path: str | Path, data: str | Path | None = None, split: str | None = None,
           out: str | Path | None = None, device: str = ReportCommand.device,
           batch_size: int = ReportCommand.batch_size, workers: int | None = None) -> dict:
    """``imgcls report``: evaluate ``split`` and write the report (default ``<run>/report.html``)."""
    classifier = load(path, device)
    target = Path(out) if out else (classifier.run_dir or Path.cwd()) / "report.html"
    return evaluate(classifier, data, split, batch_size=batch_size, workers=workers, report=target)
