"""Where a CPU fine-tuning step of efficientnet_lite0 spends its time, and what freezing the
first blocks saves.

    python benchmarks/finetune_step_profile.py                 # 112 and 224 px, batch 32
    python benchmarks/finetune_step_profile.py --sizes 128 --frozen 0 4 8

Part 1: torch.profiler over three full fine-tuning steps (forward, backward, AdamW) at the
first size: the operators' share of the step's self CPU time.
Part 2: img/s of a training step with the stem and the first N of imgcls's parameter groups
frozen (``--freeze all-but-last:K`` freezes all groups but the last K; lite0 has 17: the
stem and 16 blocks), as a ratio to full fine-tuning (N = 0, the baseline) measured in the
same run. Frozen BatchNorm layers run in eval mode, as ``imgcls train`` runs them. The
frozen blocks are still computed here; the cut-point cache (``--cut-cache``) would also skip
their forward pass.

Random images, channels_last, the threads torch picks; the best of 4 timed steps after 2
warm-up steps. Run it alone on the box: the ratios are only as good as the load was even.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from imgcls.config import RunConfig
from imgcls.models.classifier import apply_freeze, build_model, train_mode


def _model(frozen: int):
    config = RunConfig()
    model, _ = build_model(config.model, config.data, num_classes=10)
    groups = len(model.backbone_blocks())
    apply_freeze(model, f"all-but-last:{groups - frozen}" if frozen else "none")
    train_mode(model)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    return model, optimizer


def _step(model, optimizer, images, labels) -> None:
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _batch(size: int, batch: int):
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, 10, (batch,))


def operator_shares(size: int, batch: int, rows: int = 8) -> list[tuple[str, float]]:
    """(operator, share of self CPU time) for full fine-tuning steps, largest first."""
    model, optimizer = _model(0)
    images, labels = _batch(size, batch)
    for _ in range(2):
        _step(model, optimizer, images, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            _step(model, optimizer, images, labels)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    return [(k, t / total) for k, t in sorted(events, key=lambda kv: -kv[1])[:rows]]


def images_per_second(size: int, batch: int, frozen: int) -> float:
    """Training images a second (best of 4 timed steps after 2 warm-up steps) with the stem
    and the first ``frozen`` parameter groups frozen."""
    model, optimizer = _model(frozen)
    images, labels = _batch(size, batch)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        _step(model, optimizer, images, labels)
        times.append(time.perf_counter() - start)
    return batch / min(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 224])
    parser.add_argument("--frozen", nargs="+", type=int, default=[0, 2, 4, 6, 8],
                        help="parameter groups frozen from the stem on (0 = full fine-tuning, the baseline)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"\nfull fine-tuning step at {args.sizes[0]} px, batch {args.batch}: share of self CPU time")
    for name, share in operator_shares(args.sizes[0], args.batch):
        print(f"  {share:6.1%}  {name}")
    print("\n| size | groups frozen | img/s | x full fine-tuning |\n| --- | --- | --- | --- |")
    for size in args.sizes:
        baseline = None
        for frozen in sorted(set([0, *args.frozen])):
            rate = images_per_second(size, args.batch, frozen)
            baseline = baseline or rate
            print(f"| {size} | {frozen} | {rate:.1f} | {rate / baseline:.2f} |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
