"""WebDataset shards: `data to-shards`, discovery of wds: specs, the seeded sharded stream,
training and evaluation on shards, and two gloo processes that see every image once."""

from __future__ import annotations

import json
import os
import socket
import tarfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import imgcls
from conftest import FAST, make_class_folders
from imgcls.apps.shards import write_shards
from imgcls.cli import main
from imgcls.config import RunConfig
from imgcls.data.shards import INFO, ShardSamples
from imgcls.data.sources import discover
from imgcls.data.transforms import Preprocessing
from imgcls.data.wds import stream_loader

PRE = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture
def shards(tmp_path) -> Path:
    """30 images of 3 classes -> 24 train images in 6 shards, 6 val images in 2."""
    flat = make_class_folders(tmp_path / "flat", per_class=10)
    write_shards(str(flat), str(tmp_path / "shards"), shard_size=4)
    return tmp_path / "shards"


def _members(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


def test_to_shards_writes_each_image_once_with_its_label_and_an_index(shards):
    info = json.loads((shards / INFO).read_text())
    assert info["classes"] == ["blue", "green", "red"]
    assert [e["count"] for e in info["splits"]["train"]] == [4] * 6
    assert sum(e["count"] for e in info["splits"]["val"]) == 6
    seen = []
    for name in sorted(p.name for p in shards.glob("*.tar")):
        members = _members(shards / name)
        keys = sorted({m.split(".")[0] for m in members})
        assert {m.split(".", 1)[1] for m in members} == {"jpg", "cls", "json"}
        with tarfile.open(shards / name) as tar:
            for key in keys:
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                label = int(tar.extractfile(f"{key}.cls").read())
                assert info["classes"][label] == meta["label"] == Path(meta["path"]).parent.name
                seen.append(meta["path"])
    assert len(seen) == len(set(seen)) == 30
    # the shards mix the classes: a stream that shuffles shards and a buffer needs that
    assert len(set(info["splits"]["train"][0]["labels"])) > 1


def test_wds_folder_and_pattern_are_discovered_with_val_extracted(shards):
    data = discover(f"wds:{shards}")
    assert isinstance(data.splits["train"], ShardSamples) and len(data.splits["train"]) == 24
    assert data.classes == ["blue", "green", "red"] and data.counts("train") == dict.fromkeys(data.classes, 8)
    assert len(data.splits["val"]) == 6 and all(s.path.is_file() for s in data.splits["val"])
    subset = discover(f"wds:{shards}/train-{{000000..000002}}.tar")
    assert len(subset.splits["train"]) == 12 and len(subset.splits["val"]) == 6

    (shards / INFO).unlink()  # foreign shards: counted once, classes named by their index
    counted = discover(f"wds:{shards}")
    assert counted.classes == ["0", "1", "2"] and len(counted.splits["train"]) == 24


def test_wds_without_val_shards_is_refused_naming_it(shards, capsys):
    for shard in shards.glob("val-*.tar"):
        shard.unlink()
    assert main(["train", f"wds:{shards}", "--epochs", "1"]) == 2
    assert "no val shards" in capsys.readouterr().err


def _loader(shards: Path, rank: int = 0, world: int = 1, workers: int = 2, seed: int = 0):
    data = discover(f"wds:{shards}")
    config = RunConfig().with_overrides({"workers": workers, "shuffle_buffer": 5, "seed": seed})
    return stream_loader(data.splits["train"], data.classes, PRE, config, True, rank, world, batch_size=5)


def _epoch(loader, epoch: int) -> tuple[list[str], list[int]]:
    loader.sampler.set_epoch(epoch)
    keys, sizes = [], []
    for batch in loader:
        keys += batch.keys
        sizes.append(len(batch))
        if len(batch):  # else an empty batch a rank with fewer images pads with
            assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 32, 32)
    return keys, sizes


def test_stream_order_is_a_function_of_seed_and_epoch_and_reads_each_image_once(shards):
    loader = _loader(shards)
    first, sizes = _epoch(loader, 0)
    assert len(first) == len(set(first)) == 24
    assert len(sizes) == len(loader) and 0 not in sizes and 1 not in sizes  # a last single image joins the one before
    assert _epoch(loader, 0)[0] == first  # same (seed, epoch): same stream
    second, _ = _epoch(loader, 1)
    assert sorted(second) == sorted(first) and second != first


def _rank_process(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    loader = _loader(Path(shards), rank, world, workers=2)
    result = {}
    for epoch in (0, 1):
        keys, sizes = _epoch(loader, epoch)
        gathered = [None] * world
        dist.all_gather_object(gathered, (keys, len(sizes)))
        result[epoch] = gathered
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def test_two_gloo_processes_see_each_training_image_exactly_once_per_epoch(shards, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "seen.json"
    # fork: the two ranks start from this process as it is, without importing everything again
    mp.start_processes(_rank_process, args=(2, port, str(shards), str(out)), nprocs=2, join=True,
                       start_method="fork")
    every = sorted(f"{s}#{k}" for s, k in _all_keys(shards))
    for epoch, ranks in json.loads(out.read_text()).items():
        keys = [key for rank_keys, _ in ranks for key in rank_keys]
        assert sorted(keys) == every, f"epoch {epoch}: an image was missed or seen twice"
        assert len({steps for _, steps in ranks}) == 1  # same number of steps on both ranks: no DDP hang
        assert all(rank_keys for rank_keys, _ in ranks)  # both ranks trained on something


def _all_keys(shards: Path):
    for shard in sorted(shards.glob("train-*.tar")):
        for key in sorted({m.split(".")[0] for m in _members(shard)}):
            yield str(shard), key


def test_train_and_evaluate_on_shards(shards, tmp_path):
    fast = {**FAST, "workers": 2}
    result = imgcls.train(f"wds:{shards}", out_dir=str(tmp_path / "runs"), name="wds", report=False, **fast)
    assert len(result.history) == 2 and result.metrics["val"]["n"] == 6
    # the feature cache works on a stream too (head epochs on features extracted once)
    head = imgcls.train(f"wds:{shards}", out_dir=str(tmp_path / "runs"), name="head", report=False,
                        evaluate=False, **{**fast, "head_epochs": 2, "epochs": 2})
    assert [row["phase"] for row in head.history] == ["head", "head"]
    metrics = imgcls.evaluate(result.run_dir, f"wds:{shards}", split="val", out_dir=tmp_path / "ev")
    assert metrics["n"] == 6


def test_stream_refuses_balance_sampler_in_one_line(shards, capsys):
    assert main(["train", f"wds:{shards}", "--balance", "sampler", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--balance sampler" in err[0]


def test_cv_on_shards_is_refused_in_one_line(shards, capsys):
    assert main(["cv", f"wds:{shards}", "--folds", "2", "--epochs", "1"]) == 2
    assert "imgcls cv needs the images as files" in capsys.readouterr().err
