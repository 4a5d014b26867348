"""The reports of ``auteur compare``: results.csv, results.md, plots/*.png and storyboard.html.

Plots are drawn with PIL (matplotlib is not a dependency): one PNG per metric, a bar per system at the mean
over items, a whisker of +-1 standard deviation, and the per-item values as dots.
"""

from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auteur.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from auteur.compare import CompareResult
    from auteur.prompts import PromptItem

BASE_COLUMNS = ["system", "item", "status", "seconds", "n_steps", "n_keyframes"]
METRIC_ORDER = [
    "clip_t", "consistency_self", "consistency_ref", "occm", "copy_paste", "style_self", "style_cross",
]  # fmt: skip
SET_METRICS = ["fid", "inception_score", "fvd"]
DESCRIPTIONS = {
    "clip_t": "CLIP-T: 100 x cos(keyframe, prompt-set text), mean over keyframes (higher = better aligned)",
    "consistency_self": "100 x mean pairwise cosine of a plan's keyframes (higher = more self-consistent)",
    "consistency_ref": "100 x mean keyframe-to-reference cosine",
    "occm": "ViStoryBench onstage character count matching, 0-100 (higher = better)",
    "copy_paste": "ViStoryBench copy-paste rate, softmax at tau=0.01 (lower = less copying)",
    "style_self": "CSD style self-similarity x 100",
    "style_cross": "CSD style similarity to references x 100",
    "fid": "FID against the reference images (lower = better)",
    "inception_score": "Inception Score (higher = better)",
    "fvd": "FVD against the reference clips (lower = better)",
}


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r}
    return [m for m in METRIC_ORDER if m in present]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per (system, item); empty cells where a metric did not apply."""
    cols = BASE_COLUMNS + _metric_columns(rows) + ["error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if v is not None})
    atomic_write_text(path, buf.getvalue())


def _fmt(m: float, s: float, n: int) -> str:
    return f"{m:.2f} ± {s:.2f} (n={n})"


def markdown(result: CompareResult, systems: list[str]) -> str:
    """results.md: the per-system table, set-level metrics, skipped metrics with reasons, failures, judge."""
    from auteur.compare import summarize

    rows = result.rows
    metrics = _metric_columns(rows)
    lines = ["# Comparison results", ""]
    head = ["system", "ok / items", "mean s / item"] + metrics
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in systems:
        mine = [r for r in rows if r["system"] == s]
        ok = sum(r["status"] == "ok" for r in mine)
        secs = [r["seconds"] for r in mine if isinstance(r.get("seconds"), (int, float))]
        cells = [s, f"{ok} / {len(mine)}", f"{sum(secs) / len(secs):.2f}" if secs else ""]
        for m in metrics:
            st = summarize(rows, m).get(s)
            cells.append(_fmt(*st) if st else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± standard deviation over the items where the metric applied."]
    for m in metrics:
        lines.append(f"- `{m}`: {DESCRIPTIONS.get(m, m)}" + (f" — **{result.notes[m]}**" if m in result.notes else ""))
    if "space" in result.notes:
        lines.append(f"- consistency metrics computed in {result.notes['space']}")
    if "occm" in result.notes:
        lines.append(f"- `occm`: {result.notes['occm']}")
    set_metrics = [m for m in SET_METRICS if any(m in v for v in result.set_level.values())]
    if set_metrics:
        lines += ["", "## Set-level metrics", "", "| system | " + " | ".join(set_metrics) + " |"]
        lines.append("|" + "---|" * (len(set_metrics) + 1))
        for s in systems:
            vals = result.set_level.get(s, {})
            lines.append(f"| {s} | " + " | ".join(f"{vals[m]:.3f}" if m in vals else "" for m in set_metrics) + " |")
        lines += [""] + [f"- `{m}`: {DESCRIPTIONS[m]}" + (f" — {result.notes[m]}" if m in result.notes else "")
                         for m in set_metrics]  # fmt: skip
    if result.skipped:
        lines += ["", "## Skipped metrics", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(result.skipped.items())]
    failed = [r for r in rows if r["status"] != "ok" or r.get("error")]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- {r['system']} on `{r['item']}`: {r['status']} {r.get('error', '')}".rstrip() for r in failed]
    if result.judge_records:
        from auteur.judge import win_tie_loss_markdown

        lines += ["", "## Pairwise judge (StoryAnchors protocol)", "", win_tie_loss_markdown(result.judge_records)]
    return "\n".join(lines) + "\n"


def bar_plot(values: dict[str, list[float]], title: str, path: Path) -> None:
    """A PNG bar chart: mean per system, +-1 std whisker, item values as dots (PIL only)."""
    import numpy as np
    from PIL import Image, ImageDraw

    names = list(values)
    w, h, left, bottom, top = max(320, 120 * len(names) + 80), 360, 60, 60, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    allv = [v for vs in values.values() for v in vs] or [0.0]
    stats = {n: (float(np.mean(v)), float(np.std(v))) if v else (0.0, 0.0) for n, v in values.items()}
    lo = min(0.0, min(allv), min(m - s for m, s in stats.values()))
    hi = max(max(allv), max(m + s for m, s in stats.values()), lo + 1e-9)
    span = hi - lo
    lo, hi = lo - 0.05 * span * (lo < 0), hi + 0.05 * span

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    d.text((10, 10), title, fill="black")
    d.line([(left, top), (left, h - bottom), (w - 10, h - bottom)], fill="black")
    for frac in (0, 0.5, 1):
        v = lo + frac * (hi - lo)
        d.text((5, y(v) - 6), f"{v:.3g}", fill="black")
    d.line([(left, y(0)), (w - 10, y(0))], fill=(160, 160, 160))
    colors = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]
    slot = (w - left - 20) / max(1, len(names))
    for i, n in enumerate(names):
        m, s = stats[n]
        x0, x1 = left + 10 + i * slot + slot * 0.15, left + 10 + (i + 1) * slot - slot * 0.15
        d.rectangle([x0, min(y(m), y(0)), x1, max(y(m), y(0))], fill=colors[i % len(colors)])
        cx = (x0 + x1) / 2
        d.line([(cx, y(m - s)), (cx, y(m + s))], fill="black", width=2)
        for cap in (m - s, m + s):
            d.line([(cx - 6, y(cap)), (cx + 6, y(cap))], fill="black", width=2)
        for j, v in enumerate(values[n]):
            dx = ((j % 5) - 2) * 4
            d.ellipse([cx + dx - 3, y(v) - 3, cx + dx + 3, y(v) + 3], outline="black", fill="white")
        d.text((x0, h - bottom + 8), n[:18], fill="black")
        d.text((x0, h - bottom + 24), f"{m:.3g}±{s:.2g}", fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def storyboard_html(result: CompareResult, items: list[PromptItem], systems: list[str]) -> str:
    """Side-by-side keyframes of every system per prompt; image paths relative to the output folder."""
    from auteur.compare import _plan_ok

    out = result.out
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>auteur compare storyboard</title><style>",
        "body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;margin-bottom:28px}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}img{width:160px;display:block}"
        ".cap{font-size:11px;max-width:160px}.fail{color:#b00}",
        "</style></head><body><h1>Storyboard</h1>",
    ]
    status = {(r["system"], r["item"]): r for r in result.rows}
    for it in items:
        parts.append(f"<h2>{html.escape(it.id)}</h2><p>{html.escape(it.prompt)}</p><table>")
        for s in systems:
            folder = out / "systems" / s / it.id
            row = status.get((s, it.id), {})
            plan = _plan_ok(folder) if row.get("status") == "ok" else None
            parts.append(f"<tr><th>{html.escape(s)}</th>")
            if plan is None:
                err = html.escape(str(row.get("error") or row.get("status", "missing")))
                parts.append(f"<td class='fail'>{err}</td></tr>")
                continue
            for st in plan.steps:
                cell = ""
                if st.keyframe and (folder / st.keyframe).is_file():
                    rel = os.path.relpath(folder / st.keyframe, out).replace(os.sep, "/")
                    cell = f"<img src='{html.escape(rel)}' alt='step {st.index}'>"
                text = html.escape(f"{st.index}. {st.action}")
                parts.append(f"<td>{cell}<div class='cap'>{text}</div></td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(result: CompareResult, items: list[PromptItem], systems: list[str]) -> None:
    """Write results.csv, results.md, plots/*.png, storyboard.html (and judge.md) into ``result.out``."""
    out = result.out
    write_csv(result.rows, out / "results.csv")
    atomic_write_text(out / "results.md", markdown(result, systems))
    for m in _metric_columns(result.rows):
        vals = {
            s: [float(r[m]) for r in result.rows if r["system"] == s and isinstance(r.get(m), float)] for s in systems
        }
        bar_plot(vals, DESCRIPTIONS.get(m, m)[:90], out / "plots" / f"{m}.png")
    for m in SET_METRICS:
        vals = {s: [result.set_level[s][m]] for s in systems if m in result.set_level.get(s, {})}
        if vals:
            # a set-level metric is one value per system (over all its keyframes or clips): no spread to draw
            bar_plot(vals, f"{DESCRIPTIONS[m]} (set-level: one value per system)"[:110], out / "plots" / f"{m}.png")
    atomic_write_text(out / "storyboard.html", storyboard_html(result, items, systems))
    if result.judge_records:
        from auteur.judge import win_tie_loss_markdown

        atomic_write_text(out / "judge.md", win_tie_loss_markdown(result.judge_records))
        write_judge_csv(result.judge_records, out / "judge.csv")


def write_judge_csv(records: list[dict[str, Any]], path: Path) -> None:
    """One row per (item, pair, dimension): both orders' preferences and the outcome for A."""
    cols = ["item", "system_a", "system_b", "dimension", "order_ab", "order_ba", "outcome", "calls"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    atomic_write_text(path, buf.getvalue())
