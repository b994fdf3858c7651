"""The training loop: read top to bottom, it is the whole of ``imgcls train``.

Reproducibility contract: data order, augmentation and dropout depend only on
(seed, epoch, sample), so a run stopped after epoch k and resumed from ``last.pt`` ends
with the same weights (on CPU) as one that never stopped.

Under ``torchrun`` every process runs this same loop on its shard of the data (PyTorch
DDP); ``--batch-size`` stays the global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from timm.utils import ModelEmaV3
from torch import nn

from imgcls.config import RunConfig
from imgcls.data.balance import balance_train_split
from imgcls.data.cached_dataset import make_dataset
from imgcls.data.hierarchy import attach_hierarchy
from imgcls.data.loaders import DeviceLoader, default_workers, make_loader
from imgcls.data.sources import DatasetSplits, discover_run
from imgcls.data.transforms import Preprocessing
from imgcls.data.shards import ShardSamples
from imgcls.data.validate import UNUSED_FILE, check_trainable, describe, write_unused
from imgcls.data.wds import ShardStream, check_stream_config, stream_loader
from imgcls.inference import artifact
from imgcls.inference.card import ModelCard
from imgcls.inference.predictions import Predictions, predict_loader
from imgcls.metrics.classification import topk_accuracy
from imgcls.metrics.hierarchy import hierarchy_epoch_metrics
from imgcls.metrics.multilabel import mean_average_precision, samples_f1
from imgcls.models.backbones import starts_pretrained
from imgcls.models.classifier import apply_freeze, build_model, parameter_counts, train_mode
from imgcls.runtime import (amp_dtype, autocast, available_memory, configure_cuda, configure_logging, log,
                            memory_format_for, progress, select_device, seed_everything)
from imgcls.training import distributed
from imgcls.training.callbacks import Monitor
from imgcls.training.distributed import DistContext
from imgcls.training.cutcache import CutCache, make_cut_cache, train_cut_epoch, view_bytes
from imgcls.training.budget import (INFERENCE_SPEEDUP, Budget, PhasePlan, evaluation_reserve, measure_step_seconds,
                                    phase_epochs)
from imgcls.training.features import (FeatureSet, extract_feature_set, head_fit, predict_val, train_head_epoch,
                                      usable_rows)
from imgcls.training.lr_finder import RangeTest, make_step, range_test
from imgcls.training.logs import BadFileLog, MetricsLog
from imgcls.training.losses import build_criterion, check_task_options, plain_loss
from imgcls.training.mixing import build_mixer
from imgcls.training.optim import create_optimizer, create_scheduler, plan_schedule
from imgcls.training.plan import (PLAN_FILE, Measurements, PlanRecord, asked_options, choose_plan, describe_plan,
                                  read_plan,
                                  reconcile_resumed, with_asked)
from imgcls.training.probe import measure_dataset, probe_images
from imgcls.training.resume import ResumePoint, check_resume_config, check_same_classes, read_resume_point
from imgcls.training.rundir import open_run_dir
from imgcls.training.state import STATE_FILE, TrainState, save_state
from imgcls.training.stats import EpochStats


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    splits: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # full metrics of the best model per split
    # The best epoch's val predictions (one process): evaluation after training reuses them
    # instead of running the same model over the same images again.
    best_val: Predictions | None = None
    val_paths: list[Path] = field(default_factory=list)


@dataclass
class Trainer:
    """The objects one epoch needs; built once by :func:`train`."""

    config: RunConfig
    data: DatasetSplits
    model: nn.Module
    preprocessing: Preprocessing
    loaders: dict
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: torch.dtype | None
    criterion: nn.Module
    bad_files: BadFileLog
    ctx: DistContext = field(default_factory=DistContext)
    net: nn.Module | None = None  # what training calls: the model, DDP-wrapped and/or compiled
    features: FeatureSet | None = None  # cached backbone features while the backbone is frozen
    head_fit: float | None = None  # the head's clean train top-1 after the head phase (--finetune auto)
    mixer: Callable | None = None  # MixUp/CutMix: (images, targets) -> (mixed images, soft targets)
    schedule: list[int] = field(default_factory=list)  # epochs of each LR segment (optim.plan_schedule)
    ema: ModelEmaV3 | None = None  # --ema: the averaged weights that validation and best.safetensors use
    budget: Budget | None = None  # --time-limit: plans each phase's epochs from the measured step time
    plan: PlanRecord | None = None  # the training plan, its measurements and the options as asked (plan.json)
    cut: CutCache | None = None  # --cut-cache: the frozen blocks' activations while partial fine-tuning
    step: int = 0
    stop_requested: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format_for(self.device, self.config.train.channels_last)

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and saved as the best: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model


EpochCallback = Callable[[Trainer, dict], None]


def train(config: RunConfig, resume: str | Path | None = None, callbacks: list[EpochCallback] = ()) -> TrainResult:
    """Train a run (or continue it: ``resume`` is its folder) and return where it went.

    Everything that can be refused is checked before the run folder is created or touched:
    the options, the dataset's layout and, on resume, that the data has the run's classes
    and that only :data:`imgcls.training.resume.CHANGEABLE_ON_RESUME` settings changed.
    """
    ctx, cuda_device = distributed.init_distributed(config.train.device)
    resumed = read_resume_point(resume) if resume is not None else None
    if resumed is not None:
        config = check_resume_config(resumed.config, reconcile_resumed(config, resumed.config, resumed.run_dir),
                                     resumed.state.epoch)
    data = _discover(config)
    if resumed is not None:
        check_same_classes(resumed.card.classes, data.classes, config.data.path or "the run's dataset")
    auto_lr = config.train.lr == "auto"
    if auto_lr:
        config.train.lr = DEFAULT_LR  # a stand-in until the range test has run on the built model
    plan = _start_plan(config, data, resumed)
    run_dir = _open(config, resumed, ctx)
    trainer = _build(config, data, run_dir, resumed, ctx, cuda_device)
    trainer.plan = _write_plan(plan, run_dir, ctx)
    if auto_lr:
        _auto_lr(trainer, run_dir)
    monitor = Monitor(config.train.monitor, config.train.early_stopping)
    metrics_log = MetricsLog(run_dir) if ctx.is_main else None
    start_epoch, history, phase, best_val = 0, [], None, None
    if resumed is not None:
        start_epoch, history = _restore(trainer, monitor, resumed)
        if metrics_log:
            metrics_log.truncate(start_epoch)
        log.info("resumed %s after epoch %d of %d", run_dir, start_epoch, config.train.epochs)

    epoch = start_epoch - 1
    while (epoch := epoch + 1) < config.train.epochs:  # --time-limit may re-plan the epochs
        if epoch == head_epochs(config) and (reason := _plan_finetune(trainer, history, run_dir)):
            log.info("no fine-tuning: %s", reason)
            break
        phase, previous = _set_phase(trainer, epoch), phase
        if phase != previous:
            _wrap(trainer)  # DDP must know which parameters train in this phase
            if trainer.budget is not None and (reason := _plan_phase(trainer, epoch, phase, run_dir)):
                log.info("no fine-tuning: %s", reason)
                break
        seed_everything(config.train.seed * 1000 + epoch)
        started = time.perf_counter()
        train_stats, val = _run_epoch(trainer, epoch)
        row = _epoch_row(trainer, epoch, phase, train_stats, val, time.perf_counter() - started)
        improved = monitor.update(row)
        if trainer.scheduler is not None and config.train.scheduler == "plateau":
            trainer.scheduler.step(epoch + 1, row[config.train.monitor])
        history.append(row)
        if ctx.is_main:
            metrics_log.write(row)
            _log_epoch(row, improved)
            _save(trainer, monitor, history, run_dir, epoch + 1, phase, improved)
            if improved:
                best_val = val if not ctx.enabled else None
        for callback in callbacks:
            callback(trainer, row)
        if monitor.should_stop:
            log.info("early stopping: %s has not improved for %d epochs", monitor.metric, monitor.stale_epochs)
            break
        if trainer.stop_requested:
            break
    if metrics_log:
        metrics_log.close()
    distributed.shutdown()
    best = run_dir / artifact.BEST if (run_dir / artifact.BEST).exists() else run_dir / artifact.LAST
    return TrainResult(run_dir=run_dir, best_checkpoint=best, splits=list(trainer.data.splits), history=history,
                       best_val=best_val, val_paths=[s.path for s in trainer.data.splits.get("val", [])])


def _plan_phase(trainer: Trainer, epoch: int, phase: str, run_dir: Path) -> str | None:
    """``--time-limit``: give this phase as many epochs as fit in the budget, from a measured
    step (see :mod:`imgcls.training.budget`); returns why the run stops when none fit."""
    cfg = trainer.config.train
    if phase == "head" and _features_apply(trainer):
        return None  # head epochs on cached features cost milliseconds; the extraction is paid once
    loader = trainer.loaders["train"]
    seconds = _measure_step(trainer)
    per_image = seconds / loader.batch_size / INFERENCE_SPEEDUP
    epoch_s = len(loader) * seconds + len(trainer.loaders["val"].dataset) * per_image
    evaluated = sum(len(trainer.data.splits.get(split, [])) for split in ("val", "test"))
    reserve = evaluation_reserve(seconds, loader.batch_size, evaluated)
    asked = cfg.epochs - epoch
    remaining = trainer.budget.remaining_s
    planned = phase_epochs(remaining, epoch_s, reserve, asked, at_least=0 if epoch > 0 else 1)
    trainer.budget.plans.append(PhasePlan(phase, seconds, len(loader), epoch_s, remaining, reserve, asked, planned))
    log.info("time budget: %.0f s left; a %s epoch takes ~%.0f s (%d steps x %.2f s + val), %.0f s kept for the "
             "evaluation: %d epoch(s) planned (of %d)", remaining, phase, epoch_s, len(loader), seconds, reserve,
             planned, asked)
    if trainer.ctx.is_main:
        (run_dir / "budget.json").write_text(json.dumps(trainer.budget.to_dict(), indent=2) + "\n")
    if planned == 0:
        return f"the time budget leaves no room for an epoch of {phase} (~{epoch_s:.0f} s; {remaining:.0f} s left)"
    if planned != asked:
        cfg.epochs = epoch + planned
        _replan_schedule(trainer)
        if trainer.ctx.is_main:
            trainer.config.save(run_dir / "config.yaml")  # the epochs that are applied
    return None


def _measure_step(trainer: Trainer) -> float:
    """Seconds of one training step of the current phase, on a real batch (see budget.py)."""
    batch = DeviceLoader([], trainer.device, trainer.memory_format).finish(next(iter(trainer.loaders["train"])))
    levels = getattr(trainer.criterion, "wants_levels", False)

    def forward(net, images):
        out = net(images, levels=True) if levels else net(images)
        return out[-1] if isinstance(out, tuple) else out

    return measure_step_seconds(trainer.model, plain_loss(trainer.config), batch.images, batch.targets,
                                trainer.device, trainer.amp, forward)


def _replan_schedule(trainer: Trainer) -> None:
    """Rebuild the LR schedule over ``config.train.epochs``, continuing at the current update."""
    cfg = trainer.config.train
    trainer.schedule = plan_schedule(cfg, head_epochs(trainer.config))
    trainer.scheduler = create_scheduler(trainer.optimizer, cfg, len(trainer.loaders["train"]) // cfg.accumulate,
                                         trainer.schedule)
    if trainer.scheduler is not None and cfg.scheduler != "plateau":
        trainer.scheduler.step_update(trainer.step)


def _auto_lr(trainer: Trainer, run_dir: Path) -> None:
    """``--lr auto``: the range test's suggestion becomes the head's rate (and the backbone's
    default share of it); the test is written to ``lr_find.json``."""
    test = run_range_test(trainer, "head" if head_epochs(trainer.config) > 0 else "finetune")
    trainer.config.train.lr = test.suggestion
    trainer.optimizer = create_optimizer(trainer.model, trainer.config.train,
                                         from_scratch=not starts_pretrained(trainer.config.model))
    _replan_schedule(trainer)
    if trainer.ctx.is_main:
        (run_dir / LR_FIND_FILE).write_text(json.dumps({**test.to_dict(), "applied": True}, indent=2) + "\n")
        trainer.config.save(run_dir / "config.yaml")  # the rate that is applied
    log.info("--lr auto: %.3g (%s; range test on the %s phase: %s)", test.suggestion, test.rule, test.phase,
             test.stopped)


LR_FIND_FILE = "lr_find.json"


def run_range_test(trainer: Trainer, phase: str, steps: int | None = None) -> RangeTest:
    """The LR range test (:mod:`imgcls.training.lr_finder`) on the built trainer: on cached
    features for the head phase (cheap: 100 steps), on image batches for fine-tuning (30
    steps by default). The model's weights and statistics are restored afterwards."""
    cfg = trainer.config.train
    saved = copy.deepcopy(trainer.model.state_dict())
    optimizer = create_optimizer(trainer.model, cfg, from_scratch=not starts_pretrained(trainer.config.model))
    generator = torch.Generator().manual_seed(cfg.seed)
    if phase == "head":
        apply_freeze(trainer.model, "backbone")
        _ensure_features(trainer)
        compute, steps = _feature_loss(trainer, generator), steps or 100
        start, end = 1e-6, 10.0
    else:
        apply_freeze(trainer.model, trainer.config.model.freeze or "none")  # before a plan: the whole backbone
        compute, steps = _image_loss(trainer), steps or 30
        start, end = 1e-6, 1.0
    try:
        return range_test(make_step(optimizer, compute), start, end, steps, phase=phase)
    finally:
        trainer.model.load_state_dict(saved)
        trainer.optimizer.zero_grad(set_to_none=True)


