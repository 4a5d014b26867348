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

A sample holds where its frames are, not their pixels (a whole build's decoded frames would not fit in memory):
:meth:`StorySample.frames` decodes them when asked, which ``anchors train`` does once per sample, when it
encodes the sample into its latent cache (:mod:`anchors.train`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anchors.captions import Event, Story
from anchors.config import DataConfig
from auteur.builds import read_videos

log = logging.getLogger(__name__)


@dataclass
class FrameRef:
    """Where one story frame is read from: the frame of clip ``path`` at ``at`` seconds, or the image ``path``
    (a keyframe; ``at`` None)."""

    path: Path
    at: float | None = None


@dataclass
class StorySample:
    """One training sequence: where its F story frames come from (decoded only when asked: :meth:`frames`, so a
    whole build's samples hold no pixels), its story, the source ``fps`` and the frame ``interval`` (source frames
    between story frames), the frames' times (s) on the source video's timeline, and its names: ``source``
    (``BUILD/VIDEO@START``, for people) and ``key`` (stable and unique: the build's absolute path, the split, the
    video, the window's first frame and a hash of the video's rows, so a rebuilt build gets new keys; the name
    of its latent-cache entry)."""

    refs: list[FrameRef]
    story: Story
    fps: float
    interval: float
    source: str
    key: str
    times: list[float]
    height: int
    width: int

    def frames(self) -> torch.Tensor:
        """The story frames [F, 3, H, W] in [-1, 1] at model resolution, decoded now (each clip opened once)."""
        from auteur.video import frames_at

        images: list[Image.Image | np.ndarray | None] = [None] * len(self.refs)
        clips: dict[Path, list[int]] = {}
        for i, ref in enumerate(self.refs):
            if ref.at is None:
                with Image.open(ref.path) as im:
                    images[i] = im.convert("RGB")
            else:
                clips.setdefault(ref.path, []).append(i)
        for path, idx in clips.items():
            for i, frame in zip(idx, frames_at(path, [self.refs[i].at for i in idx])):
                images[i] = frame
        return torch.stack([to_tensor(im, self.height, self.width) for im in images])

    def conditions(self, frames: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar conditions [6] (``anchors.model.CONDITION_NAMES`` order); the motion degree is measured on
        ``frames`` (:meth:`frames`, decoded when not given)."""
        frames = self.frames() if frames is None else frames
        n = float(len(self.refs))
        return torch.tensor([self.fps, self.interval, motion_degree(frames), float(self.width), float(self.height), n])


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


def _video_frames(
    folder: Path, rows: list[dict], cfg: DataConfig
) -> tuple[list[FrameRef], list[int], list[float], float]:
    """Where each story frame is (nothing decoded: clips are probed), the step (row index) of each, its time (s)
    on the video's timeline, the source fps."""
    from auteur.video import probe

    refs, steps, times, fps_seen = [], [], [], []
    for k, (row, offset) in enumerate(zip(rows, _timeline(rows))):
        clip = row["clip"] or None  # absolute, inside the build (auteur.builds.read_videos)
        if clip is not None and clip.is_file():
            info = probe(clip)
            at = [cfg.interval_seconds * (j + 0.5) for j in range(cfg.max_frames_per_step)]
            at = [t for t in at if t < info.duration] or [info.duration / 2]
            refs += [FrameRef(clip, t) for t in at]
            times += [offset + t for t in at]
            steps += [k] * len(at)
            if info.fps:
                fps_seen.append(info.fps)
        elif row["keyframe"] and row["keyframe"].is_file():
            refs.append(FrameRef(row["keyframe"]))
            times.append(offset + (row["end"] - row["start"]) / 2)  # CookGen's default keyframe position
            steps.append(k)
    fps = float(np.mean(fps_seen)) if fps_seen else cfg.default_fps
    return refs, steps, times, fps


def frame_interval(times: list[float], fps: float) -> float:
    """The frame-interval condition of story frames taken at ``times`` (s): their mean spacing in source frames."""
    return (times[-1] - times[0]) / (len(times) - 1) * fps if len(times) > 1 else 0.0


def load_story_samples(folders: list[str], split: str, cfg: DataConfig, height: int, width: int) -> list[StorySample]:
    """All windows of ``cfg.num_frames`` story frames in ``split`` of the CookGen builds ``folders``, at
    ``height`` x ``width``. Clips are probed, not decoded: a sample decodes its frames when asked."""
    samples: list[StorySample] = []
    for d in folders:
        folder = Path(d)
        cols = ["source", "dish", "action", "caption", "start", "end", "clip", "keyframe"]
        for rows in read_videos(folder, split, cols):  # BuildError unless folder is a CookGen build
            vid = rows[0]["video_id"]
            refs, steps, times, fps = _video_frames(folder, rows, cfg)
            if len(refs) < cfg.num_frames:
                log.info("%s/%s: %d story frames, fewer than %d; skipped", folder.name, vid, len(refs), cfg.num_frames)
                continue
            # what the video's frames and captions are made of: a rebuilt build gets new cache keys
            rows_hash = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
            dish = rows[0]["dish"] or vid
            for s in range(0, len(refs) - cfg.num_frames + 1, cfg.stride):
                idx = list(range(s, s + cfg.num_frames))
                events: list[Event] = []
                for i in idx:
                    row = rows[steps[i]]
                    if events and steps[i] == steps[i - 1] and i != s:
                        events[-1].frames += 1
                    else:
                        events.append(Event(row["caption"] or row["action"], 1))
                at = [times[i] for i in idx]
                story = Story(title=dish, events=events, subjects=f"a cook; {dish}", style=cfg.style)
                samples.append(
                    StorySample(
                        refs=[refs[i] for i in idx],
                        story=story,
                        fps=fps,
                        interval=frame_interval(at, fps),
                        source=f"{folder.name}/{vid}@{s}",
                        key=f"{folder.resolve()}/{split}/{vid}@{s}#{rows_hash}",
                        times=at,
                        height=height,
                        width=width,
                    )
                )
    return samples
