"""Turn any image file into an 8-bit RGB PIL image, or a one-line reason why not."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgcls.errors import UserError

# Extensions Pillow decodes that people keep in image datasets. Anything else (Thumbs.db,
# .DS_Store, notes.txt) is not a sample and is ignored when folders are scanned.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

# Transparent pixels are composited on white: photos cut out of their background are
# conventionally shown on white, and black would add a dark border the model learns.
_BACKGROUND = (255, 255, 255)


class ImageDecodeError(UserError):
    """A file that cannot become an RGB image; ``str()`` is a one-line reason."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully to RGB with EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder shrink by 2/4/8 while keeping both sides at least
    that large, which makes large photos several times cheaper to decode.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", _draft_target(image.size, draft_size))
                image.load()  # full decode: truncated files fail here, not later
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("image is too large (decompression-bomb limit)") from None
    except UnidentifiedImageError:
        reason = "empty file (0 bytes)" if path.stat().st_size == 0 else "not an image Pillow can read"
        raise ImageDecodeError(reason) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"cannot decode: {err}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert every Pillow mode to 8-bit RGB without clipping or black transparency."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _rescale_to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _rescale_to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit and float data at 255, which turns most 16-bit
    # photos white; scale by the type's range instead.
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = (array - low) * scale
    else:
        array = array / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L")


def _draft_target(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    width, height = size
    scale = min_side / min(width, height)
    return max(1, int(width * scale)), max(1, int(height * scale))