def _feature_loss(trainer: Trainer, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    features, head, loss = trainer.features, trainer.model.head, plain_loss(trainer.config)
    usable = usable_rows(features.train_targets)
    batch = trainer.loaders["train"].batch_size
    head.train()

    def compute() -> torch.Tensor:
        index = usable[torch.randint(len(usable), (batch,), generator=generator)]
        x, y = features.train[0, index].to(trainer.device), features.train_targets[index].to(trainer.device)
        return loss(head(x), y)

    return compute


def _image_loss(trainer: Trainer) -> Callable[[], torch.Tensor]:
    batches = DeviceLoader(trainer.loaders["train"], trainer.device, trainer.memory_format)
    loss = plain_loss(trainer.config)
    stream = iter(())
    # before a plan has chosen (lr-find), pretrained statistics are kept
    train_mode(trainer.model, backbone_bn_eval=trainer.config.train.bn_eval is not False
               and starts_pretrained(trainer.config.model))

    def compute() -> torch.Tensor:
        nonlocal stream
        batch = next(stream, None)
        while batch is None or len(batch) < 2:
            stream = iter(batches)
            batch = next(stream, None)
        with autocast(trainer.device, trainer.amp):
            out = trainer.model(batch.images)
        return loss(out.float(), batch.targets)

    return compute


def find_lr(config: RunConfig, phase: str = "auto", steps: int | None = None) -> tuple[RangeTest, Path]:
    """``imgcls lr-find``: build the run ``config`` describes (in a folder of its own) and run
    the range test for ``phase`` (head | finetune | auto: head when the run has a head
    phase); writes ``lr_find.json`` there and returns the test and the folder."""
    data = _discover(config)
    config.name = config.name or f"lr-find-{config.model.name.replace(':', '-').replace('/', '-')}"
    _start_plan(config, data, None)  # the image size and length the run would have
    run_dir = _open(config, None, DistContext())
    trainer = _build(config, data, run_dir, None, DistContext(), None)
    if phase == "auto":
        phase = "head" if head_epochs(config) > 0 else "finetune"
    test = run_range_test(trainer, phase, steps)
    (run_dir / LR_FIND_FILE).write_text(json.dumps({**test.to_dict(), "applied": False}, indent=2) + "\n")
    return test, run_dir


def _discover(config: RunConfig) -> DatasetSplits:
    """The run's splits, with the hierarchy resolved into ``config.data.hierarchy_map``.
    Refuses (DatasetError) a dataset training could not learn from, before any image is decoded."""
    data = discover_run(config.data)
    check_trainable(data)
    check_stream_config(config, data)
    config.data.task = data.task  # auto -> what the data holds, recorded in config.yaml and the model card
    check_task_options(config)
    attach_hierarchy(config.data, data)
    return data


def _run_epoch(trainer: Trainer, epoch: int) -> tuple[dict, Predictions]:
    """Train one epoch and validate; on cached backbone features while the backbone is frozen."""
    if _features_apply(trainer):
        _ensure_features(trainer)
        stats = train_head_epoch(trainer, trainer.features, epoch, _optimizer_step)
        trainer.head_fit = head_fit(trainer, trainer.features)
        return stats, predict_val(trainer, trainer.features, trainer.evaluated.head)
    trainer.features = None  # stale as soon as the backbone trains
    if trainer.cut is not None:
        return train_cut_epoch(trainer, trainer.cut, epoch, _optimizer_step), _predict(trainer, "val")
    return train_one_epoch(trainer, epoch), _predict(trainer, "val")


def _ensure_features(trainer: Trainer) -> None:
    """Compute the cached backbone features once (the backbone is frozen)."""
    if trainer.features is None:
        clean = _clean_train_dataset(trainer) if trainer.config.train.feature_views == 1 else None
        trainer.features = extract_feature_set(trainer, trainer.config.train.feature_views, clean)
        trainer.bad_files.add(trainer.features.bad)


def _features_apply(trainer: Trainer) -> bool:
    """Cached features stand in for the backbone only when nothing could tell them apart:
    a fully frozen backbone, a plain head on single images, and one process."""
    cfg = trainer.config.train
    frozen = not any(p.requires_grad for p in trainer.model.backbone.parameters())
    return (cfg.feature_cache and frozen and not trainer.ctx.enabled and trainer.mixer is None
            and not trainer.model.hierarchical and cfg.balance != "sampler")


def _clean_train_dataset(trainer: Trainer):
    """The train images under the eval transform (the single 'clean' feature view): the
    train loader's own list, so --balance over/undersampling carries over, row for row."""
    d, train = trainer.config.data, trainer.loaders["train"].dataset
    if isinstance(train, ShardStream):  # streamed shards: the same stream, unshuffled, under the eval transform
        return train.eval_view()
    dataset, _ = make_dataset(train.paths, train.targets, trainer.preprocessing, False, d.cache,
                              workers=default_workers() if d.workers is None else d.workers,
                              cache_dir=Path(d.cache_dir) if d.cache_dir else None)
    return dataset


def train_one_epoch(trainer: Trainer, epoch: int) -> dict:
    model, cfg, accumulate = trainer.model, trainer.config.train, trainer.config.train.accumulate
    loader = trainer.loaders["train"]
    loader.sampler.set_epoch(epoch)
    train_mode(model, backbone_bn_eval=bool(cfg.bn_eval) and starts_pretrained(trainer.config.model))
    usable = len(loader) - len(loader) % accumulate  # an unfinished accumulation is dropped
    stats = EpochStats(trainer.data.multilabel)
    trainer.optimizer.zero_grad(set_to_none=True)
    batches = DeviceLoader(loader, trainer.device, trainer.memory_format)
    for i, batch in enumerate(progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", total=usable)):
        if i >= usable:
            break
        trainer.bad_files.add(batch.bad)
        images, targets, weight = _batch_tensors(trainer, batch)
        if images is None:
            continue
        if trainer.mixer is not None:
            images, targets = trainer.mixer(images, targets)
        # the dominant class of a mixed target; multilabel targets are label sets, kept whole
        labels = targets.argmax(1) if targets.ndim > 1 and not stats.multilabel else targets
        last_micro = (i + 1) % accumulate == 0
        with _maybe_no_sync(trainer, last_micro), autocast(trainer.device, trainer.amp):
            outputs = _forward(trainer, images)
            logits = outputs[-1] if isinstance(outputs, tuple) else outputs  # (coarse, fine): fine logits
            loss = trainer.criterion(outputs, targets) + model.head.l2_penalty()
            trainer.scaler.scale(loss * weight / accumulate).backward()
        if last_micro:
            _optimizer_step(trainer)
        stats.add(loss.item(), logits, labels, len(batch))
    distributed.sync_buffers(trainer.ctx, model)
    return stats.row(distributed.sum_across(trainer.ctx, *stats.totals()))


def _forward(trainer: Trainer, images: torch.Tensor):
    """Logits, or ``(coarse, fine)`` logits when the criterion scores both levels of a
    hierarchical head: one call through ``trainer.net`` either way, so DDP sees one forward."""
    if getattr(trainer.criterion, "wants_levels", False):
        return trainer.net(images, levels=True)
    return trainer.net(images)


def _batch_tensors(trainer: Trainer, batch) -> tuple:
    """Images and targets on the device, and the batch's weight in the loss.

    A batch left with under two decodable images cannot train BatchNorm. One process
    skips it; under DDP every rank must still run forward and backward, so it trains on a
    zero-weighted stand-in instead of hanging the others.
    """
    if len(batch) >= 2:
        images, targets, weight = batch.images, batch.targets, 1.0
    elif trainer.ctx.enabled:
        size = trainer.preprocessing.image_size
        images, weight = torch.zeros(2, 3, size, size), 0.0
        classes = len(trainer.data.classes)
        targets = torch.zeros(2, classes) if trainer.data.multilabel else torch.zeros(2, dtype=torch.long)
        images = images.to(trainer.device).contiguous(memory_format=trainer.memory_format)
    else:
        return None, None, 0.0
    return images, targets.to(trainer.device, non_blocking=True), weight


def _maybe_no_sync(trainer: Trainer, last_micro: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    if trainer.ctx.enabled and not last_micro and hasattr(trainer.net, "no_sync"):
        return trainer.net.no_sync()
    return contextlib.nullcontext()


def _optimizer_step(trainer: Trainer) -> None:
    cfg = trainer.config.train
    if cfg.grad_clip:
        trainer.scaler.unscale_(trainer.optimizer)
        nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], cfg.grad_clip)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.step += 1
    if trainer.ema is not None:
        trainer.ema.update(trainer.model, step=trainer.step)
    if trainer.scheduler is not None and cfg.scheduler != "plateau":
        trainer.scheduler.step_update(trainer.step)


def _predict(trainer: Trainer, split: str) -> Predictions:
    local = predict_loader(trainer.evaluated, trainer.loaders[split], trainer.device, trainer.amp, desc=split,
                           memory_format=trainer.memory_format, multilabel=trainer.data.multilabel)
    predictions = distributed.gather_predictions(trainer.ctx, local)
    trainer.bad_files.add(predictions.bad)
    return predictions


def _wrap(trainer: Trainer) -> None:
    """(Re)build what training calls: DDP over the currently trainable parameters, compiled
    if asked. Rebuilt at each phase change because DDP fixes its parameter set."""
    net: nn.Module = trainer.model
    if trainer.ctx.enabled:
        device_ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    if trainer.config.train.compile:
        net = torch.compile(net)
    trainer.net = net


DEFAULT_LR = 1e-3
DEFAULT_HEAD_EPOCHS = 8  # on cached features, eight head epochs cost about as much as one image pass


def head_epochs(config: RunConfig) -> int:
    """Length of the head-only phase; by default none for a backbone that starts from random
    weights, whose features a head could not use (the plan's rule, training/plan.py)."""
    epochs = config.train.epochs
    if config.train.head_epochs is not None:
        wanted = config.train.head_epochs
    else:
        wanted = DEFAULT_HEAD_EPOCHS if starts_pretrained(config.model) else 0
    return min(wanted, epochs) if epochs is not None else wanted


def _start_plan(config: RunConfig, data: DatasetSplits, resumed: ResumePoint | None) -> PlanRecord:
    """The plan before training (training/plan.py): measured from the listing and the file
    headers; fills in the image sizes and a provisional length, which the rest of the run
    is built with. A resumed run keeps the plan its folder records."""
    if resumed is not None:
        record = read_plan(resumed.run_dir)
        if record is not None:
            return record
    record = PlanRecord(asked=asked_options(config), measurements=measure_dataset(config, data))
    record.plan = choose_plan(record.measurements, config)
    config.data.image_size = record.plan.image_size
    config.data.train_size = record.plan.train_size
    config.train.epochs = record.plan.epochs  # provisional: the plan after the head phase decides
    return record


def _write_plan(record: PlanRecord, run_dir: Path, ctx: DistContext) -> PlanRecord:
    if ctx.is_main:
        (run_dir / PLAN_FILE).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return record


def _plan_finetune(trainer: Trainer, history: list[dict], run_dir: Path) -> str | None:
    """Where the head phase ends (or at the start, without one): measure, choose what
    fine-tunes and how (training/plan.py), log the plan and the measurements behind it,
    apply it; returns why the run ends when the plan is the head alone."""
    record, ctx = trainer.plan, trainer.ctx
    record.measurements = _measure(trainer, history, record.measurements)
    plan = choose_plan(record.measurements, with_asked(trainer.config, record.asked))
    record.plan = distributed.broadcast_object(ctx, plan)  # one plan for all ranks
    record.stage = "finetune" if record.plan.finetune else "head only"
    for line in describe_plan(record):
        log.info("%s", line)
    _write_plan(record, run_dir, ctx)
    _apply_plan(trainer, record.plan)
    if ctx.is_main:
        trainer.config.save(run_dir / "config.yaml")  # the settings that are applied
    return None if record.plan.finetune else record.plan.why["finetune"]


def _measure(trainer: Trainer, history: list[dict], before: Measurements) -> Measurements:
    """The measurements before training plus what the head phase showed: the head's clean
    train top-1 (or, without cached features, its last augmented train top-1, which errs
    towards fine-tuning), its val top-1, and the domain probe of the feature pass (or of
    a few clean train images when no feature pass ran, e.g. on resume)."""
    m = dataclasses.replace(before)
    heads = [row for row in history if row.get("phase") == "head"]
    metric = "f1" if trainer.data.multilabel else "acc"  # multilabel fits are micro-F1 of the label decisions
    if heads:
        m.fit_metric = "micro-F1" if trainer.data.multilabel else "top-1"
        m.head_train_top1 = trainer.head_fit if trainer.head_fit is not None else heads[-1].get(f"train_{metric}")
        m.head_val_top1 = heads[-1].get(f"val_{metric}")
    domain = trainer.features.domain if trainer.features is not None else None
    if domain is None and m.pretrained:
        loader = make_loader(_clean_train_dataset(trainer), trainer.loaders["train"].batch_size, train=False,
                             workers=0, collate_fn=trainer.loaders["val"].collate_fn)
        probe = probe_images(trainer.model.backbone, loader, trainer.device, trainer.amp, trainer.memory_format,
                             trainer.preprocessing.mean, trainer.preprocessing.std)
        domain = {"bn_shift": probe.bn_shift, "gray_share": probe.gray_share}
    if domain:
        m.bn_shift, m.gray_share = domain["bn_shift"], domain["gray_share"]
    return m


def _apply_plan(trainer: Trainer, plan) -> None:
    """Put the plan's fine-tuning choices into the config (what the rest of the run reads)
    and into the optimiser: the backbone's rate, and a schedule over the planned epochs."""
    cfg = trainer.config
    cfg.train.epochs = plan.epochs
    cfg.train.finetune = "always" if plan.finetune else "never"  # what was decided, not "auto"
    if not plan.finetune:
        return
    cfg.model.freeze, cfg.train.bn_eval, cfg.train.backbone_lr = plan.freeze, plan.bn_eval, plan.backbone_lr
    for group in trainer.optimizer.param_groups:
        if group["part"] == "backbone":
            group["lr"] = group["initial_lr"] = plan.backbone_lr  # the schedule starts from initial_lr
    _replan_schedule(trainer)


def _set_phase(trainer: Trainer, epoch: int) -> str:
    """Two-phase fine-tuning: the head alone first, then what ``--freeze`` leaves trainable,
    on crops of ``--train-size``."""
    if epoch < head_epochs(trainer.config):
        apply_freeze(trainer.model, "backbone")
        return "head"
    apply_freeze(trainer.model, trainer.config.model.freeze or "none")
    _fit_train_loader(trainer)
    if trainer.cut is None and _cut_applies(trainer):
        trainer.cut = _make_cut(trainer, epoch)
    return "finetune"


def _cut_applies(trainer: Trainer) -> bool:
    """The cut-point cache stands in for the frozen blocks only when nothing could tell them
    apart: one process, plain single-label batches, one micro-batch per step."""
    cfg = trainer.config.train
    return (cfg.cut_cache and not trainer.ctx.enabled and trainer.mixer is None and not trainer.model.hierarchical
            and not trainer.data.multilabel and cfg.balance != "sampler" and cfg.accumulate == 1
            and not cfg.compile)


def _make_cut(trainer: Trainer, epoch: int) -> CutCache | None:
    """The cut-point cache where the frozen blocks end, if the architecture can be cut there
    and ``--cut-views`` views fit in a quarter of the free memory."""
    cut = make_cut_cache(trainer.model, epoch, trainer.config.train.cut_views)
    if cut is None:
        return None
    size = trainer.config.data.train_size or trainer.preprocessing.image_size
    needed = cut.views * view_bytes(cut, len(trainer.loaders["train"].dataset), size, trainer.device)
    if needed > available_memory() / 4:
        log.info("cut-point cache: %d view(s) need %.1f GB, over a quarter of the free memory; recomputing the "
                 "frozen blocks instead", cut.views, needed / 1e9)
        return None
    log.info("cut-point cache: the frozen blocks run once per view (%d views, %.0f MB); the rest trains on their output",
             cut.views, needed / 1e6)
    return cut


def _fit_train_loader(trainer: Trainer) -> None:
    """The train loader, rebuilt when fine-tuning crops to another size than the model's
    (train small, evaluate larger: the FixRes effect)."""
    size = trainer.config.data.train_size or trainer.preprocessing.image_size
    loader = trainer.loaders["train"]
    if getattr(loader, "crop_size", trainer.preprocessing.image_size) == size:
        return
    pre = dataclasses.replace(trainer.preprocessing, image_size=size)
    trainer.loaders["train"] = make_split_loader(trainer.data, "train", pre, trainer.config, train=True,
                                                 ctx=trainer.ctx)
    trainer.loaders["train"].crop_size = size
    log.info("fine-tuning on %d px crops; the model is evaluated at %d px", size, trainer.preprocessing.image_size)


def _epoch_row(trainer: Trainer, epoch: int, phase: str, train_stats: dict, val: Predictions, seconds: float) -> dict:
    k = min(trainer.config.train.topk, len(trainer.data.classes))
    lrs = {g["part"]: g["lr"] for g in trainer.optimizer.param_groups}
    if trainer.data.multilabel:  # mAP (threshold-free) and samples-F1 at 0.5: thresholds are fitted after training
        labelled = len(val.targets) > 0
        return {"epoch": epoch + 1, "phase": phase, **train_stats, "val_loss": val.loss,
                "val_map": mean_average_precision(val.targets, val.probs) if labelled else float("nan"),
                "val_f1": samples_f1(val.targets, val.probs) if labelled else float("nan"),
                "lr": lrs["head"], "backbone_lr": lrs.get("backbone", float("nan")), "seconds": round(seconds, 2)}
    return {
        "epoch": epoch + 1,
        "phase": phase,
        **train_stats,
        "val_loss": val.loss,
        "val_acc": topk_accuracy(val.targets, val.probs, 1),
        f"val_top{k}": topk_accuracy(val.targets, val.probs, k),
        **hierarchy_epoch_metrics(val, trainer.config.data.hierarchy_map, trainer.data.classes),
        "lr": lrs["head"],
        "backbone_lr": lrs.get("backbone", float("nan")),
        "seconds": round(seconds, 2),
    }


def _log_epoch(row: dict, improved: bool) -> None:
    values = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k not in ("seconds",))
    log.info("epoch %d [%s] %s  (%.1fs)%s", row["epoch"], row["phase"], values, row["seconds"],
             "  *best*" if improved else "")


