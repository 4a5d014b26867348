"""CookGen sources: read public annotation formats into :class:`VideoRecord` lists.

Three sources, each in its documented public format (tests write small files in exactly these formats):

``youcook2``
    The official ``youcookii_annotations_trainval.json``:
    ``{"database": {VIDEO_ID: {"duration", "subset": "training"|"validation"|"testing", "recipe_type",
    "video_url", "annotations": [{"id", "segment": [start_s, end_s], "sentence"}]}}}``; dish names from
    ``label_foodtype.csv`` (``recipe_type,name`` rows). Splits are YouCook2's official subsets.
``howto100m``
    The public HowTo100M ASR caption file ``caption.json``: ``{VIDEO_ID: {"start": [...], "end": [...],
    "text": [...]}}``; optionally ``HowTo100M_v1.csv`` (``video_id,category_1,category_2,rank,task_id``) to
    keep cooking videos (``category_1`` in the configured categories), and a HowToCaption-style CSV of
    refined actions (``video_id,start,end,text``). With refined actions, the ASR segments are the candidate
    clips and each action is matched to one by the paper's rule (:mod:`cookgen.matching`); without, each
    ASR segment is its own action and clip.
``steps``
    A folder per dish holding one clip per step (``1.mp4`` … ``N.mp4``), ``actions.yaml`` and optionally
    ``captions.yaml`` (``'1': "text"``), found anywhere under ``--root`` (the layout of the VideoAuteur
    demo clips).

Problems with a whole file (not JSON, wrong top-level shape) raise :class:`CookgenError`; problems with one
item are returned as :class:`BadInput` so that ``--skip-bad`` can count them by reason.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cookgen.matching import match_actions_to_clips
from cookgen.records import BadInput, CookgenError, Segment, VideoRecord, hash_split

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
YOUCOOK2_SUBSETS = {"training": "train", "validation": "val", "testing": "test"}


@dataclass
class SourceResult:
    """What a source read: the records, the bad items it met, and counts of items it left out on purpose."""

    records: list[VideoRecord]
    bad: list[BadInput] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CookgenError(f"{what} not found: {path}")
    try:
        with path.open("rb") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise CookgenError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise CookgenError(f"{what} {path} is not UTF-8 text") from None


def _read_csv(path: Path, what: str, required: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise CookgenError(f"{what} not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise CookgenError(f"{what} {path} lacks column(s) {', '.join(missing)} (header: {reader.fieldnames})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise CookgenError(f"{what} {path} is not a readable CSV: {e}") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def index_videos(folder: str | Path | None) -> dict[str, Path]:
    """Map video id (file stem) to path for every video file under ``folder`` (searched recursively)."""
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise CookgenError(f"videos folder not found: {folder}")
    index: dict[str, Path] = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS and not name.startswith("."):
                index.setdefault(stem, Path(dirpath) / name)
    return index


def read_labels(path: str | Path | None) -> dict[str, str]:
    """YouCook2's ``label_foodtype.csv``: ``recipe_type,name`` rows (no header)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise CookgenError(f"labels file not found: {path}")
    out = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row:
                    continue
                if len(row) < 2:
                    raise CookgenError(f"labels file {path} line {i + 1}: expected 'recipe_type,name', got {row}")
                out[row[0].strip()] = row[1].strip()
    except (UnicodeDecodeError, csv.Error) as e:
        raise CookgenError(f"labels file {path} is not a readable UTF-8 CSV: {e}") from None
    if not out:
        raise CookgenError(f"labels file {path} holds no 'recipe_type,name' rows")
    return out


