"""Prompt sets for comparison experiments, read into one shape (:class:`PromptItem`).

Formats (``read_prompts(path)`` detects them; ``FILE#SUBSET`` picks a subset where one exists):

``youcook2``
    The official ``youcookii_annotations_trainval.json`` (``{"database": {video_id: {"subset", "recipe_type",
    "annotations": [...]}}}``): one query "how to make <dish>" per validation video, deduplicated (so one
    item per dish), with the dish names of ``label_foodtype.csv`` beside the file (``101,BLT``). The
    items have no ``shots``: the steps' sentences of the first video of each dish are kept in
    ``meta["gt_steps"]`` (ground truth, for reference; never given to a system, which plans from the query).
    ``#training`` selects the training split instead.
``consistory``
    The ConsiStory+ benchmark YAML (``consistory+.yaml``: ``{category: [{concept_token, subject, style,
    settings: [...]}]}``); ``#foods`` selects one category. One item per prompt set: the prompt is
    "<style> <subject>", each shot "<style> <subject> <setting>".
``vgot``
    VideoGen-of-Thought's ``image_prompt_pairs.json`` (``[{"ip_img_path", "prompt"}]``): one story whose
    shots are the prompts; the story prompt is ``user_input.txt`` beside the file when present.
``storyanchors``
    StoryAnchors-style multi-event stories (the paper's multi-event story-frame labels: one overall caption
    and one caption per event), this project's JSON: ``{"format": "storyanchors", "stories": [{"id": "s1",
    "prompt": "overall story caption", "events": ["event 1 caption", ...]}]}`` (or a bare list of stories),
    or one story in the format ``anchors generate --story`` reads (``{"title", "subjects", "style",
    "events"}``). An event is a caption or ``{"text": caption, "frames": n}``; ``title`` stands for
    ``prompt``; ``subjects``, ``style`` and the events' frame counts are kept in ``meta``.
``vistorybench``
    ViStoryBench's per-story ``story.json`` (a file, a story folder holding one, or the dataset folder of
    story folders ``01/``, ``02/`` ...). Fields used: ``Characters: {key: {"name", "prompt_en"|"prompt",
    "tag"}}`` and ``Shots: [{"index", "Setting Description", "Plot Correspondence", "Characters Appearing",
    "Static Shot Description", "Shot Perspective Design"}]``, where each text field is either a string or
    ``{"en": ..., "ch": ...}`` (``#ch`` selects Chinese). A shot's text is "<setting>. <static shot
    description>. <perspective>"; its expected on-stage count is ``len(Characters Appearing)``; the
    reference images are ``image/<character key>/*.jpg|png`` in the story folder. The story id is the
    folder name (ViStoryBench uses ``01`` ... ``80``).
``lines``
    A ``.txt`` file: one prompt per non-empty line.

An unknown or malformed file raises :class:`PromptsError` (one line, exit code 2 in the CLI).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from auteur.errors import AuteurError

FORMATS = ("youcook2", "consistory", "vgot", "storyanchors", "vistorybench", "lines")


class PromptsError(AuteurError):
    """A prompts file that cannot be read or whose format is unknown."""


@dataclass
class PromptItem:
    """One prompt or story: ``id`` (a folder name), the overall ``prompt``, optional per-shot texts,
    expected on-stage character counts per shot, reference images per character, and extra metadata."""

    id: str
    prompt: str
    shots: list[str] = field(default_factory=list)
    expected_counts: list[int] | None = None
    references: dict[str, list[str]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "shots": self.shots,
            "expected_counts": self.expected_counts,
            "references": self.references,
            "meta": self.meta,
        }


def slug(text: str, limit: int = 48) -> str:
    """A folder-safe id from free text."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "item"


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PromptsError(f"cannot read {path} as JSON: {str(e).splitlines()[0]}") from None


def detect_format(path: Path) -> str:
    """The format of a prompts file or folder (see the module docstring); PromptsError if unknown."""
    if path.is_dir():
        if (path / "story.json").is_file() or any(path.glob("*/story.json")):
            return "vistorybench"
        raise PromptsError(f"{path} is a folder without story.json files (ViStoryBench layout expected)")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "lines"
    if suffix in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise PromptsError(f"cannot read {path} as YAML: {str(e).splitlines()[0]}") from None
        if (
            isinstance(data, dict)
            and data
            and all(
                isinstance(v, list) and all(isinstance(s, dict) and "settings" in s and "subject" in s for s in v)
                for v in data.values()
            )
        ):
            return "consistory"
        raise PromptsError(f"{path}: unknown prompts format (a YAML that is not ConsiStory+)")
    if suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and "database" in data:
            return "youcook2"
        if isinstance(data, dict) and ("Shots" in data or "shots" in data) and ("Characters" in data):
            return "vistorybench"
        if isinstance(data, dict) and (
            data.get("format") == "storyanchors" or isinstance(data.get("events"), list) or "stories" in data
        ):
            return "storyanchors"
        if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
            if all("ip_img_path" in x and "prompt" in x for x in data):
                return "vgot"
            if all("events" in x and ("prompt" in x or "title" in x) for x in data):
                return "storyanchors"
    raise PromptsError(f"{path}: unknown prompts format (expected one of: {', '.join(FORMATS)})")


