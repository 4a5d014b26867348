"""Frame banks: real frames sampled from clips, embedded in a visual space, for the retrieval renderer.

    renderer bank build CLIPS_DIR --out BANK [--preset default|tiny] [--interval S]

A bank folder holds

- ``bank.json``: format, visual space, the sampling interval, and one record per frame
  (``image`` relative path, ``source`` clip path relative to the clips folder, ``time`` in seconds);
- ``embeddings.safetensors``: tensor ``embeddings`` [N, dim] with the visual space in its metadata (as plan
  embeddings; :func:`auteur.plan.read_space` reads it);
- ``frames/<clip>/<n>.jpg``: the frames, downscaled to ``bank.max_side``;
- ``config.yaml``: the config that built it;
- ``prefilter.safetensors`` (banks of 10,000 frames or more): the exact retrieval prefilter fitted on the rows.

Clips are processed one at a time; each finished clip leaves ``work/<clip>.json`` and ``work/<clip>.safetensors``,
so a rerun skips finished clips and a kill loses at most the clip in progress. ``bank.json`` and the embeddings
are assembled last and written atomically. (CookGen owns clip processing in this project's architecture; this
builder lives here because only the renderer reads banks, and ``cookgen`` could expose it as a subcommand.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur.config import save_config
from auteur.errors import AuteurError
from auteur.io import atomic_path, atomic_write_json, clean_stale_temporaries, ensure_writable_dir
from auteur.plan import VisualSpace, read_space
from renderer.config import RenderConfig
from renderer.errors import RendererError

log = logging.getLogger(__name__)

BANK_FILE = "bank.json"
EMB_FILE = "embeddings.safetensors"
BANK_FORMAT = "renderer.bank/1"


@dataclass
class FrameBank:
    """A loaded bank: ``embeddings`` [N, dim] float32 (as stored), ``frames`` (one record per row), ``space``."""

    folder: Path
    space: VisualSpace
    embeddings: torch.Tensor
    frames: list[dict[str, Any]]

    def image(self, i: int) -> Image.Image:
        return Image.open(self.folder / self.frames[i]["image"]).convert("RGB")


def _clip_key(rel: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", str(rel.with_suffix(""))).strip("_")[:60]
    return f"{slug}-{hashlib.sha1(str(rel).encode()).hexdigest()[:8]}"


def find_clips(root: Path, extensions: list[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def build_bank(cfg: RenderConfig, clips: Path, out: Path, progress: bool = True) -> Path:
    """Sample every ``cfg.bank.interval`` seconds of each clip under ``clips``, embed, and write a bank at ``out``."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from auteur.video import frames_at, probe
    from auteur.vision import load_encoder

    clips = Path(clips)
    if not clips.is_dir():
        raise RendererError(f"clips folder not found: {clips}")
    if cfg.bank.interval <= 0:
        raise RendererError(f"bank.interval must be > 0, got {cfg.bank.interval}")
    paths = find_clips(clips, cfg.bank.extensions)
    if not paths:
        raise RendererError(f"no video clips ({', '.join(cfg.bank.extensions)}) under {clips}")
    out = ensure_writable_dir(out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    clean_stale_temporaries(out)
    clean_stale_temporaries(work)
    encoder = load_encoder(cfg.vision)
    if (out / BANK_FILE).is_file():
        old = VisualSpace(**json.loads((out / BANK_FILE).read_text())["space"])
        encoder.space.check_same(old, what=f"the encoder's embeddings (bank {out} holds)")
    ext = cfg.bank.format
    for path in tqdm(paths, desc="bank", unit="clip", disable=not progress):
        rel = path.relative_to(clips)
        key = _clip_key(rel)
        if (work / f"{key}.json").is_file():
            continue
        try:
            info = probe(path)
            n = max(1, int(info.duration / cfg.bank.interval + 1e-9))
            times = [min(i * cfg.bank.interval, max(0.0, info.duration - 1e-3)) for i in range(n)]
            frames = frames_at(path, times)
        except AuteurError as e:
            log.warning("skipping %s: %s", rel, e)
            continue
        records, images = [], []
        for i, (t, arr) in enumerate(zip(times, frames)):
            img = Image.fromarray(arr)
            images.append(img)
            small = img.copy()
            small.thumbnail((cfg.bank.max_side, cfg.bank.max_side), Image.Resampling.BICUBIC)
            image_rel = f"frames/{key}/{i:04d}.{ext}"
            with atomic_path(out / image_rel) as tmp:
                small.save(tmp, format="JPEG" if ext == "jpg" else "PNG", quality=92)
            records.append({"image": image_rel, "source": str(rel), "time": round(float(t), 4)})
        emb = encoder.embed_images(images)
        with atomic_path(work / f"{key}.safetensors") as tmp:
            save_file(
                {"embeddings": emb.contiguous()},
                str(tmp),
                metadata={"space": encoder.space.name, "dim": str(encoder.space.dim)},
            )
        atomic_write_json(work / f"{key}.json", {"clip": str(rel), "frames": records})  # last: the clip is done
    # assemble, in clip order
    frames, embs = [], []
    for path in paths:
        key = _clip_key(path.relative_to(clips))
        if not (work / f"{key}.json").is_file():
            continue
        encoder.space.check_same(read_space(work / f"{key}.safetensors"), what=f"embeddings of {key}")
        frames += json.loads((work / f"{key}.json").read_text())["frames"]
        embs.append(load_file(str(work / f"{key}.safetensors"))["embeddings"])
    if not frames:
        raise RendererError(f"no clip under {clips} could be read; the bank would be empty")
    matrix = torch.cat(embs).to(torch.float32).contiguous()
    with atomic_path(out / EMB_FILE) as tmp:
        save_file(
            {"embeddings": matrix},
            str(tmp),
            metadata={"space": encoder.space.name, "dim": str(encoder.space.dim), "format": BANK_FORMAT},
        )
    save_config(cfg, out)
    atomic_write_json(
        out / BANK_FILE,
        {
            "format": BANK_FORMAT,
            "space": encoder.space.to_json(),
            "clips_root": str(clips.resolve()),
            "interval": cfg.bank.interval,
            "num_clips": len(embs),
            "frames": frames,
        },
    )
    log.info("bank %s: %d frames from %d clips in %s", out, len(frames), len(embs), encoder.space.name)
    bank_prefilter(load_bank(out))  # big banks: fit the exact retrieval prefilter once, now
    return out


PREFILTER_FILE = "prefilter.safetensors"


def bank_prefilter(bank: FrameBank, min_frames: int = 10_000, ranks: tuple[int, ...] = (64, 256)):
    """The bank's exact retrieval prefilter (:class:`renderer.retrieval.Prefilter`), or None for small banks.

    Read from ``BANK/prefilter.safetensors`` when it was fitted on exactly these rows (a content hash), else
    fitted now (once: ~30 s for 100,000 x 1280) and stored there when the folder is writable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from renderer.retrieval import Prefilter, normalize_rows

    if len(bank.frames) < max(1, min_frames):
        return None
    unit = normalize_rows(bank.embeddings)
    fingerprint = Prefilter.fingerprint_of(unit)
    path = bank.folder / PREFILTER_FILE
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                stored = (f.metadata() or {}).get("fingerprint")
            if stored == fingerprint:
                return Prefilter.from_state(load_file(str(path)), fingerprint)
        except (OSError, SafetensorError, KeyError):
            log.warning("ignoring unreadable %s; refitting", path)
    pf = Prefilter.fit(unit, ranks)
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in pf.state().items()}, str(tmp), {"fingerprint": fingerprint})
    except OSError as e:  # a read-only bank still renders, it refits next time
        log.warning("could not store the prefilter in %s: %s", bank.folder, e)
    return pf


def load_bank(folder: str | Path) -> FrameBank:
    """Read a bank folder; raise RendererError if it is missing or inconsistent."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else Path("")
    if not str(folder) or not (folder / BANK_FILE).is_file():
        raise RendererError(
            f"frame bank not found: {folder or '(none given)'}; build one with `renderer bank build CLIPS --out BANK` "
            "and pass retrieval.bank=BANK"
        )
    meta = json.loads((folder / BANK_FILE).read_text())
    space = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
    space.check_same(read_space(folder / EMB_FILE), what=f"embeddings of bank {folder}")
    emb = load_file(str(folder / EMB_FILE))["embeddings"]
    if emb.shape != (len(meta["frames"]), space.dim):
        raise RendererError(f"bank {folder}: {tuple(emb.shape)} embeddings for {len(meta['frames'])} frames")
    return FrameBank(folder, space, emb, meta["frames"])
