"""The records every CookGen source produces: one :class:`VideoRecord` per video, one :class:`Segment` per step."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from auteur.errors import AuteurError


class CookgenError(AuteurError):
    """A user-fixable problem in a CookGen build (bad source file, missing video, bad segment)."""


class BadInput(CookgenError):
    """One bad item (a video or a segment); ``reason`` is the key it is counted under with ``--skip-bad``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Segment:
    """One step of a video: its time range (seconds), action text, and what the source says about it.

    ``clip_file`` is set when the source already holds one file per step (the ``steps`` source); the
    segment's times are then relative to that file.
    """

    start: float
    end: float
    action: str
    caption: str = ""
    asr: str = ""
    clip_file: str | None = None

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass
class VideoRecord:
    """A video and its ordered steps, as read from a source, before any video work."""

    video_id: str
    source: str
    split: str
    segments: list[Segment]
    recipe_type: str = ""
    dish: str = ""
    duration: float | None = None
    video_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def safe_id(self) -> str:
        """The video id as a file name (``/`` and other unsafe characters replaced)."""
        return safe_name(self.video_id)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.replace("/", "__"))


def hash_split(video_id: str, val_fraction: float) -> str:
    """A stable train/val assignment for sources without an official split (crc32 of the id)."""
    if val_fraction <= 0:
        return "train"
    return "val" if (zlib.crc32(video_id.encode()) % 10_000) < val_fraction * 10_000 else "train"


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard a video belongs to under ``--shard i/n``: stable across machines and list orders."""
    return zlib.crc32(video_id.encode()) % num_shards
