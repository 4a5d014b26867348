"""Joint generation: given frames kept exactly, the plan folder, `--condition`, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anchors.captions import assign_frames, story_from_json
from anchors.cli import main
from anchors.data import to_tensor
from anchors.generate import generate, story_windows
from auteur.plan import load_plan


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def test_continuation_keeps_given_latents_exactly(tiny_anchors, tiny_cfg):
    story = story_from_json(["a", "b", "c", "d"])
    n = assign_frames(story, 4)
    given = {1: _image(1), 2: _image(2)}
    gen = generate(tiny_anchors, story, n, tiny_cfg.generate, given=given, seed=0)
    ref = tiny_anchors.encode_frames(torch.stack([to_tensor(given[k], 32, 32) for k in (1, 2)])[None])[0]
    assert torch.equal(gen.latents[:, :2], ref)
    # the generated frames differ with the given frames (they are attended to), and with the seed
    other = generate(tiny_anchors, story, n, tiny_cfg.generate, given={1: _image(5), 2: _image(6)}, seed=0)
    free = generate(tiny_anchors, story, n, tiny_cfg.generate, seed=0)
    reseed = generate(tiny_anchors, story, n, tiny_cfg.generate, given=given, seed=1)
    assert not torch.equal(free.latents[:, :2], ref)
    assert not torch.equal(reseed.latents[:, 2:], gen.latents[:, 2:])
    assert torch.equal(reseed.latents[:, :2], ref)
    assert other.latents.shape == gen.latents.shape == (4, 4, 4, 4)


def test_editing_keeps_middle_frame(tiny_anchors, tiny_cfg):
    story = story_from_json(["a", "b", "c"])
    gen = generate(tiny_anchors, story, assign_frames(story, 4), tiny_cfg.generate, given={3: _image(7)}, seed=2)
    ref = tiny_anchors.encode_frames(to_tensor(_image(7), 32, 32)[None, None])[0]
    assert torch.equal(gen.latents[:, 2:3], ref) and gen.given == [3]


def test_cli_generate_writes_a_plan_then_continues_it(story_file, tmp_path, capsys):
    out = tmp_path / "plan"
    rc, stdout, err = run(["generate", "--story", story_file, "--preset", "tiny", "--out", out, "--seed", "3"], capsys)
    assert rc == 0, err
    assert "4 story frames (0 given)" in stdout and "UNTRAINED" in stdout
    plan = load_plan(out)
    assert plan.query == "Tuna sandwich" and len(plan.steps) == 4
    assert [s.action for s in plan.steps] == [
        "Drain the tuna.",
        "Drain the tuna.",
        "Mix tuna with mayonnaise.",
        "Close it.",
    ]
    for s in plan.steps:
        with Image.open(out / s.keyframe) as im:
            assert im.size == (32, 32) and im.format == "PNG"
    assert plan.embeddings.shape == (4, plan.space.dim) and plan.space.name.startswith("open_clip-random/")
    prov = plan.provenance
    assert prov["generator"] == "anchors" and prov["preset"] == "tiny" and prov["seed"] == 3
    assert prov["models"]["anchors_trained"] is False
    assert prov["caption"].startswith("Subjects: a cook; tuna, bread. Style: a cooking video. Events: (1) frames 1-2")
    assert (out / "config.yaml").is_file()

    cont = tmp_path / "cont"
    rc, stdout, err = run(
        ["generate", "--story", story_file, "--preset", "tiny", "--out", cont, "--condition", f"{out}:1,2"], capsys
    )
    assert rc == 0, err
    new = load_plan(cont)
    assert [s.meta["given"] for s in new.steps] == [True, True, False, False]
    assert new.provenance["given_frames"] == [1, 2] and new.provenance["condition_plan"] == str(out)
    # the kept frames are the first plan's keyframes re-encoded and kept exactly through sampling
    from anchors.config import PRESETS, AnchorsConfig
    from anchors.model import build_anchors
    from auteur.config import load_config

    anchors = build_anchors(load_config(AnchorsConfig, "tiny", preset_dir=PRESETS).model)
    imgs = torch.stack([to_tensor(Image.open(out / plan.steps[i].keyframe), 32, 32) for i in (0, 1)])
    ref = anchors.encode_frames(imgs[None])[0]
    assert torch.equal(load_file(str(cont / "latents.safetensors"))["latents"][:, :2], ref)
    # ... and their keyframes are the first plan's images, pixel for pixel (not VAE re-decodes)
    for i in (0, 1):
        with Image.open(out / plan.steps[i].keyframe) as a, Image.open(cont / new.steps[i].keyframe) as b:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    torch.testing.assert_close(new.embeddings[:2], plan.embeddings[:2])
    decoded = anchors.decode_latents(ref[None])[0]
    with Image.open(out / plan.steps[0].keyframe) as a:
        original = to_tensor(a, 32, 32)
    assert (decoded[0] - original).abs().max() > 2 / 255  # a re-decode would not have matched


def test_cli_generate_from_a_trained_checkpoint(tiny_cookgen, story_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc, stdout, err = run(
        ["train", "--config", "tiny", "--no-progress", f"data={tiny_cookgen}", f"out={run_dir}", "train.max_steps=2"],
        capsys,
    )
    assert rc == 0, err
    assert "multievent stage" in stdout
    out = tmp_path / "plan"
    rc, stdout, err = run(["generate", "--story", story_file, "--preset", run_dir / "final", "--out", out], capsys)
    assert rc == 0, err
    prov = load_plan(out).provenance
    assert prov["models"]["anchors_trained"] is True and prov["models"]["anchors_checkpoint"] == str(run_dir / "final")
    assert "UNTRAINED" not in stdout


def _story(tmp_path: Path, data) -> Path:
    p = tmp_path / "s.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize(
    "case, extra, match",
    [
        ("no events", ["--story", "EMPTY"], "no events and no prompt"),
        ("window beyond max_frames", ["--frames", "12", "generate.window=10"], "at most 8"),
        ("rope", ["--frames", "40", "model.max_frames=40"], "RoPE can position at most 32 frames"),
        ("rope spatial", ["model.height=576"], "RoPE can position at most 512x512 pixels"),
        ("overlap", ["--frames", "9", "generate.overlap=8"], "generate.overlap=8 must be at least 1"),
        ("patch", ["--frames", "5", "model.transformer.patch_size=[2,2,2]"], "temporal patch size is 2"),
        ("unknown preset", ["--preset", "nope"], "unknown preset 'nope'"),
        ("missing checkpoint", ["--preset", "runs/nope/final"], "no such checkpoint folder or preset file"),
        ("default", ["--preset", "default"], "no video diffusion weights are available offline"),
        ("paper without path", ["--preset", "paper"], "model.pretrained=PATH"),
        ("missing checkpoint", ["checkpoint=/nonexistent/final"], "not found or not an anchors checkpoint"),
        ("checkpoint dir", ["--preset", "NOTCKPT"], "not an anchors checkpoint"),
        ("missing story", ["--story", "/nonexistent/story.json"], "story file not found"),
        ("condition syntax", ["--condition", "nocolon"], "expected PLAN_DIR:K"),
        ("condition plan", ["--condition", "/nonexistent:1"], "not a plan folder"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(case, extra, match, story_file, tmp_path, capsys):
    story = str(story_file)
    args = ["generate", "--story", story, "--preset", "tiny", "--out", tmp_path / "out"]
    empty = {"id": "t", "prompt": "", "shots": [], "meta": {}}  # a compare item with neither shots nor prompt
    extra = [_story(tmp_path, empty) if a == "EMPTY" else a for a in extra]
    extra = [(tmp_path / "notckpt") if a == "NOTCKPT" else a for a in extra]
    (tmp_path / "notckpt").mkdir()
    if "--story" in extra:
        args = args[:1] + args[3:]
    if "--preset" in extra:
        args = [a for i, a in enumerate(args) if not (a == "--preset" or args[i - 1] == "--preset")]
    rc, out, err = run(args + extra, capsys)
    assert rc == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and match in err, err
    assert not (tmp_path / "out").exists()


def test_condition_frame_counts(story_file, tmp_path, capsys):
    plan = tmp_path / "plan"
    assert (
        run(["generate", "--story", story_file, "--preset", "tiny", "--out", plan, "generate.embed=false"], capsys)[0]
        == 0
    )
    for spec, match in [
        ("1,2,3,4,5", "only 4 story frames"),
        ("1,2,3,4", "nothing is left to generate"),
        ("1,6", "outside the story's frames 1..4"),
    ]:
        rc, _, err = run(
            [
                "generate",
                "--story",
                story_file,
                "--preset",
                "tiny",
                "--out",
                tmp_path / "o",
                "--condition",
                f"{plan}:{spec}",
            ],
            capsys,
        )
        assert rc == 2 and match in err, err
        assert not (tmp_path / "o").exists()


def test_train_bad_input(tmp_path, capsys):
    rc, _, err = run(["train", "--config", "tiny", f"out={tmp_path / 'r'}"], capsys)
    assert rc == 2 and "no training data" in err
    rc, _, err = run(["train", "--config", "default"], capsys)
    assert rc == 2 and "no 'default' preset" in err
    rc, _, err = run(["train", "--config", "tiny", f"data={tmp_path}", f"out={tmp_path / 'r'}"], capsys)
    assert rc == 2 and "not a CookGen build" in err
    assert not (tmp_path / "r").exists()


def test_every_preset_loads(capsys):
    from anchors.config import PRESETS, AnchorsConfig
    from auteur.config import load_config

    rc, out, _ = run(["presets"], capsys)
    names = out.split()
    assert rc == 0 and "default" not in names
    assert set(names) == {"tiny", "paper", "stage1-global", "stage2-multievent", "stage3-continuation"}
    stages = [load_config(AnchorsConfig, n, preset_dir=PRESETS).train.stage for n in names if n.startswith("stage")]
    assert stages == ["global", "multievent", "continuation"]
    assert load_config(AnchorsConfig, "stage1-global", preset_dir=PRESETS).model.kind == "wan"


def test_long_story_is_generated_in_windows_keeping_the_overlap_exactly(tiny_anchors, tiny_cfg):
    # 12 story frames, more than tiny's max_frames (8): windows of 8 frames, overlap 2 -> frames 1-8, 7-12
    events = [f"step {i}" for i in range(1, 13)]
    story = story_from_json(events)
    gen = generate(tiny_anchors, story, assign_frames(story, None), tiny_cfg.generate, seed=4)
    assert gen.windows == [(0, 8), (6, 12)] and gen.overlap == 2
    assert gen.latents.shape == (4, 12, 4, 4) and gen.frames.shape == (12, 3, 32, 32)
    assert gen.window_captions[1] == "Events: (1) frame 1: step 7. (2) frame 2: step 8. (3) frame 3: step 9. " + (
        "(4) frame 4: step 10. (5) frame 5: step 11. (6) frame 6: step 12."
    )
    # window 1 is the first 8 frames generated alone; window 2 wrote its frames 1-2 (story frames 7-8) back
    # over window 1's, and they are window 1's latents exactly
    first = story_from_json(events[:8])
    alone = generate(tiny_anchors, first, assign_frames(first, None), tiny_cfg.generate, seed=4)
    assert torch.equal(gen.latents[:, :8], alone.latents)
    assert torch.equal(gen.frames[6:8], alone.frames[6:8])
    # the later frames are generated (not left at zero) and depend on what window 1 made
    assert gen.latents[:, 8:].abs().sum(dim=(0, 2, 3)).min() > 0
    other = generate(tiny_anchors, story, 12, tiny_cfg.generate, given={7: _image(1), 8: _image(2)}, seed=4)
    assert not torch.equal(other.latents[:, 8:], gen.latents[:, 8:])


def test_story_windows(tiny_cfg):
    from dataclasses import replace

    m, g = tiny_cfg.model, tiny_cfg.generate
    assert story_windows(8, m, g, 1, 32) == [(0, 8)]
    assert story_windows(30, m, g, 1, 32) == [(0, 8), (6, 14), (12, 20), (18, 26), (24, 30)]
    assert story_windows(13, m, replace(g, window=4, overlap=1), 1) == [(0, 4), (3, 7), (6, 10), (9, 13)]
    # temporal patch 2: a short last window reaches back one more frame to an even length
    assert story_windows(11, m, g, 2) == [(0, 8), (5, 11)]
    from anchors.config import AnchorsError

    with pytest.raises(AnchorsError, match="generate.overlap=0 must be at least 1"):
        story_windows(9, m, replace(g, overlap=0), 1)
    with pytest.raises(AnchorsError, match="temporal patch size is 3"):
        story_windows(9, m, g, 3)
    with pytest.raises(AnchorsError, match="RoPE can position at most 6 frames"):
        story_windows(9, m, g, 1, 6)


def test_cli_long_story_and_compare_items(tmp_path, capsys):
    from auteur.prompts import PromptItem

    # the VideoGen-of-Thought case: 30 shots, more than tiny's max_frames, as an `auteur compare` item
    shots = [f"The chef does step {i}." for i in range(1, 31)]
    item = PromptItem(id="chef", prompt="A chef's day", shots=shots, meta={"source": "x.json"}).to_json()
    out = tmp_path / "plan"
    rc, stdout, err = run(
        ["generate", "--story", _story(tmp_path, item), "--preset", "tiny", "--out", out, "generate.embed=false"],
        capsys,
    )
    assert rc == 0, err
    assert "30 story frames (0 given) in 5 windows (overlap 2)" in stdout
    plan = load_plan(out)
    assert plan.query == "A chef's day" and [s.action for s in plan.steps] == shots
    assert all((out / s.keyframe).is_file() for s in plan.steps)
    windows = plan.provenance["windows"]
    assert windows["count"] == 5 and windows["overlap"] == 2
    assert windows["spans"] == [[1, 8], [7, 14], [13, 20], [19, 26], [25, 30]]
    assert load_file(str(out / "latents.safetensors"))["latents"].shape == (4, 30, 4, 4)

    # a YouCook2 query (no shots) replaces that plan folder: the prompt is one event over generate.num_frames
    item = PromptItem(id="pad-thai", prompt="how to make pad thai", meta={"recipe_type": "113"}).to_json()
    rc, stdout, err = run(
        ["generate", "--story", _story(tmp_path, item), "--preset", "tiny", "--out", out, "generate.embed=false"],
        capsys,
    )
    assert rc == 0, err
    plan = load_plan(out)
    assert plan.query == "how to make pad thai" and [s.action for s in plan.steps] == ["how to make pad thai"] * 4
    assert plan.provenance["caption"] == "Events: (1) frames 1-4: how to make pad thai."
    assert plan.provenance["windows"] == {
        "count": 1,
        "overlap": 0,
        "spans": [[1, 4]],
        "captions": [plan.provenance["caption"]],
    }


def test_cli_generate_refuses_an_out_folder_that_is_not_a_plan(story_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc, stdout, err = run(["generate", "--story", story_file, "--preset", "tiny", "--out", out], capsys)
    assert rc == 2 and err.startswith("error: --out") and "is not a plan folder" in err
    assert len(err.strip().splitlines()) == 1 and not stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it
