import json
import sys
from dataclasses import replace

import pytest
from PIL import Image

from auteur.cli import main as auteur
from auteur.plan import load_plan, save_plan
from auteur.run import RunConfig, RunError, StageCommands, run
from auteur.video import probe
from tests.videogen.conftest import COLOURS

SMALL_VIDEOGEN = """base: default
fps: 8
animatic: {width: 64, height: 64, step_seconds: 1, crossfade_seconds: 0.25}
"""


def _write_keyframes(plan_dir):
    """What a renderer stage leaves: one keyframe per step, recorded in plan.json (flat colours here)."""
    plan = load_plan(plan_dir)
    (plan_dir / "keyframes").mkdir(exist_ok=True)
    for i, s in enumerate(plan.steps):
        s.keyframe = f"keyframes/{s.index:03d}.png"
        Image.new("RGB", (64, 64), COLOURS[i % 4]).save(plan_dir / s.keyframe)
    save_plan(plan, plan_dir)


def test_run_orchestrates_and_resumes_stage_by_stage(tmp_path, capsys):
    vg = tmp_path / "small.yaml"
    vg.write_text(SMALL_VIDEOGEN)
    out = tmp_path / "run"
    cfg = RunConfig(query="how to make toast", out=out, preset="tiny", videogen_preset=str(vg), seed=1, steps=3)
    missing = StageCommands(renderer=[sys.executable, "-m", "no_such_renderer_pkg.cli"])
    with pytest.raises(RunError, match="needs the 'no_such_renderer_pkg' package, which is not installed"):
        run(cfg, missing)
    plan_dir = out / "plan"
    assert len(load_plan(plan_dir).steps) == 3  # the director stage finished before the renderer was needed
    _write_keyframes(plan_dir)
    record = run(cfg, missing)  # the renderer's outputs exist now: it is skipped, not needed
    assert record["stages"]["director"]["status"].startswith("skipped")
    assert record["stages"]["renderer"]["status"].startswith("skipped")
    assert record["stages"]["videogen"]["status"] == "done"
    info = probe(plan_dir / "video.mp4")
    assert info.num_frames == 24 and (info.width, info.height) == (64, 64)
    assert (out / "storyboard.html").is_file() and json.loads((out / "run.json").read_text())["seed"] == 1
    record = run(cfg, missing)
    assert all(v["status"].startswith("skipped") for v in record["stages"].values())
    # another videogen preset: that stage runs again (and only it: the renderer is still not needed)
    vg2 = tmp_path / "small2.yaml"
    vg2.write_text(SMALL_VIDEOGEN.replace("step_seconds: 1", "step_seconds: 2"))
    record = run(replace(cfg, videogen_preset=str(vg2)), missing)
    assert (
        record["stages"]["renderer"]["status"].startswith("skipped")
        and record["stages"]["videogen"]["status"] == "done"
    )
    assert probe(plan_dir / "video.mp4").num_frames == 48
    # another seed: every stage runs again, from a new plan (the renderer is needed again, and missing)
    with pytest.raises(RunError, match="needs the 'no_such_renderer_pkg' package"):
        run(replace(cfg, videogen_preset=str(vg2), seed=2), missing)
    assert json.loads((out / "run.json").read_text())["stages"]["director"]["seed"] == 2
    with pytest.raises(RunError, match="another query"):
        run(RunConfig(query="something else", out=out), missing)


