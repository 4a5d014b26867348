"""Frame banks: real frames sampled from clips and embedded in a visual space (the format, shared by stages).

``cookgen bank CLIPS_DIR --out BANK`` builds one (:mod:`cookgen.bank`); the retrieval renderer (the offline
``default`` of ``renderer render``, VideoAuteur §4.2 in retrieval form) reads it with :func:`load_bank`. A bank
folder holds

- ``bank.json``: ``format``, the visual ``space``, the sampling ``interval``, and one record per frame
  (``image`` path relative to the bank, ``source`` clip path relative to the clips folder, ``time`` in seconds);
- ``embeddings.safetensors``: tensor ``embeddings`` [N, dim] float32 with the visual space in its metadata (as
  plan embeddings; :func:`auteur.plan.read_space` reads it);
- optionally (banks built since step texts were added; older banks load without them) the text of each frame's
  source step: ``bank.json`` ``texts`` (one record per source step: ``action``, ``caption``, ``origin`` — the clip
  folder's ``actions.yaml``/``captions.yaml`` or a CookGen build's row), ``text_space`` (the sentence encoder's
  space, :data:`auteur.sentence.TEXT_SPACE`), and a frame record's ``text`` (an index into ``texts``; absent when
  its step's text is unknown); ``text_embeddings.safetensors``: tensor ``embeddings`` [T, 384] float32, the MiniLM
  embedding of :func:`auteur.sentence.step_text` of each text, in order;
- ``frames/<clip>/<n>.jpg``: the frames, downscaled;
- ``config.yaml``: the config that built it; ``work/``: per-clip records that make a build resumable;
- readers may cache derived files beside these (the renderer's ``prefilter.safetensors``).

``bank.json`` is written last, atomically: a folder without it is not (yet) a bank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur.errors import AuteurError, PlanError
from auteur.io import read_json_object
from auteur.plan import VisualSpace, read_space

BANK_FILE = "bank.json"
EMB_FILE = "embeddings.safetensors"
TEXT_EMB_FILE = "text_embeddings.safetensors"
BANK_FORMAT = "auteur.bank/1"
# the same layout, written by the builder when it lived in the renderer (`renderer bank build`): still readable
READABLE_FORMATS = (BANK_FORMAT, "renderer.bank/1")
BUILD_HINT = "build one with `cookgen bank CLIPS_DIR --out BANK`"


class BankError(AuteurError):
    """A missing, incomplete or inconsistent frame bank."""


@dataclass
class FrameBank:
    """A loaded bank: ``embeddings`` [N, dim] float32 (as stored), ``frames`` (one record per row), ``space``;
    ``texts`` (source-step records), their ``text_embeddings`` [T, 384] and ``text_space`` when the bank has them
    (``texts`` empty and the others None for a bank built before step texts)."""

    folder: Path
    space: VisualSpace
    embeddings: torch.Tensor
    frames: list[dict[str, Any]]
    texts: list[dict[str, Any]] = field(default_factory=list)
    text_embeddings: torch.Tensor | None = None
    text_space: VisualSpace | None = None

    @property
    def has_texts(self) -> bool:
        return self.text_embeddings is not None and any("text" in f for f in self.frames)

    def text_index(self) -> torch.Tensor:
        """[N] int64: each frame's index into ``texts``, -1 where its source step's text is unknown."""
        return torch.tensor([int(f.get("text", -1)) for f in self.frames], dtype=torch.long)

    def clip_index(self) -> torch.Tensor:
        """[N] int64: each frame's source clip as a number (frames of one clip share it; first-seen order)."""
        ids: dict[str, int] = {}
        clips = [ids.setdefault(str(f.get("source", "")), len(ids)) for f in self.frames]
        return torch.tensor(clips, dtype=torch.long)

    def source_text(self, i: int) -> dict[str, Any] | None:
        """The text record of frame ``i``'s source step, or None."""
        t = self.frames[i].get("text")
        return self.texts[t] if t is not None and self.texts else None

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
    texts, text_emb, text_space = _load_texts(folder, meta, frames)
    return FrameBank(folder, space, emb, frames, texts, text_emb, text_space)


def _load_texts(folder: Path, meta: dict[str, Any], frames: list[dict[str, Any]]):
    """The optional step texts of a bank (see the module docstring): ([], None, None) when it has none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if "texts" not in meta:
        return [], None, None
    path = folder / BANK_FILE
    texts = meta["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, dict) for t in texts):
        raise BankError(f"{path}: 'texts' must be a list of records with 'action' and 'caption'")
    try:
        text_space = VisualSpace(str(meta["text_space"]["name"]), int(meta["text_space"]["dim"]))
    except (KeyError, TypeError, ValueError):
        raise BankError(f"{path}: 'text_space' must be an object with 'name' and 'dim'") from None
    for i, f in enumerate(frames):
        t = f.get("text")
        if t is not None and not (isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(texts)):
            raise BankError(f"{path}: frame {i} has text {t!r}, not an index into its {len(texts)} texts")
    try:
        emb = load_file(str(folder / TEXT_EMB_FILE))["embeddings"]
    except (OSError, SafetensorError, KeyError) as e:
        raise BankError(
            f"bank {folder}: {TEXT_EMB_FILE} has no readable 'embeddings' tensor ({e}); rebuild it with "
            f"`cookgen bank CLIPS_DIR --out {folder}`"
        ) from None
    if emb.shape != (len(texts), text_space.dim):
        raise BankError(
            f"bank {folder}: {tuple(emb.shape)} text embeddings for {len(texts)} texts of dim {text_space.dim}"
        )
    return texts, emb.to(torch.float32), text_space
