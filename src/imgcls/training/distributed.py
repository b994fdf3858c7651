"""PyTorch DDP plumbing: process-group set-up under ``torchrun``, and gathering results.

imgcls never launches its own workers: ``torchrun`` (or ``imgcls train --devices N``,
which calls it) starts one process per device and sets RANK/WORLD_SIZE/LOCAL_RANK; this
module only reads that environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from imgcls.inference.predictions import Predictions


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str) -> tuple[DistContext, torch.device | None]:
    """Join the process group torchrun prepared; returns the context and, on CUDA, the
    device of this process (None: let the caller pick as usual)."""
    if not launched_by_torchrun():
        return DistContext(), None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = None
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return DistContext(rank, local_rank, world), device


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, value):
    """Rank 0's ``value`` on every rank (e.g. the run folder it created)."""
    if not ctx.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sync_buffers(ctx: DistContext, model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the start of each forward, so after the last training step
    every rank holds statistics of its own last batch; evaluation and the checkpoint must
    use one set.
    """
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sum_across(ctx: DistContext, *values: float) -> list[float]:
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)  # gloo and nccl both reduce CPU/GPU float64 sums
    return tensor.tolist()


def gather_predictions(ctx: DistContext, local: Predictions) -> Predictions:
    """Every rank's shard of an evaluation, merged in dataset order on all ranks.

    The evaluation sampler never pads, so each image is counted exactly once and the
    metrics equal a single-process evaluation.
    """
    if not ctx.enabled:
        return local
    labelled = int((local.targets >= 0).sum())
    parts = [None] * ctx.world_size
    dist.all_gather_object(parts, (local.probs, local.targets, local.indices, local.loss * labelled,
                                   labelled, local.bad, local.logits, local.coarse_probs))
    parts = [p for p in parts if len(p[2])] or parts[:1]
    order = np.argsort(np.concatenate([p[2] for p in parts]), kind="stable")
    total_labelled = sum(p[4] for p in parts)
    return Predictions(
        probs=np.concatenate([p[0] for p in parts])[order],
        targets=np.concatenate([p[1] for p in parts])[order],
        indices=np.concatenate([p[2] for p in parts])[order],
        loss=sum(p[3] for p in parts if p[4]) / total_labelled if total_labelled else float("nan"),
        bad=[b for p in parts for b in p[5]],
        logits=_concat_optional([p[6] for p in parts], order),
        coarse_probs=_concat_optional([p[7] for p in parts], order),
        multilabel=local.multilabel,
    )


def _concat_optional(arrays: list, order: np.ndarray):
    """Per-rank optional outputs (logits, coarse probabilities), merged like ``probs``."""
    return None if any(a is None for a in arrays) else np.concatenate(arrays)[order]


def launch(devices: int, argv: list[str]) -> int:
    """``imgcls train --devices N``: re-run this command under torchrun, one process per device."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "imgcls", *argv]
    return subprocess.call(command)