def read_youcook2(
    annotations: str | Path, labels: str | Path | None = None, videos: str | Path | None = None
) -> SourceResult:
    """Read the official YouCook2 annotation JSON (see the module docstring for the format)."""
    path = Path(annotations)
    data = _read_json(path, "YouCook2 annotations")
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise CookgenError(f"YouCook2 annotations {path}: expected an object with a 'database' mapping")
    names = read_labels(labels)
    video_index = index_videos(videos)
    result = SourceResult(records=[])
    for vid, entry in data["database"].items():
        where = f"YouCook2 video {vid}"
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations"), list):
            result.bad.append(BadInput("malformed_annotation", f"{where}: entry has no 'annotations' list"))
            continue
        subset = entry.get("subset")
        if subset not in YOUCOOK2_SUBSETS:
            result.bad.append(BadInput("malformed_annotation", f"{where}: unknown subset {subset!r}"))
            continue
        duration = _number(entry.get("duration"))
        segments = []
        bad_here = False
        for j, ann in enumerate(entry["annotations"]):
            seg = ann.get("segment") if isinstance(ann, dict) else None
            sentence = ann.get("sentence") if isinstance(ann, dict) else None
            if not (isinstance(seg, list) and len(seg) == 2 and all(_number(x) is not None for x in seg)):
                result.bad.append(
                    BadInput("malformed_annotation", f"{where} step {j + 1}: 'segment' must be [start, end]")
                )
                bad_here = True
                continue
            if not isinstance(sentence, str):
                result.bad.append(BadInput("malformed_annotation", f"{where} step {j + 1}: 'sentence' must be text"))
                bad_here = True
                continue
            segments.append(Segment(start=float(seg[0]), end=float(seg[1]), action=sentence.strip()))
        if bad_here and not segments:
            continue
        recipe = str(entry.get("recipe_type", ""))
        rec = VideoRecord(
            video_id=vid,
            source="youcook2",
            split=YOUCOOK2_SUBSETS[subset],
            segments=segments,
            recipe_type=recipe,
            dish=names.get(recipe, ""),
            duration=duration,
            video_path=str(video_index[vid]) if vid in video_index else None,
            meta={"video_url": entry.get("video_url", "")},
        )
        if videos is not None and rec.video_path is None:
            result.bad.append(BadInput("video_missing", f"{where}: no file {vid}.<mp4|mkv|webm> under {videos}"))
            continue
        result.records.append(rec)
    return result


