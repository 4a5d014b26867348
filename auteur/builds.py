"""Reading a CookGen build folder from the stages that train on it (the stage packages never import ``cookgen``).

A build holds ``cookgen.json`` (its manifest: sources, splits, ``embedding_space`` or null for a text-only
build) and one ``datasets`` folder per split; :mod:`cookgen.build` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

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
