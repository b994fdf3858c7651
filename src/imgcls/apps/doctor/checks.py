"""The doctor's problem codes and the checks that need one file's header only.

Codes are part of the interface (``overview.csv``, ``doctor.json``, ``quarantine.csv``,
scripts that grep them): add new ones, never rename or reuse one.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from imgcls.data.images import IMAGE_EXTENSIONS, SNIFF_FORMATS

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Problem:
    code: str
    severity: str  # "error": blocking, --fix moves the file; "warning": reported only; "info": how it was read
    meaning: str


PROBLEMS = {p.code: p for p in (
    Problem("zero_byte", ERROR, "empty file (0 bytes)"),
    Problem("not_image", ERROR, "not an image Pillow can read (Thumbs.db, .DS_Store, text...)"),
    Problem("unreadable", ERROR, "an image that cannot be read or decoded"),
    Problem("truncated", ERROR, "image data ends before the image does"),
    Problem("decompression_bomb", ERROR, "more pixels than Pillow's decompression-bomb limit; training refuses it"),
    Problem("duplicate", ERROR, "byte-identical copy of another file of the same class and split (first one kept)"),
    Problem("conflicting_label", ERROR, "the same file appears under two or more classes"),
    Problem("leak", ERROR, "same or near-identical image in a more held-out split (train < val < test)"),
    Problem("unknown_class", ERROR, "class folder in val/test with no training images; training refuses the dataset"),
    Problem("ext_mismatch", WARNING, "the file extension does not match the image format"),
    Problem("mode_cmyk", WARNING, "CMYK image, converted to RGB for training"),
    Problem("mode_16bit", WARNING, "16-bit or float image, rescaled to 8 bits for training"),
    Problem("mode_alpha", WARNING, "has transparency, composited on white for training"),
    Problem("mode_palette", WARNING, "palette image, converted to RGB for training"),
    Problem("mode_grayscale", WARNING, "grayscale image, replicated to three channels for training"),
    Problem("tiny", WARNING, "smaller than the minimum side length"),
    Problem("unlabeled", WARNING, "image outside any class folder (or split folder): training ignores it"),
    Problem("label_error", WARNING, "a cross-validated probe is confident the image belongs to another class"),
    Problem("imbalance", WARNING, "largest class / smallest class in train exceeds the ratio (dataset-level)"),
    Problem("unused", WARNING, "a file training does not use (e.g. outside the split folders): in unused_files.csv"),
    Problem("empty_class", WARNING, "a class folder without images: training has no such class (folder-level)"),
    Problem("split_folder", INFO, "a folder read as a split under another name, e.g. Training/ as train"),
    Problem("one_class", ERROR, "fewer than 2 classes: training refuses the dataset (dataset-level)"),
    Problem("empty_split", ERROR, "a split without usable images, or val left empty by the automatic split: "
                                  "training refuses the dataset (dataset-level)"),
    Problem("small_split", ERROR, "a split of a single image: training refuses the dataset (dataset-level)"),
    Problem("ambiguous_layout", ERROR, "the folders read two ways, or two folders name one split: training "
                                       "refuses the dataset (dataset-level)"),
    Problem("extra_level", ERROR, "the dataset sits one folder deeper than the path given: training refuses it"),
    Problem("label_missing", WARNING, "multilabel: a label no image of a split carries: it cannot be learnt (train) "
                                      "or measured (val/test) there (dataset-level)"),
    Problem("label_always", WARNING, "multilabel: a label every training image carries: nothing to learn "
                                     "(dataset-level)"),
    Problem("empty_labels", INFO, "multilabel: images with an empty label set, valid negatives (counted per split)"),
)}

BLOCKING = frozenset(code for code, p in PROBLEMS.items() if p.severity == ERROR)

# Codes about a folder or the whole dataset, not a file: counted by findings, never moved by --fix.
DATASET_LEVEL = frozenset({"imbalance", "empty_class", "split_folder", "one_class", "empty_split", "small_split",
                           "ambiguous_layout", "extra_level", "label_missing", "label_always", "empty_labels"})

# Extensions each Pillow format is expected under. A format missing here is only checked
# against IMAGE_EXTENSIONS (whether training picks the file up by its name or by content).
FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "MPO": {".jpg", ".jpeg", ".jpe", ".mpo"},  # camera JPEGs with a second frame
    "PNG": {".png"},
    "GIF": {".gif"},
    "BMP": {".bmp"},
    "DIB": {".bmp", ".dib"},
    "WEBP": {".webp"},
    "TIFF": {".tif", ".tiff"},
    "PPM": {".ppm", ".pgm", ".pbm", ".pnm"},
}

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def check_header(rel: str, image: Image.Image, min_size: int) -> dict[str, str]:
    """Problems visible from an opened (not decoded) image: mode, extension, size."""
    found: dict[str, str] = {}
    mode_code = mode_problem(image)
    if mode_code:
        found[mode_code] = f"mode {image.mode}"
    extension_detail = extension_problem(rel, image.format)
    if extension_detail:
        found["ext_mismatch"] = extension_detail
    width, height = image.size
    if min(width, height) < min_size:
        found["tiny"] = f"{width}x{height} is below {min_size} px"
    return found


def mode_problem(image: Image.Image) -> str | None:
    mode = image.mode
    if mode == "CMYK":
        return "mode_cmyk"
    if mode in _SIXTEEN_BIT:
        return "mode_16bit"
    if mode in _ALPHA or (mode in ("P", "L") and "transparency" in image.info):
        return "mode_alpha"
    if mode == "P":
        return "mode_palette"
    if mode in ("L", "1"):
        return "mode_grayscale"
    return None


def extension_problem(rel: str, image_format: str | None) -> str | None:
    dot = rel.rfind(".")
    extension = rel[dot:].lower() if dot > rel.rfind("/") else ""
    if extension not in IMAGE_EXTENSIONS:
        named = f"{image_format} image named '{extension or '(no extension)'}'"
        recognised = image_format in SNIFF_FORMATS or image_format == "MPO"  # MPO is sniffed as JPEG
        return f"{named}, {'which training recognises by content' if recognised else 'which training skips'}"
    expected = FORMAT_EXTENSIONS.get(image_format or "")
    if expected is not None and extension not in expected:
        return f"{image_format} data in a '{extension}' file"
    return None


def decode_problem(message: str) -> str:
    """``truncated`` or ``unreadable`` from a decoder's error message."""
    lowered = message.lower()
    return "truncated" if "truncated" in lowered else "unreadable"
