"""The README is the front door: at most ~250 lines, and every block marked runnable runs as written.

The blocks marked ``<!-- runnable ... -->`` run, in order and in one shell, in a fresh folder laid out
as a checkout (``.venv`` and ``../shared/data`` beside it) after the two commands, so their commands run exactly
as a reader types them into one terminal. Two things are made small, and only these:
``../shared/data/videoauteur_demos`` holds one dish of the real demo clips (BLT_Sandwich, 5 clips) instead of
five, and plans are capped at 3 steps (``--steps 3`` added to ``director plan`` and ``auteur run``), so the
blocks' whole pipeline runs in about a minute.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MARK = "<!-- runnable"


def runnable_blocks(text: str) -> list[str]:
    """The fenced blocks that directly follow a ``<!-- runnable ... -->`` line."""
    lines, blocks = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(MARK):
            assert lines[i + 1].startswith("```"), f"README line {i + 2}: a runnable mark must precede a code fence"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


def small(command_block: str) -> str:
    """The block with its plans capped at 3 steps (see the module docstring)."""
    out = []
    for line in command_block.splitlines():
        if re.match(r"\s*(director plan|auteur run) ", line) and "--steps" not in line:
            code, _, comment = line.partition("  #")
            line = f"{code.rstrip()} --steps 3"
        out.append(line)
    return "\n".join(out)


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert len(runnable_blocks(text)) >= 2
    for heading in ("## The two commands", "## The pipeline in five commands", "## Status", "## Scale", "## Layout"):
        assert heading in text
    for page in re.findall(r"\]\((docs/[a-z_]+\.md)\)", text):  # every page linked exists
        assert (ROOT / page).is_file(), page


@pytest.mark.skipif(not (SHARED / "videoauteur_demos").is_dir(), reason="../shared/data is not beside this checkout")
def test_every_runnable_readme_block_runs_as_written(tmp_path: Path) -> None:
    checkout, shared = tmp_path / "checkout", tmp_path / "shared" / "data" / "videoauteur_demos"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    dish = "Language_Centric/BLT_Sandwich"
    shutil.copytree(SHARED / "videoauteur_demos" / dish, shared / dish)
    # One shell for all blocks, in order, as a reader types them into one terminal (the first activates the venv).
    script = "\n".join(small(block) for block in runnable_blocks((ROOT / "README.md").read_text()))
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=checkout, capture_output=True, text=True,
                          timeout=1800)  # fmt: skip
    assert proc.returncode == 0, f"{script}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    runs = checkout / "runs"
    assert (runs / "tuna" / "plan" / "plan.json").is_file() and list((runs / "tuna" / "plan").glob("**/*.png"))
    assert (runs / "tuna2" / "plan" / "video.mp4").is_file() and (runs / "tuna2" / "storyboard.html").is_file()
    assert (runs / "director-tiny" / "final" / "director.json").is_file()


def test_tasks_run_with_options_only_plans_the_default_query(tmp_path: Path) -> None:
    """`python3 tasks.py run --steps 5` (options, no query) plans the README's query, not an "empty query"."""
    import json
    import sys

    out = tmp_path / "plan"
    run = subprocess.run([sys.executable, "tasks.py", "run", "--steps", "1", "--preset", "tiny", "--quiet", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "plan.json").read_text())["query"] == "how to cook a tuna sandwich"
