"""Encoded training inputs on disk: encode once, shared by every process, read back one sample at a time.

Training a video model keeps a frozen VAE (and text encoder) in front of the trained transformer; their outputs
for a sample never change, so they are computed once. Holding them for a whole CookGen build in memory (or on
the device) does not scale: one 81-frame 480×832 clip is ~388 MB of float32 pixels and ~8 MB of Wan latents.
:class:`LatentCache` stores them as one safetensors file per sample under ``FOLDER/<fingerprint>/``, where the
fingerprint names what produced them (the encoder, the frame count and size, ...): another encoder or setting
gets another folder, never a stale file. :meth:`LatentCache.fill` encodes the samples that are missing, each
process taking its own share (``rank, rank + world, ...``), so N processes encode a build once between them; a
killed fill resumes (every file is written under a temporary name and renamed, so one present is complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from auteur.io import atomic_path, atomic_write_json, clean_stale_temporaries

log = logging.getLogger(__name__)


def fingerprint(settings: dict[str, Any]) -> str:
    """A short stable hash of ``settings`` (JSON, keys sorted): the name of a cache's folder."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LatentCache:
    """One safetensors file per sample key under ``root / fingerprint(settings)``.

    ``keys`` name the samples (e.g. ``"build-3/train/00042"``); a key becomes a file name through a hash, so any
    string works. ``settings`` (what produced the tensors) are written beside them as ``settings.json``.
    """

    def __init__(self, root: str | Path, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.folder = Path(root) / fingerprint(settings)

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write a sample's tensors (moved to the CPU) atomically."""
        from auteur.io import save_safetensors

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(key)) as tmp:
            save_safetensors({k: v.detach().cpu().contiguous() for k, v in sorted(tensors.items())}, str(tmp),
                      metadata={"key": key})  # fmt: skip

    def get(self, key: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A sample's tensors, read from disk (never unpickled)."""
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            raise KeyError(f"{key!r} is not in the latent cache {self.folder}")
        return load_file(str(path), device=str(device))

    def prepare(self) -> None:
        """Make the folder, write its ``settings.json`` and remove the temporaries a killed fill left. With several
        processes the main one calls it before the others write (then a barrier): run while they write, it would
        remove their files in progress. :meth:`fill` calls it itself in a single process."""
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(self.folder)
        if not (self.folder / "settings.json").is_file():
            atomic_write_json(self.folder / "settings.json", self.settings)

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if not self.has(k)]

    def fill(
        self,
        keys: Sequence[str],
        encode: Callable[[str], dict[str, torch.Tensor]],
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        desc: str = "encoding",
    ) -> int:
        """Encode the samples of ``keys`` that are not cached yet, this process's share of them (positions
        ``rank, rank + world, ...`` of ``keys``); returns how many it encoded. With several processes the main
        one calls :meth:`prepare` first and all wait (a barrier), and all wait again before reading samples
        another process encoded."""
        from tqdm.auto import tqdm

        if world == 1:
            self.prepare()
        mine = [keys[i] for i in range(rank, len(keys), world)]
        todo = self.missing(mine)
        if not todo:
            return 0
        log.info("%s: %d of %d samples to encode into %s", desc, len(todo), len(mine), self.folder)
        for key in tqdm(todo, desc=desc, unit="sample", disable=not (progress and rank == 0)):
            self.put(key, encode(key))
        return len(todo)
