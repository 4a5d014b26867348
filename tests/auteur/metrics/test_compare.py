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
