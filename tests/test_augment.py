"""Augmentation presets, random erasing, MixUp/CutMix batches and ``imgcls augment-preview``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, make_image
from PIL import Image
from timm.loss import SoftTargetCrossEntropy
from torch import nn

import imgcls
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.data.transforms import PRESETS, Preprocessing, eval_transform, train_transform
from imgcls.training.losses import build_criterion
from imgcls.training.mixing import BatchMixer, build_mixer

PRE = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _noise_image(seed: int = 0, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _seeded(transform, image, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(image)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_gives_a_normalised_tensor_from_pil_and_from_cached_uint8(preset):
    transform = train_transform(PRE, preset)
    cached = torch.from_numpy(np.array(_noise_image(1, (36, 36)))).permute(2, 0, 1).contiguous()
    for image in (_noise_image(), cached):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert -1.01 <= float(out.min()) and float(out.max()) <= 1.01  # mean/std 0.5: [0, 1] -> [-1, 1]


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_augmenting_presets_are_random_and_seeded(preset):
    transform, image = train_transform(PRE, preset), _noise_image()
    assert torch.equal(_seeded(transform, image, 3), _seeded(transform, image, 3))
    views = [_seeded(transform, image, seed) for seed in range(4)]
    assert any(not torch.equal(views[0], view) for view in views[1:])


def test_none_is_the_eval_transform():
    image = _noise_image()
    assert torch.equal(train_transform(PRE, "none")(image), eval_transform(PRE)(image))


def test_keras_preset_is_geometric_only_with_mean_filled_corners():
    # A uniform image stays that colour wherever image pixels land; uncovered corners get
    # the normalisation mean (0 after Normalize). No flip or colour change can hide in it.
    colour = (200, 60, 30)
    image = Image.new("RGB", (40, 40), colour)
    expected = (torch.tensor(colour) / 255 - 0.5) / 0.5
    transform = train_transform(PRE, "keras")
    filled = 0
    for seed in range(8):
        pixels = _seeded(transform, image, seed).permute(1, 2, 0).reshape(-1, 3)
        is_image = (pixels - expected).abs().max(1).values < 0.02
        is_fill = pixels.abs().max(1).values < 0.02
        # bilinear edges blend image and fill: allow a thin border of mixed pixels
        assert (is_image | is_fill).float().mean() > 0.9
        filled += int(is_fill.sum())
    assert filled > 0  # rotations/shifts of up to 30 deg / 10% uncover corners


def test_color_preset_changes_colours():
    image = Image.new("RGB", (40, 40), (120, 140, 90))
    means = torch.stack([_seeded(train_transform(PRE, "color"), image, s).mean((1, 2)) for s in range(8)])
    assert float(means.std(0).max()) > 0.02
    means_default_none = torch.stack([_seeded(train_transform(PRE, "none"), image, s).mean((1, 2)) for s in range(3)])
    assert float(means_default_none.std(0).max()) == 0.0


def test_random_erasing_erases_a_rectangle():
    image = _noise_image()
    erased = [_seeded(train_transform(PRE, "none", random_erasing=1.0), image, s) for s in range(4)]
    plain = train_transform(PRE, "none")(image)
    for out in erased:
        changed = (out != plain).any(0)
        assert changed.any()
        rows, cols = torch.nonzero(changed, as_tuple=True)
        box = out[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert torch.all(box == 0)  # one solid rectangle of the erase value
    assert torch.equal(_seeded(train_transform(PRE, "none", random_erasing=0.0), image, 0), plain)


def test_bad_preset_and_probability_are_clear_errors():
    with pytest.raises(ValueError, match="keras, color, randaugment"):
        train_transform(PRE, "fancy")
    with pytest.raises(ValueError, match="--random-erasing"):
        train_transform(PRE, "default", random_erasing=1.5)


def _config(**train) -> RunConfig:
    return RunConfig().with_overrides({f"train.{k}": v for k, v in train.items()})


def _constant_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(n)])
    return images, torch.arange(n) % 4


def test_mixup_blends_images_and_targets_by_the_same_lambda():
    mixer = BatchMixer(_config(mixup=0.4, label_smoothing=0.0), num_classes=4)
    np.random.seed(0)
    images, targets = _constant_batch(4)
    mixed, soft = mixer(images.clone(), targets)
    # image i is lam * i + (1 - lam) * (3 - i): recover lam from image 0 (= (1 - lam) * 3)
    lam = 1 - float(mixed[0, 0, 0, 0]) / 3
    assert soft.shape == (4, 4) and torch.allclose(soft.sum(1), torch.ones(4))
    assert soft[0, 0] == pytest.approx(lam, abs=1e-5) and soft[0, 3] == pytest.approx(1 - lam, abs=1e-5)


def test_cutmix_target_matches_the_pasted_area():
    mixer = BatchMixer(_config(mixup=0.0, cutmix=1.0, label_smoothing=0.0), num_classes=4)
    for seed in range(5):
        np.random.seed(seed)
        images, targets = _constant_batch(4)
        mixed, soft = mixer(images.clone(), targets)
        pasted = float((mixed[0] == 3.0).float().mean())  # share of image 0 taken from image 3
        assert soft[0, 3] == pytest.approx(pasted, abs=1e-5)


def test_odd_batches_mix_all_but_the_last_image():
    mixer = BatchMixer(_config(mixup=1.0, label_smoothing=0.1), num_classes=4)
    np.random.seed(1)
    images, targets = _constant_batch(5)
    mixed, soft = mixer(images.clone(), targets)
    assert mixed.shape == images.shape and soft.shape == (5, 4)
    assert torch.equal(mixed[4], images[4])
    # label smoothing 0.1 over 4 classes: 0.925 on the true class, 0.025 elsewhere
    assert soft[4].tolist() == pytest.approx([0.925, 0.025, 0.025, 0.025])
    assert torch.allclose(soft.sum(1), torch.ones(5))
    single, single_soft = mixer(images[:1].clone(), targets[:1])
    assert torch.equal(single, images[:1]) and single_soft.shape == (1, 4)


def test_mixing_switches_the_loss_to_soft_targets():
    assert build_mixer(_config(), 4) is None
    assert isinstance(build_criterion(_config(), None), nn.CrossEntropyLoss)
    assert isinstance(build_criterion(_config(mixup=0.2), None), SoftTargetCrossEntropy)
    with pytest.raises(ValueError, match="--mix-prob"):
        build_mixer(_config(cutmix=1.0, mix_prob=2.0), 4)


def test_training_with_mixup_cutmix_and_odd_batches(flat_dataset, tmp_path):
    # batch 5: every training batch is odd, the case timm's Mixup refuses by itself
    result = imgcls.train(flat_dataset, out_dir=str(tmp_path), evaluate=False,
                          **dict(FAST, epochs=1, batch_size=5, mixup=0.4, cutmix=1.0, augment="trivialaugment",
                                 random_erasing=0.25, cache="none"))
    row = result.history[-1]
    assert np.isfinite(row["train_loss"]) and 0.0 <= row["train_acc"] <= 1.0
    saved = RunConfig.load(result.run_dir / "config.yaml")
    assert (saved.train.mixup, saved.train.cutmix, saved.data.augment) == (0.4, 1.0, "trivialaugment")


def test_augment_preview_writes_a_grid(flat_dataset, tmp_path):
    out = tmp_path / "grid.png"
    code = main(["augment-preview", str(flat_dataset), "--preset", "keras", "--out", str(out), "--n", "6",
                 "--per-image", "3", "--image-size", "32"])
    assert code == 0
    grid = Image.open(out)
    # 2 rows (6 views / 3 per image) of 1 original + 3 views; 32 px cells are shown at 96 px
    assert grid.width > 4 * 96 and 2 * 96 < grid.height < 3 * 96 + 60
    pixels = np.asarray(grid.convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(pixels - np.array([40, 60, 200])).max(1) < 80).any()  # the first class (blue) is shown


def test_augment_preview_reports_bad_input_in_one_line(flat_dataset, tmp_path, capsys):
    assert main(["augment-preview", str(flat_dataset), "--preset", "fancy", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgcls: error:") and "fancy" in err and "\n" not in err
    assert main(["augment-preview", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2


def test_negative_mix_alpha_is_an_error_even_when_nothing_mixes():
    from imgcls.config import RunConfig
    from imgcls.training.mixing import build_mixer

    with pytest.raises(ValueError, match="--mixup -1"):
        build_mixer(RunConfig().with_overrides({"train.mixup": -1.0}), 3)
