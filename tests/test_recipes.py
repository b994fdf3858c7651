"""Every seed recipe loads, trains a few steps with its own model on tiny images, and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_class_folders

import imgcls
from imgcls.cli import _train_config, build_parser
from imgcls.config import ConfigError, RunConfig
from imgcls.training.plan import PLAN_OPTIONS

RECIPE_DIR = Path(imgcls.__file__).parent / "recipes"
RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
# CIFAR-100 class names from two super-classes, so recipe 004's built-in hierarchy applies.
CLASSES = {"beaver": (200, 40, 40), "dolphin": (40, 190, 60), "orchid": (40, 60, 200), "poppy": (200, 200, 40)}
# What the test changes in a recipe: tiny images, offline (no pretrained download), a few steps.
# What the run resolves when the recipe leaves it open (the task, the training plan's choices):
# config.yaml records the value applied.
RESOLVED = {"data.task", *PLAN_OPTIONS}
SMALL = {"data.image_size": 32, "data.batch_size": 8, "data.workers": 0, "data.cache": "none",
         "model.pretrained": False}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("recipes") / "data", per_class=3, classes=CLASSES)


def test_every_seed_pipeline_has_a_documented_recipe():
    assert {name[:3] for name in RECIPES} == {"000", "001", "002", "003", "004"}
    docs = DOCS.read_text()
    readme = (DOCS.parents[1] / "README.md").read_text()
    assert "docs/recipes.md" in readme
    for name in RECIPES:
        assert f"--recipe {name}" in docs, f"docs/recipes.md lacks the command of {name}"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_a_few_steps_and_reloads(name, tiny, tmp_path):
    recipe = RunConfig.load(RECIPE_DIR / f"{name}.yaml")
    two_phase = recipe.train.head_epochs > 0
    overrides = dict(SMALL, **{"train.epochs": 2 if two_phase else 1, "train.head_epochs": 1 if two_phase else 0})
    result = imgcls.train(tiny, config=recipe, out_dir=str(tmp_path), name=name, evaluate=False, **overrides)

    saved = RunConfig.load(result.run_dir / "config.yaml").to_dict()
    expected = recipe.with_overrides(overrides).to_dict()
    for section in ("data", "model", "train"):
        for key, wanted in expected[section].items():
            if key in ("path", "hierarchy_map"):
                continue
            if f"{section}.{key}" in RESOLVED and wanted in (None, "auto"):
                assert saved[section][key] not in (None, "auto"), f"{section}.{key}"
            else:
                assert saved[section][key] == wanted, f"{section}.{key}"
    phases = [row["phase"] for row in result.history]
    assert phases == (["head", "finetune"] if two_phase else ["finetune"])
    if recipe.data.hierarchy:
        assert {"val_coarse_acc", "val_consistency"} <= set(result.history[-1])

    classifier = imgcls.load(result.best_checkpoint)
    rows = classifier.predict([str(tiny / "orchid")])
    # "unknown" where a recipe turns on open-set rejection (002)
    assert len(rows) == 3 and all(row["label"] in {*CLASSES, "unknown"} and not row["error"] for row in rows)


def test_recipe_is_the_base_and_flags_override_it(tiny):
    args = build_parser().parse_args(["train", str(tiny), "--recipe", "003-two-phase-mixup", "--epochs", "3"])
    config, _ = _train_config(args)
    assert (config.train.epochs, config.train.mixup, config.data.augment) == (3, 0.2, "color")
    with pytest.raises(ConfigError, match="000-imagenet100-effnetv2s"):
        _train_config(build_parser().parse_args(["train", str(tiny), "--recipe", "no-such-recipe"]))
