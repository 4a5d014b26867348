"""Renderer fixtures: tiny plans in the tiny visual space, synthetic clips, a tiny frame bank, a tiny CookGen build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from auteur.plan import Plan, Step, VisualSpace, save_plan
from auteur.video import write_mp4
from auteur.vision import VisionConfig, load_encoder

TINY_VISION = VisionConfig(backend="open_clip_json", model_json="tiny_open_clip")
ACTIONS = ["Drain the tuna.", "Mix tuna with mayonnaise.", "Spread it on bread.", "Close the sandwich."]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each renderer test on one torch thread, restoring the count after.

    The toy models' matrices are a few dozen wide: a second intra-op thread only adds OpenMP hand-off, and on a
    shared, loaded 2-core box that hand-off dominated (a tiny FLUX Fill render: 23 ms on 1 thread, 80-1700 ms
    on 2, measured).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_space() -> VisualSpace:
    return load_encoder(TINY_VISION).space


def make_plan(folder: Path, embeddings: torch.Tensor | None, space: VisualSpace | None, n: int = 3) -> Path:
    """A plan folder with ``n`` steps (random visual states in the tiny space unless given: test data only)."""
    steps = [
        Step(index=i + 1, action=ACTIONS[i], caption=f"A close-up of the cook: {ACTIONS[i].lower()}") for i in range(n)
    ]
    return save_plan(Plan("how to cook a tuna sandwich", steps, embeddings, space, provenance={"test": True}), folder)


@pytest.fixture
def tiny_plan(tmp_path: Path) -> Path:
    space = tiny_space()
    torch.manual_seed(0)
    return make_plan(tmp_path / "plan", torch.randn(3, space.dim), space)


def write_clips(root: Path, n_dishes: int = 2, steps: int = 3, seed: int = 0) -> Path:
    """Step clips in the demo layout (<Dish>/<k>.mp4 + actions/captions YAML): 1 s of slowly changing colour."""
    rng = np.random.default_rng(seed)
    for d in range(n_dishes):
        folder = root / f"Dish_{d}"
        folder.mkdir(parents=True)
        acts, caps = {}, {}
        for k in range(1, steps + 1):
            base = rng.integers(0, 255, size=3)
            frames = [np.broadcast_to((base + 9 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(8)]
            write_mp4(frames, folder / f"{k}.mp4", fps=8)
            acts[str(k)] = ACTIONS[k - 1]
            caps[str(k)] = f"A close-up shot shows the cook, who does this: {ACTIONS[k - 1].lower()}"
        (folder / "actions.yaml").write_text(yaml.safe_dump(acts))
        (folder / "captions.yaml").write_text(yaml.safe_dump(caps))
    return root


@pytest.fixture(scope="session")
def clips_root(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def tiny_bank(clips_root: Path, tmp_path_factory) -> Path:
    """A real bank (`cookgen bank`, the tiny visual space) of the synthetic clips: 12 frames, one every 0.5 s."""
    from cookgen.cli import main as cookgen

    out = tmp_path_factory.mktemp("bank") / "bank"
    argv = ["bank", str(clips_root), "--out", str(out), "--config", "tiny", "--interval", "0.5", "--no-progress"]
    assert cookgen(argv + ["max_side=64"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_cookgen(clips_root: Path, tmp_path_factory) -> Path:
    """A real CookGen build (cookgen's `steps` source, tiny preset) of the synthetic step clips."""
    from cookgen.cli import main as cookgen

    out = tmp_path_factory.mktemp("cookgen") / "build"
    argv = ["build", "steps", "--root", str(clips_root), "--out", str(out), "--split", "train", "--config", "tiny"]
    assert cookgen(argv + ["--no-progress", "clips.cut=false", "filter.min_clip_seconds=0.5"]) == 0
    return out
