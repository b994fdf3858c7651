"""CSV manifests as people write them: Windows paths, spreadsheet encodings and delimiters,
and a manifest that resolves to no usable image stopping before training."""

from __future__ import annotations

import csv

import pytest
from conftest import COLOURS, make_class_folders
from PIL import ImageFile

from imgcls.cli import main
from imgcls.data.sources import DatasetError, discover, read_manifest

TRAIN_ARGS = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
              "--workers", "0", "--epochs", "1", "--head-epochs", "0"]


@pytest.fixture
def images(tmp_path):
    """images/<class>/<class>_00i.jpg, 4 per class, beside where the manifests go."""
    make_class_folders(tmp_path / "images", per_class=4)
    return sorted((tmp_path / "images").rglob("*.jpg"))


def _rel(path, tmp_path, sep="/"):
    return sep.join(path.relative_to(tmp_path).parts)


def test_windows_paths_are_read(images, tmp_path):
    rows = ["path,label"] + [f"{_rel(p, tmp_path, chr(92))},{p.parent.name}" for p in images]
    assert rows[1] == "images\\blue\\blue_000.jpg,blue"
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = discover(tmp_path / "m.csv")
    assert sorted(s.path for s in data.splits["train"] + data.splits["val"]) == images  # all 12, none skipped
    assert data.unused == []


def test_spreadsheet_csv_with_bom_semicolons_and_split_names(images, tmp_path):
    # Excel in a European locale: UTF-8 with a BOM, ';' between fields, CRLF, a header in
    # title case, split names as people write them and empty rows left at the end.
    rows = ["Path;Label;Split"] + [f"{_rel(p, tmp_path, chr(92))};{p.parent.name};"
                                   f"{'Validation' if p.stem.endswith('3') else 'Training'}" for p in images]
    (tmp_path / "m.csv").write_bytes(("\ufeff" + "\r\n".join(rows + [";;", ";;"]) + "\r\n").encode("utf-8"))
    data = discover(tmp_path / "m.csv")
    assert data.classes == sorted(COLOURS)
    assert {s: len(v) for s, v in data.splits.items()} == {"train": 9, "val": 3}
    assert {s.path.name for s in data.splits["val"]} == {"blue_003.jpg", "green_003.jpg", "red_003.jpg"}


def test_excel_unicode_text_and_windows_1252(images, tmp_path):
    # "Unicode text" from Excel: UTF-16 with a BOM, tab-separated, other header names
    rows = ["filename\tclass"] + [f"{_rel(p, tmp_path)}\t{p.parent.name}" for p in images]
    (tmp_path / "u.txt").write_bytes("\r\n".join(rows).encode("utf-16"))
    assert sum(len(v) for v in read_manifest(tmp_path / "u.txt").values()) == 12
    # "CSV" from Excel on Windows: the ANSI code page, here with an accented folder name
    accented = tmp_path / "café"
    (tmp_path / "images" / "red").rename(accented)
    rows = ["path,label"] + [f"{'café' if p.parent.name == 'red' else _rel(p.parent, tmp_path)}\\{p.name},"
                             f"{p.parent.name}" for p in images]
    (tmp_path / "w.csv").write_bytes("\r\n".join(rows).encode("cp1252"))
    data = discover(tmp_path / "w.csv")
    assert data.counts("train")["red"] + data.counts("val")["red"] == 4
    assert all(s.path.parent == accented for s in data.splits["train"] if s.label == "red")


def test_missing_files_are_listed_not_trained(images, tmp_path):
    rows = ["path,label"] + [f"{_rel(p, tmp_path)},{p.parent.name}" for p in images] + ["images/red/gone.jpg,red",
                                                                                         "images/red/notes.txt,red"]
    (tmp_path / "images" / "red" / "notes.txt").write_text("not a photo\n")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = discover(tmp_path / "m.csv")
    assert len(data.splits["train"]) + len(data.splits["val"]) == 12
    assert [(u.path.name, u.reason) for u in data.unused] == [("gone.jpg", "missing"), ("notes.txt", "not an image")]


def _refuse(manifest, tmp_path, capsys, monkeypatch) -> str:
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("an image was decoded"))
    runs = tmp_path / "runs"
    assert main(["train", str(manifest), "--out-dir", str(runs), *TRAIN_ARGS]) == 2
    assert not runs.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.removeprefix("imgcls: error: ").rstrip("\n")


def test_a_manifest_of_missing_files_stops_before_training(images, tmp_path, capsys, monkeypatch):
    # Paths from another machine: not one of them resolves here
    rows = ["path,label"] + [f"C:\\Users\\me\\{_rel(p, tmp_path, chr(92))},{p.parent.name}" for p in images]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    first = tmp_path / "C:/Users/me/images/blue/blue_000.jpg"
    assert _refuse(tmp_path / "m.csv", tmp_path, capsys, monkeypatch) == (
        f"{tmp_path / 'm.csv'}: no usable image in the train split: all 12 listed files are missing or not images "
        f"(first: {first}: missing)")


def test_a_split_of_missing_files_is_named(images, tmp_path, capsys, monkeypatch):
    rows = (["path,label,split"] + [f"{_rel(p, tmp_path)},{p.parent.name},train" for p in images]
            + ["old/red_9.jpg,red,test", "old/blue_9.jpg,blue,test"])
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert _refuse(tmp_path / "m.csv", tmp_path, capsys, monkeypatch) == (
        f"{tmp_path / 'm.csv'}: no usable image in the test split: all 2 listed files are missing or not images "
        f"(first: {tmp_path / 'old' / 'red_9.jpg'}: missing)")


def test_manifest_errors_name_the_line(images, tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\nimages/red/red_000.jpg,red,train\n"
                                    "images/red/red_001.jpg,red,holdout\n")
    with pytest.raises(DatasetError, match=r"m\.csv:3: split 'holdout' is not train, val or test"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "h.csv").write_text("image_id;species\n1;cat\n")
    with pytest.raises(DatasetError, match=r"h\.csv: a manifest needs .*'path' and 'label' .*found: image_id, species"):
        read_manifest(tmp_path / "h.csv")


def test_train_on_a_windows_manifest(images, tmp_path):
    rows = ["path;label"] + [f".\\{_rel(p, tmp_path, chr(92))};{p.parent.name}" for p in images]
    (tmp_path / "m.csv").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "m.csv"), "--out-dir", str(runs), "--name", "win", *TRAIN_ARGS]) == 0
    log = (runs / "win" / "train.log").read_text()
    assert "images: train 9 (3 per class); val 3 (1 per class)" in log and "skipped" not in log
    assert not (runs / "win" / "bad_files.csv").exists() and not (runs / "win" / "unused_files.csv").exists()
    with open(runs / "win" / "eval-val" / "eval_predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
