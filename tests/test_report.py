"""The HTML report: written by train and eval, self-contained, consistent with eval.json,
and checked in a real headless Chromium (images load, no console errors, readable on a phone)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, make_class_folders
from run_files import card
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.evaluation import report as report_module

SECTIONS = ["summary", "curves", "metrics", "classes", "confusion", "calibration", "gallery", "size"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run (train/val/test), its report written by ``imgcls.train``."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    make_class_folders(data / "train", per_class=8)
    make_class_folders(data / "val", per_class=3, start_seed=50)
    make_class_folders(data / "test", per_class=4, start_seed=80)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_module, "LATENCY_BUDGET_S", 0.2)
        result = imgcls.train(data, out_dir=str(root / "runs"), name="r", **dict(FAST, epochs=2, head_epochs=1))
    return result


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch):
    monkeypatch.setattr(report_module, "LATENCY_BUDGET_S", 0.2)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])


def _parse(path: Path) -> _Tags:
    parser = _Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _text(path: Path) -> str:
    """The page's visible text with tags stripped and whitespace collapsed."""
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_train_writes_a_self_contained_report(run):
    page = run.run_dir / "report.html"
    assert run.metrics["test"]["files"]["report"] == str(page)
    parsed = _parse(page)
    assert set(SECTIONS) <= parsed.ids
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert images and all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in images)
    assert not [tag for tag, attrs in parsed.tags if tag == "link" or (tag == "script" and "src" in attrs)]
    without_data = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page.read_text(encoding="utf-8"))
    assert "http://" not in without_data and "https://" not in without_data


def test_report_numbers_match_eval_json_and_the_model(run):
    page = run.run_dir / "report.html"
    text = _text(page)
    metrics = json.loads((run.run_dir / "eval-test" / "eval.json").read_text())
    table = dict(re.findall(r'<tr><td>([^<]+)(?:<div class="hint">[^<]*</div>)?</td><td class="n">([^<]+)</td>',
                            page.read_text(encoding="utf-8")))
    assert table["top-1 accuracy"] == f"{metrics['top1']:.4f}"
    assert table["top-3 accuracy"] == f"{metrics['topk_accuracy']:.4f}"
    assert table["F1 macro / weighted"] == f"{metrics['f1_macro']:.4f} / {metrics['f1_weighted']:.4f}"
    assert table["log loss"] == f"{metrics['log_loss']:.4f}" and table["MCC"] == f"{metrics['mcc']:.4f}"
    assert table["ECE (15 bins)"] == f"{metrics['ece']:.4f}"
    for row in metrics["per_class"]:
        assert f"{row['class']} {row['precision']:.3f} {row['recall']:.3f} {row['f1']:.3f} {row['support']} 8" in text
    with open(run.run_dir / "eval-test" / "eval_predictions.csv", newline="") as handle:
        wrong = sum(row["correct"] == "0" for row in csv.DictReader(handle))
    assert f"{wrong} of {metrics['n']} images are misclassified" in text
    tiles = [attrs for tag, attrs in _parse(page).tags if tag == "div" and attrs.get("class") == "tile"]
    assert len(tiles) == metrics["n"]  # 12 test images < 16: every one is shown, hardest first
    model = imgcls.load(run.run_dir).torch_module
    assert f"({sum(p.numel() for p in model.parameters()):,})" in text
    temperature = card(run.best_checkpoint).temperature
    assert f"T = {temperature:.3f}" in text


def test_gallery_is_ordered_by_loss(run):
    text = _text(run.run_dir / "report.html")
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+) · \S+\.jpg", text)]
    assert len(losses) == 12 and losses == sorted(losses, reverse=True)


def test_eval_writes_a_report_beside_eval_json(run, tmp_path, capsys):
    assert main(["eval", str(run.run_dir), "--split", "val", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "report.html").is_file()
    assert f"report:  {tmp_path / 'ev' / 'report.html'}" in capsys.readouterr().out
    assert "val split" in _text(tmp_path / "ev" / "report.html")
    assert main(["eval", str(run.run_dir), "--out", str(tmp_path / "quiet"), "--no-report"]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists()


def test_report_command(run, tmp_path, capsys):
    assert main(["report", str(run.run_dir), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and (tmp_path / "r.html").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_report_survives_a_moved_dataset(run, tmp_path):
    """Eval on other data when the run's own dataset is gone: no calibration refit, no counts."""
    classifier = imgcls.load(run.run_dir)
    config = classifier.card.config
    moved = {**config, "data": {**config["data"], "path": str(tmp_path / "moved-away")}}
    # As if never fitted: the refit needs the (missing) val split.
    classifier = classifier.with_card(classifier.card.replace(config=moved, calibration=None))
    other = make_class_folders(tmp_path / "other", per_class=2, start_seed=300)
    metrics = imgcls.evaluate(classifier, other, split="all", out_dir=tmp_path / "ev", report=True)
    text = _text(Path(metrics["files"]["report"]))
    assert "dataset not readable any more" in text and "No temperature has been fitted" in text
    assert metrics["n"] == 6


# --------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _open(chromium: str, page_path: Path, width: int, screenshot: Path) -> dict:
    """Load the page in headless Chromium; everything the checks need, plus a screenshot."""
    from playwright.sync_api import sync_playwright

    events: dict[str, list] = {"console": [], "errors": [], "requests": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: events["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: events["errors"].append(str(e)))
            page.on("request", lambda r: events["requests"].append(r.url[:80]))
            page.goto(page_path.as_uri(), wait_until="load")
            events["images"] = page.evaluate(
                "Array.from(document.images, i => ({complete: i.complete, width: i.naturalWidth}))")
            events["scroll_width"] = page.evaluate("document.documentElement.scrollWidth")
            f1 = "Array.from(document.querySelectorAll('#per-class tbody tr'), r => +r.cells[3].dataset.value)"
            page.click("#per-class th:nth-child(4)")
            events["f1_first_click"] = page.evaluate(f1)
            page.click("#per-class th:nth-child(4)")
            events["f1_second_click"] = page.evaluate(f1)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return events


@pytest.mark.parametrize("width", [1280, 390])  # a laptop and a phone
def test_report_in_headless_chromium(run, chromium, tmp_path, width):
    page = run.run_dir / "report.html"
    screenshot = tmp_path / f"report-{width}.png"
    events = _open(chromium, page, width, screenshot)
    keep = os.environ.get("IMGCLS_SCREENSHOTS")  # to look at them: IMGCLS_SCREENSHOTS=dir pytest ...
    if keep:
        shutil.copy(screenshot, Path(keep) / screenshot.name)

    n_tags = sum(1 for tag, _ in _parse(page).tags if tag == "img")
    assert len(events["images"]) == n_tags > 20
    assert all(image["complete"] and image["width"] > 0 for image in events["images"])
    assert not events["errors"]
    assert not [m for m in events["console"] if m[0] in ("error", "warning")], events["console"]
    assert all(url.startswith(("file:", "data:")) for url in events["requests"])  # no network
    assert events["scroll_width"] <= width  # wide tables scroll inside their box, not the page
    assert events["f1_first_click"] == sorted(events["f1_first_click"], reverse=True)
    assert events["f1_second_click"] == sorted(events["f1_first_click"])
    shot = np.asarray(Image.open(screenshot).convert("L"))
    assert shot.shape[1] == width and shot.shape[0] > 2000 and shot.std() > 10  # a long, non-blank page
