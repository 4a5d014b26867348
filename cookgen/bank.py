"""Frame banks from any folder of clips, for the retrieval renderer (the format: :mod:`auteur.bank`).

    cookgen bank CLIPS_DIR --out BANK [--config tiny|default|PATH] [--interval S] [key=value ...]

No FLUX weights exist offline, so the ``default`` renderer retrieves each keyframe from a bank of real frames
(VideoAuteur §4.2's rolling context, in retrieval form). This builder samples a frame every ``interval`` seconds
of each clip under ``CLIPS_DIR`` (any depth; ``extensions``), embeds them with :mod:`auteur.vision` in the same
visual space a CookGen build with the same ``--config`` uses, and writes a bank folder (see :mod:`auteur.bank`).

Clips are processed one at a time; each finished clip leaves ``work/<clip>.json`` and ``work/<clip>.safetensors``,
so a rerun skips finished clips and a kill loses at most the clip in progress. ``embeddings.safetensors`` and
``bank.json`` are assembled last, each written atomically (``bank.json`` last of all). A clip that cannot be
decoded is skipped with a warning and listed in ``bank.json`` under ``skipped``.

Step texts (``texts: true``, the default): each frame carries the text of its source step, so the renderer can match
a plan step's action and caption to it. The text of clip ``<folder>/<k>.<ext>`` is step ``k`` of the
``actions.yaml`` / ``captions.yaml`` beside it (the VideoAuteur demo layout, CookGen's ``steps`` source); when
``CLIPS_DIR`` is a CookGen build (it, or its parent, holds ``cookgen.json``: ``cookgen bank runs/demos`` or
``cookgen bank runs/demos/clips``) the text is the action and caption of the build's row whose ``clip`` is that
file. Clips with neither have no text. The texts are embedded once here with all-MiniLM-L6-v2
(:mod:`auteur.sentence`); they are gathered at assembly, so rerunning ``cookgen bank`` on a bank built before texts
existed adds them without decoding a clip again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from auteur.bank import BANK_FILE, BANK_FORMAT, EMB_FILE, TEXT_EMB_FILE, load_bank
from auteur.config import from_dict, parse_overrides, read_preset, save_config
from auteur.errors import AuteurError
from auteur.io import (
    atomic_path,
    atomic_write_json,
    check_writable_place,
    clean_stale_temporaries,
    ensure_writable_dir,
    writer_lock,
)
from auteur.plan import VisualSpace, read_space
from auteur.vision import VisionConfig
from cookgen.records import CookgenError

log = logging.getLogger(__name__)

PRESETS = Path(__file__).parent / "presets"
SAMPLING_FILE = "sampling.json"  # in work/: what the finished clips were sampled with


@dataclass
class BankConfig:
    """How ``cookgen bank`` samples and embeds frames (saved as BANK/config.yaml)."""

    interval: float = 1.0  # seconds between sampled frames
    max_side: int = 320  # stored frames are downscaled to this (aspect kept); embeddings see the full frame
    format: Literal["jpg", "png"] = "jpg"
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".mkv", ".webm", ".mov", ".avi"])
    vision: VisionConfig = field(default_factory=VisionConfig)
    texts: bool = True  # each frame's source-step text + its MiniLM embedding (the renderer's text term)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_bank_config(name_or_path: str | Path = "default", overrides: list[str] | tuple[str, ...] = ()) -> BankConfig:
    """Resolve a bank config from a cookgen preset name or YAML path, then ``key=value`` overrides.

    The preset is the one ``cookgen build --config`` reads: the bank takes its ``vision`` section, so a bank and a
    CookGen build made with the same preset embed in one visual space (the director's). A YAML may also set the
    bank's own keys (``interval``, ``max_side``, ``format``, ``extensions``; a bank's ``config.yaml`` rebuilds
    it); every other key must be a valid ``cookgen build`` key (checked, so a typo is an error) and is not used.
    """
    from cookgen.build import BuildConfig

    data = read_preset(name_or_path, PRESETS)
    own = {f.name for f in dataclasses.fields(BankConfig)}
    from_dict(BuildConfig, {k: v for k, v in data.items() if k not in own})
    mine = {k: v for k, v in data.items() if k in own}
    return from_dict(BankConfig, _merge(mine, parse_overrides(BankConfig, overrides)))


def find_clips(root: Path, extensions: list[str]) -> list[Path]:
    """Video files under ``root`` (any depth) whose suffix is one of ``extensions`` (any case), sorted."""
    exts = {e.lower() for e in extensions}
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in exts)


def clip_key(rel: Path) -> str:
    """A file-name-safe, collision-free key for a clip path relative to the clips folder."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", str(rel.with_suffix(""))).strip("_")[:60]
    return f"{slug}-{hashlib.sha1(str(rel).encode()).hexdigest()[:8]}"


