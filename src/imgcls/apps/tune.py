"""``imgcls tune DATA --trials N``: hyperparameter search with Optuna.

Optuna's TPE sampler proposes each trial's settings from :data:`DEFAULT_SPACE`
(:data:`MULTILABEL_SPACE` for multilabel data; or a YAML file with the same structure);
the median pruner stops trials whose monitored val metric falls below the median of
earlier trials at the same fine-tuning epoch (head epochs on cached features are not
judged: their val says little about where fine-tuning ends). Every trial is an ordinary
run (``<study>/trial-NNN/``) that the leaderboard lists. The study lives in Optuna's own
SQLite storage (``<study>/study.db``): a search that was interrupted continues where it
stopped, and the trial that was running when it stopped is run again with its settings.
A new study's first trial trains the configuration as given (the baseline the search has to
beat). The best trial's configuration is written as ``<study>/best.yaml``, a recipe that
``imgcls train DATA --recipe <study>/best.yaml`` accepts.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import yaml

from imgcls import api
from imgcls.config import MULTILABEL, ConfigError, RunConfig
from imgcls.data.sources import discover_run
from imgcls.runtime import log, require
from imgcls.training.losses import check_task_options

# Optuna is the 'tune' extra: imported when a search starts (_require_optuna), not with the CLI.
optuna = TrialState = None

STUDY_FILE = "study.db"
BASELINE = "baseline"  # user attribute of the trial that trains the configuration as given
BEST_RECIPE = "best.yaml"

# Each entry: a config key and how to sample it. "float": uniform (or log-uniform) in
# [low, high]; "categorical": one of choices. Image size is given relative to the run's
# own size ("scale"), so the same space works at 64 px and at 224 px.
# The rates' upper bounds: AdamW above 1e-2 (head) or 1e-3 (a pretrained backbone) diverged or
# ended far behind the defaults in every such trial on cifar10-small at 64 px (lr 0.0085,
# 0.020, 0.026: val top-1 0.50, 0.38, 0.38 against the best sampled 0.57;
# benchmarks/results/practitioner-tune-before.md), so a dozen trials are not spent there.
DEFAULT_SPACE: dict[str, dict] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "train.backbone_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "train.mixup": {"type": "categorical", "choices": [0.0, 0.2, 0.4]},
    "model.head": {"type": "categorical", "choices": ["linear", "mlp:512"]},
    "model.freeze": {"type": "categorical", "choices": ["none", "half", "all-but-last:2"]},
    "data.augment": {"type": "categorical", "choices": ["default", "color", "randaugment", "trivialaugment"]},
    "data.image_size": {"type": "scale", "choices": [0.75, 1.0]},
}


# Multilabel runs train with BCE or ASL: MixUp is refused and label smoothing does not apply,
# so those two dimensions give way to the choice of loss.
MULTILABEL_SPACE: dict[str, dict] = {
    **{key: value for key, value in DEFAULT_SPACE.items() if key not in ("train.mixup", "train.label_smoothing")},
    "train.loss": {"type": "categorical", "choices": ["bce", "asl"]},
}


def default_space(task: str) -> dict[str, dict]:
    """The search space used when no ``--space`` file is given, for a resolved task."""
    return dict(MULTILABEL_SPACE if task == MULTILABEL else DEFAULT_SPACE)


@dataclass
class TuneResult:
    folder: Path
    best_value: float
    best_params: dict
    best_recipe: Path
    trials: int  # finished trials in the study (complete or pruned)
    monitor: str  # the val metric the study optimised (val_map for multilabel data by default)
    best_is_baseline: bool = False  # no trial beat the configuration as given


def _require_optuna():
    global optuna, TrialState
    optuna = require("optuna", "tune", "imgcls tune")
    TrialState = optuna.trial.TrialState


def load_space(path: str | Path | None) -> dict[str, dict] | None:
    """The search space of a YAML mapping of config keys to ``{type, low, high, log}`` /
    ``{type: categorical, choices}`` entries; None without a file (the task's default space,
    :func:`default_space`, once the data is read)."""
    if path is None:
        return None
    try:
        space = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--space {path}: cannot read ({err})") from None
    if not isinstance(space, dict) or not all(isinstance(v, dict) and "type" in v for v in space.values()):
        raise ConfigError(f"--space {path}: expected a mapping of config keys to {{type: ..., ...}} entries")
    check_space(space)
    return space


def check_space(space: dict[str, dict]) -> None:
    """Every key a config option and every bound a valid value of it, before any trial runs."""
    for key, spec in space.items():
        kind = spec.get("type")
        if kind in ("float", "int"):
            values = [spec.get("low"), spec.get("high")]
        elif kind == "categorical":
            values = list(spec.get("choices") or [None])
        elif kind == "scale" and key == "data.image_size":
            continue
        else:
            raise ConfigError(f"search space: {key}: unknown type {kind!r} (float, int, categorical, scale)")
        for value in values:
            RunConfig().with_overrides({key: value})


def sample(trial, space: dict[str, dict], base: RunConfig) -> dict:
    """Config overrides for one trial (dotted keys), drawn from ``space``."""
    overrides = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            overrides[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "int":
            overrides[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
        elif kind == "categorical":
            overrides[key] = trial.suggest_categorical(key, spec["choices"])
        elif kind == "scale" and key == "data.image_size":
            factor = trial.suggest_categorical(key, spec["choices"])
            overrides[key] = max(16, int(round(_base_size(base) * factor / 8)) * 8)
        else:
            raise ConfigError(f"search space: {key}: unknown type {kind!r} (float, int, categorical, scale)")
    return overrides


def _base_size(base: RunConfig) -> int:
    """The run's image size: its own, else the backbone's pretrained one (timm's config)."""
    if base.data.image_size:
        return base.data.image_size
    try:
        return int(timm.get_pretrained_cfg(base.model.name).input_size[-1])
    except (AttributeError, RuntimeError, ValueError):  # not a timm name (cnn:...) or no pretrained config
        return 224


def tune(base: RunConfig, trials: int, space: dict[str, dict] | None = None, time_limit: float | None = None,
         name: str | None = None) -> TuneResult:
    """Run (or continue) the study in ``<out_dir>/<name>`` until it holds ``trials``
    finished trials or ``time_limit`` minutes have passed; returns the best trial."""
    _require_optuna()
    base = _with_task(base)
    space = space or default_space(base.data.task)
    check_space(space)
    folder = Path(base.out_dir) / (name or base.name or f"tune-{base.model.name.replace(':', '-')}")
    folder.mkdir(parents=True, exist_ok=True)
    maximize = "loss" not in base.train.monitor
    study = optuna.create_study(
        study_name=folder.name, storage=f"sqlite:///{folder / STUDY_FILE}", load_if_exists=True,
        direction="maximize" if maximize else "minimize",
        # The pruner judges fine-tuning epochs only (step = fine-tuning epoch), from the
        # second on: on cifar10-small every trial pruned by its head epochs' val top-1 was
        # cut before the phase that decides (head val 0.54 -> 0.67 after fine-tuning for
        # the defaults), and the first fine-tuning epoch dips (0.30 -> 0.63 for another).
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    # Seeded by the trials already in the study: a resumed search reseeded with the run's
    # seed alone proposed the first search's trials again (measured: trials 8-11 of a
    # resumed 12-trial study repeated trials 1-4), so a rerun stays reproducible without
    # repeating itself.
    study.sampler = optuna.samplers.TPESampler(seed=base.train.seed + len(study.trials))
    if not study.trials:
        study.enqueue_trial(baseline_params(space, base), user_attrs={BASELINE: True})
        log.info("tune: trial 1 trains the configuration as given, the baseline the search has to beat")
    _retry_interrupted(study)
    remaining = trials - len(_finished(study))
    log.info("tune: %s holds %d finished trial(s); %d to run", folder / STUDY_FILE, trials - remaining,
             max(remaining, 0))
    if remaining > 0:
        objective = _objective(base, space, folder)
        study.optimize(objective, n_trials=remaining, timeout=time_limit * 60 if time_limit else None,
                       catch=(ConfigError,))
    return _finish(study, base, space, folder)


def baseline_params(space: dict[str, dict], base: RunConfig) -> dict:
    """The space's values of the configuration as given, for the study's first trial, which
    trains ``base`` unchanged: the search's best is then never worse on val than not
    searching (with a dozen trials TPE is still sampling at random). A value the space
    cannot express (one the plan chooses, such as an unset ``backbone_lr``) is left out."""
    params = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "scale":
            if 1.0 in spec["choices"]:
                params[key] = 1.0
            continue
        value = base.value(key)
        if kind == "categorical" and value in spec["choices"]:
            params[key] = value
        elif kind in ("float", "int") and value is not None and spec["low"] <= value <= spec["high"]:
            params[key] = value
    return params


def _overrides(trial, space: dict[str, dict], base: RunConfig) -> dict:
    """A trial's config overrides: none for the baseline trial (its values are suggested
    only so the sampler knows them), else drawn from ``space``."""
    if trial.user_attrs.get(BASELINE):
        sample(trial, {key: space[key] for key in baseline_params(space, base)}, base)
        return {}
    return sample(trial, space, base)


def _with_task(base: RunConfig) -> RunConfig:
    """A copy of ``base`` with the data's task resolved and its options checked, so that
    the study optimises the metric every trial monitors (the default ``val_acc`` becomes
    ``val_map`` on multilabel data) and an option the task refuses stops the search before
    its first trial. Raises ConfigError or DatasetError (one line)."""
    resolved = RunConfig.from_dict(base.to_dict())
    resolved.data.task = discover_run(resolved.data).task
    check_task_options(resolved)
    return resolved


def _finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _retry_interrupted(study) -> None:
    """A trial left running by an interrupted search failed; its settings run again next."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={**trial.user_attrs, "retry_of": trial.number + 1})
        log.info("tune: trial %d was interrupted; its settings run again", trial.number + 1)


def _objective(base: RunConfig, space: dict, folder: Path):
    monitor = base.train.monitor

    def objective(trial) -> float:
        overrides = _overrides(trial, space, base)
        config = base.with_overrides({**overrides, "name": f"trial-{trial.number + 1:03d}", "out_dir": str(folder)})
        pruned: list[int] = []
        judged: list[int] = []  # the epochs reported to the pruner

        def report(trainer, row) -> None:
            value = row.get(monitor)
            if row.get("phase") == "head" or value is None or not math.isfinite(value):
                return
            judged.append(row["epoch"])
            trial.report(value, step=len(judged))
            if trial.should_prune():
                pruned.append(row["epoch"])
                trainer.stop_requested = True

        started = time.perf_counter()
        result = api.train(config=config, evaluate=False, callbacks=[report])
        values = [row[monitor] for row in result.history if math.isfinite(row.get(monitor, float("nan")))]
        trial.set_user_attr("run", str(result.run_dir))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        if not values:
            raise optuna.TrialPruned("no finite value of the monitored metric")
        return max(values) if "loss" not in monitor else min(values)

    return objective


def _finish(study, base: RunConfig, space: dict, folder: Path) -> TuneResult:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"{folder}: no trial finished, so there is no best configuration yet")
    best = study.best_trial
    overrides = {} if best.user_attrs.get(BASELINE) else sample(optuna.trial.FixedTrial(best.params), space, base)
    recipe = base.with_overrides({**overrides, "name": None, "out_dir": base.out_dir})
    recipe.save(folder / BEST_RECIPE)
    (folder / "tune.json").write_text(json.dumps({
        "best_trial": best.number + 1, "best_value": best.value, "monitor": base.train.monitor,
        "best_params": best.params, "best_run": best.user_attrs.get("run"),
        "best_is_baseline": bool(best.user_attrs.get(BASELINE)),
        "trials": [{"trial": t.number + 1, "state": t.state.name, "value": t.value, "params": t.params,
                    "baseline": bool(t.user_attrs.get(BASELINE)), "run": t.user_attrs.get("run")}
                   for t in study.get_trials(deepcopy=False)],
    }, indent=2, default=str) + "\n")
    return TuneResult(folder, best.value, best.params, folder / BEST_RECIPE, len(_finished(study)),
                      base.train.monitor, bool(best.user_attrs.get(BASELINE)))
