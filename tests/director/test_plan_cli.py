"""``director plan`` as a person meets it: steps stream as they are planned, notes for a capped plan and a
replaced folder, ``--quiet``/``--json`` for scripts, control characters never reach the terminal, distinct folders
for queries without ASCII words."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from director.cli import _print_plan, main

TINY = ["--preset", "tiny"]


def test_the_streamed_output_is_the_plan_folder_printed(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan"
    assert main(["plan", "how to make pancakes", *TINY, "--steps", "3", "--out", str(out)]) == 0
    streamed = capsys.readouterr().out
    _print_plan(out, "")
    assert streamed == capsys.readouterr().out  # the same final output as printing the saved plan


def test_the_first_step_is_printed_before_the_plan_is_finished(tmp_path: Path) -> None:
    """A test reads the first step from the process's stdout while the process is still planning: the plan
    folder (written once the whole plan exists) is not there yet."""
    out = tmp_path / "plan"
    argv = [sys.executable, "-m", "director", "plan", "how to make pancakes", *TINY, "--steps", "10",
            "--out", str(out), "plan.max_caption_tokens=16"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = None
        t0 = time.monotonic()
        for line in proc.stdout:
            if line.startswith("1. "):
                first = line
                break
        assert first is not None, proc.stderr.read()
        assert not (out / "plan.json").exists() and proc.poll() is None  # still planning steps 2..10
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0 and "\n10. " in rest and time.monotonic() > t0
    finally:
        proc.kill()
        proc.wait()


def test_cap_and_replace_notes_go_to_stderr_and_quiet_or_json_stay_clean(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan"
    never_done = ["plan.max_steps=2", "plan.end_threshold=2", "plan.end_threshold_captions=2"]
    assert main(["plan", "how to make pancakes", *TINY, "--out", str(out), *never_done]) == 0
    err = capsys.readouterr().err
    assert "note: the plan stopped at plan.max_steps (2) before the director ended it" in err
    assert "replaced" not in err
    assert main(["plan", "how to make soup", *TINY, "--out", str(out), "--steps", "2", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out == f"{out}\n"  # --quiet: the folder only
    assert f"note: replaced the plan that was in {out}" in cap.err and "max_steps" not in cap.err  # --steps given
    assert main(["plan", "how to make soup", *TINY, "--out", str(out), "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["query"] == "how to make soup"  # stdout is the JSON alone


def test_control_characters_never_reach_the_terminal_or_the_plan(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan"
    assert main(["plan", "how to make \x1b[31mtuna\x07 salad\x00", *TINY, "--steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text and "\x00" not in text
    assert json.loads((out / "plan.json").read_text())["query"] == "how to make [31mtuna salad"
    # a hand-edited plan.json with a NUL and an escape prints clean too
    data = json.loads((out / "plan.json").read_text())
    data["steps"][0]["action"] = "chop\x00 the \x1b[2Jfish"
    (out / "plan.json").write_text(json.dumps(data))
    _print_plan(out, "")
    shown = capsys.readouterr().out
    assert "chop the [2Jfish" in shown and "\x1b" not in shown and "\x00" not in shown


def test_queries_without_ascii_words_get_distinct_folders(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for q in ("..", "🍕🔥"):
        assert main(["plan", q, *TINY, "--steps", "1", "--quiet"]) == 0
    folders = sorted(p.name for p in (tmp_path / "runs" / "plans").iterdir())
    assert len(folders) == 2 and all(f.startswith("plan-") for f in folders)
    assert {json.loads((tmp_path / "runs" / "plans" / f / "plan.json").read_text())["query"] for f in folders} == {
        "..",
        "🍕🔥",
    }


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, captured.err  # nothing before it (no library warning)
    return err


def test_bad_plan_requests_are_one_line_and_leave_nothing(tmp_path: Path, capsys) -> None:
    from auteur.io import writer_lock

    out = tmp_path / "p"
    cases = [
        (["plan", "toast", "--steps", "10000"], "cannot fit: the model's context"),
        (["plan", "x" * 100_000], "the query is 100000 characters long"),
    ]
    for argv, needle in cases:
        assert main([*argv, "--preset", "tiny", "--out", str(out)]) == 2
        assert needle in _one_line_error(capsys)
        assert not out.exists()
    with writer_lock(out):  # another `director plan` is writing this folder
        assert main(["plan", "toast", "--preset", "tiny", "--out", str(out)]) == 2
    assert "is being written by another process" in _one_line_error(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["plan", "toast", "--preset", "tiny", "--out", str(blocker / "p")]) == 2
    assert "cannot write there" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_plan_stops_when_the_context_is_full() -> None:
    """More steps than the context holds (a plan.max_steps or a caller's count): the plan ends when the next step
    might not fit, inside the context, and says so (the CLI turns it into a note)."""
    from auteur.config import load_config
    from auteur.plan import VisualSpace
    from director.checkpoint import build_director
    from director.config import PRESETS, DirectorConfig
    from director.plan import Planner

    cfg = load_config(DirectorConfig, "tiny", preset_dir=PRESETS)
    director, _, _ = build_director(cfg.backbone, cfg.model, VisualSpace("test/space", 32))
    planner = Planner(director, cfg.plan)
    result = planner.plan("toast", steps=10_000)
    assert result.stats.get("context_full") == 1
    assert result.stats["context_tokens"] <= planner.context_tokens() == 2048
    assert result.stats["context_tokens"] + planner.step_tokens_max() > planner.context_tokens()
    assert 1 < len(result.steps) < 10_000
