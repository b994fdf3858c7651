"""The doctor's checks one by one, on hand-made records and features (no images decoded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.apps.doctor.checks import BLOCKING, PROBLEMS, decode_problem, extension_problem, mode_problem
from imgcls.apps.doctor.deep import Features, embedding_leaks, label_errors
from imgcls.apps.doctor.groups import class_balance, hash_leaks
from imgcls.apps.doctor.report import bar_chart
from imgcls.apps.doctor.scan import FileRecord


def _record(rel: str, split: str, label: str, phash: int, content: str | None = None) -> FileRecord:
    return FileRecord(Path(rel), rel, split, label, format="JPEG", content_hash=content or rel,
                      perceptual_hash=f"{phash:016x}")


def test_codes_are_stable():
    # Codes are an interface (CSV, JSON, scripts): renaming one breaks users.
    assert list(PROBLEMS) == [
        "zero_byte", "not_image", "unreadable", "truncated", "decompression_bomb", "duplicate",
        "conflicting_label", "leak", "unknown_class", "ext_mismatch", "mode_cmyk", "mode_16bit", "mode_alpha",
        "mode_palette", "mode_grayscale", "tiny", "unlabeled", "label_error", "imbalance", "unused", "empty_class",
        "split_folder", "one_class", "empty_split", "small_split", "ambiguous_layout", "extra_level",
        "label_missing", "label_always", "empty_labels"]
    assert BLOCKING == {"zero_byte", "not_image", "unreadable", "truncated", "decompression_bomb", "duplicate",
                        "conflicting_label", "leak", "unknown_class", "one_class", "empty_split", "small_split",
                        "ambiguous_layout", "extra_level"}


def test_header_checks():
    assert mode_problem(Image.new("CMYK", (2, 2))) == "mode_cmyk"
    assert mode_problem(Image.new("I;16", (2, 2))) == "mode_16bit"
    assert mode_problem(Image.new("LA", (2, 2))) == "mode_alpha"
    palette = Image.new("P", (2, 2))
    assert mode_problem(palette) == "mode_palette"
    palette.info["transparency"] = 0
    assert mode_problem(palette) == "mode_alpha"
    assert mode_problem(Image.new("1", (2, 2))) == "mode_grayscale"
    assert mode_problem(Image.new("RGB", (2, 2))) is None
    assert extension_problem("a/b.JPG", "JPEG") is None
    assert extension_problem("a/b.jpg", "PNG") == "PNG data in a '.jpg' file"
    # training sniffs formats with a signature when the extension is unknown; TGA has none
    assert extension_problem("a/b.jpg.bak", "JPEG") == "JPEG image named '.bak', which training recognises by content"
    assert "training recognises by content" in extension_problem("a.b/noext", "PNG")
    assert extension_problem("a/b.dat", "TGA") == "TGA image named '.dat', which training skips"
    assert decode_problem("image file is truncated (3 bytes not processed)") == "truncated"
    assert decode_problem("broken data stream when reading image file") == "unreadable"


def test_near_duplicate_leaks_by_dhash_distance():
    base = 0x0F0F_3C3C_5A5A_A5A5
    train = [_record("train/a/1.jpg", "train", "a", base ^ 0b111),  # 3 bits away
             _record("train/a/2.jpg", "train", "a", base ^ 0xFF),  # 8 bits away
             _record("train/a/3.jpg", "train", "a", 0, content="same"),  # flat hash, identical bytes
             _record("train/a/4.jpg", "train", "a", 0)]  # flat hash, different bytes
    test = [_record("test/a/1.jpg", "test", "a", base), _record("test/a/2.jpg", "test", "a", 0, content="same")]
    findings = hash_leaks(train + test, near_distance=4)
    flagged = {f.flagged[0]: (f.files[0], f.detail) for f in findings}
    assert flagged == {"train/a/1.jpg": ("test/a/1.jpg", "dHash distance 3"),
                       "train/a/3.jpg": ("test/a/2.jpg", "identical file")}
    assert set(train[0].problems) == {"leak"} and not train[1].problems and not train[3].problems
    assert not test[0].problems  # the held-out copy is kept


def test_val_test_leak_flags_the_val_copy():
    val, test = _record("val/a/1.jpg", "val", "a", 0x1234_5678_9ABC_DEF0), _record(
        "test/a/1.jpg", "test", "a", 0x1234_5678_9ABC_DEF0)
    hash_leaks([val, test], near_distance=0)
    assert "leak" in val.problems and not test.problems


def test_embedding_leaks_by_cosine():
    records = [_record("train/a/1.jpg", "train", "a", 1), _record("train/a/2.jpg", "train", "a", 2),
               _record("test/a/1.jpg", "test", "a", 3)]
    vectors = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    findings = embedding_leaks(Features(records, vectors), threshold=0.99)
    assert [(f.files, f.flagged) for f in findings] == [(["test/a/1.jpg", "train/a/1.jpg"], ["train/a/1.jpg"])]
    assert findings[0].detail.startswith("embedding cosine 0.99")
    known = {("train/a/1.jpg", "test/a/1.jpg")}
    assert embedding_leaks(Features(records, vectors), threshold=0.99, known=known) == []


def test_label_errors_from_out_of_fold_probabilities():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 6
    labels = np.repeat([0, 1, 2], 20)
    vectors = centres[labels] + rng.normal(0, 1, (60, 3))
    vectors[5] = centres[2] + rng.normal(0, 1, 3)  # labelled class 0, looks like class 2
    names = ["cat", "dog", "fox"]
    records = [_record(f"train/{names[y]}/{i}.jpg", "train", names[y], i) for i, y in enumerate(labels)]
    findings = label_errors(Features(records, vectors))
    assert [(f.files, f.extra["given"], f.extra["suggested"]) for f in findings] == [
        (["train/cat/5.jpg"], "cat", "fox")]
    assert findings[0].extra["given_prob"] < 0.2 < 0.8 < findings[0].extra["suggested_prob"]
    assert set(records[5].problems) == {"label_error"}


def test_class_balance_and_bar_chart():
    records = [FileRecord(Path(f"{c}{i}.jpg"), f"train/{c}/{i}.jpg", "train", c) for c, n in
               (("big", 12), ("mid", 6), ("small", 3)) for i in range(n)]
    balance = class_balance(records, ratio_limit=3.0)
    assert balance["counts"]["train"] == {"big": 12, "mid": 6, "small": 3}
    assert balance["ratio"] == 4.0 and balance["imbalanced"] and balance["minority"] == ["small"]
    assert not class_balance(records, ratio_limit=5.0)["imbalanced"]
    lines = bar_chart({"big": 12, "small": 3}, width=8)
    assert lines[0].endswith("█" * 8) and lines[1].endswith("██")
