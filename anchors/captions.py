"""Stories and the StoryAnchors multi-event caption format (StoryAnchors §2.2).

A story is a title, a subjects field, a video-style field and ordered events, each spanning one or more
story frames. The multi-event caption numbers each event with the story-frame range it covers, so the
transformer, which sees all frames at once, can tell which text belongs to which frames::

    Subjects: a cook; tuna, bread.
    Style: a real-world cooking video, filmed close up.
    Events: (1) frames 1-2: Drain the tuna. (2) frame 3: Mix tuna with mayonnaise. (3) frame 4: Close it.

The global caption (training stage 1) describes the whole sequence in one piece, without frame ranges::

    Subjects: ... Style: ... Story: Tuna sandwich. Drain the tuna; mix tuna with mayonnaise; close it.

Story JSON (``anchors generate --story``)::

    {"title": "Tuna sandwich", "subjects": "a cook; tuna, bread", "style": "a cooking video",
     "events": [{"text": "Drain the tuna.", "frames": 2}, {"text": "Mix tuna with mayonnaise."}]}

``frames`` is optional (default 1, or an even share of ``--frames N``). A plain list is accepted too, in the
ViStoryBench-like simple form: a list of strings (one event each) or of ``{"text"|"description", ...}``.
Events are read from ``events``, else ``shots``, else ``scenes``.

A prompt item of ``auteur compare`` (``{"id", "prompt", "shots": [...], "expected_counts", "references",
"meta"}``, :class:`auteur.prompts.PromptItem`) is a story too: ``prompt`` is the title when there is no
``title``; ``subjects`` and ``style`` are read at the top level, else inside ``meta`` (as are the shots'
frame counts, ``meta.event_frames``: one count or null per shot). An item with no events but a prompt (or a
title), such as a YouCook2 query "how to make pad thai", is StoryAnchors' global-caption case: the prompt is
ONE event spanning all story frames (``--frames N``, else ``generate.num_frames``). A story with neither
events nor a prompt or title is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchors.config import AnchorsError
from auteur.text import printable


@dataclass
class Event:
    """One event of a story and how many story frames it spans."""

    text: str
    frames: int | None = None


@dataclass
class Story:
    """A story: title, subjects, style and ordered events."""

    title: str
    events: list[Event]
    subjects: str = ""
    style: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def frame_events(self) -> list[int]:
        """The event index (0-based) of each story frame; every event's ``frames`` must be set."""
        out: list[int] = []
        for i, e in enumerate(self.events):
            out += [i] * int(e.frames or 0)
        return out

    def span(self, start: int, end: int) -> Story:
        """The story of frames ``start`` to ``end - 1`` (0-based): the events there, with the frames they
        keep (a window of a long story, :mod:`anchors.generate`); every event's ``frames`` must be set."""
        events, pos = [], 0
        for e in self.events:
            n = int(e.frames or 0)
            kept = min(pos + n, end) - max(pos, start)
            if kept > 0:
                events.append(Event(e.text, kept))
            pos += n
        return Story(self.title, events, self.subjects, self.style, dict(self.meta))


def _header(subjects: str, style: str) -> list[str]:
    parts = []
    if subjects.strip():
        parts.append(f"Subjects: {subjects.strip().rstrip('.')}.")
    if style.strip():
        parts.append(f"Style: {style.strip().rstrip('.')}.")
    return parts


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


def multi_event_caption(story: Story) -> str:
    """The multi-event caption: subjects, style, then each event numbered with its story-frame range."""
    parts = _header(story.subjects, story.style)
    events, start = [], 1
    for i, e in enumerate(story.events, start=1):
        n = int(e.frames or 1)
        rng = f"frame {start}" if n == 1 else f"frames {start}-{start + n - 1}"
        events.append(f"({i}) {rng}: {_sentence(e.text)}")
        start += n
    parts.append("Events: " + " ".join(events))
    return " ".join(parts)


def global_caption(story: Story) -> str:
    """One caption for the whole sequence (stage 1): subjects, style, the title and the events in one run."""
    parts = _header(story.subjects, story.style)
    body = "; ".join(" ".join(e.text.split()).rstrip(".") for e in story.events)
    title = f"{story.title.strip().rstrip('.')}. " if story.title.strip() else ""
    parts.append(f"Story: {title}{body[:1].upper() + body[1:]}.")
    return " ".join(parts)


