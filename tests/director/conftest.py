"""Director fixtures: a tiny CookGen build (synthetic step clips, tiny visual space) and tiny directors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from auteur.video import write_mp4
from cookgen.cli import main as cookgen

DISHES = {
    "Tuna_Sandwich": ["Drain the tuna.", "Mix tuna with mayonnaise.", "Spread it on bread.", "Close the sandwich."],
    "Fried_Egg": ["Heat oil in a pan.", "Crack an egg into the pan.", "Season with salt."],
    "Pancakes": ["Whisk flour and milk.", "Pour batter into the pan.", "Flip the pancake.", "Serve with syrup."],
    "Tomato_Soup": ["Chop the tomatoes.", "Simmer them with stock.", "Blend the soup."],
}


def _dish(root: Path, name: str, actions: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    acts, caps = {}, {}
    for k, action in enumerate(actions, start=1):
        base = rng.integers(0, 255, size=3)
        frames = [np.broadcast_to((base + 3 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(8)]
        write_mp4(frames, folder / f"{k}.mp4", fps=8)
        acts[str(k)] = action
        caps[str(k)] = f"A close-up shot shows the cook, who does this: {action.lower()}"
    (folder / "actions.yaml").write_text(yaml.safe_dump(acts))
    (folder / "captions.yaml").write_text(yaml.safe_dump(caps))


@pytest.fixture(scope="session")
def tiny_cookgen(tmp_path_factory) -> list[Path]:
    """Two CookGen builds in the tiny visual space: three dishes in `train`, one in `val`."""
    root = tmp_path_factory.mktemp("dishes")
    names = list(DISHES)
    for i, name in enumerate(names):
        _dish(root / ("val" if i == 3 else "train"), name, DISHES[name], seed=i)
    outs = []
    for split in ("train", "val"):
        out = root / f"cookgen-{split}"
        argv = ["build", "steps", "--root", str(root / split), "--out", str(out), "--split", split]
        assert (
            cookgen(argv + ["--config", "tiny", "--no-progress", "clips.cut=false", "filter.min_clip_seconds=0.5"])
            == 0
        )
        outs.append(out)
    return outs