def read_prompts(spec: str | Path, fmt: str | None = None, limit: int | None = None) -> list[PromptItem]:
    """Read ``FILE[#SUBSET]`` into prompt items (ids unique); ``fmt`` overrides detection."""
    text = str(spec)
    path_text, _, subset = text.partition("#")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise PromptsError(f"prompts file not found: {path}")
    fmt = fmt or detect_format(path)
    readers = {
        "youcook2": _youcook2,
        "consistory": _consistory,
        "vgot": _vgot,
        "storyanchors": _storyanchors,
        "vistorybench": _vistorybench,
        "lines": _lines,
    }
    if fmt not in readers:
        raise PromptsError(f"unknown prompts format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        items = readers[fmt](path, subset or None)
    except (UnicodeDecodeError, yaml.YAMLError, csv.Error) as e:  # binary or garbled files of any format
        raise PromptsError(f"cannot read {path} as {fmt} prompts (UTF-8 text): {str(e).splitlines()[0]}") from None
    if not items:
        raise PromptsError(f"{spec}: no prompts found")
    seen: dict[str, int] = {}
    for it in items:  # unique, folder-safe ids
        base = slug(it.id, 64) if not re.fullmatch(r"[A-Za-z0-9_.-]+", it.id) else it.id
        n = seen.get(base, 0)
        seen[base] = n + 1
        it.id = base if n == 0 else f"{base}-{n + 1}"
        it.meta.setdefault("format", fmt)
    return items[:limit] if limit else items


def _lines(path: Path, subset: str | None) -> list[PromptItem]:
    from auteur.text import printable

    lines = [printable(ln).strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    return [PromptItem(id=f"{i + 1:03d}-{slug(ln, 40)}", prompt=ln) for i, ln in enumerate(lines)]


def _youcook2(path: Path, subset: str | None) -> list[PromptItem]:
    split = subset or "validation"
    data = _load_json(path)
    db = data.get("database")
    if not isinstance(db, dict):
        raise PromptsError(f"{path}: 'database' must be a mapping of videos")
    labels_path = path.parent / "label_foodtype.csv"
    if not labels_path.is_file():
        raise PromptsError(f"{labels_path} not found: YouCook2 dish names are needed for the queries")
    with labels_path.open(encoding="utf-8") as f:
        names = {row[0].strip(): row[1].strip() for row in csv.reader(f) if len(row) >= 2}
    items: dict[str, PromptItem] = {}
    for vid in sorted(db):
        v = db[vid]
        if not isinstance(v, dict) or v.get("subset") != split:
            continue
        dish = names.get(str(v.get("recipe_type", "")).strip())
        if not dish:
            continue
        query = f"how to make {dish}"
        if query in items:
            items[query].meta["videos"].append(vid)
            continue
        steps = [a.get("sentence", "") for a in v.get("annotations", []) if isinstance(a, dict)]
        items[query] = PromptItem(
            id=slug(dish), prompt=query, meta={"videos": [vid], "recipe_type": v.get("recipe_type"), "gt_steps": steps}
        )
    return list(items.values())


def _consistory(path: Path, subset: str | None) -> list[PromptItem]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if subset and subset not in data:
        raise PromptsError(f"{path}: no category {subset!r} (have: {', '.join(data)})")
    items = []
    for cat in [subset] if subset else list(data):
        for i, s in enumerate(data[cat]):
            try:
                base = f"{s['style']} {s['subject']}".strip()
                shots = [f"{base} {setting}".strip() for setting in s["settings"]]
            except (KeyError, TypeError):
                raise PromptsError(f"{path}: {cat}[{i}] needs style, subject and settings") from None
            items.append(
                PromptItem(
                    id=f"{cat}-{i + 1:02d}-{slug(s.get('concept_token', ''), 24)}",
                    prompt=base,
                    shots=shots,
                    meta={"category": cat, "concept_token": s.get("concept_token")},
                )
            )
    return items


def _vgot(path: Path, subset: str | None) -> list[PromptItem]:
    data = _load_json(path)
    user = path.parent / "user_input.txt"
    prompt = user.read_text(encoding="utf-8").strip() if user.is_file() else data[0]["prompt"]
    shots = [str(x["prompt"]) for x in data]
    return [PromptItem(id=slug(path.parent.name or "vgot"), prompt=prompt, shots=shots, meta={"source": str(path)})]


def _storyanchors(path: Path, subset: str | None) -> list[PromptItem]:
    data = _load_json(path)
    if isinstance(data, dict) and "stories" not in data and isinstance(data.get("events"), list):
        data = [data]  # one story in the anchors format
    stories = data.get("stories") if isinstance(data, dict) else data
    if not isinstance(stories, list):
        raise PromptsError(f"{path}: 'stories' must be a list")
    items = []
    for i, s in enumerate(stories):
        where = f"{path}: stories[{i}]"
        prompt = s.get("prompt", s.get("title")) if isinstance(s, dict) else None
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(s.get("events"), list):
            raise PromptsError(f"{where} needs a string 'prompt' (or 'title') and a list 'events'")
        shots, frames = [], []
        for k, e in enumerate(s["events"]):
            text = e.get("text") if isinstance(e, dict) else e
            if not isinstance(text, str) or not text.strip():
                raise PromptsError(f"{where}.events[{k}] must be a caption or {{'text': caption, 'frames': n}}")
            shots.append(text.strip())
            frames.append(e.get("frames") if isinstance(e, dict) else None)
        meta = {k: s[k] for k in ("subjects", "style") if isinstance(s.get(k), str) and s[k].strip()}
        if any(f is not None for f in frames):
            meta["event_frames"] = frames
        items.append(PromptItem(id=str(s.get("id") or f"story-{i + 1:03d}"), prompt=prompt, shots=shots, meta=meta))
    return items


def _lang(value: Any, lang: str) -> Any:
    if isinstance(value, dict):
        return value.get(lang, value.get("en", next(iter(value.values()), "")))
    return value


def _vistory_story(story_json: Path, lang: str) -> PromptItem:
    data = _load_json(story_json)
    if not isinstance(data, dict):
        raise PromptsError(f"{story_json}: top level must be an object")
    shots_raw = data.get("Shots", data.get("shots"))
    chars = data.get("Characters", data.get("characters")) or {}
    if not isinstance(shots_raw, list) or not shots_raw:
        raise PromptsError(f"{story_json}: 'Shots' must be a non-empty list")
    shots, counts = [], []
    for i, sh in enumerate(shots_raw):
        if not isinstance(sh, dict):
            raise PromptsError(f"{story_json}: Shots[{i}] must be an object")
        parts = [
            _lang(sh.get(k, ""), lang)
            for k in ("Setting Description", "Static Shot Description", "Shot Perspective Design")
        ]
        shots.append(". ".join(str(p).strip().rstrip(".") for p in parts if p) + ".")
        appearing = _lang(sh.get("Characters Appearing", []), lang) or []
        counts.append(len(appearing) if isinstance(appearing, list) else 0)
    folder = story_json.parent
    refs = {}
    for key in chars:
        imgs = sorted(p for p in (folder / "image" / key).glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if imgs:
            refs[key] = [str(p) for p in imgs]
    title = data.get("Story_title") or data.get("title") or f"ViStoryBench story {folder.name}"
    plot = " ".join(str(_lang(sh.get("Plot Correspondence", ""), lang)) for sh in shots_raw).strip()
    return PromptItem(
        id=folder.name if story_json.name == "story.json" else story_json.stem,
        prompt=str(_lang(title, lang)) if not plot else f"{_lang(title, lang)}: {plot}"[:2000],
        shots=shots,
        expected_counts=counts,
        references=refs,
        meta={
            "characters": {k: _lang(v.get("name", k), lang) if isinstance(v, dict) else k for k, v in chars.items()},
            "story_json": str(story_json),
        },  # fmt: skip
    )


def _vistorybench(path: Path, subset: str | None) -> list[PromptItem]:
    lang = subset or "en"
    if path.is_file():
        return [_vistory_story(path, lang)]
    if (path / "story.json").is_file():
        return [_vistory_story(path / "story.json", lang)]
    files = sorted(path.glob("*/story.json"), key=lambda p: (not p.parent.name.isdigit(), p.parent.name.zfill(8)))
    return [_vistory_story(f, lang) for f in files]
