"""The Python API, mirroring the CLI: ``imgcls.train``, ``imgcls.load``."""

from __future__ import annotations

from pathlib import Path

from imgcls.config import RunConfig
from imgcls.deploy.predict import Classifier
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
    if resume is not None:
        config = Path(resume) / "config.yaml" if Path(resume).is_dir() else config
    result = _train_loop(make_config(data, config, **options), resume=resume)
    if evaluate:
        classifier = Classifier.load(result.best_checkpoint)
        for split in ("val", "test"):
            if split in result.splits:
                result.metrics[split] = classifier.evaluate(None, split=split)
                log.info("%s: top-1 %.4f  macro-F1 %.4f  (%s)", split, result.metrics[split]["top1"],
                         result.metrics[split]["f1_macro"], result.metrics[split]["files"]["json"])
    return result


def load(path: str | Path, device: str = "auto") -> Classifier:
    """Load a checkpoint file or run folder (its best.pt) for prediction and evaluation."""
    return Classifier.load(path, device)
