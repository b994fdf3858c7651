"""Which sub-folders of a dataset are its splits, and what in it training leaves unused.

Split folders are recognised by the names public datasets ship with, in any case:
``train``/``Training``/``training_set``/``seg_train``, ``val``/``valid``/``Validation``/``dev``,
``test``/``Testing``/``test_set`` (see :func:`split_name`). A folder is read as split folders
only when that reading is the plausible one; when a folder reads two ways (``Training/`` and
``Testing/`` holding images but no class folders, ``cat/ dog/ test/``, ``<class>/<split>/``),
:func:`resolve_folder` refuses with a message that shows both readings rather than guessing.
Nothing here opens an image: it looks at names and folder listings only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.errors import UserError

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)  # in order of how held out they are
SPLIT_FOLDERS, CLASS_FOLDERS = "split folders", "class folders"

# Why a file or folder under the data root is not a training sample (unused_files.csv).
HIDDEN = "hidden"
NOT_IMAGE = "not an image"
NOT_IN_CLASS = "not in a class folder"
OUTSIDE_SPLITS = "outside the split folders"
EMPTY_CLASS = "empty class folder"
MISSING = "missing"

# Written by hand: no library knows the names datasets give their splits. A folder name is
# cut into lower-case words; exactly one must be a split word, the others decoration.
_SPLIT_WORDS = {
    "train": TRAIN, "training": TRAIN, "trn": TRAIN,
    "val": VAL, "valid": VAL, "validation": VAL, "validate": VAL, "dev": VAL, "development": VAL,
    "test": TEST, "testing": TEST, "tst": TEST,
}
_DECORATION = {"set", "sets", "data", "dataset", "images", "image", "imgs", "img", "split", "subset", "seg",
               "files", "folder"}
_GLUED = ("set", "data", "images", "imgs")  # trainset, testdata, valimages


class DatasetError(UserError, ValueError):
    """A dataset that cannot be read; ``str()`` names the path and the problem. ``code`` is
    the doctor's problem code for it (see ``imgcls.apps.doctor.checks``)."""

    def __init__(self, message: str, code: str = "dataset"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Unused:
    """A file or folder under the data root that training does not use, and why."""

    path: Path
    reason: str


@dataclass
class FolderLayout:
    """How a dataset folder reads: ``splits`` maps train/val/test to their folders (for class
    folders, ``{"train": root}``); ``outside`` lists what sits beside the split folders."""

    root: Path
    kind: str
    splits: dict[str, Path]
    outside: list[Unused] = field(default_factory=list)

    def renamed(self) -> dict[str, Path]:
        """Split folders recognised under another name than the split's (``Training/``)."""
        return {s: f for s, f in self.splits.items() if self.kind == SPLIT_FOLDERS and
                f.relative_to(self.root).as_posix() != s}


def split_name(name: str) -> str | None:
    """``train``, ``val`` or ``test`` for a split folder's name (``Training``, ``valid``,
    ``test_set``, ``seg_train``, ``val2017``), None for any other name."""
    found = None
    for word in re.findall(r"[a-z]+|[0-9]+", name.lower()):
        split = _split_word(word)
        if split is not None:
            if found is not None:
                return None  # train_test, test-val: not one split
            found = split
        elif not word.isdigit() and word not in _DECORATION:
            return None  # test_tube, training_wheels: words of their own
    return found


def _split_word(word: str) -> str | None:
    if word in _SPLIT_WORDS:
        return _SPLIT_WORDS[word]
    glued = next((word[:-len(tail)] for tail in _GLUED if word.endswith(tail)), None)
    return _SPLIT_WORDS.get(glued) if glued else None


def subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted."""
    # scandir: the entry type comes with the listing, no stat per file of a 1000-image folder
    with os.scandir(folder) as entries:
        return sorted(folder / e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def resolve_folder(root: Path, nested: bool = False) -> FolderLayout:
    """Read ``root`` as split folders or as class folders (see the module docstring).

    Raises DatasetError when two folders name the same split, when the folder reads two
    ways, and for an extra folder level (``data/`` given for ``data/flowers/{train,val}/``).
    """
    children = subfolders(root)
    named: dict[str, Path] = {}
    for child in children:
        split = split_name(child.name)
        if split is None:
            continue
        if split in named:
            raise DatasetError(f"{root}: ambiguous layout: both '{named[split].name}' and '{child.name}' read as "
                               f"the {split} split; rename or move one of them", "ambiguous_layout")
        named[split] = child
    if not named:
        _check_class_reading(root, children, nested)
        return FolderLayout(root, CLASS_FOLDERS, {TRAIN: root})
    others = [c for c in children if c not in named.values()]
    labelled = [s for s, folder in named.items() if subfolders(folder)]
    if labelled and (TRAIN in named or not others):
        splits = {s: _descend(named[s], s) for s in SPLITS if s in named}
        outside = [Unused(p, HIDDEN if p.name.startswith(".") else OUTSIDE_SPLITS)
                   for p in sorted(root.iterdir()) if p not in named.values()]
        return FolderLayout(root, SPLIT_FOLDERS, splits, outside)
    if labelled:
        raise DatasetError(
            f"{root}: ambiguous layout: as split folders it has {_list(named)} but no train folder "
            f"(and {_names(others)} beside them); as class folders its classes are {_names(children)}; "
            "rename or move folders so that one reading remains", "ambiguous_layout")
    if not others:
        raise DatasetError(
            f"{root}: ambiguous layout: as split folders, {_list(named)} hold no class folders, so no "
            f"labels; as class folders its classes are {_names(children)}; put the images in "
            f"<split>/<class>/ folders", "ambiguous_layout")
    _check_class_reading(root, children, nested)
    return FolderLayout(root, CLASS_FOLDERS, {TRAIN: root})  # bus/ car/ train/: 'train' is a class


def _descend(folder: Path, split: str) -> Path:
    # Archives often wrap each split once more (training_set/training_set/<class>/): go
    # down while a folder holds nothing visible but one folder that names the same split.
    while True:
        visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(visible) != 1 or not visible[0].is_dir() or split_name(visible[0].name) != split:
            return folder
        folder = visible[0]


def _check_class_reading(root: Path, children: list[Path], nested: bool) -> None:
    """Refuse class folders that are really split folders one level down."""
    if len(children) == 1 and _split_subfolders(children[0]):
        only = children[0]
        raise DatasetError(f"{root}: an extra folder level: its only folder '{only.name}' holds the split folders "
                           f"{_slashed(_split_subfolders(only))}; give {only} as the dataset", "extra_level")
    # all() stops at the first class folder without split folders inside: one listing each
    if not nested and len(children) > 1 and all(_split_subfolders(c) for c in children):
        inner = sorted({name for child in children for name in _split_subfolders(child)})
        raise DatasetError(
            f"{root}: ambiguous layout: as class folders its classes are {_names(children)}, each with its "
            f"{_slashed(inner)} images mixed in; as <class>/<split>/ folders it has splits {', '.join(inner)}, "
            "which imgcls reads only as <split>/<class>/: rearrange the folders so", "ambiguous_layout")


def _split_subfolders(folder: Path) -> list[str]:
    return [sub.name for sub in subfolders(folder) if split_name(sub.name)]


def _slashed(names: list[str]) -> str:
    return ", ".join(name + "/" for name in names)


def _list(named: dict[str, Path]) -> str:
    return ", ".join(f"{s} <- {named[s].name}/" for s in SPLITS if s in named)


def _names(folders: list[Path]) -> str:
    shown = ", ".join(f"'{f.name}'" for f in folders[:8])
    return shown + (f" and {len(folders) - 8} more" if len(folders) > 8 else "")


def is_hidden(path: Path, root: Path) -> bool:
    """Is ``path`` (below ``root``) hidden, or inside a hidden folder?"""
    return any(part.startswith(".") for part in path.relative_to(root).parts)
