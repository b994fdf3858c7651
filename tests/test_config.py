"""The typed config: YAML round trip, overrides, strict errors, and the CLI flags it generates."""

from __future__ import annotations

import pytest

from imgcls.cli import _train_config, build_parser
from imgcls.config import ConfigError, RunConfig


def test_yaml_round_trip(tmp_path):
    config = RunConfig().with_overrides({"lr": 0.05, "model.name": "resnet18", "train_dirs": ["a", "b"],
                                         "freeze": "half", "backbone_lr": 1e-5})
    config.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml") == config


def test_an_option_is_read_by_the_key_that_overrides_it():
    config = RunConfig().with_overrides({"lr": 0.05, "model.name": "resnet18", "name": "run"})
    assert config.value("train.lr") == config.value("lr") == 0.05
    assert config.value("model.name") == "resnet18" and config.value("name") == "run"
    with pytest.raises(ConfigError, match="speed"):
        config.value("speed")


def test_yaml_accepts_loose_numbers_and_rejects_unknown_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-3\n  epochs: 4\ndata:\n  train_dirs: one\n")
    config = RunConfig.load(tmp_path / "c.yaml")
    assert config.train.lr == 0.001 and config.train.epochs == 4 and config.data.train_dirs == ["one"]
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        RunConfig.load(tmp_path / "bad2.yaml")


def test_cli_flags_map_onto_config_and_beat_the_config_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  epochs: 9\nmodel:\n  head: mlp:64\n")
    args = build_parser().parse_args(
        ["train", "data/", "--config", str(tmp_path / "base.yaml"), "--lr", "0.01", "--model", "resnet18",
         "--no-pretrained", "--train", "x", "--train", "y", "--freeze", "all-but-last:2"])
    config, _ = _train_config(args)
    assert config.train.lr == 0.01 and config.train.epochs == 9  # flag beats file; file beats default
    assert config.model.name == "resnet18" and config.model.pretrained is False
    assert config.model.head == "mlp:64" and config.model.freeze == "all-but-last:2"
    assert config.data.path == "data/" and config.data.train_dirs == ["x", "y"]


def test_every_config_field_has_a_flag_or_is_deliberately_file_only():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    from imgcls.config import iter_options

    for section, f in iter_options():
        dest = f"{section}.{f.name}" if section else f.name
        assert dest in dests or f.metadata.get("cli") is False, dest


def test_usage_doc_lists_every_option():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_usage.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_usage_doc_needs_a_table_section_for_every_command():
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "gen_usage.py"))
    doc = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    assert "| `--port` | `8000` | TCP port to listen on |" in script["render"](doc)
    without_serve = doc.replace("<!-- options:serve:start -->", "")
    with pytest.raises(SystemExit, match="options:serve:start"):
        script["render"](without_serve)