def _save(trainer: Trainer, monitor: Monitor, history: list[dict], run_dir: Path, epoch: int, phase: str,
          improved: bool) -> None:
    """``last.safetensors`` + ``last.state.pt`` every epoch; ``best.safetensors`` when improved.

    The state file is written after the weights and names their epoch, so a crash between
    the two is detected on resume rather than continued from mismatched files.
    """
    card = ModelCard(classes=list(trainer.data.classes), preprocessing=trainer.preprocessing.to_dict(),
                     config=trainer.config.to_dict(), task=trainer.data.task,
                     hierarchy=trainer.config.data.hierarchy_map, epoch=epoch, phase=phase,
                     monitor=monitor.state_dict(), head_fit=trainer.head_fit)
    artifact.save_model(run_dir / artifact.LAST, trainer.model.state_dict(), card)
    save_state(run_dir / STATE_FILE, TrainState(
        epoch=epoch, step=trainer.step, optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        scaler=trainer.scaler.state_dict(), schedule=trainer.schedule, monitor=monitor.state_dict(),
        history=history, head_fit=trainer.head_fit,
        ema=trainer.ema.module.state_dict() if trainer.ema is not None else None))
    if improved:  # the validated weights: the EMA's when it is on
        artifact.save_model(run_dir / artifact.BEST, trainer.evaluated.state_dict(),
                            card.replace(ema=trainer.ema is not None))


