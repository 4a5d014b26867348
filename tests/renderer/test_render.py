"""`renderer render` end to end on plan folders: tiny FLUX Fill, retrieval, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auteur.plan import VisualSpace, load_plan
from renderer.cli import main
from renderer.config import RenderConfig
from renderer.render import SimulatedKill, render_plan
from tests.renderer.conftest import make_plan, tiny_space


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tiny_flux_render_end_to_end(tiny_plan: Path, capsys):
    rc, out, _ = run(["render", tiny_plan, "--preset", "tiny", "--context", "2", "--no-progress"], capsys)
    assert rc == 0 and "3 keyframes rendered" in out
    plan = load_plan(tiny_plan)
    prov = plan.provenance["renderer"]
    assert prov["kind"] == "flux-fill" and prov["trained"] is False and "UNTRAINED" in prov["label"]
    for s in plan.steps:
        assert s.keyframe == f"keyframes/step-{s.index:03d}.png"
        img = Image.open(tiny_plan / s.keyframe)
        assert img.size == (32, 32) and img.mode == "RGB"
        assert s.meta["render"]["kind"] == "rendered" and s.meta["render"]["seed"] == s.index
    assert [s.meta["render"]["context_steps"] for s in plan.steps] == [[], [1], [1, 2]]
    before = (tiny_plan / "keyframes/step-002.png").read_bytes()
    rc, out, _ = run(["render", tiny_plan, "--preset", "tiny", "--no-progress"], capsys)
    assert rc == 0 and "0 keyframes rendered, 3 already there" in out
    rc, out, _ = run(["render", tiny_plan, "--preset", "tiny", "--seed", "5", "--force", "--no-progress"], capsys)
    assert rc == 0 and "3 keyframes rendered" in out
    assert (tiny_plan / "keyframes/step-002.png").read_bytes() != before  # another seed, another image


def test_retrieval_render_records_and_resumes(tiny_bank: Path, tmp_path: Path, capsys):
    from auteur.bank import load_bank

    bank = load_bank(tiny_bank)
    assert bank.space == tiny_space() and bank.embeddings.shape == (len(bank.frames), 32)
    g = torch.Generator().manual_seed(0)
    emb = bank.embeddings[[1, 5, 9, 2]] + 0.01 * torch.randn(4, 32, generator=g)
    full = make_plan(tmp_path / "full", emb, bank.space, n=4)
    half = make_plan(tmp_path / "half", emb, bank.space, n=4)
    cfg = RenderConfig(backend="retrieval", context=2, width=24, height=16)
    cfg.retrieval.bank = str(tiny_bank)
    render_plan(cfg, full, progress=False)
    with pytest.raises(SimulatedKill):
        render_plan(cfg, half, stop_after=2, progress=False)
    assert [s.keyframe is not None for s in load_plan(half).steps] == [True, True, False, False]
    result = render_plan(cfg, half, progress=False)
    assert result.rendered == [3, 4] and result.skipped == [1, 2]
    a, b = load_plan(full), load_plan(half)
    assert [s.meta["render"]["bank_index"] for s in a.steps] == [s.meta["render"]["bank_index"] for s in b.steps]
    for s in a.steps:
        rec = s.meta["render"]
        assert rec["kind"] == "retrieved" and rec["source"].startswith("Dish_") and isinstance(rec["time"], float)
        assert np.array_equal(np.asarray(Image.open(full / s.keyframe)), np.asarray(Image.open(half / s.keyframe)))
        assert Image.open(full / s.keyframe).size == (24, 16)
    assert a.provenance["renderer"]["kind"] == "retrieval" and "RETRIEVAL" in a.provenance["renderer"]["label"]
    assert len({s.meta["render"]["bank_index"] for s in a.steps}) == 4
    # near-copies of bank rows: without consistency the nearest frames are exactly those rows
    cfg.retrieval.consistency = 0.0
    render_plan(cfg, full, force=True, progress=False)
    assert [s.meta["render"]["bank_index"] for s in load_plan(full).steps] == [1, 5, 9, 2]


def _unchanged(folder: Path, before: bytes) -> None:
    assert (folder / "plan.json").read_bytes() == before
    assert not (folder / "keyframes").exists() or not any((folder / "keyframes").iterdir())


def test_bad_inputs_one_line_exit_2(tiny_plan: Path, tiny_bank: Path, tmp_path: Path, capsys):
    before = (tiny_plan / "plan.json").read_bytes()
    cases = [
        (["--preset", "tiny", "--context", "4"], "--context must be 1, 2 or 3"),
        (["--preset", "tiny", "--size", "30x30"], "not divisible by the model's patch size 4"),
        (["--preset", "tiny", "--size", "big"], "--size must be WxH"),
        (["--preset", "tiny", "--checkpoint", tmp_path / "nope"], "renderer checkpoint not found"),
        (["--preset", "default"], "frame bank not found: none given; build one with `cookgen bank CLIPS_DIR"),
        (["--preset", "default", "--bank", tmp_path / "nobank"], "has no bank.json; build one with `cookgen bank"),
        (["--bank", tiny_bank, "retrieval.diversity_threshold=1"], "threshold must be in [0, 1), got 1.0"),
        (["--bank", tiny_bank, "retrieval.clip_reuse=-1"], "must be >= 0"),
    ]
    for extra, message in cases:
        rc, _, err = run(["render", tiny_plan, *extra, "--no-progress"], capsys)
        assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
        _unchanged(tiny_plan, before)
    other = make_plan(tmp_path / "other", torch.zeros(3, 5), VisualSpace("another/encoder", 5))
    other_before = (other / "plan.json").read_bytes()
    for preset in (["--preset", "tiny"], ["--preset", "default", "--bank", tiny_bank]):
        rc, _, err = run(["render", other, *preset, "--no-progress"], capsys)
        assert rc == 2 and "visual space another/encoder" in err
        _unchanged(other, other_before)
    bare = make_plan(tmp_path / "bare", None, None)
    rc, _, err = run(["render", bare, "--preset", "tiny", "--no-progress"], capsys)
    assert rc == 2 and "has no embeddings" in err
    rc, _, err = run(["render", tmp_path / "missing", "--preset", "tiny"], capsys)
    assert rc == 2 and "not a plan folder" in err


def _cli_stderr(*argv) -> tuple[int, str]:
    """Run `python -m renderer.cli` in a subprocess: real stderr, with everything logging writes to it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "renderer.cli", *map(str, argv)], capture_output=True, text=True, env=env, check=False
    )
    return proc.returncode, proc.stderr


