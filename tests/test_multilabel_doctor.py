"""imgcls doctor on a multilabel manifest: label frequencies, labels missing from a split or on
every training image, empty label sets, co-occurrence, and the file checks as before."""

from __future__ import annotations

import json
import shutil

from multilabel_support import make_manifest

from imgcls.apps import doctor
from imgcls.apps.doctor.report import summary
from imgcls.cli import main


def _manifest(tmp_path, rows: list[str]):
    make_manifest(tmp_path, {"train": 6}, name="unused.csv")  # the images img/train_0000..5.png
    path = tmp_path / "m.csv"
    path.write_text("path,labels,split\n" + "\n".join(rows) + "\n")
    return path


def test_label_frequencies_missing_always_empty_and_cooccurrence(tmp_path):
    manifest = _manifest(tmp_path, ["img/train_0000.png,cat;dog,train", "img/train_0001.png,cat,train",
                                    "img/train_0002.png,cat;owl,train", "img/train_0003.png,,train",
                                    "img/train_0004.png,cat;dog,val", "img/train_0005.png,dog,val"])
    report = doctor.run_doctor(manifest, doctor.DoctorOptions(workers=0))
    stats = report.labels
    assert stats["labels"] == ["cat", "dog", "owl"]
    assert stats["splits"]["train"]["counts"] == {"cat": 3, "dog": 1, "owl": 1}
    assert stats["splits"]["train"]["empty"] == 1 and stats["splits"]["train"]["mean_labels"] == 1.25
    assert stats["cooccurrence"] == [[3, 1, 1], [1, 1, 0], [1, 0, 1]]
    assert stats["top_pairs"][0] == {"labels": ["cat", "dog"], "images": 1}
    found = {f.code: f for f in report.findings}
    assert found["label_missing"].extra == {"split": "val", "labels": ["owl"]}
    assert found["empty_labels"].files == ["img/train_0003.png"]
    assert "label_always" not in found  # one train image has no cat
    assert not any(r.problems for r in report.records)  # an empty set is labelled, not 'unlabeled'
    text = summary(report)
    assert "labels; train 4, val 2 images" in text and "images per label: cat 3, dog 1, owl 1" in text


def test_a_label_on_every_training_image_and_unknown_labels(tmp_path):
    manifest = _manifest(tmp_path, ["img/train_0000.png,cat;dog,train", "img/train_0001.png,cat,train",
                                    "img/train_0002.png,cat;bird,test"])
    report = doctor.run_doctor(manifest, doctor.DoctorOptions(workers=0))
    found = {f.code: f for f in report.findings}
    assert found["label_always"].extra == {"labels": ["cat"]}
    flagged = {r.rel: r.problems for r in report.records if r.problems}
    assert flagged == {"img/train_0002.png": {"unknown_class": "label(s) bird on no training image"}}


def test_leakage_and_the_written_reports(tmp_path):
    manifest = _manifest(tmp_path, ["img/train_0000.png,cat,train", "img/train_0001.png,dog,train",
                                    "img/copy.png,cat,test", "img/train_0002.png,dog;cat,test"])
    shutil.copy(tmp_path / "img" / "train_0000.png", tmp_path / "img" / "copy.png")
    out = tmp_path / "doc"
    assert main(["doctor", str(manifest), "--out", str(out)]) == 0
    written = json.loads((out / "doctor.json").read_text())
    assert written["label_sets"]["splits"]["test"]["counts"] == {"cat": 2, "dog": 1}
    assert any(f["code"] == "leak" and f["flagged"] == ["img/train_0000.png"] for f in written["findings"])
    html = (out / "doctor.html").read_text()
    assert "Label sets (2 labels)" in html and "Co-occurrence (train)" in html
