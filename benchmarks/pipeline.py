"""imgcls's input pipeline and training against the conventional PyTorch pipeline, in one run.

    python benchmarks/pipeline.py                 # everything (about 15 minutes on 2 CPU cores)
    python benchmarks/pipeline.py --parts input   # one part: input | head | finetune | tta

Each measurement runs in a fresh subprocess so its peak memory (max RSS of the process and
its loader workers) is its own. Baseline = the conventional pipeline of seeds 002/004:
torchvision ImageFolder + PIL + RandomResizedCrop/flip/ToTensor/Normalize in a DataLoader.
Prints a Markdown table; docs/performance.md records one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
HYMENOPTERA = SHARED / "hymenoptera"
WORKERS = 2


# ----------------------------------------------------------------------------- measurements
def conventional_loader(root: Path, size: int, batch: int):
    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    dataset = datasets.ImageFolder(str(root), transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=WORKERS,
                                       persistent_workers=True)


def imgcls_loader(root: Path, size: int, batch: int, cache: str):
    from imgcls.data.cached_dataset import make_dataset
    from imgcls.data.loaders import make_loader
    from imgcls.data.sources import scan_class_folders
    from imgcls.data.transforms import Preprocessing

    samples = scan_class_folders(root)
    classes = sorted({s.label for s in samples})
    pre = Preprocessing(size, (0.5,) * 3, (0.5,) * 3, 0.875, "bilinear")
    started = time.perf_counter()
    dataset, collate = make_dataset([s.path for s in samples], [classes.index(s.label) for s in samples], pre,
                                    train=True, cache=cache, workers=WORKERS)
    build = time.perf_counter() - started
    return make_loader(dataset, batch, train=True, workers=WORKERS, collate_fn=collate), build


def measure_input(kind: str, root: str, size: int, limit: int) -> dict:
    """Images per second delivered by a loader (second pass, workers already started)."""
    root = Path(root)
    build = 0.0
    if kind == "conventional":
        loader = conventional_loader(root, size, 64)
    else:
        loader, build = imgcls_loader(root, size, 64, "ram" if kind == "warm" else "none")
    _drain(loader, 1, first_epoch=0)  # start the workers, then the clock
    started = time.perf_counter()
    seen = _drain(loader, limit)
    return {"images_per_s": seen / (time.perf_counter() - started), "cache_build_s": build}


def _drain(loader, limit: int, first_epoch: int = 1) -> int:
    """Images delivered until ``limit``, over as many epochs as that takes."""
    import torch

    from imgcls.data.loaders import DeviceLoader

    finisher = DeviceLoader(loader, torch.device("cpu"))
    seen, epoch = 0, first_epoch
    while seen < limit:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            # imgcls batches may still be uint8: finishing them (jitter, normalisation) is part
            # of the input pipeline's cost, paid here in the main process as training would.
            images = finisher.finish(batch).images if hasattr(batch, "factors") else batch[0]
            seen += len(images)
            if seen >= limit:
                break
        epoch += 1
    return seen


def measure_head_epoch(cached: bool) -> dict:
    """One head-only epoch on hymenoptera at 224 (efficientnet_lite0 frozen)."""
    import imgcls
    from imgcls.training import loop

    rows = []
    config = imgcls.make_config(HYMENOPTERA, out_dir=tempfile.mkdtemp(), epochs=3, head_epochs=3,
                                feature_cache=cached, workers=WORKERS, cache="ram", augment="none")
    loop.train(config, callbacks=[lambda trainer, row: rows.append(row)])
    # Epoch 1 of the cached run includes the one-time feature extraction.
    times = [row["seconds"] for row in rows]
    return {"first_epoch_s": times[0], "later_epoch_s": sum(times[1:]) / len(times[1:]),
            "val_acc": rows[-1]["val_acc"]}


def measure_finetune(kind: str, steps: int = 12) -> dict:
    """Full fine-tuning throughput: imgcls's loop vs a plain hand-written timm loop."""
    import timm
    import torch

    torch.manual_seed(0)
    if kind == "plain":
        model = timm.create_model("efficientnet_lite0", num_classes=2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loader = conventional_loader(HYMENOPTERA / "train", 224, 32)
        model.train()
        seen, started = 0, None
        for step, (x, y) in enumerate(_cycle(loader, steps + 2)):
            if step == 2:
                seen, started = 0, time.perf_counter()  # after warm-up steps
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
        return {"images_per_s": seen / (time.perf_counter() - started)}
    import imgcls
    from imgcls.training import loop

    rates = []
    train_one_epoch = loop.train_one_epoch

    def timed(trainer, epoch):  # the training pass alone, as in the plain loop (no validation)
        started = time.perf_counter()
        stats = train_one_epoch(trainer, epoch)
        loader = trainer.loaders["train"]  # drop_last: count the images that were stepped on
        rates.append(len(loader) * loader.batch_size / (time.perf_counter() - started))
        return stats

    loop.train_one_epoch = timed
    config = imgcls.make_config(HYMENOPTERA, out_dir=tempfile.mkdtemp(), epochs=2, head_epochs=0, workers=WORKERS,
                                pretrained=False, cache="ram", report=False)
    loop.train(config)
    return {"images_per_s": rates[-1], "note": "second epoch, training pass"}


def _cycle(loader, count):
    produced = 0
    while produced < count:
        for batch in loader:
            yield batch
            produced += 1
            if produced >= count:
                return


def measure_tta(kind: str) -> dict:
    """Time to accuracy on hymenoptera: default `imgcls train` vs the plain fine-tuning loop."""
    started = time.perf_counter()
    if kind == "imgcls":
        import imgcls

        result = imgcls.train(HYMENOPTERA, out_dir=tempfile.mkdtemp(), workers=WORKERS)
        return {"seconds": time.perf_counter() - started, "val_acc": result.metrics["val"]["top1"]}
    return plain_finetune(started)


def plain_finetune(started: float) -> dict:
    """The hand-written baseline: 3 epochs, AdamW, one-cycle, RandomResizedCrop, pretrained lite0."""
    import torch
    from torchvision import datasets, transforms

    from imgcls.models.backbones import create_backbone

    torch.manual_seed(0)  # the same seed as imgcls's default, for a like-for-like comparison
    backbone, _ = create_backbone("efficientnet_lite0", pretrained=True)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 2))
    norm = transforms.Normalize([0.5] * 3, [0.5] * 3)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(str(HYMENOPTERA / "train"), train_tf), batch_size=32,
                                        shuffle=True, num_workers=WORKERS)
    val = torch.utils.data.DataLoader(datasets.ImageFolder(str(HYMENOPTERA / "val"), val_tf), batch_size=64,
                                      num_workers=WORKERS)
    epochs = 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=epochs * len(train))
    for _ in range(epochs):
        model.train()
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in val:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return {"seconds": time.perf_counter() - started, "val_acc": correct / total}


