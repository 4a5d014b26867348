"""``storyboard.html``: one page showing a run: the full video on top, one row per step, provenance below.

Each step row holds its action, caption, keyframe and a player for its clip; a keyframe retrieved from a frame bank
(the offline renderer) says so under it: "retrieved from <bank clip> at <time> s" and the source step's action.
Every resource is a relative path inside the run folder (no network, no scripts), so the folder can be zipped and
opened anywhere.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from auteur.io import atomic_write_text
from auteur.plan import Plan, load_plan

STORYBOARD = "storyboard.html"

_CSS = """
body { font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }
h1 { font-size: 20px; } .label { color: #a33; font-weight: bold; }
.full video { width: 640px; max-width: 100%; }
table.steps { border-collapse: collapse; }
table.steps td { border-top: 1px solid #ccc; padding: 8px; vertical-align: top; }
td.text { width: 360px; } td.kf img, td.clip video { width: 192px; height: 192px; object-fit: cover; }
td.kf p.src { width: 192px; font-size: 11px; color: #a33; margin: 4px 0 0 0; }
.prov { font-size: 12px; white-space: pre-wrap; background: #eee; padding: 8px; }
"""


def _rel(run_dir: Path, plan_dir: Path, path: str | None) -> str | None:
    if not path:
        return None
    target = plan_dir / path
    return Path(os.path.relpath(target, run_dir)).as_posix()


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _retrieved_label(render: dict[str, Any]) -> str:
    """The line under a keyframe the retrieval renderer took from a frame bank ("" for any other keyframe)."""
    if render.get("kind") != "retrieved" or not render.get("source"):
        return ""
    when = f" at {float(render['time']):.1f} s" if isinstance(render.get("time"), int | float) else ""
    action = render.get("source_action")
    what = f"<br>(source step: {_esc(action)})" if action else ""
    return f'<p class="src">retrieved from {_esc(render["source"])}{when}{what}</p>'


def render_storyboard(plan: Plan, plan_dir: Path, run_dir: Path, run_info: dict[str, Any] | None = None) -> str:
    """The storyboard page's HTML for ``plan`` (in ``plan_dir``), with paths relative to ``run_dir``."""
    video = plan.meta.get("video") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(plan.query)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(plan.query)}</h1>",
    ]
    if video.get("path"):
        src = _rel(run_dir, plan_dir, video["path"])
        vtt = _rel(run_dir, plan_dir, video.get("captions"))
        track = f'<track kind="captions" src="{_esc(vtt)}" srclang="en" label="captions" default>' if vtt else ""
        parts.append(
            f'<div class="full"><video id="full" controls preload="metadata" src="{_esc(src)}">{track}</video>'
        )
        if video.get("animatic"):
            parts.append(f'<p class="label">{_esc(video.get("label", "animatic"))}</p>')
        parts.append("</div>")
    else:
        parts.append("<p>No video yet.</p>")
    parts.append('<table class="steps">')
    for s in plan.steps:
        kf = _rel(run_dir, plan_dir, s.keyframe)
        clip = _rel(run_dir, plan_dir, s.clip)
        vg = s.meta.get("videogen") or {}
        timing = f"<br><small>{vg['start']:.2f}–{vg['end']:.2f} s</small>" if "start" in vg else ""
        kf_html = f'<img src="{_esc(kf)}" alt="keyframe of step {s.index}">' if kf else "<em>no keyframe</em>"
        if kf:
            kf_html += _retrieved_label(s.meta.get("render") or {})
        clip_html = f'<video controls preload="metadata" src="{_esc(clip)}"></video>' if clip else "<em>no clip</em>"
        parts.append(
            f'<tr class="step" id="step-{s.index}"><td class="text"><b>{s.index}. {_esc(s.action)}</b>'
            f"<p>{_esc(s.caption)}</p>{timing}</td>"
            f'<td class="kf">{kf_html}</td><td class="clip">{clip_html}</td></tr>'
        )
    parts.append("</table>")
    prov = {k: v for k, v in plan.provenance.items() if k != "versions"}
    if run_info:
        prov = {"run": run_info, **prov}
    parts.append('<h2>Provenance</h2><div class="prov" id="provenance">')
    parts.append(_esc(json.dumps(prov, indent=2, ensure_ascii=False)))
    parts.append("</div></body></html>")
    return "\n".join(parts)


def write_storyboard(run_dir: str | Path, plan_dir: str | Path, run_info: dict[str, Any] | None = None) -> Path:
    """Write ``RUN/storyboard.html`` for the plan folder ``plan_dir`` (atomically); returns its path."""
    run_dir, plan_dir = Path(run_dir), Path(plan_dir)
    plan = load_plan(plan_dir)
    return atomic_write_text(run_dir / STORYBOARD, render_storyboard(plan, plan_dir, run_dir, run_info))
