"""Multilabel on CIFAR-10 mosaics: the default ``imgcls train`` against a one-vs-rest logistic
regression on the same frozen features, then the ONNX round trip.

The dataset is built from ../shared/datasets/cifar10-small: each image is a 2x2 mosaic of
four random 32x32 CIFAR images (64x64 in all), labelled with the set of classes it shows
(1 to 4 labels). Train and val mosaics come from disjoint parts of the CIFAR train images
(85% / 15%, so no image is seen in both), the held-apart test mosaics from the CIFAR test
images. It is written to a folder with ``labels.csv`` (``path,labels,split``).

1. ``imgcls train labels.csv`` with every default (efficientnet_lite0 offline-pretrained,
   224 px, 8 head epochs on cached features, fine-tuning when the head underfits, BCE,
   thresholds fitted on val);
2. the baseline: scikit-learn's ``OneVsRestClassifier(LogisticRegression)`` on the pooled
   features of the same pretrained backbone (:class:`imgcls.inference.embedding.BackboneEmbedder`,
   the eval preprocessing training uses), C chosen on val by mAP, thresholds fitted on val
   with the same rule as imgcls (:func:`imgcls.evaluation.thresholds.fit_thresholds`);
3. ``imgcls export`` the run, ``imgcls predict`` every test image with the run and with the
   .onnx file, and compare the label sets image by image.

Test mAP and samples-F1 of both, wall times and the round trip are printed and written to
``benchmarks/results/multilabel_mosaics.json``.

    .venv/bin/python benchmarks/multilabel_mosaics.py [--train 3000 --val 500 --test 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from imgcls.data.sources import discover, sample_targets
from imgcls.evaluation.thresholds import fit_thresholds
from imgcls.inference.embedding import BackboneEmbedder
from imgcls.inference.predictions import Predictions
from imgcls.metrics.multilabel import multilabel_metrics

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "cifar10-small"
RESULTS = ROOT / "benchmarks" / "results" / "multilabel_mosaics.json"
IMGCLS = [sys.executable, "-m", "imgcls"]


def cifar_files(split: str) -> list[tuple[Path, str]]:
    return [(path, folder.name) for folder in sorted((SOURCE / split).iterdir()) if folder.is_dir()
            for path in sorted(folder.iterdir())]


def build_mosaics(out: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``out/{train,val,test}/NNNNN.png`` mosaics and ``out/labels.csv``; returns the manifest."""
    rng = np.random.default_rng(seed)
    train = cifar_files("train")
    order = rng.permutation(len(train))
    cut = int(len(train) * 0.85)
    pools = {"train": [train[i] for i in order[:cut]], "val": [train[i] for i in order[cut:]],
             "test": cifar_files("test")}
    rows = []
    for split, count in counts.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        pool = pools[split]
        for i in range(count):
            picks = [pool[j] for j in rng.choice(len(pool), 4, replace=False)]
            canvas = Image.new("RGB", (64, 64))
            for k, (path, _) in enumerate(picks):
                with Image.open(path) as tile:
                    canvas.paste(tile.convert("RGB").resize((32, 32)), (32 * (k % 2), 32 * (k // 2)))
            name = f"{split}/{i:05d}.png"
            canvas.save(out / name)
            rows.append([name, ";".join(sorted({label for _, label in picks})), split])
    manifest = out / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return manifest


def run(command: list[str], log: Path) -> float:
    """Run an imgcls command, its output to ``log``; returns the wall time in seconds."""
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - started


def logistic_baseline(manifest: Path) -> dict:
    """One-vs-rest logistic regression on frozen pretrained features, chosen and thresholded on val."""
    started = time.perf_counter()
    data = discover(manifest)
    embedder = BackboneEmbedder("efficientnet_lite0", pretrained=True)
    features, targets = {}, {}
    for split in ("train", "val", "test"):
        samples = data.splits[split]
        vectors, decoded = embedder([s.path for s in samples])
        features[split] = vectors
        targets[split] = np.asarray(sample_targets(samples, data.classes), dtype=np.int64)[decoded]
    extracted = time.perf_counter() - started
    best = None
    for c in (0.01, 0.1, 1.0):
        model = OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(features["train"], targets["train"])
        val = model.predict_proba(features["val"])
        score = multilabel_metrics(targets["val"], val, data.classes)["map_macro"]
        if best is None or score > best[0]:
            best = (score, c, model, val)
    _, c, model, val = best
    thresholds = fit_thresholds(Predictions(probs=val, targets=targets["val"], indices=np.arange(len(val)),
                                            multilabel=True), data.classes)
    test = model.predict_proba(features["test"])
    fitted = multilabel_metrics(targets["test"], test, data.classes, np.array(thresholds.per_label))
    plain = multilabel_metrics(targets["test"], test, data.classes)
    return {"C": c, "test": _headline(fitted), "test_at_0.5": _headline(plain),
            "feature_seconds": round(extracted, 1), "wall_seconds": round(time.perf_counter() - started, 1)}


def _headline(m: dict) -> dict:
    keys = ("map_macro", "map_micro", "f1_samples", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss",
            "cardinality_pred", "cardinality_true")
    return {key: round(float(m[key]), 4) for key in keys}


def round_trip(run_dir: Path, test_dir: Path, work: Path) -> dict:
    """Export the run to ONNX and compare ``imgcls predict`` label sets of the two, image by image."""
    seconds = run(IMGCLS + ["export", str(run_dir)], work / "export.log")
    torch_csv, onnx_csv = work / "predict-torch.csv", work / "predict-onnx.csv"
    run(IMGCLS + ["predict", str(run_dir), str(test_dir), "--out", str(torch_csv)], work / "predict-torch.log")
    run(IMGCLS + ["predict", str(run_dir / "best.onnx"), str(test_dir), "--out", str(onnx_csv)],
        work / "predict-onnx.log")
    read = lambda path: {r["path"]: r["labels"] for r in csv.DictReader(path.open())}  # noqa: E731
    a, b = read(torch_csv), read(onnx_csv)
    same = sum(a[p] == b.get(p) for p in a)
    return {"images": len(a), "same_label_sets": same, "export_seconds": round(seconds, 1),
            "parity": (work / "export.log").read_text().strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--work", help="folder for the mosaics and the run (default: a temporary folder)")
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"{SOURCE} not found")
    work = Path(args.work or tempfile.mkdtemp(prefix="imgcls-mosaics-"))
    manifest = work / "mosaics" / "labels.csv"
    if not manifest.is_file():
        build_mosaics(work / "mosaics", {"train": args.train, "val": args.val, "test": args.test})
    print(f"data: {manifest}", flush=True)
    run_dir = work / "runs" / "mosaics"
    train_seconds = None
    if not (run_dir / "eval-test" / "eval.json").is_file():
        train_seconds = run(IMGCLS + ["train", str(manifest), "--out-dir", str(work / "runs"), "--name", "mosaics"],
                            work / "train.log")
    evaluation = json.loads((run_dir / "eval-test" / "eval.json").read_text())
    history = list(csv.DictReader((run_dir / "metrics.csv").open()))
    imgcls_result = {"test": _headline(evaluation), "train_command_seconds": train_seconds and round(train_seconds, 1),
                     "epochs": len(history), "phases": [r["phase"] for r in history]}
    print(f"imgcls: {imgcls_result}", flush=True)
    baseline_file = work / "baseline.json"  # the baseline is kept, so that a rerun after an interruption skips it
    if not baseline_file.is_file():
        baseline_file.write_text(json.dumps(logistic_baseline(manifest), indent=2))
    baseline = json.loads(baseline_file.read_text())
    print(f"logistic regression: {baseline}", flush=True)
    trip = round_trip(run_dir, work / "mosaics" / "test", work)
    print(f"ONNX round trip: {trip}", flush=True)
    results = {"data": {"train": args.train, "val": args.val, "test": args.test, "source": str(SOURCE)},
               "imgcls": imgcls_result, "logistic_regression": baseline, "onnx_round_trip": trip}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'':24s} {'test mAP':>9s} {'samples-F1':>11s}")
    for name, row in (("imgcls train (default)", imgcls_result["test"]), ("one-vs-rest logistic", baseline["test"])):
        print(f"{name:24s} {row['map_macro']:9.4f} {row['f1_samples']:11.4f}")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
