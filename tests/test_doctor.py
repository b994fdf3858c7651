"""imgcls doctor on a generated messy dataset: exactly the planted problems, reports,
quarantine fix/restore, and training on such a dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
from conftest import FAST, make_class_folders
from doctor_support import PLANTED_EMPTY_CLASS, make_messy_dataset

import imgcls
from imgcls.cli import main
from imgcls.apps.doctor import PROBLEMS, DoctorOptions, apply_fix, plan_fix, quarantine_dir, restore, run_doctor
from imgcls.apps.doctor.checks import DATASET_LEVEL
from imgcls.apps.doctor import scan as scan_module
from imgcls.apps.doctor.scan import content_hash
from imgcls.data.images import is_image_file

# A random-initialised tiny backbone keeps the label check fast and offline.
LABEL_CHECK = dict(label_check=True, backbone="test_efficientnet", pretrained=False, feature_size=32, workers=0)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy") / "data"
    planted = make_messy_dataset(root)
    return root, planted, run_doctor(root, DoctorOptions(**LABEL_CHECK))


def _flags(report) -> dict[str, set[str]]:
    return {r.rel: set(r.problems) for r in report.records if r.problems}


def _blocking(planted: dict[str, set[str]]) -> set[str]:
    """The planted files whose problems block training (what --fix moves)."""
    errors = {code for code, problem in PROBLEMS.items() if problem.severity == "error"}
    return {rel for rel, codes in planted.items() if codes & errors}


def _tree(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_doctor_flags_exactly_the_planted_files(messy):
    root, planted, report = messy
    assert _flags(report) == planted
    assert {code for codes in planted.values() for code in codes} | DATASET_LEVEL == set(PROBLEMS)
    folder_findings = [(f.code, f.files) for f in report.findings if f.code in DATASET_LEVEL]
    assert folder_findings == [("empty_class", [PLANTED_EMPTY_CLASS + "/"])]  # the other codes: tests/test_layout.py
    assert report.balance["imbalanced"] and report.balance["minority"] == ["yellow"]
    assert report.counts()["imbalance"] == 1
    every_file = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {r.rel for r in report.records} == every_file


def test_groups_and_suggestions(messy):
    _, _, report = messy
    by_code = {}
    for finding in report.findings:
        by_code.setdefault(finding.code, []).append(finding)
    assert by_code["duplicate"][0].files == ["train/red/red_000.jpg", "train/red/red_000_copy.jpg"]
    assert sorted(by_code["conflicting_label"][0].files) == ["train/blue/from_green.jpg", "train/green/green_001.jpg"]
    leaks = {f.files[1]: f.files[0] for f in by_code["leak"]}  # flagged copy -> held-out copy kept
    assert leaks == {"train/blue/leaked_exact.jpg": "test/blue/blue_001.jpg",
                     "train/green/leaked_near.jpg": "val/green/structured.png"}
    suggestions = {f.files[0]: (f.extra["given"], f.extra["suggested"]) for f in by_code["label_error"]}
    assert suggestions == {"train/green/looks_red.jpg": ("green", "red"), "train/blue/from_green.jpg": ("blue", "green")}


def test_full_decode_and_process_pool_agree(messy, monkeypatch):
    root, planted, _ = messy
    monkeypatch.setattr(scan_module, "POOL_MIN_FILES", 0)
    report = run_doctor(root, DoctorOptions(full=True, workers=2))
    expected = {rel: codes - {"label_error"} for rel, codes in planted.items() if codes - {"label_error"}}
    assert _flags(report) == expected


def test_cli_writes_reports_and_changes_nothing_without_fix(messy, tmp_path, capsys):
    root, planted, _ = messy
    before = _tree(root)
    assert main(["doctor", str(root), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    blocking = _blocking(planted)
    assert "truncated" in printed and "imbalanced" in printed and f"dry run: {len(blocking)} file(s)" in printed
    assert _tree(root) == before and not quarantine_dir(root).exists()
    with open(tmp_path / "out" / "overview.csv", newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(before)
    assert {rel for rel, row in rows.items() if row["problems"]} == set(planted) - {
        "train/green/looks_red.jpg"}  # no --label-check here
    red = rows["train/red/red_000.jpg"]
    assert (red["format"], red["width"], red["height"], red["mode"]) == ("JPEG", "40", "36", "RGB")
    assert red["content_hash"] == content_hash((root / "train/red/red_000.jpg").read_bytes())
    assert len(red["perceptual_hash"]) == 16
    summary = json.loads((tmp_path / "out" / "doctor.json").read_text())
    not_image = sum("not_image" in codes for codes in planted.values())
    assert summary["problems"]["not_image"]["count"] == not_image and summary["blocking_files"] == len(blocking)
    html = (tmp_path / "out" / "doctor.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 6 and "train/red/red_000_copy.jpg" in html


def test_fix_moves_blocking_files_and_restore_is_byte_identical(tmp_path, capsys):
    root = tmp_path / "data"
    planted = make_messy_dataset(root)
    before = _tree(root)
    blocking = _blocking(planted)
    assert main(["doctor", str(root), "--out", str(tmp_path / "out"), "--fix"]) == 0
    assert f"moved {len(blocking)} file(s)" in capsys.readouterr().out
    target = quarantine_dir(root)
    assert set(_tree(root)) == set(before) - blocking
    with open(target / "quarantine.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["original_path"] for r in rows} == blocking
    for row in rows:
        assert row["content_hash"] == content_hash((target / row["original_path"]).read_bytes())
        assert set(row["problem"].split(";")) <= planted[row["original_path"]]
    # the dataset now trains-clean: a second scan finds no blocking problem
    assert not run_doctor(root, DoctorOptions(workers=0)).blocking
    assert main(["doctor", str(root), "--restore"]) == 0
    assert _tree(root) == before
    assert not target.exists()


def test_restore_never_overwrites(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=3)
    (root / "red" / "empty.jpg").write_bytes(b"")
    moves = plan_fix(run_doctor(root, DoctorOptions(workers=0)))
    assert [m.rel for m in moves] == ["red/empty.jpg"]
    apply_fix(root, moves)
    (root / "red" / "empty.jpg").write_bytes(b"new file with the same name")
    result = restore(root)
    assert result.restored == [] and result.left[0][0] == "red/empty.jpg"
    assert (root / "red" / "empty.jpg").read_bytes() == b"new file with the same name"
    assert (quarantine_dir(root) / "red" / "empty.jpg").exists()  # still safe in quarantine
    assert main(["doctor", str(root), "--restore"]) == 1


def test_clean_dataset_and_errors(split_dataset, tmp_path, capsys):
    assert main(["doctor", str(split_dataset), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "dry run" not in out
    assert main(["doctor", str(tmp_path / "missing")]) == 2
    assert main(["doctor", str(split_dataset), "--restore"]) == 2
    assert "nothing to restore" in capsys.readouterr().err


def test_manifest_layout(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=2)
    (root / "list.csv").write_text("path,label,split\nred/red_000.jpg,red,train\nred/red_001.jpg,red,test\n"
                                   "green/green_000.jpg,green,train\ngreen/gone.jpg,green,train\n")
    report = run_doctor(root / "list.csv", DoctorOptions(workers=0))
    assert report.layout == "manifest"
    assert {r.rel: r.split for r in report.records} == {
        "red/red_000.jpg": "train", "red/red_001.jpg": "test", "green/green_000.jpg": "train",
        "green/gone.jpg": "train"}
    assert _flags(report) == {"green/gone.jpg": {"unreadable"}}


def test_training_on_a_flagged_dataset_completes(tmp_path):
    root = tmp_path / "data"
    planted = make_messy_dataset(root)
    shutil.rmtree(root / "test" / "purple")  # unknown_class: training refuses that by design
    train_files = [p for p in (root / "train").glob("*/*") if is_image_file(p)]
    assert len(train_files) % 4 == 0  # batches of 4 drop no image, so every bad one is met
    result = imgcls.train(root, out_dir=str(tmp_path / "runs"), name="messy", evaluate=False,
                          **dict(FAST, epochs=1, batch_size=4))
    with open(result.run_dir / "bad_files.csv", newline="") as handle:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
    undecodable = {"zero_byte", "unreadable", "truncated", "decompression_bomb"}
    expected = {rel for rel, codes in planted.items() if codes & undecodable} | {"train/blue/fake.jpg"}
    assert {str((root / rel)) for rel in expected} == set(skipped)


def test_unknown_folder_of_a_held_out_split_is_not_a_problem(split_dataset, tmp_path):
    # val/unknown/ holds out-of-distribution images for open-set evaluation (docs/openset.md);
    # the doctor must not flag them as an unknown class, and --fix must not move them.
    from conftest import make_image

    make_image(split_dataset / "val" / "unknown" / "stranger.jpg", (120, 120, 120), seed=9)
    make_image(split_dataset / "val" / "mystery" / "lost.jpg", (10, 200, 200), seed=8)
    report = run_doctor(split_dataset, DoctorOptions())
    flagged = {r.rel for r in report.records if "unknown_class" in r.problems}
    assert flagged == {"val/mystery/lost.jpg"}