# ----------------------------------------------------------------------------- orchestration
def run_child(name: str, call: str, **kwargs) -> dict:
    """Run one measurement in a fresh interpreter; add its peak memory."""
    code = (f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import pipeline; "
            f"out = pipeline.{call}(**{kwargs!r}); "
            "out['peak_rss_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024; print('RESULT', json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(line[7:])
    print(f"  {name}: {result}", file=sys.stderr)
    return result


def make_datasets(workdir: Path) -> dict[str, tuple[Path, int, int]]:
    """name -> (train folder, image size, images per measurement)."""
    from PIL import Image

    big = workdir / "hymenoptera-1600"
    if not big.exists():
        for source in sorted((HYMENOPTERA / "train").rglob("*.jpg")):
            target = big / source.relative_to(HYMENOPTERA / "train")
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                scale = 1600 / max(image.size)
                image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                            Image.BICUBIC).save(target, quality=90)
    cifar = workdir / "cifar10"
    if not cifar.exists():
        with tarfile.open(SHARED / "cifar10-full.tar.gz") as archive:
            archive.extractall(workdir, filter="data")
    return {"hymenoptera (500 px)": (HYMENOPTERA / "train", 224, 3 * 245),
            "hymenoptera upscaled (1600 px)": (big, 224, 3 * 245),
            "CIFAR-10 train (32 px)": (cifar / "train", 32, 20_000)}


