from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from auteur.config import dump_config, list_presets, load_config, save_config
from auteur.errors import ConfigError


@dataclass
class Train:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["cosine", "constant"] = "cosine"
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Cfg:
    name: str = "x"
    seed: int = 0
    ckpt: str | None = None
    verbose: bool = False
    train: Train = field(default_factory=Train)


@pytest.fixture
def presets(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text("name: tiny\ntrain:\n  steps: 2\n")
    (tmp_path / "paper.yaml").write_text("name: paper\ntrain:\n  lr: 0.0001\n  schedule: constant\n")
    return tmp_path


def test_defaults_preset_and_overrides_layer_in_order(presets: Path) -> None:
    assert load_config(Cfg) == Cfg()
    cfg = load_config(Cfg, "tiny", ["train.lr=1e-4", "seed=3", "ckpt=none", "verbose=true"], preset_dir=presets)
    assert cfg.name == "tiny" and cfg.train.steps == 2  # from the preset
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)  # "1e-4": YAML would keep a str
    assert cfg.seed == 3 and cfg.ckpt is None and cfg.verbose is True
    assert cfg.train.schedule == "cosine"  # untouched default survives a partial preset
    assert load_config(Cfg, "tiny", ["name=123"], preset_dir=presets).name == "123"  # str field keeps the text
    assert load_config(Cfg, "tiny", ["train.layers=[3, 4]"], preset_dir=presets).train.layers == [3, 4]
    assert load_config(Cfg, "tiny", ["train.layers=5,6"], preset_dir=presets).train.layers == [5, 6]


def test_presets_listed_by_name_and_loaded_by_path(presets: Path) -> None:
    assert list_presets(presets) == ["paper", "tiny"]
    assert load_config(Cfg, str(presets / "paper.yaml"), preset_dir=presets).train.schedule == "constant"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.lrr=1"], "train.lrr"),
        (["nope=1"], "nope"),
        (["train.lr=fast"], "train.lr"),
        (["train.steps=1.5"], "train.steps"),
        (["train.schedule=linear"], "train.schedule"),
        (["verbose=maybe"], "verbose"),
        (["train.layers=[a]"], "train.layers[0]"),
        (["seed.x=1"], "seed"),
        (["noequals"], "noequals"),
    ],
)
def test_bad_keys_and_types_name_the_key(presets: Path, overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(Cfg, "tiny", overrides, preset_dir=presets)


def test_bad_preset_files(presets: Path) -> None:
    (presets / "bad.yaml").write_text("train:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match="train.momentum"):
        load_config(Cfg, "bad", preset_dir=presets)
    (presets / "typed.yaml").write_text("seed: twelve\n")
    with pytest.raises(ConfigError, match="seed"):
        load_config(Cfg, "typed", preset_dir=presets)
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*paper, tiny"):
        load_config(Cfg, "huge", preset_dir=presets)


def test_saved_config_reloads_to_the_same_config(presets: Path, tmp_path: Path) -> None:
    cfg = load_config(Cfg, "paper", ["train.layers=[7]", "ckpt=/x/y.pt"], preset_dir=presets)
    out = tmp_path / "run"
    path = save_config(cfg, out)
    assert path == out / "config.yaml"
    assert yaml.safe_load(path.read_text())["train"]["layers"] == [7]
    assert load_config(Cfg, str(path), preset_dir=presets) == cfg
    assert dump_config(cfg) == path.read_text()
    assert not [p for p in out.iterdir() if p.name != "config.yaml"]  # no temporaries left


def test_preset_can_extend_another(presets: Path) -> None:
    (presets / "ablation.yaml").write_text("base: paper\ntrain:\n  steps: 7\n")
    cfg = load_config(Cfg, "ablation", preset_dir=presets)
    assert (cfg.name, cfg.train.lr, cfg.train.schedule, cfg.train.steps) == ("paper", 0.0001, "constant", 7)
    (presets / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(ConfigError, match="names itself"):
        load_config(Cfg, "loop", preset_dir=presets)
