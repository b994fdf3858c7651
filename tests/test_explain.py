"""Grad-CAM: the target layer is found for CNNs and ViTs, heatmaps point at the evidence,
and ``imgcls explain`` writes one overlay per image and class."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import FAST, make_class_folders, make_image
from PIL import Image
from torch import nn

import imgcls
from imgcls.cli import main
from imgcls.data.transforms import Preprocessing, eval_transform
from imgcls.evaluation.explain import GradCamExplainer, display_crop, explain_files, find_target_layer, overlay
from imgcls.models.classifier import ImageClassifier
from imgcls.models.heads import build_head

PRE = Preprocessing(image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, interpolation="bicubic")


class RedDetector(nn.Module):
    """A backbone that responds to red pixels only, so the evidence's location is known."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0] = 1.0 / 9  # red channel, averaged over the 3x3 window
            self.conv.bias.fill_(-0.2)

    def forward(self, x):
        return self.pool(self.act(self.conv(x)))


def _red_square_image() -> Image.Image:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[4:12, 4:12, 0] = 255  # red square in the top-left quarter
    return Image.fromarray(pixels)


def _red_model() -> ImageClassifier:
    head = build_head("linear", 4, 2, dropout=0.0)
    with torch.no_grad():
        linear = head.layers[-1]
        linear.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
        linear.bias.zero_()
    return ImageClassifier(RedDetector(), head).eval()


def test_heatmap_points_at_the_evidence():
    model = _red_model()
    explainer = GradCamExplainer(model, PRE, torch.device("cpu"))
    assert explainer.layer.name == "act"  # the last spatial feature map, not the 1x1 pooled one
    heatmap = explainer.heatmaps([_red_square_image()], [0])[0]
    assert heatmap.shape == (32, 32)
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0 + 1e-6
    inside = heatmap[4:12, 4:12].mean()
    outside = np.concatenate([heatmap[16:].ravel(), heatmap[:, 16:].ravel()]).mean()
    assert inside > 0.5 > 0.05 > outside


@pytest.mark.parametrize("name, expected", [("test_efficientnet", "bn2"), ("test_vit", "blocks.")])
def test_target_layer_is_found_for_cnns_and_vits(name, expected):
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False)
    backbone.reset_classifier(0)
    model = ImageClassifier(backbone, build_head("linear", backbone.num_features, 3)).eval()
    size = 64
    layer = find_target_layer(backbone, size)
    assert layer.name.startswith(expected)
    if name == "test_vit":
        # The input of the last block: the class token's output alone reaches the logits.
        assert layer.name == f"blocks.{len(backbone.blocks) - 2}" and layer.reshape is not None
    pre = Preprocessing(size, (0.5,) * 3, (0.5,) * 3)
    images = [make_image_pil(seed) for seed in range(2)]
    maps = GradCamExplainer(model, pre, torch.device("cpu"), layer).heatmaps(images, [0, 2])
    assert maps.shape == (2, size, size) and np.isfinite(maps).all()
    assert maps.max() > 0  # some evidence found, not an all-zero map


def make_image_pil(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def test_display_crop_matches_what_the_model_sees():
    pre = Preprocessing(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=0.8, interpolation="bicubic")
    image = make_image_pil(3).resize((80, 50))
    model_input = eval_transform(pre)(image).permute(1, 2, 0).numpy() * 255
    shown = np.asarray(display_crop(image, pre, 32), dtype=np.float64)
    assert shown.shape == model_input.shape
    assert np.abs(shown - model_input).mean() < 3  # same crop; only rounding differs


def test_overlay_keeps_the_image_size_and_marks_the_hot_spot():
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:2, :2] = 1.0
    blended = np.asarray(overlay(image, heatmap))
    assert blended.shape == (64, 64, 3)
    assert blended[2, 2, 0] > blended[60, 60, 0]  # jet: hot is red, cold is blue


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the command tests: (run folder, dataset)."""
    root = make_class_folders(tmp_path_factory.mktemp("explain") / "flat", per_class=6)
    result = imgcls.train(root, out_dir=str(root.parent / "runs"), evaluate=False, **dict(FAST, epochs=1))
    return result.run_dir, root


def test_explain_command_writes_topk_overlays(trained, tmp_path, capsys):
    run, data = trained
    images = [data / "red" / "red_000.jpg", data / "blue" / "blue_001.jpg"]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "cams"
    code = main(["explain", str(run), *map(str, images), str(broken), "--topk", "2",
                 "--out", str(out), "--size", "96"])
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 4
    assert [n for n in written if n.startswith("red_000_top1_")] and [n for n in written if "_top2_" in n]
    assert all(Image.open(out / n).size == (96, 96) for n in written)
    captured = capsys.readouterr()
    assert "could not read" in captured.err and "broken.jpg" in captured.err
    assert captured.out.count("->") == 4


def test_explain_names_do_not_collide(trained, tmp_path):
    a = make_image(tmp_path / "a" / "same.png", (200, 40, 40))
    b = make_image(tmp_path / "b" / "same.png", (40, 60, 200))
    rows = explain_files(imgcls.load(trained[0]), [a, b], tmp_path / "out", topk=1, size=48)
    assert len({row["file"] for row in rows}) == 2
