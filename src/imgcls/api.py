"""The Python API, mirroring the CLI: ``imgcls.train``, ``imgcls.load``."""

from __future__ import annotations

import os
from pathlib import Path

from imgcls.config import RunConfig
from imgcls.deploy.predict import Classifier
from imgcls.evaluation import openset
from imgcls.evaluation.calibration import calibrate_classifier
from imgcls.runtime import log
from imgcls.training.loop import TrainResult
from imgcls.training.loop import train as _train_loop


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
          resume: str | Path | None = None, evaluate: bool = True, **options) -> TrainResult:
    """Train on ``data``; with ``resume=RUN_DIR`` continue that run (options may extend it,
    e.g. ``epochs=10``). The best checkpoint is evaluated on val (and test) at the end."""
    if resume is not None and config is None:
        run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        config = run_dir / "config.yaml"
    run_config = make_config(data, config, **options)
    openset.check_config(run_config)
    result = _train_loop(run_config, resume=resume)
    if not evaluate and int(os.environ.get("RANK", "0")) == 0 and run_config.train.unknown_threshold is not None:
        openset.fit_unknown_threshold(Classifier.load(result.best_checkpoint), run_config)
    if evaluate and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 evaluates alone
        classifier = Classifier.load(result.best_checkpoint)
        _reuse_val_predictions(classifier, result)
        calibrate_classifier(classifier)  # temperature scaling on val, stored in best.pt
        openset.fit_unknown_threshold(classifier, run_config)  # --unknown-threshold: after T, on the same scores
        splits = [split for split in ("val", "test") if split in result.splits]
        for split in splits:
            # The report covers the split `imgcls eval` defaults to: test when there is one.
            report = result.run_dir / "report.html" if split == splits[-1] and run_config.train.report else False
            result.metrics[split] = classifier.evaluate(None, split=split, report=report)
            log.info("%s: top-1 %.4f  macro-F1 %.4f  (%s)", split, result.metrics[split]["top1"],
                     result.metrics[split]["f1_macro"], result.metrics[split]["files"]["json"])
    return result


def _reuse_val_predictions(classifier: Classifier, result: TrainResult) -> None:
    """Hand the best epoch's val predictions to the evaluation that follows, when they cover
    exactly the split it will read (same files, same order, every image decoded)."""
    from imgcls.data.sources import DatasetError
    from imgcls.evaluation.evaluate import load_split

    best = result.best_val
    if best is None or best.logits is None or len(best.indices) != len(result.val_paths):
        return
    try:
        _, samples = load_split(None, classifier.config, "val")
    except (DatasetError, OSError):
        return
    if [str(s.path) for s in samples] == [str(p) for p in result.val_paths]:
        classifier.remember(samples, best)


def load(path: str | Path, device: str = "auto") -> Classifier:
    """Load a checkpoint file, run folder (its best.pt) or exported ``.onnx`` file for
    prediction and evaluation (an ONNX file runs on ONNX Runtime, with the same interface)."""
    if str(path).lower().endswith(".onnx"):
        from imgcls.deploy.onnx_model import OnnxClassifier

        return OnnxClassifier.load(path, device)
    return Classifier.load(path, device)