def _restore(trainer: Trainer, monitor: Monitor, resumed: ResumePoint) -> tuple[int, list[dict]]:
    state = resumed.state
    trainer.model.load_state_dict(resumed.state_dict)
    trainer.optimizer.load_state_dict(state.optimizer)
    if trainer.scheduler is not None and state.scheduler:
        trainer.scheduler.load_state_dict(state.scheduler)
    trainer.scaler.load_state_dict(state.scaler)
    trainer.step = state.step
    trainer.head_fit = state.head_fit
    if trainer.ema is not None and state.ema is not None:
        trainer.ema.module.load_state_dict(state.ema)
    monitor.load_state_dict(state.monitor)
    monitor.patience = trainer.config.train.early_stopping
    return state.epoch, list(state.history)


def _open(config: RunConfig, resumed: ResumePoint | None, ctx: DistContext) -> Path:
    """Rank 0 creates (or reuses, on resume) the run folder and tells the other ranks where it is."""
    if resumed is not None:
        run_dir = resumed.run_dir
    elif ctx.is_main:
        run_dir = open_run_dir(config)
    else:
        run_dir = None
    run_dir = Path(distributed.broadcast_object(ctx, str(run_dir)))
    config.name = run_dir.name
    configure_logging(run_dir / "train.log" if ctx.is_main else None, verbose=ctx.is_main)
    if ctx.is_main:
        config.save(run_dir / "config.yaml")
    return run_dir


