"""Frame banks: real frames sampled from clips and embedded in a visual space (the format, shared by stages).

``cookgen bank CLIPS_DIR --out BANK`` builds one (:mod:`cookgen.bank`); the retrieval renderer (the offline
``default`` of ``renderer render``, VideoAuteur §4.2 in retrieval form) reads it with :func:`load_bank`. A bank
folder holds

- ``bank.json``: ``format``, the visual ``space``, the sampling ``interval``, and one record per frame
  (``image`` path relative to the bank, ``source`` clip path relative to the clips folder, ``time`` in seconds);
- ``embeddings.safetensors``: tensor ``embeddings`` [N, dim] float32 with the visual space in its metadata (as
  plan embeddings; :func:`auteur.plan.read_space` reads it);
- ``frames/<clip>/<n>.jpg``: the frames, downscaled;
- ``config.yaml``: the config that built it; ``work/``: per-clip records that make a build resumable;
- readers may cache derived files beside these (the renderer's ``prefilter.safetensors``).

``bank.json`` is written last, atomically: a folder without it is not (yet) a bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur.errors import AuteurError, PlanError
from auteur.io import read_json_object
from auteur.plan import VisualSpace, read_space

BANK_FILE = "bank.json"
EMB_FILE = "embeddings.safetensors"
BANK_FORMAT = "auteur.bank/1"
# the same layout, written by the builder when it lived in the renderer (`renderer bank build`): still readable
READABLE_FORMATS = (BANK_FORMAT, "renderer.bank/1")
BUILD_HINT = "build one with `cookgen bank CLIPS_DIR --out BANK`"


class BankError(AuteurError):
    """A missing, incomplete or inconsistent frame bank."""


@dataclass
class FrameBank:
    """A loaded bank: ``embeddings`` [N, dim] float32 (as stored), ``frames`` (one record per row), ``space``."""

    folder: Path
    space: VisualSpace
    embeddings: torch.Tensor
    frames: list[dict[str, Any]]

    def image(self, i: int) -> Image.Image:
        """Frame ``i`` of the bank as an RGB image (its stored size)."""
        path = self.folder / self.frames[i]["image"]
        try:
            return Image.open(path).convert("RGB")
        except OSError as e:  # FileNotFoundError and PIL's UnidentifiedImageError are OSErrors
            raise BankError(f"bank {self.folder}: frame {i} ({path.name}) is missing or unreadable: {e}") from None


def is_bank(folder: str | Path | None) -> bool:
    """Whether ``folder`` holds a finished bank (its ``bank.json``); says nothing about its consistency."""
    return bool(folder) and (Path(folder) / BANK_FILE).is_file()


def load_bank(folder: str | Path | None) -> FrameBank:
    """Read and check a bank folder; raise :class:`BankError` (one line) if it is missing or inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder or not str(folder).strip():
        raise BankError(f"frame bank not found: none given; {BUILD_HINT}")
    folder = Path(folder)
    if not is_bank(folder):
        raise BankError(f"frame bank not found: {folder} has no {BANK_FILE}; {BUILD_HINT}")
    path = folder / BANK_FILE
    meta = read_json_object(path, BankError)
    if meta.get("format") not in READABLE_FORMATS:
        raise BankError(f"{path}: format {meta.get('format')!r} is not one this version reads ({BANK_FORMAT})")
    try:
        space = VisualSpace(str(meta["space"]["name"]), int(meta["space"]["dim"]))
    except (KeyError, TypeError, ValueError):
        raise BankError(f"{path}: 'space' must be an object with 'name' and 'dim'") from None
    frames = meta.get("frames")
    if not isinstance(frames, list) or not all(
        isinstance(f, dict) and isinstance(f.get("image"), str) for f in frames
    ):
        raise BankError(f"{path}: 'frames' must be a list of records with an 'image' path")
    if not (folder / EMB_FILE).is_file():
        raise BankError(
            f"bank {folder}: {EMB_FILE} is missing; rebuild it with `cookgen bank CLIPS_DIR --out {folder}`"
        )
    try:
        space.check_same(read_space(folder / EMB_FILE), what=f"embeddings of bank {folder}")
        emb = load_file(str(folder / EMB_FILE))["embeddings"]
    except PlanError as e:
        raise BankError(str(e)) from None
    except (OSError, SafetensorError, KeyError) as e:
        raise BankError(f"bank {folder}: {EMB_FILE} has no readable 'embeddings' tensor: {e}") from None
    if emb.shape != (len(frames), space.dim):
        raise BankError(f"bank {folder}: {tuple(emb.shape)} embeddings for {len(frames)} frames of dim {space.dim}")
    return FrameBank(folder, space, emb, frames)
