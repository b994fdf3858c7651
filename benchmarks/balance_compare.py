"""Does ``--balance`` help on an imbalanced dataset? none vs the balanced options, same run.

Builds an imbalanced copy of ``../shared/datasets/cifar10-small`` (symlinks, nothing
copied): five classes keep 10% of their 300 training images, the test split stays
balanced (100 a class). Each ``--balance`` mode then trains the same cheap model
(efficientnet_lite0 pretrained, 64 px, backbone frozen: a linear head on ImageNet
features) and is scored on the test split: macro-F1 and the mean recall of the five
minority classes, against ``none`` measured in the same run.

    python benchmarks/balance_compare.py [--modes none weights sampler] [--epochs 3] [--device auto]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import imgcls
from imgcls.data.balance import BALANCE_MODES

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-small"
MINORITY = ["bird", "cat", "deer", "dog", "frog"]  # cut to 10% of their training images


def make_imbalanced_copy(source: Path, target: Path, keep: float) -> None:
    for split_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = sorted(class_dir.iterdir())
            if split_dir.name == "train" and class_dir.name in MINORITY:
                files = files[: max(1, round(len(files) * keep))]
            out = target / split_dir.name / class_dir.name
            out.mkdir(parents=True)
            for file in files:
                (out / file.name).symlink_to(file)


def run(data: Path, runs: Path, mode: str, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    result = imgcls.train(data, out_dir=str(runs), name=f"balance-{mode}", balance=mode, model="efficientnet_lite0",
                          pretrained=True, image_size=64, freeze="backbone", head_epochs=0, epochs=args.epochs,
                          lr=args.lr, batch_size=64, seed=args.seed, device=args.device)
    test = result.metrics["test"]
    recall = {row["class"]: row["recall"] for row in test["per_class"]}
    return {
        "mode": mode,
        "n": test["n"],
        "top1": test["top1"],
        "f1_macro": test["f1_macro"],
        "minority_recall": sum(recall[c] for c in MINORITY) / len(MINORITY),
        "majority_recall": sum(v for c, v in recall.items() if c not in MINORITY) / (len(recall) - len(MINORITY)),
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(BALANCE_MODES), choices=BALANCE_MODES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--keep", type=float, default=0.10, help="share of the minority classes' images kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not SOURCE.exists():
        print(f"{SOURCE}: not found")
        return 2
    modes = ["none"] + [m for m in args.modes if m != "none"]  # the baseline always runs
    with tempfile.TemporaryDirectory(prefix="balance-") as tmp:
        data = Path(tmp) / "cifar10-imbalanced"
        make_imbalanced_copy(SOURCE, data, args.keep)
        logging.getLogger("imgcls").setLevel(logging.WARNING)
        rows = [run(data, Path(tmp) / "runs", mode, args) for mode in modes]
    base = rows[0]
    print(f"\ncifar10-small, classes {', '.join(MINORITY)} cut to {args.keep:.0%} of their training images; "
          f"efficientnet_lite0 64 px, frozen backbone, {args.epochs} epochs; test split ({base['n']:,} images, balanced)\n")
    print(f"{'--balance':<12} {'top-1':>7} {'macro-F1':>9} {'minority recall':>16} {'majority recall':>16} "
          f"{'vs none (F1 / min. recall)':>28} {'time':>7}")
    for row in rows:
        delta = f"{row['f1_macro'] - base['f1_macro']:+.3f} / {row['minority_recall'] - base['minority_recall']:+.3f}"
        print(f"{row['mode']:<12} {row['top1']:>7.3f} {row['f1_macro']:>9.3f} {row['minority_recall']:>16.3f} "
              f"{row['majority_recall']:>16.3f} {delta:>28} {row['seconds']:>6.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