def sample_times(duration: float, interval: float) -> list[float]:
    """Times (s) of the frames sampled from a clip: 0, interval, 2·interval, … inside the clip (at least one)."""
    n = max(1, int(duration / interval + 1e-9))
    return [min(i * interval, max(0.0, duration - 1e-3)) for i in range(n)]


def _check(cfg: BankConfig) -> None:
    if not cfg.interval > 0:
        raise CookgenError(f"interval must be > 0 seconds, got {cfg.interval}")
    if cfg.max_side < 1:
        raise CookgenError(f"max_side must be >= 1 pixel, got {cfg.max_side}")
    if not cfg.extensions:
        raise CookgenError("extensions is empty: no file could count as a clip")


def _check_sampling(work: Path, sampling: dict[str, Any], out: Path) -> None:
    """Finished clips are reused only when they were sampled and embedded the same way."""
    path = work / SAMPLING_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != sampling:
            diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in sampling.items() if old.get(k) != v)
            raise CookgenError(f"bank {out} was built with {diff}: rerun with the same settings or use another --out")
    else:
        atomic_write_json(path, sampling)


def _embed_clip(path: Path, rel: Path, key: str, cfg: BankConfig, encoder, out: Path) -> list[dict[str, Any]]:
    """Sample, store and embed one clip; leaves work/<key>.safetensors then work/<key>.json (the clip is done)."""
    from PIL import Image

    from auteur.io import save_safetensors
    from auteur.video import frames_at, probe

    work = out / "work"
    info = probe(path)
    times = sample_times(info.duration, cfg.interval)
    frames = frames_at(path, times)
    records, images = [], []
    for i, (t, arr) in enumerate(zip(times, frames)):
        img = Image.fromarray(arr)
        images.append(img)
        small = img.copy()
        small.thumbnail((cfg.max_side, cfg.max_side), Image.Resampling.BICUBIC)
        image_rel = f"frames/{key}/{i:04d}.{cfg.format}"
        with atomic_path(out / image_rel) as tmp:
            small.save(tmp, format="JPEG" if cfg.format == "jpg" else "PNG", quality=92)
        records.append({"image": image_rel, "source": rel.as_posix(), "time": round(float(t), 4)})
    emb = encoder.embed_images(images)  # [n, dim]
    with atomic_path(work / f"{key}.safetensors") as tmp:
        save_safetensors(
            {"embeddings": emb.to(torch.float32).contiguous()},
            str(tmp),
            metadata={"space": encoder.space.name, "dim": str(encoder.space.dim)},
        )
    atomic_write_json(work / f"{key}.json", {"clip": rel.as_posix(), "frames": records})  # last: the clip is done
    return records


def _cookgen_build_of(clips: Path) -> Path | None:
    """The CookGen build ``clips`` is (or is the ``clips/`` folder of), else None."""
    from auteur.builds import MANIFEST

    for folder in (clips, clips.parent):
        if (folder / MANIFEST).is_file():
            return folder
    return None


