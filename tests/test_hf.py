"""DATA = hf:PATH: Hugging Face datasets (save_to_disk, Parquet, imagefolder) with named splits."""

from __future__ import annotations

import io

import pytest

import imgcls
from conftest import COLOURS, FAST, make_class_folders, make_image
from imgcls.apps.shards import write_shards
from imgcls.cli import main
from imgcls.data.sources import discover

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()


@pytest.fixture(autouse=True)
def _private_hf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _rows(tmp_path, per_class: int, seed: int) -> dict:
    images, labels = [], []
    for c, colour in enumerate(COLOURS.values()):
        for i in range(per_class):
            path = make_image(tmp_path / "src" / f"{seed}-{c}-{i}.png", colour, seed=seed + 100 * c + i)
            images.append({"bytes": path.read_bytes(), "path": None})
            labels.append(c)
    return {"image": images, "label": labels}


def _features():
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(COLOURS))})


@pytest.fixture
def saved(tmp_path):
    """A DatasetDict saved with save_to_disk: train, validation and test (embedded PNG bytes)."""
    splits = {name: datasets.Dataset.from_dict(_rows(tmp_path, n, seed), features=_features())
              for name, n, seed in (("train", 8, 0), ("validation", 3, 50), ("test", 3, 80))}
    path = tmp_path / "saved"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_saved_dataset_splits_and_labels(saved):
    data = discover(f"hf:{saved}")
    assert data.classes == ["blue", "green", "red"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 24, "val": 9, "test": 9}
    assert data.counts("test") == dict.fromkeys(data.classes, 3)
    assert all(s.path.is_file() and s.path.suffix == ".png" for s in data.splits["train"])
    again = discover(f"hf:{saved}")  # materialised once, by fingerprint
    assert [s.path for s in again.splits["train"]] == [s.path for s in data.splits["train"]]


def test_parquet_files_name_their_splits(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for name, n, seed in (("train", 6, 0), ("test", 2, 80)):
        ds = datasets.Dataset.from_dict(_rows(tmp_path, n, seed), features=_features())
        ds.to_parquet(str(folder / f"{name}-00000-of-00001.parquet"))
    data = discover(f"hf:{folder}", val_fraction=0.2)
    assert data.classes == ["blue", "green", "red"]
    assert len(data.splits["test"]) == 6 and len(data.splits["train"]) + len(data.splits["val"]) == 18
    assert data.automatic_val  # no validation split in the files: held out as for folders


def test_imagefolder_uses_the_files_where_they_are(tmp_path):
    flat = make_class_folders(tmp_path / "flat", per_class=6)
    data = discover(f"hf:{flat}")
    assert sorted(data.classes) == ["blue", "green", "red"]
    assert all(flat in s.path.parents for s in data.splits["train"])  # nothing copied


def test_train_eval_predict_and_shards_from_a_hub_style_dataset(saved, tmp_path):
    result = imgcls.train(f"hf:{saved}", out_dir=str(tmp_path / "runs"), name="hf", report=False, **FAST)
    assert result.metrics["test"]["n"] == 9 and result.metrics["val"]["n"] == 9
    metrics = imgcls.evaluate(result.run_dir, f"hf:{saved}", split="test", out_dir=tmp_path / "ev")
    assert metrics["n"] == 9
    rows = imgcls.load(result.run_dir).predict([f"hf:{saved}"])
    assert len(rows) == 42 and all(r["label"] in ("blue", "green", "red") for r in rows)
    written = write_shards(f"hf:{saved}", str(tmp_path / "shards"), shard_size=8)
    assert written.counts == {"train": 24, "val": 9, "test": 9}


def test_a_dataset_without_a_label_column_is_refused_in_one_line(tmp_path, capsys):
    image = io.BytesIO()
    make_image(tmp_path / "a.png", (1, 2, 3))
    image.write((tmp_path / "a.png").read_bytes())
    ds = datasets.Dataset.from_dict({"image": [{"bytes": image.getvalue(), "path": None}] * 4, "caption": ["x"] * 4},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "nolabel"))
    capsys.readouterr()
    assert main(["train", f"hf:{tmp_path / 'nolabel'}", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found no label column" in err[0] and "caption" in err[0]


def test_doctor_reads_a_hugging_face_dataset(saved, tmp_path):
    assert main(["doctor", f"hf:{saved}", "--out", str(tmp_path / "doc")]) == 0
    assert (tmp_path / "doc" / "doctor.json").is_file()
