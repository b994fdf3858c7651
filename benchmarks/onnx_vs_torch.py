"""ONNX Runtime vs PyTorch eager: CPU inference throughput at batch 1 and 32.

    .venv/bin/python benchmarks/onnx_vs_torch.py                  # efficientnet_lite0 at 224
    .venv/bin/python benchmarks/onnx_vs_torch.py --checkpoint runs/x --no-int8

Makes a real checkpoint (head-only epoch on generated images) unless one is given, exports
it with ``imgcls export`` (parity checked), and times the same preprocessed batches through
PyTorch eager (the baseline, measured in the same run) and ONNX Runtime (fp32, and int8
static-quantised unless --no-int8). Each measurement runs at least --seconds after warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy_common import quick_checkpoint  # noqa: E402

import imgcls  # noqa: E402
from imgcls.deploy.export import export_checkpoint  # noqa: E402
from imgcls.inference.backends import INPUT_NAME, LOGITS_NAME, open_session  # noqa: E402


def throughput(run, batch: np.ndarray, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(images per second, milliseconds per batch) of ``run(batch)``."""
    for _ in range(warmup):
        run(batch)
    calls, started = 0, time.perf_counter()
    while True:
        run(batch)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 5:
            return calls * len(batch) / elapsed, 1000 * elapsed / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an existing checkpoint (default: make one)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", default="1,32", help="batch sizes to time")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement after warm-up")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(Path(tmp), args.model,
                                                                                    args.image_size)
        report = export_checkpoint(checkpoint, Path(tmp) / "model.onnx", int8=not args.no_int8)
        print(report.summary())
        classifier = imgcls.load(checkpoint, device="cpu")
        model = classifier.torch_module.eval()
        size = classifier.preprocessing.image_size

        def torch_run(batch: np.ndarray):
            with torch.inference_mode():
                return model(torch.from_numpy(batch))

        runners = {"pytorch eager fp32": torch_run}
        for name, path in (("onnxruntime fp32", report.path), ("onnxruntime int8", report.int8_path)):
            if path is not None:
                session = open_session(path, "cpu")
                runners[name] = lambda batch, s=session: s.run([LOGITS_NAME], {INPUT_NAME: batch})
        print(f"\nCPU: {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; "
              f"ONNX Runtime default threads; {classifier.config.model.name} at {size} px; "
              f"{args.seconds:.0f} s per measurement")
        print(f"{'runtime':22s} {'batch':>5s} {'images/s':>10s} {'ms/batch':>10s} {'vs pytorch':>11s}")
        for batch_size in (int(b) for b in args.batches.split(",")):
            batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
            baseline = None
            for name, run in runners.items():
                rate, ms = throughput(run, batch, args.seconds)
                baseline = baseline or rate
                print(f"{name:22s} {batch_size:5d} {rate:10.1f} {ms:10.1f} {rate / baseline:10.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