def _build(config: RunConfig, data: DatasetSplits, run_dir: Path, resumed: ResumePoint | None, ctx: DistContext,
           cuda_device: torch.device | None) -> Trainer:
    device = cuda_device or select_device(config.train.device)
    configure_cuda()
    amp = amp_dtype(device, config.train.amp)
    seed_everything(config.train.seed)
    d = config.data
    model, preprocessing = build_model(config.model, d, len(data.classes), load_weights=resumed is None)
    if ctx.enabled and config.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format_for(device, config.train.channels_last))
    loaders = _make_loaders(data, preprocessing, config, ctx)
    optimizer = create_optimizer(model, config.train, from_scratch=not starts_pretrained(config.model))
    schedule = plan_schedule(config.train, head_epochs(config), resumed.state.schedule if resumed else None)
    if resumed is not None and len(schedule) > len(resumed.state.schedule):
        log.info("resume: epochs %d-%d are added: a new %s segment over them from the base learning rates",
                 sum(resumed.state.schedule) + 1, config.train.epochs, config.train.scheduler)
    _describe(config, data, model, device, run_dir, ctx)
    ema = ModelEmaV3(model, decay=config.train.ema_decay, use_warmup=True) if config.train.ema else None
    budget = Budget(config.train.time_limit * 60) if config.train.time_limit else None
    return Trainer(
        config=config,
        data=data,
        model=model,
        preprocessing=preprocessing,
        loaders=loaders,
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, config.train, len(loaders["train"]) // config.train.accumulate,
                                   schedule),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        device=device,
        amp=amp,
        criterion=build_criterion(config, data).to(device),
        mixer=build_mixer(config, len(data.classes)),
        bad_files=BadFileLog(run_dir / "bad_files.csv" if ctx.is_main else None),
        ctx=ctx,
        schedule=schedule,
        ema=ema,
        budget=budget,
    )


