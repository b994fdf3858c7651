"""Every export target on this CPU: PyTorch eager, TorchScript, ONNX Runtime and OpenVINO,
fp32 and int8, in images per second at batch 1 and 32; and the timm folder checked with
timm alone.

    .venv/bin/python benchmarks/export_targets.py --checkpoint runs/x   # a run whose dataset is at hand
    .venv/bin/python benchmarks/export_targets.py                       # makes a quick efficientnet_lite0 run

Exports the checkpoint to each format with imgcls's exporters, so every file is checked
against PyTorch as ``imgcls export`` checks it (fp32 parity; int8 top-1 agreement >= 99% on
the validation split, else the int8 model is marked as failing and not shipped). The timm
folder is loaded in a separate Python process that imports timm and torch only; its logits
on 32 validation images are compared with imgcls's. Then the same preprocessed batch goes
through every runtime, each measured for at least --seconds after warm-up, PyTorch eager
first as the baseline, all in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from deploy_common import quick_checkpoint  # noqa: E402
from onnx_vs_torch import throughput  # noqa: E402

import imgcls  # noqa: E402
from imgcls.deploy.export import ExportError, export_checkpoint, parity_batches, validation_images  # noqa: E402
from imgcls.deploy.export_openvino import export_openvino  # noqa: E402
from imgcls.deploy.export_timm import export_timm  # noqa: E402
from imgcls.deploy.export_torchscript import export_torchscript  # noqa: E402
from imgcls.inference.backends import INPUT_NAME, LOGITS_NAME, open_openvino, open_session  # noqa: E402

TIMM_ALONE = """
import json, sys
import timm, torch
from safetensors.torch import load_file, save_file
model = timm.create_model(f"local-dir:{sys.argv[1]}", pretrained=True).eval()
with torch.no_grad():
    save_file({"logits": model(load_file(sys.argv[2])["images"])}, sys.argv[3])
print(json.dumps({"imgcls_imported": any(m.split(".")[0] == "imgcls" for m in sys.modules)}))
"""


def timm_alone(classifier, folder: Path, images: torch.Tensor, workdir: Path) -> float:
    """Max |logit difference| of the timm folder, run by timm in a process without imgcls."""
    save_file({"images": images}, str(workdir / "in.safetensors"))
    done = subprocess.run([sys.executable, "-c", TIMM_ALONE, str(folder), str(workdir / "in.safetensors"),
                           str(workdir / "out.safetensors")], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1])["imgcls_imported"] is False
    with torch.no_grad():
        expected = classifier.torch_module(images)
    return float((load_file(str(workdir / "out.safetensors"))["logits"] - expected).abs().max())


def exports(checkpoint: Path, workdir: Path) -> tuple[dict, list[str]]:
    """Every export of ``checkpoint``: {(runtime, precision): file} and the exports' summaries.
    An int8 model that fails its agreement check is kept, labelled as not shipped."""
    notes, files = [], {}
    for runtime, run in (("onnxruntime", lambda: export_checkpoint(checkpoint, workdir / "model.onnx", int8=True)),
                         ("openvino", lambda: export_openvino(checkpoint, workdir / "model.xml", int8=True))):
        try:
            report, shipped = run(), True
        except ExportError as err:
            if err.report is None or err.report.int8_path is None:
                raise  # the fp32 model itself failed: nothing to measure
            report, shipped = err.report, False
        notes.append(report.summary())
        files[(runtime, "fp32")] = report.path
        files[(runtime, "int8" if shipped else "int8, fails the 99% check")] = report.int8_path
    script = export_torchscript(checkpoint, workdir / "model.torchscript")
    notes.append(script.summary())
    files[("torchscript", "fp32")] = script.path
    return files, notes


def runners(classifier, files: dict) -> dict:
    """(runtime, precision) -> a function of one float32 NCHW numpy batch."""
    model = classifier.torch_module.eval()
    fmt = classifier.backend.memory_format

    def eager(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch).contiguous(memory_format=fmt))

    found = {("pytorch eager", "fp32"): eager}
    for (runtime, precision), path in sorted(files.items(), key=lambda item: ORDER.index(item[0][0])):
        if runtime == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")  # the file this run just wrote

            def scripted(batch, module=module):
                with torch.inference_mode():
                    return module(torch.from_numpy(batch).contiguous(memory_format=fmt))[0]
            found[(runtime, precision)] = scripted
        elif runtime == "onnxruntime":
            session = open_session(path, "cpu")
            found[(runtime, precision)] = lambda batch, s=session: s.run([LOGITS_NAME], {INPUT_NAME: batch})
        else:
            compiled, _ = open_openvino(path, "cpu")
            found[(runtime, precision)] = lambda batch, c=compiled: c(batch)[LOGITS_NAME]
    return found


ORDER = ["pytorch eager", "torchscript", "onnxruntime", "openvino"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an existing run folder or model file (default: make one)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=8.0, help="time per measurement after warm-up")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(workdir, args.model,
                                                                                    args.image_size)
        classifier = imgcls.load(checkpoint, device="cpu")
        files, notes = exports(checkpoint, workdir)
        timm_report = export_timm(checkpoint, workdir / "timm")
        val, why = validation_images(classifier, None)
        images = torch.cat(parity_batches(val, why, classifier.preprocessing, 32)[0])
        timm_diff = timm_alone(classifier, workdir / "timm", images, workdir)
        print("\n\n".join(notes + [timm_report.summary()]))
        print(f"\ntimm alone (a process without imgcls) vs imgcls: max |logit difference| = {timm_diff:.2e} "
              f"on {len(images)} validation images")
        table(classifier, runners(classifier, files), args.seconds)
    print(f"\n(whole run: {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f})")
    return 0


def table(classifier, found: dict, seconds: float) -> None:
    size = classifier.preprocessing.image_size
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); every runtime at its default threads; "
          f"{classifier.config.model.name} at {size} px; {seconds:.0f} s per measurement; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share these cores)\n")
    print("| runtime | precision | batch 1 img/s | batch 32 img/s | vs PyTorch eager (b1 / b32) |")
    print("| --- | --- | ---: | ---: | ---: |")
    rates = {}
    for key, run in found.items():
        rates[key] = [throughput(run, np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32),
                                 seconds)[0] for n in (1, 32)]
        base = rates[("pytorch eager", "fp32")]
        print(f"| {key[0]} | {key[1]} | {rates[key][0]:.1f} | {rates[key][1]:.1f} | "
              f"{rates[key][0] / base[0]:.2f}x / {rates[key][1] / base[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
