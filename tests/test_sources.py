"""Every dataset layout, the split's reproducibility, and clear errors."""

from __future__ import annotations

import shutil

import pytest
from conftest import COLOURS, make_class_folders, make_image

from imgcls.data.sources import DatasetError, discover, list_images


def test_train_val_test_folders(split_dataset):
    data = discover(split_dataset)
    assert data.classes == sorted(COLOURS)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 24, "val": 9, "test": 9}


def test_single_folder_is_split_stratified(flat_dataset):
    data = discover(flat_dataset, val_fraction=0.2)
    assert set(data.splits) == {"train", "val"}
    assert data.counts("val") == {name: 2 for name in COLOURS}
    train, val = ({str(s.path) for s in data.splits[k]} for k in ("train", "val"))
    assert not train & val and len(train | val) == 30


def test_split_is_reproducible_and_location_independent(flat_dataset, tmp_path):
    first = discover(flat_dataset, val_fraction=0.3, split_seed=7)
    again = discover(flat_dataset, val_fraction=0.3, split_seed=7)
    moved = shutil.copytree(flat_dataset, tmp_path / "elsewhere" / "copy")
    elsewhere = discover(moved, val_fraction=0.3, split_seed=7)
    names = lambda d: [(s.label, s.path.name) for s in d.splits["val"]]  # noqa: E731
    assert names(first) == names(again) == names(elsewhere)
    assert names(discover(flat_dataset, val_fraction=0.3, split_seed=8)) != names(first)


def test_split_keeps_singleton_classes_in_train(tmp_path):
    make_class_folders(tmp_path / "d", per_class=5)
    make_image(tmp_path / "d" / "rare" / "only.jpg", (1, 2, 3))
    data = discover(tmp_path / "d", val_fraction=0.2)
    assert data.counts("train")["rare"] == 1 and data.counts("val")["rare"] == 0


def test_split_adding_a_file_moves_few_others(flat_dataset):
    val_names = lambda: {s.path.name for s in discover(flat_dataset, val_fraction=0.5).splits["val"]}  # noqa: E731
    before = val_names()
    make_image(flat_dataset / "red" / "red_new.jpg", COLOURS["red"], seed=999)
    after = val_names()
    # One more red image in val: either the new file or one of red's train images.
    assert len(after) == len(before) + 1 and len(before - after) == 0


def test_several_train_folders_merge_by_class(tmp_path):
    make_class_folders(tmp_path / "a", per_class=4, classes={"cat": (1, 1, 1), "dog": (2, 2, 2)})
    make_class_folders(tmp_path / "b", per_class=3, classes={"dog": (3, 3, 3), "fox": (4, 4, 4)}, start_seed=40)
    make_class_folders(tmp_path / "v", per_class=1, classes={"cat": (1, 1, 1), "dog": (2, 2, 2)})
    data = discover(None, train_dirs=[str(tmp_path / "a"), str(tmp_path / "b")], val_dir=str(tmp_path / "v"))
    assert data.classes == ["cat", "dog", "fox"]
    assert data.counts("train") == {"cat": 4, "dog": 7, "fox": 3}


def test_csv_manifest_relative_paths(tmp_path):
    make_class_folders(tmp_path / "imgs", per_class=4)
    rows = ["path,label"] + [f"imgs/{p.parent.name}/{p.name},{p.parent.name}"
                             for p in sorted((tmp_path / "imgs").rglob("*.jpg"))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = discover(tmp_path / "labels.csv", val_fraction=0.25)
    assert data.classes == sorted(COLOURS)
    assert len(data.splits["train"]) + len(data.splits["val"]) == 12
    assert all(s.path.exists() for s in data.splits["train"])


def test_csv_manifest_with_split_column(tmp_path):
    make_class_folders(tmp_path, per_class=4)
    files = sorted(tmp_path.rglob("*.jpg"))
    rows = ["path,label,split"] + [f"{p.relative_to(tmp_path)},{p.parent.name},{'val' if i % 4 == 0 else 'train'}"
                                   for i, p in enumerate(files)]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    data = discover(tmp_path / "m.csv")
    assert len(data.splits["val"]) == 3 and len(data.splits["train"]) == 9


def test_hidden_and_non_image_files_ignored(flat_dataset):
    (flat_dataset / "red" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (flat_dataset / "red" / ".DS_Store").write_bytes(b"\x00" * 10)
    (flat_dataset / "red" / "notes.txt").write_text("hello")
    (flat_dataset / ".cache").mkdir()
    make_image(flat_dataset / ".cache" / "x.jpg", (0, 0, 0))
    data = discover(flat_dataset)
    assert data.classes == sorted(COLOURS)
    assert len(data.splits["train"]) + len(data.splits["val"]) == 30


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "no images"),
    (lambda p: p.write_text("a,b\n1,2\n"), "'path' and 'label'"),
])
def test_bad_dataset_errors_name_the_path(tmp_path, setup, message):
    target = tmp_path / "data"
    setup(target)
    with pytest.raises(DatasetError, match=message) as info:
        discover(target)
    assert str(target) in str(info.value)


def test_val_class_missing_from_train_is_an_error(split_dataset):
    make_image(split_dataset / "val" / "purple" / "p.jpg", (120, 0, 120))
    with pytest.raises(DatasetError, match="purple"):
        discover(split_dataset)


def test_list_images_recurses_and_keeps_explicit_files(flat_dataset, tmp_path):
    extra = make_image(tmp_path / "one.png", (1, 2, 3))
    found = list_images([flat_dataset, extra])
    assert len(found) == 31 and found[-1] == extra