def _cookgen_texts(build: Path) -> dict[Path, tuple[str, str]]:
    """Resolved clip path -> (action, caption) for every row of every split of a CookGen build that has a clip."""
    from auteur.builds import BuildError, read_videos

    out: dict[Path, tuple[str, str]] = {}
    for split in sorted(p.name for p in build.iterdir() if (p / "dataset_info.json").is_file()):
        try:
            videos = read_videos(build, split, ["action", "caption", "clip"])
        except BuildError as e:
            log.warning("no step texts from %s/%s: %s", build, split, e)
            continue
        for rows in videos:
            for row in rows:
                if row.get("clip"):
                    out[Path(row["clip"])] = (row.get("action") or "", row.get("caption") or "")
    return out


def source_texts(clips: Path, rels: list[Path]) -> dict[str, dict[str, str]]:
    """The source-step text of each clip (``rel`` relative to ``clips``) that has one, by ``rel.as_posix()``:
    ``{"action", "caption", "origin"}`` from the CookGen build ``clips`` belongs to, else from the
    ``actions.yaml`` / ``captions.yaml`` beside the clip (step = the clip's number; for a symbolic link in a folder
    without ``actions.yaml``, beside the file it links to). Unreadable YAML is skipped with a warning: a bank without
    some texts is still a bank."""
    from cookgen.sources import _read_step_yaml

    build = _cookgen_build_of(clips)
    rows = _cookgen_texts(build) if build is not None else {}
    folders: dict[Path, tuple[dict[int, str], dict[int, str]]] = {}

    def yaml_of(folder: Path) -> tuple[dict[int, str], dict[int, str]]:
        if folder not in folders:
            actions, captions = {}, {}
            try:
                if (folder / "actions.yaml").is_file():
                    actions = _read_step_yaml(folder / "actions.yaml")
                    if (folder / "captions.yaml").is_file():
                        captions = _read_step_yaml(folder / "captions.yaml")
            except CookgenError as e:
                log.warning("no step texts for the clips in %s: %s", folder, e)
                actions, captions = {}, {}
            folders[folder] = (actions, captions)
        return folders[folder]

    out: dict[str, dict[str, str]] = {}
    for rel in rels:
        path = clips / rel
        real = path.resolve()
        if real in rows:
            action, caption = rows[real]
            out[rel.as_posix()] = {"action": action, "caption": caption, "origin": "cookgen"}
            continue
        # beside the clip as the user laid it out; for a linked clip with no YAML there, beside the file it links to
        for where in dict.fromkeys([path, real]):
            actions, captions = yaml_of(where.parent)
            try:
                k = int(where.stem)
            except ValueError:
                continue
            if actions.get(k) or captions.get(k):
                out[rel.as_posix()] = {"action": actions.get(k, ""), "caption": captions.get(k, ""), "origin": "yaml"}
                break
            if actions:
                break  # this folder has step texts, none for this clip
    return out


def _write_texts(frames: list[dict[str, Any]], clips: Path, paths: list[Path], out: Path) -> dict[str, Any]:
    """Attach a ``text`` index to each frame whose clip has a source-step text, embed the texts (MiniLM) into
    ``out/text_embeddings.safetensors``; the keys ``texts`` and ``text_space`` for ``bank.json`` ({} if none)."""
    from auteur.io import save_safetensors
    from auteur.sentence import load_sentence_encoder, step_text

    found = source_texts(clips, [p.relative_to(clips) for p in paths])
    used = [rel for rel in dict.fromkeys(f["source"] for f in frames) if rel in found]
    if not used:
        log.info("no step texts found beside the clips (actions.yaml / captions.yaml, or a CookGen build)")
        return {}
    index = {rel: i for i, rel in enumerate(used)}
    texts = [{"source": rel, **found[rel]} for rel in used]
    for f in frames:
        if f["source"] in index:
            f["text"] = index[f["source"]]
    enc = load_sentence_encoder()
    emb = enc.encode([step_text(t["action"], t["caption"]) for t in texts])
    with atomic_path(out / TEXT_EMB_FILE) as tmp:
        save_safetensors(
            {"embeddings": emb.to(torch.float32).contiguous()},
            str(tmp),
            metadata={"space": enc.space.name, "dim": str(enc.space.dim)},
        )
    return {"texts": texts, "text_space": enc.space.to_json()}


