"""Open-set rejection on cifar10-small: one class held out as the unknown.

The model trains on nine classes; the held-out class's test images go in ``test/unknown/``
(symlinks to ../shared/datasets/cifar10-small; nothing is copied), so ``evaluate`` reports
AUROC and FPR at 95% TPR (known images = positives) for the max-softmax probability and the
energy score, and the share kept / rejected at the threshold fitted on val (``auto``,
keeping ``--keep`` of known validation images). AUROC 0.5 is chance (no separation).

    .venv/bin/python benchmarks/openset_cifar10.py [--holdout cat] [--epochs 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import imgcls

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-small"


def build_tree(root: Path, holdout: str) -> Path:
    """``train/<9 classes>``, ``test/<9 classes>`` and ``test/unknown`` (the held-out class)."""
    classes = sorted(p.name for p in (SOURCE / "train").iterdir() if p.is_dir())
    if holdout not in classes:
        raise SystemExit(f"--holdout {holdout}: not a class of {SOURCE} ({', '.join(classes)})")
    links = {root / split / name: SOURCE / split / name for split in ("train", "test") for name in classes
             if name != holdout}
    links[root / "test" / "unknown"] = SOURCE / "test" / holdout
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout", nargs="+", default=["cat"], help="class(es) held out, one run each")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--keep", type=float, default=0.95, help="share of known val images the threshold keeps")
    parser.add_argument("--work", help="folder for the trees and runs (default: a temporary folder)")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found")
    work = Path(args.work or tempfile.mkdtemp(prefix="imgcls-openset-"))
    lines = []
    for holdout in args.holdout:
        data = build_tree(work / f"data-{holdout}", holdout)
        started = time.perf_counter()
        run = imgcls.train(data, out_dir=str(work / "runs"), name=f"holdout-{holdout}", evaluate=False,
                           model="efficientnet_lite0", pretrained=True, image_size=args.image_size,
                           freeze="backbone", epochs=args.epochs, head_epochs=args.epochs, batch_size=64,
                           lr=args.lr, label_smoothing=0.0, seed=0, unknown_threshold="auto", unknown_score="msp",
                           unknown_keep=args.keep)
        seconds = time.perf_counter() - started
        metrics = imgcls.evaluate(run.best_checkpoint, split="test", out_dir=run.run_dir / "eval-test",
                                  device="cpu")
        o = metrics["openset"]
        for score in ("msp", "energy"):
            m = o[score]
            at = (f"{m['known_accepted']:.4f} / {m['unknown_rejected']:.4f}" if "known_accepted" in m else "-")
            lines.append(f"{holdout:<10} {metrics['top1']:>10.4f} {score:<7} {m['auroc']:>7.4f} "
                         f"{m['fpr_at_95_tpr']:>11.4f} {at:>24} {m['n_known']:>6} {m['n_unknown']:>8} {seconds:>8.0f}")
        print(f"run: {run.run_dir}  threshold: {o['score']} >= {o['threshold']:.4f}")
    print(f"\ncifar10-small, efficientnet_lite0 frozen, {args.image_size} px, {args.epochs} epochs, "
          f"threshold fitted on val to keep {args.keep:.0%} of known images")
    print(f"{'held out':<10} {'known top1':>10} {'score':<7} {'AUROC':>7} {'FPR@95TPR':>11} "
          f"{'kept known / rej. unkn.':>24} {'known':>6} {'unknown':>8} {'train s':>8}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
