"""Hand-built CNNs: the spec grammar, the timm-like backbone interface, training and reloading."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

import imgcls
from imgcls.cli import main
from imgcls.config import DataConfig, ModelConfig
from imgcls.models.backbones import create_backbone
from imgcls.models.classifier import apply_freeze, build_model
from imgcls.models.cnn import CnnSpecError, parse_cnn_spec


def test_default_spec_and_filter_progressions():
    assert parse_cnn_spec("cnn").filters == (32, 64, 128, 256)
    assert parse_cnn_spec("cnn:blocks=5,filters=8-128").filters == (8, 16, 32, 64, 128)
    assert parse_cnn_spec("cnn:blocks=4,filters=16-128,order=inv").filters == (128, 64, 32, 16)
    assert parse_cnn_spec("cnn:blocks=3,filters=64").filters == (64, 64, 64)
    assert parse_cnn_spec("cnn:blocks=3,filters=32/48/96").filters == (32, 48, 96)
    spec = parse_cnn_spec("CNN: blocks=2, bn=0, pool=avg, dropout=0.3, dense=256/64, convs=2, kernel=5, size=64")
    assert (spec.bn, spec.pool, spec.dropout, spec.dense, spec.convs, spec.kernel, spec.size) == (
        False, "avg", 0.3, (256, 64), 2, 5, 64)


@pytest.mark.parametrize("spec, message", [
    ("cnn:blocks=x", "blocks=x"),
    ("cnn:depth=3", "depth=3"),
    ("cnn:blocks=3,filters=8/16", "2 widths for 3 blocks"),
    ("cnn:pool=sum", "pool must be"),
    ("cnn:order=up", "order must be"),
    ("cnn:kernel=4", "odd kernel"),
    ("cnn:dropout=1.5", "dropout"),
    ("cnn:bn=maybe", "not 1 or 0"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(CnnSpecError, match=message) as err:
        parse_cnn_spec(spec)
    assert spec in str(err.value)


def test_backbone_interface_and_input_sizes():
    model, data_config = create_backbone("cnn:blocks=3,filters=8-32,dense=24", pretrained=True)
    assert model.num_features == 24
    assert data_config["input_size"] == (3, 128, 128) and data_config["mean"] == (0.5, 0.5, 0.5)
    for size in (32, 57, 128):  # global pooling: any input size
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 24)


def test_model_factory_sizes_and_freezing_by_blocks():
    model, pre = build_model(ModelConfig(name="cnn:blocks=4,filters=8-64,dense=32"), DataConfig(), num_classes=3)
    assert pre.image_size == 128 and pre.mean == (0.5, 0.5, 0.5)
    _, pre = build_model(ModelConfig(name="cnn:blocks=4,filters=8-64"), DataConfig(image_size=48), num_classes=3)
    assert pre.image_size == 48
    blocks = model.backbone_blocks()
    assert len(blocks) == 5  # four conv blocks, then the dense layer
    apply_freeze(model, "all-but-last:2")
    trainable = [all(p.requires_grad for p in block) for block in blocks]
    assert trainable == [False, False, False, True, True]
    assert all(p.requires_grad for p in model.head.parameters())


def test_weights_file_is_loaded_into_a_cnn(tmp_path):
    source, _ = create_backbone("cnn:blocks=2,filters=8-16", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model, _ = create_backbone("cnn:blocks=2,filters=8-16", pretrained=True, weights=str(tmp_path / "w.pt"))
    assert torch.equal(model.blocks[0][0].weight, source.blocks[0][0].weight)


def test_cnn_trains_learns_and_reloads(flat_dataset, tmp_path):
    options = dict(FAST, model="cnn:blocks=3,filters=8-32,dense=16", pretrained=True, epochs=6, lr=0.01, cache="none",
                   backbone_lr=0.01, label_smoothing=0.0)
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), val_fraction=0.3, evaluate=False, **options)
    assert max(row["val_acc"] for row in result.history) >= 0.8
    classifier = imgcls.load(result.run_dir)
    rows = classifier.predict([str(flat_dataset / "green")])
    assert sum(row["label"] == "green" for row in rows) >= 8


def test_cli_bad_cnn_spec_is_one_line(flat_dataset, tmp_path, capsys):
    code = main(["train", str(flat_dataset), "--model", "cnn:blocks=two", "--out-dir", str(tmp_path), "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("imgcls: error:") and "blocks=two" in err and "\n" not in err