def test_flux_bad_input_is_one_line_on_the_real_stderr(tiny_plan: Path, tmp_path: Path):
    # the size is checked from the config and the visual space with the encoder loaded quietly: no log lines first
    rc, err = _cli_stderr("render", tiny_plan, "--preset", "tiny", "--size", "30x30", "--no-progress")
    assert rc == 2 and err.startswith("error: size 30x30 is not divisible") and err.count("\n") == 1, err
    other = make_plan(tmp_path / "other", torch.zeros(3, 5), VisualSpace("another/encoder", 5))
    rc, err = _cli_stderr("render", other, "--preset", "tiny", "--no-progress")
    assert rc == 2 and err.startswith("error: the plan's embeddings are in visual space another/encoder"), err
    assert err.count("\n") == 1, err
    # FLUX weights that are not there: no library warning before the error either
    rc, err = _cli_stderr("render", tiny_plan, "--preset", "tiny", "flux.kind=pretrained", f"flux.model={tmp_path}/x")
    assert rc == 2 and err.startswith("error: cannot load FLUX.1 Fill from") and err.count("\n") == 1, err
    assert not (tiny_plan / "keyframes").exists() and not (other / "keyframes").exists()


@pytest.mark.parametrize("how", ["keyframes-is-a-file", "read-only"])
def test_unwritable_plan_folder_is_one_line_exit_2(tiny_plan: Path, how: str, capsys):
    if how == "keyframes-is-a-file":
        (tiny_plan / "keyframes").write_text("a file where the keyframes folder goes")
    else:
        tiny_plan.chmod(0o555)
        if os.access(tiny_plan, os.W_OK):  # root: chmod does not stop writes
            tiny_plan.chmod(0o755)
            pytest.skip("a read-only folder stays writable for root; the other case checks the same path")
    before = (tiny_plan / "plan.json").read_bytes()
    try:
        rc, _, err = run(["render", tiny_plan, "--preset", "tiny", "--no-progress"], capsys)
    finally:
        tiny_plan.chmod(0o755)
    assert rc == 2 and err.startswith("error: output folder") and "is not writable" in err, err
    assert err.count("\n") == 1
    assert (tiny_plan / "plan.json").read_bytes() == before
    assert sorted(p.name for p in tiny_plan.iterdir()) == sorted(
        ["embeddings.safetensors", "plan.json"] + (["keyframes"] if how == "keyframes-is-a-file" else [])
    )


def test_keyframes_of_another_renderer_are_made_again(tiny_bank: Path, tmp_path: Path, capsys):
    from auteur.bank import load_bank

    bank = load_bank(tiny_bank)
    plan_dir = make_plan(tmp_path / "plan", bank.embeddings[[0, 4, 8]].clone(), bank.space)
    visual_only = ["retrieval.consistency=0", "retrieval.text=0", "retrieval.diversity=0", "retrieval.clip_reuse=0"]
    retrieve = ["render", plan_dir, "--bank", tiny_bank, "--size", "32x32", "--no-progress", *visual_only]
    rc, out, _ = run(retrieve, capsys)
    assert rc == 0 and "3 keyframes retrieved, 0 already there" in out
    assert all(s.meta["render"]["renderer"]["preset"] == "default" for s in load_plan(plan_dir).steps)
    # the tiny FLUX renderer does not keep the retrieved frames: it renders every step again, and says why
    rc, out, _ = run(["render", plan_dir, "--preset", "tiny", "--no-progress"], capsys)
    assert rc == 0 and "3 keyframes rendered, 0 already there; 3 made by another renderer (preset default)" in out
    plan = load_plan(plan_dir)
    assert all(s.meta["render"]["kind"] == "rendered" for s in plan.steps)
    assert all(s.meta["render"]["renderer"] == plan.steps[0].meta["render"]["renderer"] for s in plan.steps)
    rc, out, _ = run(["render", plan_dir, "--preset", "tiny", "--no-progress"], capsys)
    assert rc == 0 and "0 keyframes rendered, 3 already there ->" in out
    # a keyframe whose record names no renderer (written before renderers were recorded) is made again too
    raw = json.loads((plan_dir / "plan.json").read_text())
    del raw["steps"][1]["meta"]["render"]["renderer"]
    (plan_dir / "plan.json").write_text(json.dumps(raw))
    rc, out, _ = run(["render", plan_dir, "--preset", "tiny", "--no-progress"], capsys)
    assert rc == 0 and "1 keyframes rendered, 2 already there; 1 made by another renderer (an unrecorded" in out
    # and back: retrieval replaces the FLUX keyframes
    rc, out, _ = run(retrieve, capsys)
    assert rc == 0 and "3 keyframes retrieved, 0 already there; 3 made by another renderer (preset tiny)" in out
    assert [s.meta["render"]["bank_index"] for s in load_plan(plan_dir).steps] == [0, 4, 8]
