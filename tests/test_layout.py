"""The dataset's shape is checked before the first image is decoded: split folders by the
names people give them, refusals with one line naming the folder (and the doctor saying the
same), and every file or folder training does not use counted and listed."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
from conftest import COLOURS, make_class_folders, make_image, shared_dataset
from PIL import Image, ImageFile

from imgcls.apps.doctor import DoctorOptions, run_doctor
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.data.images import SNIFF_FORMATS
from imgcls.data.layout import split_name
from imgcls.data.sources import discover, find_split_folders
from imgcls.data.validate import describe
from imgcls.evaluation.evaluate import load_split

TRAIN_ARGS = ["--model", "test_efficientnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
              "--workers", "0", "--epochs", "1", "--head-epochs", "0"]
AUTOMATIC_VAL = "15% of each train class (stratified, --split-seed 0)"


@pytest.mark.parametrize("name, split", [
    ("train", "train"), ("Training", "train"), ("TRAIN", "train"), ("training_set", "train"), ("seg_train", "train"),
    ("trainset", "train"), ("train2017", "train"), ("val", "val"), ("Validation", "val"), ("valid", "val"),
    ("dev", "val"), ("Validation Set", "val"), ("val2017", "val"), ("test", "test"), ("Testing", "test"),
    ("TEST", "test"), ("test_set", "test"), ("test1", "test"), ("Test-Images", "test"),
])
def test_split_names_people_use(name, split):
    assert split_name(name) == split


@pytest.mark.parametrize("name", ["train_test", "test_tube", "contest", "trainer", "training_wheels", "cat",
                                  "unknown", "train-val", "evaluation", "testing-grounds"])
def test_other_names_are_not_splits(name):
    assert split_name(name) is None


def test_training_and_testing_folders_are_the_train_and_test_splits(tmp_path):
    root = tmp_path / "brain"
    make_class_folders(root / "Training", per_class=8)
    make_class_folders(root / "Testing", per_class=3, start_seed=50)
    data = discover(root)
    assert data.classes == sorted(COLOURS)  # not two classes called "Training" and "Testing"
    assert data.sources == {"train": str(root / "Training"), "test": str(root / "Testing")}
    assert {split: len(samples) for split, samples in data.splits.items()} == {"train": 21, "val": 3, "test": 9}
    assert describe(data)[:3] == [
        f"data: split folders {root}: train <- Training/, val <- {AUTOMATIC_VAL}, test <- Testing/",
        "classes (3): blue, green, red",
        "images: train 21 (7 per class); val 3 (1 per class); test 9 (3 per class)"]
    assert load_split(root, RunConfig(), "test")[1] == data.splits["test"]  # eval reads the same names


def test_other_split_names_of_public_datasets(tmp_path):
    root = tmp_path / "tvt"
    make_class_folders(root / "Train", per_class=4)
    make_class_folders(root / "Validation", per_class=2, start_seed=40)
    make_class_folders(root / "TEST", per_class=2, start_seed=80)
    data = discover(root)
    assert {s: (data.sources[s], len(v)) for s, v in data.splits.items()} == {
        "train": (str(root / "Train"), 12), "val": (str(root / "Validation"), 6), "test": (str(root / "TEST"), 6)}
    # Kaggle's cats-and-dogs wraps each split twice: training_set/training_set/<class>/
    kaggle = tmp_path / "kaggle"
    make_class_folders(kaggle / "training_set" / "training_set", per_class=4)
    make_class_folders(kaggle / "test_set" / "test_set", per_class=2, start_seed=80)
    (kaggle / "training_set" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    data = discover(kaggle)
    assert data.sources == {"train": str(kaggle / "training_set" / "training_set"),
                            "test": str(kaggle / "test_set" / "test_set")}
    assert data.classes == sorted(COLOURS) and len(data.splits["test"]) == 6
    assert describe(data)[0].endswith("train <- training_set/training_set/, val <- "
                                      f"{AUTOMATIC_VAL}, test <- test_set/test_set/")


def test_a_class_named_like_a_split_stays_a_class(tmp_path):
    # bus/ car/ train/ of loose images: 'train' holds no class folders, so it is a class
    root = make_class_folders(tmp_path / "vehicles", per_class=3, classes={"bus": (1, 2, 3), "car": (4, 5, 6),
                                                                          "train": (7, 8, 9)})
    assert find_split_folders(root) == {}
    assert discover(root).classes == ["bus", "car", "train"]


def _one_class(root):
    make_class_folders(root, per_class=5, classes={"cat": (90, 60, 30)})
    return f"{root}: only one class, 'cat'; a classifier needs at least 2 class folders"


def _one_class_in_train(root):
    make_class_folders(root / "train", per_class=5, classes={"cat": (90, 60, 30)})
    make_class_folders(root / "val", per_class=2, classes={"cat": (90, 60, 30)}, start_seed=50)
    return f"{root / 'train'}: only one class, 'cat'; a classifier needs at least 2 class folders"


def _extra_level(root):
    make_class_folders(root / "flowers" / "train", per_class=4)
    make_class_folders(root / "flowers" / "val", per_class=2, start_seed=50)
    return (f"{root}: an extra folder level: its only folder 'flowers' holds the split folders train/, val/; "
            f"give {root / 'flowers'} as the dataset")


def _extra_level_named(root):
    make_class_folders(root / "brain-mri" / "Training", per_class=4)
    make_class_folders(root / "brain-mri" / "Testing", per_class=2, start_seed=50)
    return (f"{root}: an extra folder level: its only folder 'brain-mri' holds the split folders Testing/, "
            f"Training/; give {root / 'brain-mri'} as the dataset")


def _single_images(root):
    make_class_folders(root, per_class=1)
    return (f"{root}: the automatic split left val empty: every class has a single image (a class gives val an "
            "image from 2 on); add images or give a val folder")


def _empty_val_folder(root):
    make_class_folders(root / "train", per_class=4)
    for name in COLOURS:
        (root / "val" / name).mkdir(parents=True)
    (root / "val" / "red" / "notes.txt").write_text("to do\n")
    return f"{root / 'val'}: no images found in class sub-folders (3 empty class folder, 1 not an image)"


def _one_val_image(root):
    make_class_folders(root / "train", per_class=4)
    make_image(root / "val" / "red" / "a.jpg", COLOURS["red"])
    return f"{root / 'val'}: the val split has a single image (a.jpg); it needs at least 2 to measure anything"


def _one_test_image(root):
    make_class_folders(root / "Training", per_class=4)
    make_class_folders(root / "Validation", per_class=2, start_seed=50)
    make_image(root / "Testing" / "blue" / "b.png", COLOURS["blue"])
    return (f"{root / 'Testing'}: the test split has a single image (b.png); it needs at least 2 to measure "
            "anything")


def _one_image_from_the_automatic_split(root):
    make_class_folders(root, per_class=2, classes={"cat": (90, 60, 30)})
    make_class_folders(root, per_class=1, classes={"dog": (30, 60, 90)}, start_seed=70)
    # docs/data.md: files are ranked by a hash of (split seed, class folder, file name)
    held_out = min(["cat_000.jpg", "cat_001.jpg"], key=lambda n: hashlib.sha1(f"0/cat/{n}".encode()).hexdigest())
    return (f"{root}: the val split has a single image ({held_out}, from the automatic split); it needs at least "
            "2 to measure anything")


def _loose_training_testing(root):
    for split in ("Training", "Testing"):
        for i in range(3):
            make_image(root / split / f"{i}.jpg", COLOURS["red"], seed=i)
    return (f"{root}: ambiguous layout: as split folders, train <- Training/, test <- Testing/ hold no class "
            "folders, so no labels; as class folders its classes are 'Testing', 'Training'; put the images in "
            "<split>/<class>/ folders")


def _classes_beside_a_test_split(root):
    make_class_folders(root, per_class=3, classes={"cat": (90, 60, 30), "dog": (30, 60, 90)})
    make_class_folders(root / "test", per_class=2, classes={"cat": (90, 60, 30), "dog": (30, 60, 90)})
    return (f"{root}: ambiguous layout: as split folders it has test <- test/ but no train folder (and 'cat', "
            "'dog' beside them); as class folders its classes are 'cat', 'dog', 'test'; rename or move folders "
            "so that one reading remains")


def _two_val_folders(root):
    make_class_folders(root / "train", per_class=4)
    make_class_folders(root / "val", per_class=2, start_seed=40)
    make_class_folders(root / "Validation", per_class=2, start_seed=60)
    return (f"{root}: ambiguous layout: both 'Validation' and 'val' read as the val split; rename or move one of "
            "them")


def _class_then_split(root):
    for name in ("cat", "dog"):
        make_class_folders(root / name, per_class=2, classes={"train": (9, 9, 9), "test": (99, 99, 99)})
    return (f"{root}: ambiguous layout: as class folders its classes are 'cat', 'dog', each with its test/, "
            "train/ images mixed in; as <class>/<split>/ folders it has splits test, train, which imgcls reads "
            "only as <split>/<class>/: rearrange the folders so")


REFUSED = {  # dataset builder -> the doctor's code for it
    _one_class: "one_class", _one_class_in_train: "one_class", _extra_level: "extra_level",
    _extra_level_named: "extra_level", _single_images: "empty_split", _empty_val_folder: "empty_split",
    _one_val_image: "small_split", _one_test_image: "small_split", _one_image_from_the_automatic_split: "small_split",
    _loose_training_testing: "ambiguous_layout", _classes_beside_a_test_split: "ambiguous_layout",
    _two_val_folders: "ambiguous_layout", _class_then_split: "ambiguous_layout",
}


@pytest.mark.parametrize("build", list(REFUSED), ids=lambda f: f.__name__.strip("_"))
def test_meaningless_datasets_are_refused_before_decoding_and_the_doctor_says_the_same(build, tmp_path, capsys,
                                                                                        monkeypatch):
    root = tmp_path / "data"
    expected = build(root)

    real_open = Image.open

    def header_sniffing_only(path, *args, **kwargs):
        # Reading the header of a file with an unknown extension (notes.txt) is allowed: it
        # is how images are told from the rest. Opening an image to decode it is not.
        if kwargs.get("formats") != SNIFF_FORMATS:
            raise AssertionError(f"{path} was opened before the dataset was validated")
        return real_open(path, *args, **kwargs)

    def no_decoding(self):
        raise AssertionError("an image was decoded before the dataset was validated")

    monkeypatch.setattr(Image, "open", header_sniffing_only)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    runs = tmp_path / "runs"
    assert main(["train", str(root), "--out-dir", str(runs), *TRAIN_ARGS]) == 2
    assert capsys.readouterr().err == f"imgcls: error: {expected}\n"
    assert not runs.exists()  # refused before the run folder
    monkeypatch.undo()
    report = run_doctor(root, DoctorOptions(workers=0))
    refusals = [(f.code, f.detail) for f in report.findings if f.code == REFUSED[build]]
    assert refusals[0] == (REFUSED[build], expected)
    assert report.counts()[REFUSED[build]] >= 1


@pytest.fixture(scope="module")
def jfif_run(tmp_path_factory):
    """Trained once: Training/ and Testing/, .jfif photos and everything training leaves out."""
    root = tmp_path_factory.mktemp("jfif") / "photos"
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(6):  # 4 .jpg and 2 .jfif per class: 18 images, 6 of them .jfif
            suffix = ".jfif" if i >= 4 else ".jpg"
            make_image(root / "Training" / name / f"{name}_{i}{suffix}", colour, seed=10 * c + i, fmt="JPEG")
    make_class_folders(root / "Testing", per_class=2, start_seed=50)
    (root / "Training" / "frog").mkdir()
    (root / "Training" / "red" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))
    make_image(root / "Training" / ".ipynb_checkpoints" / "red_0-checkpoint.jpg", COLOURS["red"])
    (root / "README.md").write_text("Photos, sorted by colour.\n")
    (root / "extras").mkdir()
    make_image(root / "extras" / "unsorted.jpg", COLOURS["blue"])
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", str(root), "--out-dir", str(runs), "--name", "jfif", *TRAIN_ARGS]) == 0
    return root, runs / "jfif"


def test_jfif_images_are_trained_and_the_split_folders_named(jfif_run):
    root, run = jfif_run
    log = (run / "train.log").read_text()
    assert f"data: split folders {root}: train <- Training/, val <- {AUTOMATIC_VAL}, test <- Testing/" in log
    assert "images: train 15 (5 per class); val 3 (1 per class); test 6 (2 per class)" in log  # all 18, not 12
    assert not (run / "bad_files.csv").exists()


def test_unused_files_are_counted_in_one_line_and_listed(jfif_run):
    root, run = jfif_run
    log = (run / "train.log").read_text()
    assert ("unused: 5 files or folders not trained on (2 outside the split folders, 1 hidden, "
            "1 empty class folder, 1 not an image)") in log
    with open(run / "unused_files.csv", newline="") as handle:
        rows = [(row["path"], row["reason"]) for row in csv.DictReader(handle)]
    assert rows == [
        (f"{root}/README.md", "outside the split folders"),
        (f"{root}/Training/.ipynb_checkpoints/", "hidden"),
        (f"{root}/Training/frog/", "empty class folder"),
        (f"{root}/Training/red/Thumbs.db", "not an image"),
        (f"{root}/extras/", "outside the split folders"),
    ]


def test_the_doctor_flags_what_training_leaves_out(jfif_run, tmp_path, capsys):
    root, _ = jfif_run
    assert main(["doctor", str(root), "--out", str(tmp_path / "doctor"), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "no problems found" not in printed
    assert f"  data: split folders {root}: train <- Training/" in printed
    saved = json.loads((tmp_path / "doctor" / "doctor.json").read_text())
    assert [(u["path"], u["reason"]) for u in saved["unused"]] == [
        ("README.md", "outside the split folders"), ("Training/.ipynb_checkpoints", "hidden"),
        ("Training/frog", "empty class folder"), ("Training/red/Thumbs.db", "not an image"),
        ("extras", "outside the split folders")]  # what training lists in unused_files.csv
    assert saved["problems"]["split_folder"]["count"] == 2 and "Dataset layout" in (tmp_path / "doctor" /
                                                                                    "doctor.html").read_text()
    report = run_doctor(root, DoctorOptions(workers=0))
    counts = report.counts()
    assert (counts["empty_class"], counts["split_folder"], counts["unused"], counts["not_image"]) == (1, 2, 1, 1)
    flagged = {r.rel: r.problems for r in report.records if r.problems}
    assert flagged == {"README.md": {"unused": "outside the split folders"},
                       "Training/red/Thumbs.db": {"not_image": "not an image Pillow can read"},
                       "extras/unsorted.jpg": {"unlabeled": "outside the train/val/test folders"}}
    assert [f.files for f in report.findings if f.code == "empty_class"] == [["Training/frog/"]]


def test_an_empty_class_folder_is_no_longer_a_clean_bill(flat_dataset, tmp_path, capsys):
    (flat_dataset / "frog").mkdir()
    assert main(["doctor", str(flat_dataset), "--out", str(tmp_path / "out"), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "no problems found" not in printed and "empty_class" in printed
    assert "unused: 1 files or folders not trained on (1 empty class folder)" in printed
    data = discover(flat_dataset)
    assert [(u.path, u.reason) for u in data.unused] == [(flat_dataset / "frog", "empty class folder")]


def test_images_are_found_by_content_and_every_other_file_has_a_reason(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=3)
    shutil.copyfile(root / "red" / "red_000.jpg", root / "red" / "download")  # saved without an extension
    Image.open(root / "green" / "green_000.jpg").save(root / "green" / "leaf.webp")
    shutil.copyfile(root / "blue" / "blue_000.jpg", root / "blue" / "SKY.JPEG")
    Image.open(root / "blue" / "blue_001.jpg").save(root / "blue" / "scan.dat", "PNG")
    (root / "red" / "labels.txt").write_text("red\n")
    (root / "blue" / ".hidden.jpg").write_bytes(b"")
    (root / "notes.md").write_text("colours\n")
    data = discover(root)
    used = {s.path.name for split in data.splits.values() for s in split}
    assert {"download", "leaf.webp", "SKY.JPEG", "scan.dat"} <= used and len(used) == 13
    assert [(u.path.relative_to(root).as_posix(), u.reason) for u in data.unused] == [
        ("blue/.hidden.jpg", "hidden"), ("notes.md", "not in a class folder"), ("red/labels.txt", "not an image")]


def test_real_datasets_under_the_names_people_give_their_splits(tmp_path):
    hymenoptera = shared_dataset("hymenoptera")
    renamed = tmp_path / "hymenoptera"
    renamed.mkdir()
    (renamed / "Training").symlink_to(hymenoptera / "train", target_is_directory=True)
    (renamed / "Validation").symlink_to(hymenoptera / "val", target_is_directory=True)
    data = discover(renamed)
    # ../shared/datasets/README.md: train/{ants,bees} 245 photos, val/{ants,bees} 153 photos
    assert (data.classes, len(data.splits["train"]), len(data.splits["val"])) == (["ants", "bees"], 245, 153)
    assert data.unused == []
    digits = discover(shared_dataset("sign-digits"))  # upper-case .JPG, no split: 2,062 photos
    assert len(digits.splits["train"]) + len(digits.splits["val"]) == 2062 and digits.unused == []
