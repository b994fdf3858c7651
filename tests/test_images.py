"""Decoding: every mode to RGB, EXIF orientation, and one-line reasons for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgcls.data.images import IMAGE_EXTENSIONS, ImageDecodeError, is_image_file, load_rgb, sniff_format


def test_modes_become_8bit_rgb(tmp_path):
    base = np.full((20, 30, 3), (10, 120, 240), np.uint8)
    rgb = Image.fromarray(base)
    files = {
        "gray.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "bw.bmp": rgb.convert("1"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    for name in files:
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (30, 20), name


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert out.dtype == np.uint8
    # Clipping (Pillow's plain convert) would saturate everything above 255 to white.
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert len(np.unique(out[..., 0])) > 32


def test_transparency_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    image.save(tmp_path / "clear.png")
    assert np.asarray(load_rgb(tmp_path / "clear.png")).min() == 255
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "clear_palette.png", transparency=0)
    assert np.asarray(load_rgb(tmp_path / "clear_palette.png")).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"this is text, not a photo\n" * 10, "not an image"),
    ],
)
def test_bad_files_raise_one_line_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_rgb(tmp_path / name)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_fails_full_decode(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_rgb(tmp_path / "cut.jpg")


def test_draft_decodes_large_jpeg_smaller_but_not_below_target(tmp_path):
    Image.new("RGB", (1600, 1200), "blue").save(tmp_path / "big.jpg")
    out = load_rgb(tmp_path / "big.jpg", draft_size=256)
    assert min(out.size) >= 256 and out.size[0] < 1600


def test_image_file_filter(tmp_path):
    assert is_image_file(tmp_path / "a.JPG")
    assert not is_image_file(tmp_path / "Thumbs.db")
    assert not is_image_file(tmp_path / ".DS_Store")
    assert not is_image_file(tmp_path / "._a.jpg")


def test_every_extension_pillow_decodes_counts_and_unknown_ones_are_sniffed(tmp_path):
    # .jfif is what Windows and browsers save JPEGs as; a trained-on file needs no list of ours
    assert {".jfif", ".jpe", ".webp", ".tif", ".qoi", ".apng"} <= IMAGE_EXTENSIONS
    assert not {".h5", ".grib", ".mpg", ".pdf", ".txt"} & IMAGE_EXTENSIONS  # identify-only or save-only in Pillow
    pixels = Image.fromarray(np.full((8, 8, 3), 90, np.uint8))
    pixels.save(tmp_path / "photo.jfif", "JPEG")
    pixels.save(tmp_path / "photo.JPEG", "JPEG")
    pixels.save(tmp_path / "photo.webp", "WEBP")
    pixels.save(tmp_path / "download", "JPEG")  # saved without an extension
    pixels.save(tmp_path / "scan.dat", "PNG")  # an extension that says nothing
    pixels.save(tmp_path / "x.tga", "TGA")
    pixels.save(tmp_path / "tga_data", "TGA")  # TGA has no signature: not guessed from content
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    (tmp_path / "LICENSE").write_text("MIT\n")
    (tmp_path / "P3").write_text("P3 is not a header here\n")
    found = {p.name for p in tmp_path.iterdir() if is_image_file(p)}
    assert found == {"photo.jfif", "photo.JPEG", "photo.webp", "download", "scan.dat", "x.tga"}
    assert sniff_format(tmp_path / "download") == "JPEG" and sniff_format(tmp_path / "scan.dat") == "PNG"
    assert sniff_format(tmp_path / "missing") is None and sniff_format(tmp_path) is None
    assert load_rgb(tmp_path / "photo.jfif").size == (8, 8) and load_rgb(tmp_path / "download").size == (8, 8)
