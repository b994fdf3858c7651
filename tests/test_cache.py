"""The pixel cache: same eval pixels as decoding, invalidation, fallbacks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image

from imgcls.data import cache as cache_module
from imgcls.data.cache import build_cache, cache_key
from imgcls.data.cached_dataset import CachedCollate, CachedImageDataset
from imgcls.data.finish import finish_batch
from imgcls.data.loaders import DeviceLoader
from imgcls.data.dataset import BadFile, ImageDataset, collate
from imgcls.data.transforms import Preprocessing, eval_transform

PRE = Preprocessing(image_size=28, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.875, interpolation="bicubic")


def _photos(root, count=6):
    # Odd sizes and aspect ratios, so resize and centre-crop rounding are exercised.
    sizes = [(53, 40), (40, 61), (77, 77), (90, 33), (32, 45), (64, 48)]
    return [make_image(root / f"{i}.jpg", (30 * i, 200 - 20 * i, 90), size=sizes[i % 6], seed=i) for i in range(count)]


def test_cached_eval_pixels_equal_uncached(tmp_path):
    paths = _photos(tmp_path)
    pixels = build_cache(paths, PRE, "ram")
    cached = CachedImageDataset(pixels, paths, [0] * 6, PRE, train=False)
    plain = ImageDataset(paths, [0] * 6, eval_transform(PRE), draft_size=PRE.resize_size)
    for i in range(6):
        crop = cached[i][0]
        expected = plain[i][0] * torch.tensor(PRE.std).view(3, 1, 1) + torch.tensor(PRE.mean).view(3, 1, 1)
        assert crop.dtype == torch.uint8 and crop.shape == (3, 28, 28)
        assert torch.equal(crop, torch.round(expected * 255).to(torch.uint8)), i
    batch = CachedCollate(PRE)([cached[i] for i in range(6)])
    reference = collate([plain[i] for i in range(6)])
    assert batch.images.dtype == torch.uint8  # finished on the device, by the DeviceLoader
    to_cpu = DeviceLoader([], torch.device("cpu"))
    assert torch.allclose(to_cpu.finish(batch).images, to_cpu.finish(reference).images, atol=1e-5)


def test_changed_file_invalidates_the_disk_cache(tmp_path):
    paths = _photos(tmp_path / "imgs")
    first = build_cache(paths, PRE, "disk", cache_dir=tmp_path / "c")
    again = build_cache(paths, PRE, "disk", cache_dir=tmp_path / "c")
    assert first.location == again.location and np.array_equal(first.pixels, again.pixels)
    make_image(paths[2], (255, 255, 255), size=(50, 50), seed=99)  # same name, new content
    changed = build_cache(paths, PRE, "disk", cache_dir=tmp_path / "c")
    assert changed.location != first.location
    assert not np.array_equal(changed.pixels[2], first.pixels[2])
    assert np.array_equal(changed.pixels[0], first.pixels[0])
    assert cache_key(paths[:-1], PRE) != cache_key(paths, PRE)  # a removed file changes the key too


def test_ram_cache_falls_back_to_disk_when_memory_is_short(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(cache_module, "available_memory", lambda: 1000)
    monkeypatch.setattr(cache_module.log, "propagate", True)  # earlier runs may have detached it
    caplog.set_level("INFO", logger="imgcls")
    paths = _photos(tmp_path / "imgs")
    pixels = build_cache(paths, PRE, "ram", cache_dir=tmp_path / "c")
    assert pixels.location.endswith(".npy")
    assert "does not fit in free memory" in caplog.text
    assert build_cache(paths, PRE, "auto", cache_dir=tmp_path / "c").location == pixels.location
    with pytest.raises(ValueError, match="--cache"):
        build_cache(paths, PRE, "gpu")


def test_bad_files_are_remembered_by_the_cache(tmp_path):
    paths = _photos(tmp_path)
    (tmp_path / "0.jpg").write_bytes(b"")
    pixels = build_cache(paths, PRE, "ram")
    item = CachedImageDataset(pixels, paths, [0] * 6, PRE, train=True)[(0, 123)]
    assert isinstance(item, BadFile) and "empty" in item.reason


def test_cached_training_crops_are_seeded_per_sample(tmp_path):
    paths = _photos(tmp_path)
    dataset = CachedImageDataset(build_cache(paths, PRE, "ram"), paths, [0] * 6, PRE, train=True)
    a, b, c = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[3], c[3]))


def test_batched_colour_jitter_matches_torchvision():
    from torchvision.transforms.v2 import functional as F

    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    factors = torch.tensor([[1.1, 0.9, 1.2], [0.8, 1.2, 0.85], [1.0, 1.0, 1.0]])
    ours = finish_batch(images, factors, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for i in range(3):
        x = images[i].float() / 255
        x = F.adjust_brightness(x, factors[i, 0].item())
        x = F.adjust_contrast(x, factors[i, 1].item())
        x = F.adjust_saturation(x, factors[i, 2].item())
        assert torch.allclose(ours[i], x, atol=1e-5), i


def test_uncached_default_preset_crops_uint8_and_finishes_like_the_cache(tmp_path):
    from imgcls.data.cached_dataset import DecodedTrainDataset, make_dataset

    paths = _photos(tmp_path)
    dataset, collate_fn = make_dataset(paths, [0] * 6, PRE, train=True, cache="none")
    assert isinstance(dataset, DecodedTrainDataset)
    a, b, c = dataset[(2, 5)], dataset[(2, 5)], dataset[(2, 6)]
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, PRE.image_size, PRE.image_size)
    assert torch.equal(a[0], b[0]) and torch.equal(a[3], b[3])  # seeded: same sample, same crop
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[3], c[3]))
    batch = collate_fn([dataset[(i, i)] for i in range(6)])
    images = DeviceLoader([], torch.device("cpu")).finish(batch).images
    low = (0 - max(PRE.mean)) / min(PRE.std)
    high = (1 - min(PRE.mean)) / min(PRE.std)
    assert images.dtype == torch.float32 and images.min() >= low - 1e-5 and images.max() <= high + 1e-5
