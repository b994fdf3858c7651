"""``imgcls data cifar100``: a fake archive in the official pickle format becomes class
folders plus hierarchy.csv; offline and bad archives fail with one clear line, quickly."""

from __future__ import annotations

import io
import pickle
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from imgcls.cli import main
from imgcls.apps import cifar100
from imgcls.data.hierarchy import read_mapping_csv
from imgcls.data.sources import DatasetError, discover

FINE = ["apple", "maple_tree", "oak_tree"]
COARSE = ["fruit_and_vegetables", "trees"]
PARENT = [0, 1, 1]


def _batch(labels: list[int], seed: int) -> dict:
    """A split as the archive stores it: uint8 rows of 3072 channel-planar pixels."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {"filenames": [f"img_{i}.png" for i in range(len(labels))], "batch_label": "fake",
            "fine_labels": labels, "coarse_labels": [PARENT[f] for f in labels], "data": data}


def make_fake_archive(path, train_labels=(0, 1, 2, 0, 1, 2), test_labels=(2, 0, 1)):
    members = {"meta": {"fine_label_names": FINE, "coarse_label_names": COARSE},
               "train": _batch(list(train_labels), 1), "test": _batch(list(test_labels), 2)}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            # Protocol 2 and numpy's pre-2.0 module name, like the original (Python 2 era) archive.
            payload = pickle.dumps(content, protocol=2).replace(b"cnumpy._core.multiarray\n",
                                                                b"cnumpy.core.multiarray\n")
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return members


def test_converts_archive_to_class_folders_and_hierarchy(tmp_path, capsys):
    archive = tmp_path / "cifar-100-python.tar.gz"
    members = make_fake_archive(archive)
    out = tmp_path / "c100"
    assert main(["data", "cifar100", "--to", str(out), "--archive", str(archive)]) == 0
    assert "--hierarchy" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(FINE)
    assert sorted(p.name for p in (out / "train" / "apple").iterdir()) == ["00000.png", "00003.png"]
    assert sorted(p.name for p in (out / "test" / "oak_tree").iterdir()) == ["00000.png"]
    # Pixel check: row 4 of train (maple_tree) is R plane, G plane, B plane of 32x32 each.
    row = members["train"]["data"][4]
    pixels = np.asarray(Image.open(out / "train" / "maple_tree" / "00004.png"))
    assert pixels.shape == (32, 32, 3)
    assert np.array_equal(pixels[..., 0].ravel(), row[:1024]) and np.array_equal(pixels[..., 2].ravel(), row[2048:])
    assert read_mapping_csv(out / "hierarchy.csv") == {"apple": "fruit_and_vegetables", "maple_tree": "trees",
                                                      "oak_tree": "trees"}
    data = discover(out)
    assert data.classes == sorted(FINE) and len(data.splits["test"]) == 3
    # Converting again into the same folder is refused: nothing is overwritten.
    assert main(["data", "cifar100", "--to", str(out), "--archive", str(archive)]) == 2


def test_offline_download_fails_fast_with_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar100, "URL", "http://127.0.0.1:9/cifar-100-python.tar.gz")  # nothing listens
    started = time.perf_counter()
    assert main(["data", "cifar100", "--to", str(tmp_path / "c100")]) == 2
    assert time.perf_counter() - started < 10
    error = capsys.readouterr().err.strip()
    assert error.startswith("imgcls: error: cannot download") and "--archive" in error and "\n" not in error
    assert not list((tmp_path / "c100").glob("*.part"))


def test_bad_archives_are_named(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(DatasetError, match="junk.tar.gz: not a readable tar archive"):
        cifar100.convert_cifar100(tmp_path / "a", archive=tmp_path / "junk.tar.gz")
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    with pytest.raises(DatasetError, match="no 'meta' file inside"):
        cifar100.convert_cifar100(tmp_path / "b", archive=tmp_path / "empty.tar.gz")
    with pytest.raises(DatasetError, match="no such archive"):
        cifar100.convert_cifar100(tmp_path / "c", archive=tmp_path / "absent.tar.gz")


def test_archive_pickles_may_not_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        payload = pickle.dumps(Evil(), protocol=2)
        info = tarfile.TarInfo("cifar-100-python/meta")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DatasetError, match="unexpected object .*print"):
        cifar100.convert_cifar100(tmp_path / "x", archive=tmp_path / "evil.tar.gz")
