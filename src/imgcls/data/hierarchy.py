"""Coarse labels over fine classes: where the fine -> coarse mapping comes from.

``data.hierarchy`` names the source of the mapping:
  * ``folders``  - the dataset itself nests ``<coarse>/<fine>/`` (e.g. ``train/vehicles/car/``);
  * ``cifar100`` - the 20 CIFAR-100 super-classes, built in (fine names as in the official archive);
  * a path      - a CSV file with ``fine,coarse`` rows (a header row is optional).

The resolved mapping is kept in ``data.hierarchy_map`` of the run's config, so a checkpoint
rebuilds its coarse head and names its coarse labels with no other file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.data.sources import HIERARCHY_FOLDERS, DatasetError, DatasetSplits, Sample, is_nested

FOLDERS, CIFAR100 = HIERARCHY_FOLDERS, "cifar100"

# The official CIFAR-100 super-classes (Krizhevsky 2009), spelt as in the python archive's meta file.
CIFAR100_SUPERCLASSES: dict[str, list[str]] = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


@dataclass(frozen=True)
class Hierarchy:
    """Fine classes (the model's class order) and the coarse class of each."""

    classes: list[str]
    coarse_classes: list[str]
    parent: np.ndarray  # (num_fine,) index of each fine class's coarse class

    @classmethod
    def from_map(cls, classes: list[str], fine_to_coarse: dict[str, str]) -> "Hierarchy":
        missing = [c for c in classes if c not in fine_to_coarse]
        if missing:
            raise DatasetError(f"hierarchy: no coarse class for {missing[:10]}"
                               f"{' ...' if len(missing) > 10 else ''} ({len(missing)} fine classes)")
        coarse = sorted({fine_to_coarse[c] for c in classes})
        if len(coarse) < 2:
            raise DatasetError(f"hierarchy: every class maps to '{coarse[0]}'; a coarse level needs 2 or more")
        index = {name: i for i, name in enumerate(coarse)}
        return cls(list(classes), coarse, np.array([index[fine_to_coarse[c]] for c in classes], dtype=np.int64))

    def as_map(self) -> dict[str, str]:
        return {fine: self.coarse_classes[k] for fine, k in zip(self.classes, self.parent)}

    def membership(self) -> np.ndarray:
        """(num_fine, num_coarse) 0/1 matrix: ``probs @ membership`` sums fine probabilities per coarse class."""
        matrix = np.zeros((len(self.classes), len(self.coarse_classes)))
        matrix[np.arange(len(self.classes)), self.parent] = 1.0
        return matrix

    def coarse_targets(self, fine_targets: np.ndarray) -> np.ndarray:
        return self.parent[np.asarray(fine_targets, dtype=np.int64)]


def resolve_hierarchy(spec: str | None, classes: list[str], samples: list[Sample],
                      explicit: dict[str, str] | None = None) -> Hierarchy | None:
    """The run's hierarchy from ``data.hierarchy`` (or an explicit ``data.hierarchy_map``); None when flat."""
    if spec is None:
        return Hierarchy.from_map(classes, explicit) if explicit else None
    key = spec.strip().lower()
    if key == FOLDERS:
        return Hierarchy.from_map(classes, map_from_samples(samples))
    if key == CIFAR100:
        return Hierarchy.from_map(classes, cifar100_map())
    return Hierarchy.from_map(classes, read_mapping_csv(Path(spec)))


def attach_hierarchy(data_cfg, data: DatasetSplits) -> Hierarchy | None:
    """Resolve the run's hierarchy for ``data`` and record it in ``data_cfg.hierarchy_map``."""
    samples = [s for split in data.splits.values() for s in split]
    hierarchy = resolve_hierarchy(data_cfg.hierarchy, data.classes, samples, data_cfg.hierarchy_map)
    data_cfg.hierarchy_map = hierarchy.as_map() if hierarchy else None
    return hierarchy


def cifar100_map() -> dict[str, str]:
    return {fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}


def map_from_samples(samples: list[Sample]) -> dict[str, str]:
    """fine -> coarse from samples read out of ``<coarse>/<fine>/`` folders."""
    mapping: dict[str, str] = {}
    for sample in samples:
        if sample.coarse is None:
            raise DatasetError(f"{sample.path}: --hierarchy folders needs <coarse>/<fine>/ folders "
                               "(or use a fine,coarse CSV with --hierarchy FILE)")
        known = mapping.setdefault(sample.label, sample.coarse)
        if known != sample.coarse:
            raise DatasetError(f"{sample.path}: fine class '{sample.label}' appears under coarse folders "
                               f"'{known}' and '{sample.coarse}'; fine class names must be unique")
    return mapping


def read_mapping_csv(path: Path) -> dict[str, str]:
    """``fine,coarse`` rows; blank lines and a ``fine,coarse`` header are skipped."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: cannot read the hierarchy CSV: {err}") from None
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (line == 1 and [c.lower() for c in cells[:2]] == ["fine", "coarse"]):
            continue
        if len(cells) != 2 or not all(cells):
            raise DatasetError(f"{path}:{line}: expected 'fine,coarse', got {row!r}")
        fine, coarse = cells
        if mapping.setdefault(fine, coarse) != coarse:
            raise DatasetError(f"{path}:{line}: '{fine}' is mapped to both '{mapping[fine]}' and '{coarse}'")
    if not mapping:
        raise DatasetError(f"{path}: the hierarchy CSV has no fine,coarse rows")
    return mapping


def write_mapping_csv(path: Path, fine_to_coarse: dict[str, str]) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fine", "coarse"])
        writer.writerows(sorted(fine_to_coarse.items()))
    return path
