"""Joint generation: given frames kept exactly, the plan folder, `--condition`, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from anchors.captions import assign_frames, story_from_json
from anchors.cli import main
from anchors.data import to_tensor
from anchors.generate import generate
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
        ("no events", ["--story", "EMPTY"], "no events"),
        ("too many frames", ["--frames", "9"], "at most 8"),
        ("patch", ["--frames", "5", "model.transformer.patch_size=[2,2,2]"], "temporal patch size is 2"),
        ("unknown preset", ["--preset", "nope"], "unknown preset 'nope'"),
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
    extra = [_story(tmp_path, {"title": "t", "events": []}) if a == "EMPTY" else a for a in extra]
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