def build_bank(cfg: BankConfig, clips: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Sample every ``cfg.interval`` s of each clip under ``clips``, embed, and write (or resume) a bank at ``out``.

    Embeddings: ``out/embeddings.safetensors`` [N, dim] float32, rows in clip order then time order. Raises
    :class:`CookgenError` for a missing or clip-less folder, a bad config, a bank made with other settings, or
    when no clip can be read (then a new ``out`` is removed again: nothing half-written is left).
    """

    _check(cfg)
    clips, out = Path(clips), Path(out)
    # the input and the output place are checked before the lock is taken or the encoder loads
    if not clips.is_dir():
        raise CookgenError(f"clips folder not found: {clips}")
    paths = find_clips(clips, cfg.extensions)
    if not paths:
        raise CookgenError(f"no video clips ({', '.join(cfg.extensions)}) under {clips}")
    if out.exists() and not out.is_dir():
        raise CookgenError(f"--out {out} exists and is not a folder")
    old = None
    if out.is_dir() and (out / BANK_FILE).is_file():
        try:
            old = VisualSpace(**json.loads((out / BANK_FILE).read_text())["space"])
        except (ValueError, KeyError, TypeError):
            raise CookgenError(f"{out / BANK_FILE} is unreadable: remove it or use another --out") from None
    check_writable_place(out)
    with writer_lock(out):  # one `cookgen bank` per --out at a time
        return _build_bank(cfg, clips, paths, out, old, progress)


def _build_bank(cfg: BankConfig, clips: Path, paths: list[Path], out: Path, old, progress: bool) -> Path:
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from auteur.io import save_safetensors
    from auteur.vision import load_encoder

    created = not out.exists()
    encoder = load_encoder(cfg.vision)
    if old is not None:
        encoder.space.check_same(old, what=f"the encoder's embeddings (bank {out} holds)")
    out = ensure_writable_dir(out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    clean_stale_temporaries(out)
    clean_stale_temporaries(work)
    sampling = {
        "interval": cfg.interval,
        "max_side": cfg.max_side,
        "format": cfg.format,
        "space": encoder.space.to_json(),
    }
    _check_sampling(work, sampling, out)
    skipped: list[dict[str, str]] = []
    for path in tqdm(paths, desc="bank", unit="clip", disable=not progress):
        rel = path.relative_to(clips)
        key = clip_key(rel)
        if (work / f"{key}.json").is_file():
            continue
        try:
            _embed_clip(path, rel, key, cfg, encoder, out)
        except AuteurError as e:  # a corrupt or unreadable clip: the others still make a bank
            log.warning("skipping %s: %s", rel, e)
            skipped.append({"clip": rel.as_posix(), "error": str(e).splitlines()[0]})
    # assemble, in clip order
    frames, embs = [], []
    for path in paths:
        key = clip_key(path.relative_to(clips))
        if not (work / f"{key}.json").is_file():
            continue
        encoder.space.check_same(read_space(work / f"{key}.safetensors"), what=f"embeddings of {key}")
        frames += json.loads((work / f"{key}.json").read_text())["frames"]
        embs.append(load_file(str(work / f"{key}.safetensors"))["embeddings"])
    if not frames:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise CookgenError(f"no clip under {clips} could be read; the bank would be empty")
    matrix = torch.cat(embs).to(torch.float32).contiguous()
    for f in frames:  # a text index from an older assembly must not outlive its texts
        f.pop("text", None)
    text_keys = _write_texts(frames, clips, paths, out) if cfg.texts else {}
    with atomic_path(out / EMB_FILE) as tmp:
        save_safetensors(
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
            "interval": cfg.interval,
            "num_clips": len(embs),
            "skipped": skipped,
            **text_keys,
            "frames": frames,
        },
    )
    load_bank(out)  # the bank just written must read back (format, shapes, space)
    log.info(
        "bank %s: %d frames from %d clips in %s; %d with a step text",
        out,
        len(frames),
        len(embs),
        encoder.space.name,
        sum("text" in f for f in frames),
    )
    return out
