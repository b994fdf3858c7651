"""Model size numbers and the report's figure helpers, checked by hand."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imgcls.evaluation import figures
from imgcls.evaluation.model_size import (
    flops_per_image,
    hardware_summary,
    measure_latency,
    optimizer_state_size,
    parameter_summary,
    weights_mb,
)
from imgcls.models.classifier import ImageClassifier
from imgcls.models.heads import build_head


class TinyBackbone(nn.Module):
    num_features = 4

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # 216 weights
        self.bn = nn.BatchNorm2d(8)  # 16 parameters, 17 buffer values
        self.conv = nn.Conv2d(8, 4, 1)  # 32 + 4
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.pool(self.conv(self.bn(self.stem(x))))

    def group_matcher(self, coarse=False):  # timm's hook for freezing by blocks
        return {"stem": r"^stem|^bn", "blocks": r"^conv"}


def _model() -> ImageClassifier:
    return ImageClassifier(TinyBackbone(), build_head("linear", 4, 3)).eval()  # head: 12 + 3


def test_flops_by_hand():
    model = _model()
    size = 8
    stem = 2 * (3 * 3 * 3) * 8 * size * size  # 2 x (kernel MACs per output) x outputs
    conv = 2 * 8 * 4 * size * size
    linear = 2 * 4 * 3
    # BatchNorm, pooling and bias additions are not matrix products: the counter skips them.
    assert flops_per_image(model, size) == stem + conv + linear


def test_parameters_trainable_and_frozen():
    model = _model()
    total = 216 + 16 + 36 + 15
    assert parameter_summary(model, "none") == {"total": total, "trainable": total, "frozen": 0}
    assert parameter_summary(model, "backbone") == {"total": total, "trainable": 15, "frozen": total - 15}
    assert all(p.requires_grad for p in model.parameters())  # counting did not freeze anything


def test_optimizer_state_counts_adam_moments_of_trained_weights():
    model = _model()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    state = optimizer_state_size(optimizer.state_dict())
    assert state["numel"] == 2 * 15  # exp_avg + exp_avg_sq per head weight; `step` scalars skipped
    assert state["mb"] == pytest.approx(2 * 15 * 4 / 1e6)
    assert optimizer_state_size(None) == {"numel": 0, "mb": 0.0}


def test_weights_mb_includes_buffers():
    state = _model().state_dict()
    expected = sum(t.numel() * t.element_size() for t in state.values())
    assert weights_mb(state) == pytest.approx(expected / 1e6)
    parameters = sum(t.numel() * t.element_size() for t in _model().parameters())
    assert weights_mb(state) > parameters / 1e6  # buffers (BatchNorm statistics) on top of the parameters


def test_latency_is_measured():
    latency = measure_latency(_model(), 8, budget_s=0.1)
    assert latency["runs"] >= 5 and 0 < latency["batch1_ms_median"] <= latency["batch1_ms_p90"]
    assert latency["throughput_images_s"] > 0 and latency["device"] == "cpu"
    assert {"device", "accelerator", "cpu", "torch"} <= set(hardware_summary("cpu"))


def _decode(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_similarity_order_puts_confused_classes_together():
    cm = np.diag([50] * 6)
    cm[0, 4] = cm[4, 0] = 20  # 0 <-> 4 and 1 <-> 5 are the confused pairs
    cm[1, 5] = cm[5, 1] = 15
    order = figures.similarity_order(cm)
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(4)) == 1 and abs(order.index(1) - order.index(5)) == 1


def test_most_confused_classes_come_from_the_largest_off_diagonal_cells():
    cm = np.diag([10] * 5)
    cm[3, 1], cm[2, 4], cm[0, 1] = 9, 5, 1
    assert figures.most_confused_classes(cm, size=4) == [3, 1, 2, 4]
    assert figures.most_confused_classes(np.diag([3, 3])) == []


def test_row_normalise_by_hand():
    rates = figures.row_normalise(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(rates, [[0.75, 0.25], [0.0, 0.0]])


@pytest.mark.parametrize("n", [3, 100])
def test_confusion_figures_stay_readable(n):
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(5, 20, n)) + rng.integers(0, 3, (n, n))
    classes = [f"class_{i:03d}" for i in range(n)]
    result = figures.confusion_figures(cm, classes)
    assert len(result) == (1 if n <= figures.SUBMATRIX_FROM else 2)  # big: plus a most-confused zoom
    width, height = _decode(result[0]["uri"]).size
    assert height >= 12 * n  # at least ~12 px per class row
    assert result[0]["width"] <= 1000


def test_training_curves_and_reliability_diagram_render():
    history = [{"epoch": e, "phase": "head" if e == 1 else "finetune", "train_loss": 1 / e, "val_loss": 1.2 / e,
                "train_acc": 0.5 + e / 10, "val_acc": 0.4 + e / 10, "val_top3": 0.9, "lr": 1e-3 / e,
                "backbone_lr": 1e-4 / e} for e in (1, 2, 3)]
    curves = figures.training_curves(history, best_epoch=3)
    assert [c["title"] for c in curves] == ["Loss", "Accuracy", "Learning rate"]
    assert all(_decode(c["uri"]).size[0] > 200 for c in curves)
    bins = {"edges": list(np.linspace(0, 1, 16)), "count": [0] * 14 + [4],
            "accuracy": [None] * 14 + [0.5], "confidence": [None] * 14 + [0.97], "ece": 0.47}
    assert _decode(figures.reliability_diagram(bins, "before")).size[0] > 200
    assert figures.nice_count(5_288_548) == "5.29 M" and figures.nice_count(412) == "412"