def per_device_batch(config: RunConfig, world_size: int) -> int:
    """``--batch-size`` is the global batch: split over processes and accumulation steps."""
    parts = world_size * config.train.accumulate
    if config.data.batch_size % parts:
        log.warning("--batch-size %d is not divisible by %d processes x %d accumulation steps",
                    config.data.batch_size, world_size, config.train.accumulate)
    return max(config.data.batch_size // parts, 1)


def make_split_loader(data: DatasetSplits, split: str, preprocessing: Preprocessing, config: RunConfig,
                      train: bool = False, ctx: DistContext = DistContext()):
    if isinstance(data.splits[split], ShardSamples):  # wds: streamed from tar shards (data/wds.py)
        return stream_loader(data.splits[split], data.classes, preprocessing, config, train, ctx.rank,
                             ctx.world_size, per_device_batch(config, ctx.world_size))
    paths, targets, weights = [s.path for s in data.splits[split]], data.targets(split), None
    if train:  # --balance: resampled list and/or sampler weights (data/balance.py)
        paths, targets, weights = balance_train_split(paths, targets, config.train.balance, config.train.seed)
    d = config.data
    cache = d.cache
    if ctx.enabled and cache in ("auto", "ram"):
        cache = "disk"  # one memmap shared by all ranks instead of one RAM copy each
    workers = default_workers() if d.workers is None else d.workers
    if ctx.enabled and not ctx.is_main and cache == "disk":
        distributed.barrier(ctx)  # rank 0 builds the cache first; the others then open it
    dataset, collate_fn = make_dataset(paths, targets, preprocessing, train, cache, d.augment,
                                       d.random_erasing, workers, Path(d.cache_dir) if d.cache_dir else None)
    if ctx.enabled and ctx.is_main and cache == "disk":
        distributed.barrier(ctx)
    return make_loader(dataset, per_device_batch(config, ctx.world_size), train=train, seed=config.train.seed,
                       workers=d.workers, rank=ctx.rank, world_size=ctx.world_size, collate_fn=collate_fn,
                       weights=weights)


def _make_loaders(data: DatasetSplits, preprocessing: Preprocessing, config: RunConfig, ctx: DistContext) -> dict:
    return {split: make_split_loader(data, split, preprocessing, config, train=split == "train", ctx=ctx)
            for split in data.splits}


def _describe(config: RunConfig, data: DatasetSplits, model: nn.Module, device: torch.device, run_dir: Path,
              ctx: DistContext) -> None:
    log.info("run folder: %s", run_dir)
    for line in describe(data):
        log.info("%s", line)
    if ctx.is_main and write_unused(data.unused, run_dir / UNUSED_FILE):
        log.info("unused files and folders listed in %s", run_dir / UNUSED_FILE)
    params = parameter_counts(model)
    log.info("model: %s (%s head), %.2fM parameters, device %s", config.model.name, config.model.head,
             params["total"] / 1e6, device)
    log.info("batch: %d global = %d per device x %d processes x %d accumulation steps", config.data.batch_size,
             per_device_batch(config, ctx.world_size), ctx.world_size, config.train.accumulate)
