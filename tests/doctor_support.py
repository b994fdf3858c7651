"""A generated messy dataset with every doctor problem planted, and the answer key."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from conftest import make_class_folders, make_image
from PIL import Image

# Gray is a class of its own so that the grayscale images planted in it are not label errors.
CLASSES = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200), "gray": (118, 118, 118)}
PLANTED_EMPTY_CLASS = "train/frog"  # a class folder without images: the empty_class finding


def _structured(size: int = 64) -> Image.Image:
    """An image with shapes, whose re-encoded copies keep their dHash (noise images don't)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * 4) % 256, (y * 3) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    pixels[16:40, 20:44] = (250, 250, 30)
    return Image.fromarray(pixels)


def make_messy_dataset(root: Path) -> dict[str, set[str]]:
    """Build ``root`` (train/val/test of class folders) and return {relative path: planted codes}."""
    make_class_folders(root / "train", per_class=10, classes=CLASSES)
    make_class_folders(root / "train", per_class=3, classes={"yellow": (220, 210, 40)}, start_seed=900)
    make_class_folders(root / "val", per_class=3, classes=CLASSES, start_seed=50)
    make_class_folders(root / "test", per_class=3, classes=CLASSES, start_seed=80)
    train = root / "train"
    planted: dict[str, set[str]] = {}

    def plant(rel: str, *codes: str) -> Path:
        planted.setdefault(rel, set()).update(codes)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    plant("train/red/zero.jpg", "zero_byte").write_bytes(b"")
    plant("train/red/Thumbs.db", "not_image").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    plant("train/green/.DS_Store", "not_image").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(40))
    plant("train/blue/notes.txt", "not_image").write_text("collected from the web, see sheet\n")
    plant("train/blue/fake.jpg", "not_image").write_text("<html>404 not found</html>\n")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    plant("train/red/truncated.jpg", "truncated").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 6 // 10])
    png = bytearray(_png(Image.new("RGB", (40, 40), CLASSES["green"])))
    start = png.index(b"IDAT") + 4
    png[start:start + 16] = bytes(range(16))  # corrupt the compressed stream
    plant("train/green/corrupt.png", "unreadable").write_bytes(bytes(png))
    # 10000 x 9000 = 90 MP, above Pillow's 89.5 MP limit, in an 11 kB file
    plant("train/blue/bomb.png", "decompression_bomb").write_bytes(_png(Image.new("1", (10000, 9000))))
    make_image(plant("train/red/is_png.jpg", "ext_mismatch"), CLASSES["red"], seed=7, fmt="PNG")
    rgb = Image.open(make_image(root / "scratch.jpg", CLASSES["red"], seed=8))
    rgb.convert("CMYK").save(plant("train/red/cmyk.jpg", "mode_cmyk"))
    (root / "scratch.jpg").unlink()
    Image.fromarray(np.full((36, 40), 118 * 257, dtype=np.uint16)).save(plant("train/gray/gray16.png", "mode_16bit"))
    alpha = Image.new("RGBA", (40, 36), CLASSES["green"] + (255,))
    alpha.putpixel((0, 0), (0, 0, 0, 0))
    alpha.save(plant("train/green/alpha.png", "mode_alpha"))
    Image.new("RGB", (40, 36), CLASSES["blue"]).quantize(8).save(plant("train/blue/palette.png", "mode_palette"))
    make_image(root / "scratch.jpg", CLASSES["gray"], seed=13)
    Image.open(root / "scratch.jpg").convert("L").save(plant("train/gray/gray.jpg", "mode_grayscale"))
    (root / "scratch.jpg").unlink()
    make_image(plant("train/red/tiny.jpg", "tiny"), CLASSES["red"], size=(12, 10), seed=9)
    shutil.copyfile(train / "red/red_000.jpg", plant("train/red/red_000_copy.jpg", "duplicate"))
    shutil.copyfile(train / "green/green_001.jpg", plant("train/blue/from_green.jpg", "conflicting_label", "label_error"))
    plant("train/green/green_001.jpg", "conflicting_label")
    shutil.copyfile(root / "test/blue/blue_001.jpg", plant("train/blue/leaked_exact.jpg", "leak"))
    _structured().save(root / "val/green/structured.png")
    _structured().save(plant("train/green/leaked_near.jpg", "leak"), quality=80)
    make_image(plant("test/purple/purple_000.jpg", "unknown_class"), (150, 40, 160), seed=10)
    make_image(plant("train/stray.jpg", "unlabeled"), CLASSES["red"], seed=11)
    plant("README.md", "unused").write_text("A messy dataset for tests.\n")  # beside the splits: unused by training
    (root / PLANTED_EMPTY_CLASS).mkdir()
    make_image(plant("train/green/looks_red.jpg", "label_error"), CLASSES["red"], seed=12)
    return planted


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
