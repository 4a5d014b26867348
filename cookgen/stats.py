"""``cookgen stats``: the VideoAuteur paper's Table 1 figures for a built CookGen dataset, per split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from auteur.io import read_json_object
from cookgen.records import CookgenError

SPLIT_ORDER = ("train", "val", "test")


def _words(text: str) -> int:
    return len(text.split())


def split_names(root: Path) -> list[str]:
    """The split folders of a built dataset, in train/val/test order then any others."""
    manifest = root / "cookgen.json"
    if not manifest.is_file():
        raise CookgenError(f"{root} is not a CookGen build: cookgen.json not found")
    read_json_object(manifest, CookgenError)  # a manifest that is not a JSON object is no build either
    names = [p.name for p in root.iterdir() if p.is_dir() and (p / "dataset_info.json").exists()]
    return sorted(names, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else 99, n))


def compute_stats(root: str | Path) -> dict[str, dict[str, Any]]:
    """Per split: videos, clips, total and mean clip length (s), clips per video, words per action/caption."""
    from datasets import load_from_disk

    root = Path(root)
    out: dict[str, dict[str, Any]] = {}
    for split in split_names(root):
        ds = load_from_disk(str(root / split))
        cols = ds.select_columns(["video_id", "start", "end", "action", "caption"]).to_dict()
        n = len(cols["video_id"])
        videos = len(set(cols["video_id"]))
        lengths = [e - s for s, e in zip(cols["start"], cols["end"])]
        captions = [c for c in cols["caption"] if c.strip()]
        out[split] = {
            "videos": videos,
            "clips": n,
            "hours": round(sum(lengths) / 3600, 2),
            "mean_clip_seconds": round(sum(lengths) / n, 2) if n else 0.0,
            "clips_per_video": round(n / videos, 2) if videos else 0.0,
            "words_per_action": round(sum(map(_words, cols["action"])) / n, 2) if n else 0.0,
            "words_per_caption": round(sum(map(_words, captions)) / len(captions), 2) if captions else None,
            "captions_missing": n - len(captions),
        }
    return out


def format_stats(stats: dict[str, dict[str, Any]]) -> str:
    """A readable table (the columns of the paper's Table 1)."""
    cols = [
        ("split", None),
        ("videos", "videos"),
        ("clips", "clips"),
        ("hours", "hours"),
        ("mean clip s", "mean_clip_seconds"),
        ("clips/video", "clips_per_video"),
        ("words/action", "words_per_action"),
        ("words/caption", "words_per_caption"),
        ("captions missing", "captions_missing"),
    ]
    rows = [[name for name, _ in cols]]
    for split, s in stats.items():
        rows.append([split] + ["-" if s[k] is None else str(s[k]) for _, k in cols[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def stats_json(stats: dict[str, dict[str, Any]]) -> str:
    return json.dumps(stats, indent=2)