def caption(story: Story, mode: str) -> str:
    """``mode``: ``global`` or ``multievent``."""
    return global_caption(story) if mode == "global" else multi_event_caption(story)


def _event(item: Any, where: str) -> Event:
    if isinstance(item, str):
        text, frames = item, None
    elif isinstance(item, dict):
        text = item.get("text", item.get("description", item.get("prompt")))
        frames = item.get("frames")
    else:
        raise AnchorsError(f"{where} must be a string or an object with 'text'")
    text = " ".join(printable(text).split()) if isinstance(text, str) else ""  # no terminal control codes
    if not text:
        raise AnchorsError(f"{where} has no text")
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1):
        raise AnchorsError(f"{where}: 'frames' must be a positive integer, got {frames!r}")
    return Event(text, frames)


def _text_field(data: dict, key: str, name: str) -> str:
    value = data.get(key) or ""
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    if not isinstance(value, str):
        raise AnchorsError(f"{name}: '{key}' must be a string")
    return " ".join(printable(value).split())


def story_from_json(data: Any, name: str = "story") -> Story:
    """A :class:`Story` from parsed story JSON or a compare prompt item (see the module docstring);
    AnchorsError on bad input."""
    if isinstance(data, list):
        data = {"events": data}
    if not isinstance(data, dict):
        raise AnchorsError(f"{name}: top level must be an object with 'events' or a list of events")
    meta = data.get("meta") or {}
    if not isinstance(meta, dict):
        raise AnchorsError(f"{name}: 'meta' must be an object")
    key = next((k for k in ("events", "shots", "scenes") if data.get(k) is not None), "events")
    raw = data.get(key) or []
    if not isinstance(raw, list):
        raise AnchorsError(f"{name}: '{key}' must be a list of events")
    counts = meta.get("event_frames")  # frame counts of plain-text shots (compare items of anchors stories)
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != len(raw):
            raise AnchorsError(f"{name}: 'meta.event_frames' must be a list with one entry per event")
        raw = [{"text": e, "frames": n} if isinstance(e, str) and n is not None else e for e, n in zip(raw, counts)]
    events = [_event(item, f"{name}: {key}[{i}]") for i, item in enumerate(raw)]
    title = _text_field(data, "title", name) or _text_field(data, "prompt", name)
    if not events:
        if not title:
            raise AnchorsError(
                f"{name}: the story has no events and no prompt (give 'events': [{{'text': ...}}, ...] or 'prompt')"
            )
        events = [Event(title)]  # the global-caption case: one event over all story frames
    subjects = _text_field(data, "subjects", name) or _text_field(meta, "subjects", f"{name}: meta")
    style = _text_field(data, "style", name) or _text_field(meta, "style", f"{name}: meta")
    return Story(title=title or events[0].text, events=events, subjects=subjects, style=style)


def load_story(path: str | Path) -> Story:
    """Read a story JSON file; AnchorsError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise AnchorsError(f"story file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnchorsError(f"{path} is not valid JSON: {e}") from None
    return story_from_json(data, name=str(path))


def assign_frames(story: Story, num_frames: int | None) -> int:
    """Fill in each event's frame count; returns the total. With ``num_frames``, events without a count
    share what the others leave evenly (earlier events get the remainder); the total must then match."""
    fixed = sum(e.frames for e in story.events if e.frames)
    free = [e for e in story.events if not e.frames]
    if num_frames is None:
        for e in free:
            e.frames = 1
        return fixed + len(free)
    left = num_frames - fixed
    if free:
        if left < len(free):
            raise AnchorsError(
                f"--frames {num_frames} is too few for {len(story.events)} events "
                f"({fixed} frames already fixed by the story, {len(free)} events need at least one each)"
            )
        q, r = divmod(left, len(free))
        for i, e in enumerate(free):
            e.frames = q + (1 if i < r else 0)
    elif left != 0:
        raise AnchorsError(f"the story's events span {fixed} frames but --frames {num_frames} was given")
    return num_frames
