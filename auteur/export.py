"""``auteur export vistorybench RUN_DIR --out DIR``: keyframes in ViStoryBench's output layout.

ViStoryBench's reader (``vistorybench/dataset_loader/read_outputs.py``) expects
``<outputs>/<method>/<mode>/<language>/<timestamp>/<story_id>/<shot images>``, with integer story folders
(it sorts them with ``int()``) and the shot images in natural order. This writes, for each system of an
``auteur compare`` run (``RUN_DIR/systems/<system>/<item>/``), every keyframe as ``shot_<NN>.png`` (1-based,
in step order) under ``<system>/<mode>/<lang>/<timestamp>/<story_id>/``. Items whose id is an integer
(ViStoryBench stories ``01`` ... ``80``) keep it; other items are numbered 1, 2, ... in sorted order and the
mapping is written to ``<system>/<mode>/<lang>/<timestamp>/story_ids.json``. The whole tree is built in a
temporary folder and renamed, so nothing half-written is left.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from auteur.errors import AuteurError
from auteur.io import atomic_dir


def export_vistorybench(run_dir: str | Path, out: str | Path, mode: str = "base", lang: str = "en",
                        timestamp: str | None = None) -> dict[str, int]:  # fmt: skip
    """Export every system's keyframes; returns {system: number of stories written}."""
    from auteur.compare import _plan_ok, keyframe_paths

    run_dir, out = Path(run_dir), Path(out)
    systems_dir = run_dir / "systems"
    if not systems_dir.is_dir():
        raise AuteurError(f"{run_dir} is not an 'auteur compare' output folder (no systems/ in it)")
    timestamp = timestamp or time.strftime("%Y%m%d-%H%M%S")
    if len(timestamp) != 15 or timestamp[8] not in "-_" or not (timestamp[:8] + timestamp[9:]).isdigit():
        raise AuteurError(f"timestamp {timestamp!r} must look like 20250101-120000 (ViStoryBench parses it)")
    if not any(
        _plan_ok(p) is not None and keyframe_paths(_plan_ok(p), p) for p in systems_dir.glob("*/*") if p.is_dir()
    ):
        raise AuteurError(f"{run_dir}: no finished plans with keyframes to export")
    counts: dict[str, int] = {}
    with atomic_dir(out) as tmp:
        for sys_dir in sorted(p for p in systems_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            items = sorted(p for p in sys_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            base = tmp / sys_dir.name / mode / lang / timestamp
            numeric = all(p.name.isdigit() for p in items)
            mapping, n = {}, 0
            for k, item in enumerate(items):
                plan = _plan_ok(item)
                if plan is None:
                    continue
                frames = keyframe_paths(plan, item)
                if not frames:
                    continue
                story_id = item.name if numeric else f"{k + 1:02d}"
                mapping[story_id] = item.name
                dest = base / story_id
                dest.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(frames):
                    with Image.open(f) as im:
                        im.convert("RGB").save(dest / f"shot_{i + 1:02d}.png")
                n += 1
            if n:
                (base / "story_ids.json").write_text(json.dumps(mapping, indent=2) + "\n")
            counts[sys_dir.name] = n
    return counts
