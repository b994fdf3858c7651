"""Untrusted image bytes from the network -> an RGB image, or a rejection with an HTTP status.

The file name and the declared Content-Type are ignored: the format is read from the
first bytes (magic numbers) and only that format's decoder is allowed to open the data,
so a file that claims to be a JPEG but is a PDF, a script or an archive is refused (415)
before any decoder sees it. Data in a supported format that does not decode, and images
whose declared size would expand into a decompression bomb, are refused with 422.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from imgcls.data.images import _draft_target, to_rgb

# (signature, Pillow format). Pillow can open more, but these are the formats cameras,
# phones and browsers produce; every extra decoder is extra attack surface on a server.
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# Common things people upload by mistake, named in the error so it says what was sent.
_KNOWN_OTHERS: list[tuple[bytes, str]] = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"),
    (b"<svg", "an SVG drawing (vector, not supported)"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"{", "JSON text"),
]


class RejectedUpload(Exception):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name the bytes start with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def _describe(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    for signature, what in _KNOWN_OTHERS:
        if head.startswith(signature.lower()):
            return what
    return "not an image"


def decode_upload(data: bytes, name: str, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode an uploaded image fully to RGB (EXIF orientation applied, first frame only).

    ``draft_size`` lets the JPEG decoder shrink large photos as ``imgcls predict`` does, so
    the server and the CLI see the same pixels.
    """
    if not data:
        raise RejectedUpload(422, f"{name}: empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise RejectedUpload(415, f"{name}: unsupported content ({_describe(data)}); send a {SUPPORTED} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise RejectedUpload(422, f"{name}: {width}x{height} pixels is over the server's limit of "
                                              f"{max_pixels:,} (decompression-bomb guard)")
                if draft_size and fmt == "JPEG":
                    image.draft("RGB", _draft_target(image.size, draft_size))
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except RejectedUpload:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RejectedUpload(422, f"{name}: image too large (decompression-bomb guard)") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure on untrusted bytes is the client's problem
        reason = str(err).splitlines()[0][:160] if str(err) else err.__class__.__name__
        raise RejectedUpload(422, f"{name}: looks like {fmt} but cannot be decoded ({reason})") from None
