"""Videogen fixtures: plan folders with flat-coloured keyframes, a tiny CookGen build with clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from auteur.plan import Plan, Step, VisualSpace, save_plan
from auteur.video import write_mp4

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 20)]


def make_plan(folder: Path, n: int = 3, dim: int = 8, keyframes: bool = True, embeddings: bool = True,
              space_name: str = "test/random") -> Path:  # fmt: skip
    """A plan of ``n`` steps, keyframe i a flat ``COLOURS[i]`` 96x64 PNG, random embeddings in a test space."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = []
    for i in range(n):
        kf = None
        if keyframes:
            kf = f"keyframes/{i + 1:03d}.png"
            (folder / "keyframes").mkdir(exist_ok=True)
            Image.new("RGB", (96, 64), COLOURS[i % len(COLOURS)]).save(folder / kf)
        steps.append(
            Step(index=i + 1, action=f"Do step {i + 1}.", caption=f"The cook does step {i + 1}.", keyframe=kf)
        )
    torch.manual_seed(1)
    emb = torch.randn(n, dim) if embeddings else None
    space = VisualSpace(space_name, dim) if embeddings else None
    save_plan(Plan(query="how to test a pipeline", steps=steps, embeddings=emb, space=space), folder)
    return folder


def plan_for_checkpoint(folder: Path, checkpoint: Path, n: int = 2) -> Path:
    """A plan of ``n`` steps whose embeddings are in the visual space the videogen ``checkpoint`` was trained on."""
    space = json.loads((checkpoint / "videogen.json").read_text())["space"]
    return make_plan(folder, n=n, dim=int(space["dim"]), space_name=space["name"])


#: a small animatic (64x64, 1 s a step at 8 fps) so tests stay fast; the default preset is 640x640 at 24 fps
SMALL_ANIMATIC = ["animatic.width=64", "animatic.height=64", "animatic.step_seconds=1", "fps=8",
                  "animatic.crossfade_seconds=0.375"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Toy models gain nothing from intra-op threads, and on a shared, busy 2-core box two OpenMP threads
    spinning against other processes made each tiny Wan step many times slower: use one per test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def plan_dir(tmp_path) -> Path:
    return make_plan(tmp_path / "plan")


def _cookgen_build(root: Path, *extra: str) -> Path:
    """A CookGen build (tiny visual space) of two synthetic dishes whose step clips are flat colours."""
    from cookgen.cli import main as cookgen

    for d, name in enumerate(["Toast", "Salad"]):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        acts, caps = {}, {}
        for k in range(1, 4):
            base = np.array(COLOURS[(d + k) % 4])
            frames = [np.broadcast_to((base + 4 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(9)]
            write_mp4(frames, folder / f"{k}.mp4", fps=8)
            acts[str(k)] = f"Step {k} of {name}."
            caps[str(k)] = f"The cook does step {k} of the {name.lower()}."
        (folder / "actions.yaml").write_text(yaml.safe_dump(acts))
        (folder / "captions.yaml").write_text(yaml.safe_dump(caps))
    out = root / "cookgen"
    argv = ["build", "steps", "--root", str(root / "train"), "--out", str(out), "--split", "train", "--config",
            "tiny", "--no-progress", "filter.min_clip_seconds=0.5", *extra]  # fmt: skip
    assert cookgen(argv) == 0
    return out


@pytest.fixture(scope="session")
def tiny_cookgen_clips(tmp_path_factory) -> Path:
    """A CookGen build with step clips (what videogen trains on)."""
    return _cookgen_build(tmp_path_factory.mktemp("vg-dishes"))


@pytest.fixture(scope="session")
def tiny_cookgen_no_clips(tmp_path_factory) -> Path:
    """The same build without clips (``clips.cut=false``: keyframes and embeddings only)."""
    return _cookgen_build(tmp_path_factory.mktemp("vg-dishes-no-clips"), "clips.cut=false")
