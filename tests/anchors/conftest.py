"""Anchors fixtures: a tiny CookGen build with step clips, the tiny anchors model, a story file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from anchors.config import PRESETS, AnchorsConfig
from auteur.config import load_config
from auteur.video import write_mp4
from cookgen.cli import main as cookgen

DISHES = {
    "Tuna_Sandwich": ["Drain the tuna.", "Mix tuna with mayonnaise.", "Spread it on bread.", "Close the sandwich."],
    "Fried_Egg": ["Heat oil in a pan.", "Crack an egg into the pan.", "Season with salt."],
}


def _dish(root: Path, name: str, actions: list[str], seed: int) -> None:
    """One step clip per action: 1 s at 8 fps of a colour that brightens frame by frame."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    acts = {}
    for k, action in enumerate(actions, start=1):
        base = rng.integers(0, 200, size=3)
        frames = [np.broadcast_to((base + 6 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(8)]
        write_mp4(frames, folder / f"{k}.mp4", fps=8)
        acts[str(k)] = action
    (folder / "actions.yaml").write_text(yaml.safe_dump(acts))


@pytest.fixture(scope="session")
def tiny_cookgen(tmp_path_factory) -> Path:
    """A CookGen `train` split of two dishes (4 and 3 steps), clips kept, tiny visual space."""
    root = tmp_path_factory.mktemp("anchor-dishes")
    for i, (name, actions) in enumerate(DISHES.items()):
        _dish(root / "src", name, actions, seed=i)
    out = root / "cookgen"
    argv = ["build", "steps", "--root", str(root / "src"), "--out", str(out), "--split", "train"]
    assert cookgen(argv + ["--config", "tiny", "--no-progress", "filter.min_clip_seconds=0.5"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_cfg() -> AnchorsConfig:
    return load_config(AnchorsConfig, "tiny", preset_dir=PRESETS)


@pytest.fixture(scope="session")
def tiny_anchors(tiny_cfg):
    from anchors.model import build_anchors

    return build_anchors(tiny_cfg.model)


@pytest.fixture
def story_file(tmp_path: Path) -> Path:
    path = tmp_path / "story.json"
    story = {
        "title": "Tuna sandwich",
        "subjects": "a cook; tuna, bread",
        "style": "a cooking video",
        "events": [{"text": "Drain the tuna.", "frames": 2}, {"text": "Mix tuna with mayonnaise."}, "Close it."],
    }
    path.write_text(json.dumps(story))
    return path
