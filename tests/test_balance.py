"""--balance: class weights, the weighted SeededSampler, over/undersampling, and training with them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import yaml
from conftest import FAST, make_class_folders

import imgcls
from imgcls.api import make_config
from imgcls.cli import main
from imgcls.data.balance import balance_train_split, class_weights, resample_split, sample_weights
from imgcls.data.loaders import SeededSampler
from imgcls.data.sources import discover
from imgcls.data.transforms import Preprocessing
from imgcls.training.loop import make_split_loader
from imgcls.training.losses import build_criterion

IMBALANCED = [0] * 30 + [1] * 6 + [2] * 3


def test_class_weights_are_inverse_frequency():
    weights = class_weights([0] * 6 + [1] * 2 + [2] * 4, num_classes=4)
    assert torch.allclose(weights, torch.tensor([12 / 18, 12 / 6, 12 / 12, 0.0]))  # n / (k * n_c); absent: 0


def test_oversample_and_undersample_equalise_counts():
    items = [f"img{i}" for i in range(len(IMBALANCED))]
    over, over_targets = resample_split(items, IMBALANCED, "oversample", seed=0)
    assert Counter(over_targets) == {0: 30, 1: 30, 2: 30}
    assert set(over) == set(items)  # every original kept, minority copies added
    label_of = dict(zip(items, IMBALANCED))
    assert all(label_of[item] == target for item, target in zip(over, over_targets))
    under, under_targets = resample_split(items, IMBALANCED, "undersample", seed=0)
    assert Counter(under_targets) == {0: 3, 1: 3, 2: 3}
    assert set(under) <= set(items) and len(set(under)) == 9
    assert resample_split(items, IMBALANCED, "undersample", seed=0) == (under, under_targets)
    assert resample_split(items, IMBALANCED, "undersample", seed=1) != (under, under_targets)


def test_weighted_sampler_draws_classes_equally_and_deterministically():
    weights = sample_weights(IMBALANCED)
    sampler = SeededSampler(len(IMBALANCED), shuffle=True, seed=3, weights=weights)
    drawn = Counter()
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn.update(IMBALANCED[index] for index, _ in sampler)
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    assert all(abs(share - 1 / 3) < 0.03 for share in shares), shares
    sampler.set_epoch(5)
    first = list(sampler)
    again = SeededSampler(len(IMBALANCED), shuffle=True, seed=3, weights=weights)
    again.set_epoch(5)
    assert list(again) == first  # a pure function of (seed, epoch): resume-safe
    again.set_epoch(6)
    assert list(again) != first
    seeds = [seed for _, seed in first]
    assert len(set(seeds)) == len(seeds)  # an image drawn twice is augmented differently
    shards = [SeededSampler(len(IMBALANCED), True, seed=3, rank=r, world_size=2, pad=True, weights=weights)
              for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(5)
    sharded = list(shards[0]) + list(shards[1])
    assert set(first) <= set(sharded) and len(sharded) == len(first) + 1  # DDP: the same draws, split (+1 pad)


def test_unweighted_sampler_order_is_unchanged():
    sampler = SeededSampler(10, shuffle=True, seed=2)
    sampler.set_epoch(1)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 100_003 + 1)).tolist()
    assert [index for index, _ in sampler] == expected


@pytest.fixture
def imbalanced_dataset(tmp_path):
    root = tmp_path / "imbalanced"
    make_class_folders(root / "train", per_class=12, classes={"red": (200, 40, 40)})
    make_class_folders(root / "train", per_class=4, classes={"green": (40, 190, 60), "blue": (40, 60, 200)},
                       start_seed=500)
    make_class_folders(root / "val", per_class=2, classes={"red": (200, 40, 40), "green": (40, 190, 60),
                                                           "blue": (40, 60, 200)}, start_seed=700)
    return root


@pytest.mark.parametrize("mode, size, weighted", [("none", 20, False), ("weights", 20, False),
                                                  ("sampler", 20, True), ("oversample", 36, False),
                                                  ("undersample", 12, False)])
def test_balance_modes_change_loader_and_loss(imbalanced_dataset, mode, size, weighted):
    config = make_config(imbalanced_dataset, balance=mode, **FAST)
    data = discover(str(imbalanced_dataset))
    pre = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loader = make_split_loader(data, "train", pre, config, train=True)
    assert len(loader.dataset) == size
    assert (loader.sampler.weights is not None) == weighted
    criterion = build_criterion(config, data)
    if mode == "weights":
        assert torch.allclose(criterion.weight, torch.tensor([20 / 12, 20 / 12, 20 / 36]))  # blue, green, red
    else:
        assert criterion.weight is None
    assert len(make_split_loader(data, "val", pre, config).dataset) == 6  # evaluation splits untouched


def test_balance_split_rejects_unknown_mode():
    with pytest.raises(ValueError, match="--balance 'median'"):
        balance_train_split([1, 2], [0, 1], "median", seed=0)


def test_training_with_balance_records_it(imbalanced_dataset, tmp_path):
    result = imgcls.train(imbalanced_dataset, out_dir=str(tmp_path / "runs"), name="b", evaluate=False,
                          balance="sampler", **dict(FAST, epochs=1))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["train"]["balance"] == "sampler"
    assert main(["train", str(imbalanced_dataset), "--balance", "median", "--out-dir", str(tmp_path / "r")]) == 2


@pytest.mark.parametrize("mode", ["oversample", "undersample"])
def test_resampled_lists_reach_the_feature_cache_row_for_row(imbalanced_dataset, tmp_path, mode):
    # Head epochs on cached features must train on the resampled list, not the original one.
    result = imgcls.train(imbalanced_dataset, out_dir=str(tmp_path / "runs"), name=mode, evaluate=False,
                          balance=mode, **dict(FAST, epochs=1, head_epochs=1))
    log = (result.run_dir / "train.log").read_text()
    size = {"oversample": 36, "undersample": 12}[mode]  # 3 classes x the largest / smallest class
    assert f"feature cache: {size} train x 1 view(s)" in log
