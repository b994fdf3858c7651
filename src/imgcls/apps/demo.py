"""``imgcls demo``: the whole job on the bundled hymenoptera sample (ants vs bees).

The sample is the classic 398-photo transfer-learning set, shipped at 256 px (8.5 MB) so
the demo needs no download. It trains the default pretrained backbone, evaluates the best
checkpoint and predicts the validation folder, then says where everything is.
"""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

from imgcls.api import load, train
from imgcls.inference.rows import write_predictions_csv

SAMPLE = Path(__file__).parents[1] / "assets" / "hymenoptera-256.tar.gz"


def extract_sample(out_dir: Path) -> Path:
    """Unpack the sample once into ``out_dir/data/hymenoptera`` and return that folder."""
    target = out_dir / "data"
    dataset = target / "hymenoptera"
    if not (dataset / "val").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SAMPLE) as archive:
            archive.extractall(target, filter="data")
    return dataset


def run_demo(out_dir: Path, epochs: int | None = None) -> None:
    started = time.perf_counter()
    dataset = extract_sample(out_dir)
    print(f"dataset: {dataset} (2 classes: ants, bees)")
    options = {"epochs": epochs} if epochs else {}
    result = train(dataset, out_dir=str(out_dir), name="demo", **options)
    classifier = load(result.best_checkpoint)
    rows = classifier.predict([dataset / "val"], topk=2)
    predictions = write_predictions_csv(rows, result.run_dir / "predictions.csv", topk=2)
    val = result.metrics["val"]
    print(f"\nval top-1 {val['top1']:.4f}, macro-F1 {val['f1_macro']:.4f}, log loss {val['log_loss']:.4f} "
          f"in {time.perf_counter() - started:.0f}s")
    print(f"run folder:       {result.run_dir}")
    print(f"best checkpoint:  {result.best_checkpoint}")
    print(f"per-epoch log:    {result.run_dir / 'metrics.csv'} (TensorBoard: {result.run_dir / 'tensorboard'})")
    print(f"val metrics:      {val['files']['json']}")
    print(f"predictions:      {predictions}")
    print(f"next: imgcls predict {result.best_checkpoint} YOUR_IMAGES/ --out preds.csv")