def part_input(workdir: Path) -> list[str]:
    rows = ["| dataset | conventional img/s | imgcls cold img/s (x) | imgcls warm img/s (x) | cache build s "
            "| peak MB conv / cold / warm |", "| --- | --- | --- | --- | --- | --- |"]
    for name, (root, size, limit) in make_datasets(workdir).items():
        r = {kind: run_child(f"{name} {kind}", "measure_input", kind=kind, root=str(root), size=size, limit=limit)
             for kind in ("conventional", "cold", "warm")}
        base = r["conventional"]["images_per_s"]
        rows.append(f"| {name} | {base:.0f} | {r['cold']['images_per_s']:.0f} ({r['cold']['images_per_s'] / base:.1f}x)"
                    f" | {r['warm']['images_per_s']:.0f} ({r['warm']['images_per_s'] / base:.1f}x) "
                    f"| {r['warm']['cache_build_s']:.1f} | {r['conventional']['peak_rss_mb']:.0f} / "
                    f"{r['cold']['peak_rss_mb']:.0f} / {r['warm']['peak_rss_mb']:.0f} |")
    return rows


def part_head() -> list[str]:
    plain = run_child("head epoch, backbone recomputed", "measure_head_epoch", cached=False)
    cached = run_child("head epoch, cached features", "measure_head_epoch", cached=True)
    ratio = plain["later_epoch_s"] / max(cached["later_epoch_s"], 1e-3)
    return ["| head-only epoch, hymenoptera 224 | recomputed | cached features | speed-up |", "| --- | --- | --- | --- |",
            f"| first epoch (cached: incl. extraction) s | {plain['first_epoch_s']:.1f} | {cached['first_epoch_s']:.1f} "
            f"| {plain['first_epoch_s'] / cached['first_epoch_s']:.1f}x |",
            f"| later epochs s | {plain['later_epoch_s']:.2f} | {cached['later_epoch_s']:.2f} | {ratio:.0f}x |",
            f"| val top-1 after 3 epochs | {plain['val_acc']:.4f} | {cached['val_acc']:.4f} | |",
            f"| peak MB | {plain['peak_rss_mb']:.0f} | {cached['peak_rss_mb']:.0f} | |"]


def part_finetune() -> list[str]:
    plain = run_child("fine-tune, plain timm loop", "measure_finetune", kind="plain")
    ours = run_child("fine-tune, imgcls loop", "measure_finetune", kind="imgcls")
    return ["| full fine-tuning, efficientnet_lite0 224 | img/s | peak MB |", "| --- | --- | --- |",
            f"| plain timm loop (baseline) | {plain['images_per_s']:.1f} | {plain['peak_rss_mb']:.0f} |",
            f"| imgcls loop ({ours['note']}) | {ours['images_per_s']:.1f} ({ours['images_per_s'] / plain['images_per_s']:.2f}x)"
            f" | {ours['peak_rss_mb']:.0f} |"]


def part_tta() -> list[str]:
    plain = run_child("time to accuracy, plain loop", "measure_tta", kind="plain")
    ours = run_child("time to accuracy, imgcls default", "measure_tta", kind="imgcls")
    return ["| hymenoptera, pretrained efficientnet_lite0 | val top-1 | wall s | x baseline time |",
            "| --- | --- | --- | --- |",
            f"| plain loop: 3 epochs AdamW one-cycle RRC (baseline) | {plain['val_acc']:.4f} | {plain['seconds']:.0f} | 1.00 |",
            f"| `imgcls train` defaults | {ours['val_acc']:.4f} | {ours['seconds']:.0f} "
            f"| {ours['seconds'] / plain['seconds']:.2f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["input", "head", "finetune", "tta"],
                        choices=["input", "head", "finetune", "tta"])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "imgcls-bench"))
    args = parser.parse_args()
    if not HYMENOPTERA.exists():
        raise SystemExit(f"{HYMENOPTERA} not found")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tables = {"input": lambda: part_input(workdir), "head": part_head, "finetune": part_finetune, "tta": part_tta}
    for part in args.parts:
        print("\n".join(tables[part]()) + "\n")


if __name__ == "__main__":
    main()