def test_run_reports_a_failing_stage_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/bank here
    monkeypatch.delenv("AUTEUR_BANK", raising=False)
    assert auteur(["run", "  ", "--out", str(tmp_path / "r")]) == 2
    assert "query is empty" in capsys.readouterr().err
    assert auteur(["run", "how to make toast", "--out", str(tmp_path / "r1")]) == 2  # default renderer, no bank
    err = capsys.readouterr().err
    assert "frame bank: build one with `cookgen bank CLIPS_DIR" in err and not (tmp_path / "r1").exists()
    assert auteur(["run", "how to make toast", "--out", str(tmp_path / "r1"), "--bank", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a frame bank" in err and "`cookgen bank CLIPS_DIR" in err and not (tmp_path / "r1").exists()
    monkeypatch.setenv("AUTEUR_BANK", str(tmp_path / "nope"))  # the bank the default renderer finds by itself
    assert auteur(["run", "how to make toast", "--out", str(tmp_path / "r1")]) == 2
    assert "--bank " + str(tmp_path / "nope") + " is not a frame bank" in capsys.readouterr().err
    cfg = RunConfig(
        query="how to make toast", out=tmp_path / "r2", director_preset="no-such-preset", renderer_preset="tiny"
    )
    with pytest.raises(RunError, match="--director-preset no-such-preset: not a director preset"):
        run(cfg)  # a stage preset that names nothing is refused before the run folder is made
    assert not (tmp_path / "r2").exists()
    bad = tmp_path / "bad.yaml"  # a preset file the director stage itself refuses
    bad.write_text("no_such_key: 1\n")
    with pytest.raises(RunError, match=r"stage director failed \(exit 2\): unknown config key 'no_such_key'"):
        run(
            RunConfig(query="how to make toast", out=tmp_path / "r2", director_preset=str(bad), renderer_preset="tiny")
        )
    assert not (tmp_path / "r2" / "plan").exists()
    # from the CLI: one line on stderr, naming the stage's own error and the file holding its whole output
    capsys.readouterr()
    argv = [
        "run",
        "how to make toast",
        "--out",
        str(tmp_path / "r3"),
        "--director-preset",
        str(bad),
        "--preset",
        "tiny",
    ]
    assert auteur(argv) == 2
    err = capsys.readouterr().err
    log_file = tmp_path / "r3" / "logs" / "director.log"
    assert err.count("\n") == 1 and "unknown config key 'no_such_key'" in err and f"(full log: {log_file})" in err, err
    assert "# exit 2" in log_file.read_text()


def test_auteur_run_end_to_end_with_the_renderer(tmp_path, capsys):
    vg = tmp_path / "small.yaml"
    vg.write_text(SMALL_VIDEOGEN)
    out = tmp_path / "run"
    argv = ["run", "how to make toast", "--out", str(out), "--preset", "tiny", "--videogen-preset", str(vg),
            "--steps", "3"]  # fmt: skip
    assert auteur(argv) == 0
    plan = load_plan(out / "plan")
    assert all(s.keyframe and s.clip for s in plan.steps)
    assert probe(out / "plan" / "video.mp4").num_frames == 8 * len(plan.steps)
    assert "storyboard" in capsys.readouterr().out and (out / "storyboard.html").is_file()


def test_auteur_run_default_offline(tmp_path, capsys, monkeypatch):
    """The offline default end to end: the trained default director, retrieval from a real frame bank, animatic."""
    from pathlib import Path

    demos = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videoauteur_demos"
    if not demos.is_dir():
        pytest.skip(f"{demos} not found: the default run needs real clips for its frame bank")
    from cookgen.cli import main as cookgen

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in (1, 2, 3):  # three real step clips make a small bank (15 frames)
        (clips / f"{i}.mp4").symlink_to(demos / "Language_Centric" / "BLT_Sandwich" / f"{i}.mp4")
    assert cookgen(["bank", str(clips), "--out", str(tmp_path / "bank"), "--no-progress"]) == 0
    vg = tmp_path / "small.yaml"
    vg.write_text(SMALL_VIDEOGEN)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # runs/bank, the bank found without --bank
    (tmp_path / "runs").mkdir()
    (tmp_path / "bank").rename(tmp_path / "runs" / "bank")
    monkeypatch.delenv("AUTEUR_BANK", raising=False)
    argv = ["run", "how to cook a tuna sandwich", "--out", str(out), "--videogen-preset", str(vg), "--steps", "2"]
    assert auteur(argv) == 0, capsys.readouterr().err
    plan = load_plan(out / "plan")
    assert len(plan.steps) == 2 and plan.provenance["renderer"]["kind"] == "retrieval"
    assert all(s.keyframe and s.clip and s.action.strip() for s in plan.steps)
    assert probe(out / "plan" / "video.mp4").num_frames == 8 * 2
    assert "animatic" in capsys.readouterr().out


def test_a_query_that_looks_like_an_option_is_planned_as_text(tmp_path):
    """The query reaches `director plan` after "--": "--help" is what to plan, not an option."""
    out = tmp_path / "run"
    cfg = RunConfig(query="--help", out=out, preset="tiny", steps=1)
    stop_after_plan = StageCommands(renderer=[sys.executable, "-m", "no_such_renderer_pkg.cli"])
    with pytest.raises(RunError, match="no_such_renderer_pkg"):
        run(cfg, stop_after_plan)
    assert load_plan(out / "plan").query == "--help"
    assert "-- --help" in (out / "logs" / "director.log").read_text().splitlines()[0]


def test_a_bank_for_a_renderer_that_uses_none_is_refused(tmp_path, capsys):
    assert auteur(["run", "toast", "--preset", "tiny", "--bank", str(tmp_path / "nonexistent"),
                   "--out", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--bank is for the default (retrieval) renderer" in err
    assert not (tmp_path / "run").exists()


SLOW_STAGE_RUN = """
import sys
from auteur.run import RunConfig, StageCommands, run
slow = [sys.executable, "-c", "import time; time.sleep(120)"]  # a stage that is still working when the run dies
run(RunConfig(query="toast", out=sys.argv[1], preset="tiny"), StageCommands(director=slow))
"""


def test_killing_auteur_run_ends_its_running_stage(tmp_path):
    """kill -9 of a run while a stage works (a stage command that sleeps stands in for a long `director plan`):
    the stage, in its own process group and told to end with its parent, is gone within seconds."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-c", SLOW_STAGE_RUN, str(tmp_path / "run")])
    children: list[int] = []
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline:
        time.sleep(0.2)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    assert children, "the stage never started"
    assert os.getpgid(children[0]) == children[0] != os.getpgid(proc.pid)  # its own process group
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    assert not any(_alive(c) for c in children)


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_second_run_into_the_same_folder_fails_in_one_line(tmp_path, capsys):
    from auteur.io import writer_lock

    with writer_lock(tmp_path / "run"):  # as a first `auteur run` holds it while it works
        assert auteur(["run", "toast", "--preset", "tiny", "--out", str(tmp_path / "run")]) == 2
    assert "is being written by another process" in capsys.readouterr().err
