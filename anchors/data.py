"""Training data: CookGen builds -> story-frame sequences with multi-event captions and scalar conditions.

For each video of a CookGen split (``datasets.load_from_disk``, one row per step) the story frames are
sampled in time (StoryAnchors §3: keyframes sampled at an interval from a video): every
``interval_seconds`` from each step's clip (at most ``max_frames_per_step``), or the step's keyframe when
the build kept no clips. A training sample is a window of ``num_frames`` consecutive story frames; its story
has one event per run of frames from the same step (text: the step's caption, else its action), the dish as
title, and subjects/style fields derived from the build (CookGen records neither: subjects are "a cook;
<dish>", style is ``dataset.style``; both labelled as such in the docs).

Conditions per sample (``anchors.model.CONDITION_NAMES``): the source fps (probed from a clip, else
``dataset.default_fps``), the frame interval, the motion degree (mean absolute pixel difference, 0..255,
between consecutive story frames at model resolution), width, height, and the number of story frames.

The frame interval is what the sample's frames really are apart: their mean spacing in source frames, from
each frame's time on the video's timeline (a step's segment start plus the time in its clip; the keyframe
at the middle of the segment). Within a step that is ``interval_seconds``, but the cap per step and the
steps' own spacing make the gaps across steps differ, so the sample's own spacing is fed, never the
configured interval. In a ``steps`` build (one clip file per step, no common timeline) the clips are laid
end to end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anchors.captions import Event, Story
from anchors.config import DataConfig
from auteur.builds import build_space

log = logging.getLogger(__name__)


@dataclass
class StorySample:
    """One training sequence: frames [F, 3, H, W] in [-1, 1], its story, its conditions [6], where it comes
    from, and the frames' times (s) on the source video's timeline."""

    frames: torch.Tensor
    story: Story
    conditions: torch.Tensor
    source: str
    times: list[float]


def to_tensor(image: Image.Image | np.ndarray, height: int, width: int) -> torch.Tensor:
    """An RGB image -> [3, H, W] in [-1, 1]: resized to cover H x W (bicubic), centre-cropped."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    scale = max(width / img.width, height / img.height)
    size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    img = img.crop((left, top, left + width, top + height))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return arr / 127.5 - 1.0


def motion_degree(frames: torch.Tensor) -> float:
    """Mean absolute difference between consecutive frames [F, 3, H, W] (in [-1, 1]) on the 0..255 scale."""
    if frames.shape[0] < 2:
        return 0.0
    return float((frames[1:] - frames[:-1]).abs().mean() * 127.5)


def _timeline(rows: list[dict]) -> list[float]:
    """Where each step starts on its video's timeline (s): its segment's start, or, in a CookGen ``steps``
    build (one clip file per step, each starting at 0, so the real gaps are unknown), the clips end to end."""
    if all(r["source"] == "steps" for r in rows):
        ends = np.cumsum([r["end"] - r["start"] for r in rows])
        return [0.0, *map(float, ends[:-1])]
    return [float(r["start"]) for r in rows]


def _video_frames(folder: Path, rows: list[dict], cfg: DataConfig) -> tuple[list, list[int], list[float], float]:
    """Frames (PIL/ndarray), the step (row index) of each, its time (s) on the video's timeline, the source fps."""
    from auteur.video import frames_at, probe

    frames, steps, times, fps_seen = [], [], [], []
    for k, (row, offset) in enumerate(zip(rows, _timeline(rows))):
        clip = folder / row["clip"] if row["clip"] else None
        if clip is not None and clip.is_file():
            info = probe(clip)
            at = [cfg.interval_seconds * (j + 0.5) for j in range(cfg.max_frames_per_step)]
            at = [t for t in at if t < info.duration] or [info.duration / 2]
            frames += list(frames_at(clip, at))
            times += [offset + t for t in at]
            steps += [k] * len(at)
            if info.fps:
                fps_seen.append(info.fps)
        elif row["keyframe"] and (folder / row["keyframe"]).is_file():
            frames.append(Image.open(folder / row["keyframe"]).convert("RGB"))
            times.append(offset + (row["end"] - row["start"]) / 2)  # CookGen's default keyframe position
            steps.append(k)
    fps = float(np.mean(fps_seen)) if fps_seen else cfg.default_fps
    return frames, steps, times, fps


def frame_interval(times: list[float], fps: float) -> float:
    """The frame-interval condition of story frames taken at ``times`` (s): their mean spacing in source frames."""
    return (times[-1] - times[0]) / (len(times) - 1) * fps if len(times) > 1 else 0.0


def load_story_samples(folders: list[str], split: str, cfg: DataConfig, height: int, width: int) -> list[StorySample]:
    """All windows of ``cfg.num_frames`` story frames in ``split`` of the CookGen builds ``folders``."""
    from datasets import load_from_disk

    samples: list[StorySample] = []
    for d in folders:
        folder = Path(d)
        build_space(folder)  # raises BuildError unless folder is a CookGen build
        if not (folder / split).is_dir():
            continue
        ds = load_from_disk(str(folder / split))
        cols = ["video_id", "source", "dish", "step_index", "action", "caption", "start", "end", "clip", "keyframe"]
        data = ds.select_columns(cols).to_list()
        by_video: dict[str, list[dict]] = {}
        for row in data:
            by_video.setdefault(row["video_id"], []).append(row)
        for vid, rows in by_video.items():
            rows.sort(key=lambda r: r["step_index"])
            frames, steps, times, fps = _video_frames(folder, rows, cfg)
            if len(frames) < cfg.num_frames:
                log.info(
                    "%s/%s: %d story frames, fewer than %d; skipped", folder.name, vid, len(frames), cfg.num_frames
                )
                continue
            tensors = torch.stack([to_tensor(f, height, width) for f in frames])
            dish = rows[0]["dish"] or vid
            for s in range(0, len(frames) - cfg.num_frames + 1, cfg.stride):
                idx = list(range(s, s + cfg.num_frames))
                events: list[Event] = []
                for i in idx:
                    row = rows[steps[i]]
                    if events and steps[i] == steps[i - 1] and i != s:
                        events[-1].frames += 1
                    else:
                        events.append(Event(row["caption"] or row["action"], 1))
                window = tensors[idx]
                at = [times[i] for i in idx]
                interval = frame_interval(at, fps)
                cond = [fps, interval, motion_degree(window), float(width), float(height), float(cfg.num_frames)]
                story = Story(title=dish, events=events, subjects=f"a cook; {dish}", style=cfg.style)
                samples.append(StorySample(window, story, torch.tensor(cond), f"{folder.name}/{vid}@{s}", at))
    return samples
