"""The training loop: read top to bottom, it is the whole of ``imgcls train``.

Reproducibility contract: data order, augmentation and dropout depend only on
(seed, epoch, sample), so a run stopped after epoch k and resumed from ``last.pt`` ends
with the same weights (on CPU) as one that never stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from imgcls.config import RunConfig
from imgcls.data.dataset import ImageDataset
from imgcls.data.loaders import make_loader
from imgcls.data.sources import DatasetSplits, discover
from imgcls.data.transforms import Preprocessing, eval_transform, train_transform
from imgcls.evaluation.inference import Predictions, predict_loader
from imgcls.models.classifier import apply_freeze, build_model, parameter_counts, train_mode
from imgcls.runtime import amp_dtype, autocast, configure_logging, log, progress, select_device, seed_everything
from imgcls.training.callbacks import Monitor
from imgcls.training.checkpoint import read_checkpoint, rng_state, save_checkpoint
from imgcls.training.logs import BadFileLog, MetricsLog
from imgcls.training.optim import create_optimizer, create_scheduler
from imgcls.training.rundir import open_run_dir


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    splits: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # full metrics of the best model per split


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
    step: int = 0
    stop_requested: bool = False


EpochCallback = Callable[[Trainer, dict], None]


def train(config: RunConfig, resume: str | Path | None = None, callbacks: list[EpochCallback] = ()) -> TrainResult:
    run_dir, config, checkpoint = _open(config, resume)
    trainer = _build(config, run_dir, checkpoint)
    monitor = Monitor(config.train.monitor, config.train.early_stopping)
    metrics_log = MetricsLog(run_dir)
    start_epoch, history = 0, []
    if checkpoint is not None:
        start_epoch, history = _restore(trainer, monitor, checkpoint)
        metrics_log.truncate(start_epoch)
        log.info("resumed %s after epoch %d", run_dir, start_epoch)

    for epoch in range(start_epoch, config.train.epochs):
        phase = _set_phase(trainer, epoch)
        seed_everything(config.train.seed * 1000 + epoch)
        started = time.perf_counter()
        train_stats = train_one_epoch(trainer, epoch)
        val = _predict(trainer, "val")
        row = _epoch_row(trainer, epoch, phase, train_stats, val, time.perf_counter() - started)
        improved = monitor.update(row)
        if trainer.scheduler is not None and config.train.scheduler == "plateau":
            trainer.scheduler.step(epoch + 1, row[config.train.monitor])
        history.append(row)
        metrics_log.write(row)
        _log_epoch(row, improved)
        _save(trainer, monitor, history, run_dir / "last.pt", epoch + 1)
        if improved:
            _save(trainer, monitor, history, run_dir / "best.pt", epoch + 1)
        for callback in callbacks:
            callback(trainer, row)
        if monitor.should_stop:
            log.info("early stopping: %s has not improved for %d epochs", monitor.metric, monitor.stale_epochs)
            break
        if trainer.stop_requested:
            break
    metrics_log.close()
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    return TrainResult(run_dir=run_dir, best_checkpoint=best, splits=list(trainer.data.splits), history=history)


def train_one_epoch(trainer: Trainer, epoch: int) -> dict:
    model, cfg = trainer.model, trainer.config.train
    loader = trainer.loaders["train"]
    loader.sampler.set_epoch(epoch)
    train_mode(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_sum, correct, seen = 0.0, 0, 0
    for batch in progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}"):
        trainer.bad_files.add(batch.bad)
        if len(batch) < 2:  # BatchNorm cannot train on a single image
            continue
        images = batch.images.to(trainer.device, non_blocking=True)
        targets = batch.targets.to(trainer.device, non_blocking=True)
        with autocast(trainer.device, trainer.amp):
            logits = model(images)
            loss = trainer.criterion(logits, targets) + model.head.l2_penalty()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        if cfg.grad_clip:
            trainer.scaler.unscale_(trainer.optimizer)
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.step += 1
        if trainer.scheduler is not None and cfg.scheduler != "plateau":
            trainer.scheduler.step_update(trainer.step)
        loss_sum += loss.item() * len(batch)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(batch)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _predict(trainer: Trainer, split: str) -> Predictions:
    predictions = predict_loader(trainer.model, trainer.loaders[split], trainer.device, trainer.amp, desc=split)
    trainer.bad_files.add(predictions.bad)
    return predictions


def _set_phase(trainer: Trainer, epoch: int) -> str:
    """Two-phase fine-tuning: the head alone first, then what ``--freeze`` leaves trainable."""
    if epoch < trainer.config.train.head_epochs:
        apply_freeze(trainer.model, "backbone")
        return "head"
    apply_freeze(trainer.model, trainer.config.model.freeze)
    return "finetune"


def _epoch_row(trainer: Trainer, epoch: int, phase: str, train_stats: dict, val: Predictions, seconds: float) -> dict:
    k = min(trainer.config.train.topk, len(trainer.data.classes))
    lrs = {g["part"]: g["lr"] for g in trainer.optimizer.param_groups}
    return {
        "epoch": epoch + 1,
        "phase": phase,
        **train_stats,
        "val_loss": val.loss,
        "val_acc": _topk_accuracy(val, 1),
        f"val_top{k}": _topk_accuracy(val, k),
        "lr": lrs["head"],
        "backbone_lr": lrs.get("backbone", float("nan")),
        "seconds": round(seconds, 2),
    }


def _topk_accuracy(predictions: Predictions, k: int) -> float:
    if not len(predictions.targets):
        return float("nan")
    top = np.argsort(-predictions.probs, axis=1)[:, :k]
    return float((top == predictions.targets[:, None]).any(axis=1).mean())


def _log_epoch(row: dict, improved: bool) -> None:
    values = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k not in ("seconds",))
    log.info("epoch %d [%s] %s  (%.1fs)%s", row["epoch"], row["phase"], values, row["seconds"],
             "  *best*" if improved else "")


def _save(trainer: Trainer, monitor: Monitor, history: list[dict], path: Path, epoch: int) -> None:
    save_checkpoint(
        path,
        config=trainer.config.to_dict(),
        classes=trainer.data.classes,
        preprocessing=trainer.preprocessing.to_dict(),
        model=trainer.model.state_dict(),
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        scaler=trainer.scaler.state_dict(),
        epoch=epoch,
        step=trainer.step,
        monitor=monitor.state_dict(),
        history=history,
        rng=rng_state(),
        temperature=1.0,
    )


def _restore(trainer: Trainer, monitor: Monitor, checkpoint: dict) -> tuple[int, list[dict]]:
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    if trainer.scheduler is not None and checkpoint.get("scheduler"):
        trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    trainer.step = checkpoint["step"]
    monitor.load_state_dict(checkpoint["monitor"])
    monitor.patience = trainer.config.train.early_stopping
    return checkpoint["epoch"], list(checkpoint["history"])


def _open(config: RunConfig, resume) -> tuple[Path, RunConfig, dict | None]:
    if resume is None:
        run_dir = open_run_dir(config)
        checkpoint = None
    else:
        checkpoint = read_checkpoint(Path(resume) / "last.pt" if Path(resume).is_dir() else resume)
        run_dir = Path(checkpoint["path"]).parent
    configure_logging(run_dir / "train.log")
    config.save(run_dir / "config.yaml")
    return run_dir, config, checkpoint


def _build(config: RunConfig, run_dir: Path, checkpoint: dict | None) -> Trainer:
    device = select_device(config.train.device)
    amp = amp_dtype(device, config.train.amp)
    seed_everything(config.train.seed)
    d = config.data
    data = discover(d.path, d.train_dirs, d.val_dir, d.val_fraction, d.split_seed)
    model, preprocessing = build_model(config.model, d, len(data.classes), load_weights=checkpoint is None)
    model.to(device)
    loaders = _make_loaders(data, preprocessing, config)
    optimizer = create_optimizer(model, config.train)
    _describe(config, data, model, device, run_dir)
    return Trainer(
        config=config,
        data=data,
        model=model,
        preprocessing=preprocessing,
        loaders=loaders,
        optimizer=optimizer,
        scheduler=create_scheduler(optimizer, config.train, len(loaders["train"])),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        device=device,
        amp=amp,
        criterion=nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing),
        bad_files=BadFileLog(run_dir / "bad_files.csv"),
    )


def make_split_loader(data: DatasetSplits, split: str, preprocessing: Preprocessing, config: RunConfig,
                      train: bool = False):
    paths = [s.path for s in data.splits[split]]
    transform = train_transform(preprocessing, config.data.augment) if train else eval_transform(preprocessing)
    dataset = ImageDataset(paths, data.targets(split), transform, draft_size=preprocessing.resize_size)
    return make_loader(dataset, config.data.batch_size, train=train, seed=config.train.seed,
                       workers=config.data.workers)


def _make_loaders(data: DatasetSplits, preprocessing: Preprocessing, config: RunConfig) -> dict:
    return {split: make_split_loader(data, split, preprocessing, config, train=split == "train")
            for split in data.splits}


def _describe(config: RunConfig, data: DatasetSplits, model: nn.Module, device: torch.device, run_dir: Path) -> None:
    counts = ", ".join(f"{split} {len(samples)}" for split, samples in data.splits.items())
    log.info("run folder: %s", run_dir)
    log.info("data: %d classes; %s images", len(data.classes), counts)
    params = parameter_counts(model)
    log.info("model: %s (%s head), %.2fM parameters, device %s", config.model.name, config.model.head,
             params["total"] / 1e6, device)
