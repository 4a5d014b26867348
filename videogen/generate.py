"""``videogen generate``: one clip per plan step, then one long video with WebVTT captions.

Writes into the plan folder: ``clips/step-NNN.mp4`` (one per step), ``video.mp4`` (all clips in order),
``video.vtt`` (the captions, timed to the long video) and ``videogen.yaml`` (the resolved config). plan.json
records each step's clip, its time range in the long video and how it was made (``step.meta["videogen"]``),
the long video (``plan.meta["video"]``) and provenance (``plan.provenance["videogen"]``); an animatic is
labelled as one in all three places.

Every check a user can fail (plan, keyframes, frame count, checkpoint and its visual space, writable folder, the
model's weights) runs before anything is written. Each clip is written atomically and recorded in plan.json
with the preset that made it and a fingerprint of its inputs, so a rerun skips finished clips (and redoes those
whose keyframe, caption, embedding, preset or settings changed; clips of another preset are counted as such).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from auteur.config import save_config, to_dict
from auteur.errors import AuteurError
from auteur.io import check_writable_place, clean_stale_temporaries, ensure_writable_dir, writer_lock
from auteur.plan import Plan, load_plan, save_plan
from auteur.video import write_mp4
from videogen.config import VideogenConfig
from videogen.errors import VideogenError

log = logging.getLogger(__name__)

CLIPS_DIR = "clips"
VIDEO_FILE = "video.mp4"
VTT_FILE = "video.vtt"
MAX_STEP_FRAMES = 14_400  # one step's clip: 10 minutes at 24 fps (more is a mistake, and would fill the disk)
ANIMATIC_LABEL = "animatic: each keyframe held with a slow pan/zoom and crossfades; not a generated video"


@dataclass
class GenerateResult:
    plan: Plan
    generated: list[int]  # step indices whose clips were (re)made
    skipped: list[int]  # step indices whose finished clips were kept
    video: Path
    captions: Path
    duration: float
    replaced: list[int] = field(default_factory=list)  # generated steps whose old clip another preset/backend made
    made_by: list[str] = field(default_factory=list)  # those presets and backends, in words


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _load_keyframe(folder: Path, rel: str | None, index: int) -> tuple[Image.Image, str]:
    if not rel:
        raise VideogenError(f"step {index} has no keyframe")
    path = folder / rel
    if not path.is_file():
        raise VideogenError(f"step {index}: keyframe {path} not found")
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise VideogenError(f"step {index}: cannot read keyframe {path}: {e}") from None
    return img, _file_digest(path)


def frames_per_step(cfg: VideogenConfig) -> int:
    """Frames of each step's clip: ``cfg.frames`` for Wan, ``step_seconds x fps`` for the animatic."""
    if cfg.backend == "wan":
        return cfg.frames
    return max(1, round(cfg.animatic.step_seconds * cfg.fps))


def check_request(plan: Plan, cfg: VideogenConfig) -> None:
    """All the user-fixable problems, before anything is written."""
    if not cfg.fps > 0:
        raise VideogenError(f"fps must be > 0, got {cfg.fps}")
    if not plan.steps:
        raise VideogenError("the plan has no steps")
    if cfg.backend == "wan":
        from videogen.wan import check_checkpoint_space, check_frames, read_checkpoint_meta

        check_frames(cfg.frames)
        if plan.embeddings is None:
            raise VideogenError("the wan preset conditions on the plan's embeddings, but the plan has none")
        if cfg.checkpoint:
            check_checkpoint_space(read_checkpoint_meta(cfg.checkpoint), plan.space, cfg.checkpoint)
        if cfg.wan.height % 16 or cfg.wan.width % 16:
            raise VideogenError(f"Wan needs height and width divisible by 16, got {cfg.wan.height}x{cfg.wan.width}")
    elif cfg.frames < 1:
        raise VideogenError(f"frames must be >= 1, got {cfg.frames}")
    else:
        a = cfg.animatic
        if a.width < 2 or a.height < 2 or a.width % 2 or a.height % 2:
            raise VideogenError(f"the animatic is H.264 yuv420p, which needs an even width and height >= 2, "
                                f"got {a.width}x{a.height}")  # fmt: skip
        if not 0 <= a.zoom < 1 or a.pan < 0 or a.crossfade_seconds < 0 or not a.step_seconds > 0:
            raise VideogenError(f"animatic needs 0 <= zoom < 1, pan >= 0, crossfade_seconds >= 0 and "
                                f"step_seconds > 0, got zoom={a.zoom} pan={a.pan} "
                                f"crossfade_seconds={a.crossfade_seconds} step_seconds={a.step_seconds}")  # fmt: skip
    n = cfg.frames if cfg.backend == "wan" else cfg.animatic.step_seconds * cfg.fps
    if not n <= MAX_STEP_FRAMES:  # also NaN and infinity
        raise VideogenError(f"{n:g} frames a step is too many: at most {MAX_STEP_FRAMES} (10 minutes at 24 fps)")
    missing = [s.index for s in plan.steps if not s.keyframe]
    if missing:
        raise VideogenError(
            f"the {cfg.backend} preset needs a keyframe for every step, but step(s) {', '.join(map(str, missing))} "
            "have none: run `renderer render PLAN_DIR` first"
        )


