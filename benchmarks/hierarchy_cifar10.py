"""Coarse + fine (hierarchical) model vs a flat model on cifar10-small.

The ten CIFAR-10 classes are grouped as vehicles = {airplane, automobile, ship, truck} and
animals = {bird, cat, deer, dog, frog, horse}, laid out as nested ``<coarse>/<fine>/`` folders
(symlinks to ../shared/datasets/cifar10-small; nothing is copied). Both models use the same
backbone and settings (efficientnet_lite0, pretrained, frozen, 64 px); the flat one is the
baseline, measured in the same run. Reported on the test split: fine top-1, coarse top-1
(coarse head; for both models also the parent of the predicted fine class), consistency.

    .venv/bin/python benchmarks/hierarchy_cifar10.py [--epochs 3] [--image-size 64] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import imgcls

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-small"
TREE = {"vehicles": ["airplane", "automobile", "ship", "truck"],
        "animals": ["bird", "cat", "deer", "dog", "frog", "horse"]}


def build_trees(root: Path) -> tuple[Path, Path]:
    """``nested/{train,test}/<coarse>/<fine>`` and ``flat/{train,test}/<fine>``, as symlinks."""
    for split in ("train", "test"):
        for coarse, fines in TREE.items():
            for fine in fines:
                for link in (root / "nested" / split / coarse / fine, root / "flat" / split / fine):
                    link.parent.mkdir(parents=True, exist_ok=True)
                    if not link.exists():
                        link.symlink_to(SOURCE / split / fine, target_is_directory=True)
    return root / "nested", root / "flat"


def parent_accuracy(metrics: dict) -> float:
    """Coarse accuracy of the parent of each predicted fine class, from the fine confusion matrix."""
    names = [row["class"] for row in metrics["per_class"]]
    parent = {fine: coarse for coarse, fines in TREE.items() for fine in fines}
    matrix = np.asarray(metrics["confusion_matrix"])
    same = np.array([[parent[t] == parent[p] for p in names] for t in names])
    return float(matrix[same].sum() / matrix.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--work", help="folder for the trees and runs (default: a temporary folder)")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found")
    work = Path(args.work or tempfile.mkdtemp(prefix="imgcls-hierarchy-"))
    nested, flat = build_trees(work / "data")
    common = dict(out_dir=str(work / "runs"), evaluate=False, model="efficientnet_lite0", pretrained=True,
                  image_size=args.image_size, freeze="backbone", epochs=args.epochs, head_epochs=args.epochs,
                  batch_size=64, lr=args.lr, label_smoothing=0.0, seed=0,
                  # The feature cache (clean views) does not serve hierarchical heads yet; off for both
                  # so the two models see the same augmented images.
                  feature_cache=False)
    results = {}
    for name, data, extra in (("hierarchical", nested, {"hierarchy": "folders"}), ("flat", flat, {})):
        started = time.perf_counter()
        run = imgcls.train(data, name=name, **common, **extra)
        seconds = time.perf_counter() - started
        metrics = imgcls.evaluate(run.best_checkpoint, split="test", out_dir=run.run_dir / "eval-test",
                                  device="cpu")
        results[name] = (metrics, seconds, run.run_dir)

    print(f"\ncifar10-small test split ({results['flat'][0]['n']} images), efficientnet_lite0 frozen, "
          f"{args.image_size} px, {args.epochs} epochs")
    print(f"{'model':<13} {'fine top-1':>10} {'coarse head':>11} {'coarse=parent(fine)':>20} "
          f"{'coarse=sum(fine p)':>19} {'consistency':>11} {'train s':>8}")
    for name, (m, seconds, _) in results.items():
        head = f"{m['coarse']['top1']:.4f}" if "coarse" in m else "-"
        summed = f"{m['coarse_top1_from_fine']:.4f}" if "coarse" in m else "-"
        consistency = f"{m['consistency']:.4f}" if "coarse" in m else "-"
        print(f"{name:<13} {m['top1']:>10.4f} {head:>11} {parent_accuracy(m):>20.4f} {summed:>19} "
              f"{consistency:>11} {seconds:>8.0f}")
    hier, flat_metrics = results["hierarchical"][0], results["flat"][0]
    print(f"\nfine top-1, hierarchical vs flat: {hier['top1'] - flat_metrics['top1']:+.4f}")
    print(f"runs: {results['hierarchical'][2]}  {results['flat'][2]}")


if __name__ == "__main__":
    main()