def read_howto100m(
    captions: str | Path,
    categories: str | Path | None = None,
    actions: str | Path | None = None,
    videos: str | Path | None = None,
    cooking_categories: list[str] | tuple[str, ...] = ("Food and Entertaining",),
    val_fraction: float = 0.05,
    max_start_diff: float = 5.0,
    min_iou: float = 0.25,
    strong_iou: float = 0.5,
) -> SourceResult:
    """Read HowTo100M ASR captions (and optionally categories and refined actions); see the module docstring."""
    path = Path(captions)
    data = _read_json(path, "HowTo100M caption file")
    if not isinstance(data, dict):
        raise CookgenError(f"HowTo100M caption file {path}: expected an object mapping video ids to captions")
    result = SourceResult(records=[])
    keep: set[str] | None = None
    if categories is not None:
        rows = _read_csv(Path(categories), "HowTo100M category CSV", ["video_id", "category_1"])
        wanted = set(cooking_categories)
        keep = {r["video_id"] for r in rows if r["category_1"] in wanted}
    refined: dict[str, list[Segment]] | None = None
    if actions is not None:
        refined = {}
        for i, r in enumerate(_read_csv(Path(actions), "refined action CSV", ["video_id", "start", "end", "text"])):
            start, end = _number(r["start"]), _number(r["end"])
            if start is None or end is None:
                result.bad.append(BadInput("malformed_annotation", f"refined action CSV row {i + 2}: bad start/end"))
                continue
            refined.setdefault(r["video_id"], []).append(Segment(start, end, (r["text"] or "").strip()))
    video_index = index_videos(videos)
    for vid, entry in data.items():
        if keep is not None and vid not in keep:
            result.excluded["not_cooking"] = result.excluded.get("not_cooking", 0) + 1
            continue
        where = f"HowTo100M video {vid}"
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in ("start", "end", "text")):
            result.bad.append(BadInput("malformed_annotation", f"{where}: expected lists 'start', 'end', 'text'"))
            continue
        if not len(entry["start"]) == len(entry["end"]) == len(entry["text"]):
            result.bad.append(BadInput("malformed_annotation", f"{where}: 'start', 'end', 'text' differ in length"))
            continue
        asr = []
        for s, e, t in zip(entry["start"], entry["end"], entry["text"]):
            s, e = _number(s), _number(e)
            if s is None or e is None or not isinstance(t, str):
                result.bad.append(BadInput("malformed_annotation", f"{where}: a caption has a bad start/end/text"))
                asr = None
                break
            asr.append(Segment(s, e, t.strip(), asr=t.strip()))
        if asr is None:
            continue
        if refined is not None:
            pairs, unmatched = match_actions_to_clips(
                refined.get(vid, []), asr, max_start_diff=max_start_diff, min_iou=min_iou, strong_iou=strong_iou
            )
            if unmatched:
                result.excluded["no_matching_clip"] = result.excluded.get("no_matching_clip", 0) + len(unmatched)
            segments = [Segment(clip.start, clip.end, action.action, asr=clip.asr) for action, clip in pairs]
        else:
            segments = asr
        result.records.append(
            VideoRecord(
                video_id=vid,
                source="howto100m",
                split=hash_split(vid, val_fraction),
                segments=segments,
                video_path=str(video_index[vid]) if vid in video_index else None,
                meta={"actions": "refined" if refined is not None else "asr"},
            )
        )
        if videos is not None and vid not in video_index:
            result.records.pop()
            result.bad.append(BadInput("video_missing", f"{where}: no file {vid}.<mp4|mkv|webm> under {videos}"))
    return result


def _read_step_yaml(path: Path) -> dict[int, str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CookgenError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CookgenError(f"{path}: expected a mapping of step number to text")
    out = {}
    for k, v in data.items():
        try:
            idx = int(str(k))
        except ValueError:
            raise CookgenError(f"{path}: key {k!r} is not a step number") from None
        out[idx] = "" if v is None else str(v).strip()
    return out


def read_steps(root: str | Path, split: str | None = None, val_fraction: float = 0.05) -> SourceResult:
    """Read every dish folder (one holding ``actions.yaml``) under ``root``; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise CookgenError(f"steps root not found: {root}")
    result = SourceResult(records=[])
    dish_dirs = sorted(p.parent for p in root.rglob("actions.yaml"))
    if not dish_dirs:
        raise CookgenError(f"no dish folders under {root}: expected folders holding actions.yaml and 1.mp4 … N.mp4")
    for folder in dish_dirs:
        vid = folder.relative_to(root).as_posix() if folder != root else folder.name
        actions = _read_step_yaml(folder / "actions.yaml")
        if not actions:
            where = folder / "actions.yaml"
            result.bad.append(BadInput("malformed_annotation", f"dish {vid}: {where} holds no steps"))
            continue
        captions = _read_step_yaml(folder / "captions.yaml") if (folder / "captions.yaml").exists() else {}
        files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()}
        segments, missing = [], []
        for idx in sorted(actions):
            clip = files.get(str(idx))
            if clip is None:
                missing.append(idx)
                continue
            segments.append(Segment(0.0, math.nan, actions[idx], caption=captions.get(idx, ""), clip_file=str(clip)))
        if missing:
            result.bad.append(
                BadInput("video_missing", f"dish {vid}: no clip file for step(s) {', '.join(map(str, missing))}")
            )
            continue
        result.records.append(
            VideoRecord(
                video_id=vid,
                source="steps",
                split=split or hash_split(vid, val_fraction),
                segments=segments,
                dish=folder.name.replace("_", " "),
                meta={"root": str(root)},
            )
        )
    return result