def _maker(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """(preset, backend) that made a clip, from its ``step.meta["videogen"]`` record."""
    return record.get("preset"), record.get("backend")


def _describe_maker(record: dict[str, Any]) -> str:
    preset, backend = _maker(record)
    return f"preset {preset or '(unrecorded)'}, {backend or 'unknown'} backend"


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generate(plan_dir: str | Path, cfg: VideogenConfig, preset: str = "", progress: bool = True) -> GenerateResult:
    """Make the clips and the long video of the plan in ``plan_dir`` (in place); see the module docstring."""
    with contextlib.ExitStack() as held:  # the plan folder's writer lock, released however generation ends
        return _generate(Path(plan_dir), cfg, preset, progress, held)


def _generate(folder: Path, cfg: VideogenConfig, preset: str, progress: bool, held: contextlib.ExitStack):
    plan = load_plan(folder)
    check_request(plan, cfg)
    keyframes = [_load_keyframe(folder, s.keyframe, s.index) for s in plan.steps]
    clips_dir = folder / CLIPS_DIR
    check_writable_place(folder, flag="plan folder")
    ensure_writable_dir(folder)  # checked without creating anything: clips/ is made with the first clip
    if clips_dir.exists():
        ensure_writable_dir(clips_dir)
    held.enter_context(writer_lock(folder, flag="plan folder"))  # one writer per plan folder (renderer, director)

    n_frames = frames_per_step(cfg)
    animatic = cfg.backend == "animatic"
    if animatic:
        from videogen.animatic import ALGORITHM

        model_cfg = {**to_dict(cfg.animatic), "algorithm": ALGORITHM}  # a new algorithm redoes old clips
    else:
        model_cfg = {"wan": to_dict(cfg.wan), "projector": to_dict(cfg.projector), "precision": cfg.precision}
    common = {"preset": preset, "backend": cfg.backend, "model": model_cfg, "fps": cfg.fps, "frames": n_frames,
              "crf": cfg.crf, "checkpoint": cfg.checkpoint, "encoder_preset": cfg.encoder_preset}  # fmt: skip

    generator = None
    model_name = "animatic (keyframes + Ken Burns)"
    trained = False
    if not animatic:  # loads the weights (a missing model fails here), before anything is written
        from videogen.wan import WanGenerator

        generator = WanGenerator(cfg, plan.space)
        model_name, trained = generator.model_id, generator.trained
    clean_stale_temporaries(folder)
    clean_stale_temporaries(clips_dir)
    fitted: dict = {}

    def fitted_key(i: int):
        from videogen.animatic import keyframe_planes

        if i not in fitted:  # each keyframe is converted once, though two clips (its own, the fade into it) use it
            fitted[i] = keyframe_planes(keyframes[i][0], cfg.animatic.width, cfg.animatic.height)
        return fitted[i]

    generated, skipped, replaced, made_by = [], [], [], []
    start = 0.0
    bar = tqdm(plan.steps, desc="videogen", unit="clip", disable=not progress)
    for i, step in enumerate(bar):
        nxt = i + 1 < len(plan.steps)
        parts = {**common, "keyframe": keyframes[i][1], "caption": step.caption, "seed": cfg.seed + step.index}
        if animatic:
            parts["next_keyframe"] = keyframes[i + 1][1] if nxt else None
            parts["direction"] = i
        else:
            parts["embedding"] = hashlib.sha256(plan.embeddings[i].float().numpy().tobytes()).hexdigest()[:16]
        fp = _fingerprint(parts)
        rel = f"{CLIPS_DIR}/step-{step.index:03d}.mp4"
        old = step.meta.get("videogen") or {}
        if (folder / rel).is_file() and step.clip == rel and old.get("fingerprint") == fp:
            skipped.append(step.index)
        else:
            if (folder / rel).is_file() and step.clip == rel and _maker(old) != (preset, cfg.backend):
                replaced.append(step.index)  # a clip of another preset or backend: made again, and said so
                if _describe_maker(old) not in made_by:
                    made_by.append(_describe_maker(old))
            if animatic:
                from videogen.animatic import prefetched, step_frames, write_yuv420_mp4

                frames = prefetched(step_frames(fitted_key(i), fitted_key(i + 1) if nxt else None, n_frames,
                                                cfg.animatic, cfg.fps, direction=i))  # fmt: skip
                write_yuv420_mp4(frames, folder / rel, cfg.animatic.width, cfg.animatic.height, fps=cfg.fps,
                                 crf=cfg.crf, preset=cfg.encoder_preset)  # fmt: skip
            else:
                frames = generator.clip(
                    keyframes[i][0], step.caption or step.action, plan.embeddings[i], n_frames, cfg.seed + step.index
                )
                write_mp4(frames, folder / rel, fps=cfg.fps, crf=cfg.crf, preset=cfg.encoder_preset)
            generated.append(step.index)
        end = start + n_frames / cfg.fps
        step.clip = rel
        step.meta["videogen"] = {
            "start": round(start, 6),
            "end": round(end, 6),
            "frames": n_frames,
            "fps": cfg.fps,
            "preset": preset,
            "backend": cfg.backend,
            "animatic": animatic,
            "label": ANIMATIC_LABEL if animatic else f"generated by {model_name}",
            "fingerprint": fp,
        }
        if step.index in generated:
            save_plan(plan, folder)  # record each finished clip: a killed run resumes after it
        start = end

    # the long video: clips joined in order (redone only when a clip changed or it is missing)
    from videogen.assemble import concat_clips, write_vtt

    video_fp = _fingerprint([s.meta["videogen"]["fingerprint"] for s in plan.steps])
    video_meta = plan.meta.get("video") or {}
    if generated or video_meta.get("fingerprint") != video_fp or not (folder / VIDEO_FILE).is_file():
        concat_clips([folder / s.clip for s in plan.steps], folder / VIDEO_FILE, fps=cfg.fps, crf=cfg.crf)
    cues = [(s.meta["videogen"]["start"], s.meta["videogen"]["end"], s.caption or s.action) for s in plan.steps]
    write_vtt(cues, folder / VTT_FILE)
    plan.meta["video"] = {
        "path": VIDEO_FILE,
        "captions": VTT_FILE,
        "fps": cfg.fps,
        "duration": round(start, 6),
        "frames": n_frames * len(plan.steps),
        "backend": cfg.backend,
        "animatic": animatic,
        "label": ANIMATIC_LABEL if animatic else f"generated by {model_name}",
        "fingerprint": video_fp,
    }
    plan.provenance["videogen"] = {
        "preset": preset,
        "backend": cfg.backend,
        "model": model_name,
        "animatic": animatic,
        "trained": trained,
        "checkpoint": cfg.checkpoint,
        "seed": cfg.seed,
    }
    if not animatic and not trained:
        plan.provenance["videogen"]["note"] = "untrained projector (random weights): the clips mean nothing"
    save_config(cfg, folder, name="videogen.yaml")
    save_plan(plan, folder)
    if replaced:
        log.info("%d clips made by another preset (%s) were made again", len(replaced), "; ".join(made_by))
    return GenerateResult(plan, generated, skipped, folder / VIDEO_FILE, folder / VTT_FILE, start, replaced, made_by)


__all__ = ["generate", "GenerateResult", "check_request", "frames_per_step", "AuteurError"]
