"""Turn any image file into an 8-bit RGB PIL image, or a one-line reason why not."""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgcls.errors import UserError

# Formats Pillow can open but not decode into pixels: the stubs (BUFR, GRIB, HDF5, WMF
# need a handler installed from outside) and MPEG, whose plugin only reads the frame size
# (load() would give a black image). Files of these formats are not samples.
_UNDECODABLE = frozenset({"MPEG"})


def _decodable_formats() -> frozenset[str]:
    Image.init()
    formats = {name for name, (factory, _) in Image.OPEN.items()
               if name not in _UNDECODABLE
               and not (inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile))}
    # MPO (a JPEG with extra frames) is opened by the JPEG plugin, so it has no entry of its own.
    return frozenset(formats | {"MPO"} if "JPEG" in formats else formats)


DECODABLE_FORMATS = _decodable_formats()

# Every extension Pillow's own registry maps to a format it decodes (.jpg, .jfif, .webp,
# .tif, .avif, .qoi, ...): anything else (Thumbs.db, notes.txt) is sniffed by content.
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in DECODABLE_FORMATS)

# Formats recognised by content when a file's extension says nothing. Only formats with a
# signature check: Pillow tries the others (TGA, IM, IPTC) on any bytes, and random data
# can pass for them.
SNIFF_FORMATS = tuple(sorted(name for name in DECODABLE_FORMATS if Image.OPEN.get(name, (None, None))[1]))

# Transparent pixels are composited on white: photos cut out of their background are
# conventionally shown on white, and black would add a dark border the model learns.
_BACKGROUND = (255, 255, 255)


class ImageDecodeError(UserError):
    """A file that cannot become an RGB image; ``str()`` is a one-line reason."""


def is_image_file(path: Path) -> bool:
    """Is ``path`` an image training reads? By extension (any that Pillow decodes, any
    case), else by content: a JPEG saved without an extension, a PNG named ``.dat``.
    Hidden files (``.DS_Store``, ``._a.jpg``) never are. Reads at most the file's header."""
    path = Path(path)
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or sniff_format(path) is not None


def sniff_format(path: Path) -> str | None:
    """The image format of ``path`` read from its content (header only, nothing decoded),
    or None when it is not an image Pillow decodes (or cannot be read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=SNIFF_FORMATS) as image:
                return image.format
    except Image.DecompressionBombError:
        return "image"  # an image, too large to decode: load_rgb says so when it is used
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return None


def load_rgb(path: str | Path | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` (a file, or an open binary stream such as a tar shard's member) fully
    to RGB with EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder shrink by 2/4/8 while keeping both sides at least
    that large, which makes large photos several times cheaper to decode.
    """
    path = path if hasattr(path, "read") else Path(path)
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
        empty = path.getbuffer().nbytes == 0 if isinstance(path, io.BytesIO) else \
            not hasattr(path, "read") and path.stat().st_size == 0
        reason = "empty file (0 bytes)" if empty else "not an image Pillow can read"
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
