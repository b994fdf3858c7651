"""The running train statistics of an epoch: its loss, and top-1 accuracy (single-label) or
micro-F1 of the labels at probability 0.5 (multilabel), as the epoch's row reports them."""

from __future__ import annotations

import torch


class EpochStats:
    """Sums over an epoch's batches; :meth:`totals` are what DDP sums across processes."""

    def __init__(self, multilabel: bool = False):
        self.multilabel = multilabel
        self.loss_sum, self.seen = 0.0, 0
        self.correct = 0  # single-label: images whose arg-max is the label
        self.tp = self.fp = self.fn = 0  # multilabel: (image, label) decisions at p >= 0.5

    def add(self, loss: float, logits: torch.Tensor, targets: torch.Tensor, n: int | None = None) -> None:
        """One batch: its mean ``loss``, (m, C) ``logits`` and (m,) labels or (m, C) multi-hot
        targets; ``n``: the images it counts for (default m; 0 or 1 for a DDP stand-in batch)."""
        n = len(targets) if n is None else n
        self.loss_sum += loss * n
        self.seen += n
        if not self.multilabel:
            self.correct += (logits.argmax(1) == targets).sum().item()
            return
        predicted, truth = logits.detach() >= 0, targets > 0.5  # sigmoid(z) >= 0.5 exactly when z >= 0
        self.tp += (predicted & truth).sum().item()
        self.fp += (predicted & ~truth).sum().item()
        self.fn += (~predicted & truth).sum().item()

    def totals(self) -> list[float]:
        if self.multilabel:
            return [self.loss_sum, self.seen, self.tp, self.fp, self.fn]
        return [self.loss_sum, self.correct, self.seen]

    def row(self, totals: list[float] | None = None) -> dict:
        """``train_loss`` and ``train_acc`` (single-label) or ``train_f1`` (multilabel) from
        :meth:`totals` (summed across processes when given)."""
        if self.multilabel:
            loss_sum, seen, tp, fp, fn = totals or self.totals()
            return {"train_loss": loss_sum / max(seen, 1), "train_f1": 2 * tp / max(2 * tp + fp + fn, 1)}
        loss_sum, correct, seen = totals or self.totals()
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
