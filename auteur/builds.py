"""Reading a CookGen build folder from the stages that train on it (the stage packages never import ``cookgen``).

A build holds ``cookgen.json`` (its manifest: sources, splits, ``embedding_space`` or null for a text-only
build) and one ``datasets`` folder per split; :mod:`cookgen.build` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from auteur.errors import AuteurError
from auteur.plan import VisualSpace

MANIFEST = "cookgen.json"


class BuildError(AuteurError):
    """A folder that is not a (readable) CookGen build."""


def build_space(folder: str | Path) -> VisualSpace | None:
    """The visual space a CookGen build was embedded in, or None for a text-only build."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BuildError(f"{folder} is not a CookGen build ({MANIFEST} not found)")
    try:
        space = json.loads(path.read_text(encoding="utf-8")).get("embedding_space")
        return VisualSpace(space["name"], int(space["dim"])) if space else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise BuildError(f"{path} is not a valid CookGen manifest: {e}") from None


#: the columns of a CookGen split that name files inside the build folder
FILE_COLUMNS = ("clip", "keyframe")


def inside(folder: str | Path, relative: str, what: str = "a path") -> Path:
    """``folder / relative``, refused (BuildError) unless it stays inside ``folder``: a hand-edited or hostile
    build cannot make a stage open ``../../etc/passwd``."""
    root = Path(folder).resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise BuildError(f"{folder}: {what} {relative!r} points outside the build folder")
    return path


def read_videos(folder: str | Path, split: str, columns: list[str] | None = None) -> list[list[dict]]:
    """The videos of one split of a CookGen build, each a list of its step rows in step order (``step_index``).

    ``columns`` picks the columns read (all when None; ``video_id`` and ``step_index`` are always read). File
    columns (``clip``, ``keyframe``) that are set come back as absolute paths inside the build folder
    (:func:`inside`), embeddings as float32 numpy arrays. A split the build does not have gives no videos. The
    one reader of CookGen splits that the four trainers share.
    """
    from datasets import load_from_disk

    folder = Path(folder)
    build_space(folder)  # BuildError unless folder is a CookGen build
    if not (folder / split).is_dir():
        return []
    ds = load_from_disk(str(folder / split))
    if columns is not None:
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise BuildError(f"{folder}/{split} has no column {missing[0]!r} (a CookGen build of another version?)")
        wanted = list(dict.fromkeys(["video_id", "step_index", *columns]))
        ds = ds.select_columns(wanted)
    by_video: dict[str, list[dict]] = {}
    # in slices, embeddings as float32 arrays: a whole split's embeddings as Python floats would take ~30 bytes each
    for batch in ds.iter(batch_size=1024):
        names = list(batch)
        for values in zip(*(batch[c] for c in names)):
            row = dict(zip(names, values))
            for col in FILE_COLUMNS:
                if row.get(col):
                    row[col] = inside(folder, row[col], f"{split} {col}")
            if row.get("embedding") is not None:
                row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
            by_video.setdefault(row["video_id"], []).append(row)
    return [sorted(rows, key=lambda r: r["step_index"]) for rows in by_video.values()]
