"""The CookGen build: from source records to Hugging Face ``datasets`` splits with keyframes and embeddings.

Stages, per video (VideoAuteur §3):

1. screen: validate each step (empty sentence, bad or out-of-video segment) and filter (clip length, clips
   per video), counting every rejection by reason;
2. clips: cut each step's clip from the video (or copy a per-step clip file);
3. keyframes: take one frame per step at ``keyframes.position`` of the clip, by seeking;
4. captions: a vision-language model describes the clip's frames (``caption.backend``); without one,
   captions come from the source or stay empty and are counted as missing, never invented;
5. embeddings: the keyframes in the configured visual space (:mod:`auteur.vision`).

Video work is done per video and recorded in ``work/videos/<id>.json`` once the video's files are all in
place, so a rerun skips finished videos and a kill at any moment loses at most the video in progress. The
splits are then assembled from those records and written atomically (``OUT/<split>/``, loadable with
``datasets.load_from_disk``), with ``report.json`` (counts before and after filtering, rejections by
reason), ``cookgen.json`` (the manifest: visual space, captioner, sources) and ``config.yaml``.
A text-only build (no videos) needs no video work and is assembled straight from the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from auteur.config import dump_config, save_config
from auteur.io import (
    atomic_dir,
    atomic_path,
    atomic_write_json,
    clean_stale_temporaries,
    ensure_writable_dir,
    writer_lock,
)
from auteur.vision import VisionConfig
from cookgen.caption import CaptionConfig
from cookgen.records import BadInput, CookgenError, Segment, VideoRecord, shard_of
from cookgen.sources import SourceResult

log = logging.getLogger(__name__)

MANIFEST = "cookgen.json"
REPORT = "report.json"
FORMAT = "cookgen/1"
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class FilterConfig:
    """Which steps and videos are kept. Lengths in seconds."""

    min_clip_seconds: float = 1.0
    max_clip_seconds: float = 120.0
    min_clips_per_video: int = 2
    max_clips_per_video: int = 64
    # a segment may end this far past the video's recorded duration (rounding in annotations)
    duration_tolerance: float = 0.5


@dataclass
class KeyframeConfig:
    position: float = 0.5  # where in the clip the keyframe is taken, as a fraction of its length
    format: Literal["jpg", "png"] = "jpg"
    max_side: int = 640  # keyframes larger than this are downscaled (aspect kept)


@dataclass
class ClipConfig:
    cut: bool = True  # cut (re-encode) each step's clip into OUT/clips; false: keyframes only
    crf: int = 23


@dataclass
class MatchConfig:
    """The paper's clip–action matching rule (see cookgen.matching)."""

    max_start_diff: float = 5.0
    min_iou: float = 0.25
    strong_iou: float = 0.5


@dataclass
class SplitConfig:
    val_fraction: float = 0.05  # for sources without an official split (HowTo100M, steps folders)


@dataclass
class HowToConfig:
    cooking_categories: list[str] = field(default_factory=lambda: ["Food and Entertaining"])


@dataclass
class BuildConfig:
    """Everything that decides what a CookGen build produces (saved as OUT/config.yaml)."""

    filter: FilterConfig = field(default_factory=FilterConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    howto100m: HowToConfig = field(default_factory=HowToConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    # with a captioner: also re-caption steps whose source already has a caption (steps folders)
    caption_overwrites_source: bool = False


@dataclass
class BuildOptions:
    """How a build runs (not what it produces): not part of the config fingerprint."""

    skip_bad: bool = False
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    force: bool = False
    progress: bool = True


# ---------------------------------------------------------------------------------------------------------
# 1. screening: validation and filtering of one video's steps


@dataclass
class Screened:
    """The outcome of screening one video: kept steps (with their 1-based source index), step rejections by
    reason, the bad inputs met (raised unless ``--skip-bad``), and why the whole video is dropped, if it is."""

    kept: list[tuple[int, Segment]]
    rejected: Counter
    bad: list[BadInput]
    video_rejection: str | None


def screen(rec: VideoRecord, cfg: FilterConfig) -> Screened:
    """Validate and filter a video's steps (bad input first, then the length and count filters)."""
    rejected: Counter = Counter()
    bad: list[BadInput] = []
    kept = []
    for i, seg in enumerate(rec.segments, start=1):
        where = f"{rec.source} video {rec.video_id} step {i}"
        if not seg.action.strip():
            bad.append(BadInput("empty_sentence", f"{where}: empty sentence"))
        elif not (math.isfinite(seg.start) and math.isfinite(seg.end)) or seg.start < 0 or seg.end <= seg.start:
            bad.append(BadInput("bad_segment", f"{where}: segment [{seg.start:g}, {seg.end:g}] is not a time range"))
        elif rec.duration is not None and seg.end > rec.duration + cfg.duration_tolerance:
            bad.append(
                BadInput(
                    "segment_outside_video",
                    f"{where}: segment [{seg.start:g}, {seg.end:g}] ends after the video ({rec.duration:g} s)",
                )
            )
        elif seg.length < cfg.min_clip_seconds:
            rejected["clip_too_short"] += 1
        elif seg.length > cfg.max_clip_seconds:
            rejected["clip_too_long"] += 1
        else:
            kept.append((i, seg))
    for b in bad:
        rejected[b.reason] += 1
    video_rejection = None
    if len(kept) < cfg.min_clips_per_video:
        video_rejection = "too_few_clips"
    elif len(kept) > cfg.max_clips_per_video:
        video_rejection = "too_many_clips"
    return Screened(kept, rejected, bad, video_rejection)


# ---------------------------------------------------------------------------------------------------------
# 2.–5. video work for one video (runs in worker processes)

_WORKER: dict[str, Any] = {}


def _models(cfg: BuildConfig) -> tuple[Any, Any]:
    """The visual encoder and captioner of this process, loaded once."""
    key = dump_config(cfg.vision) + dump_config(cfg.caption)
    if _WORKER.get("key") != key:
        from auteur.vision import load_encoder
        from cookgen.caption import load_captioner

        _WORKER.update(key=key, encoder=load_encoder(cfg.vision), captioner=load_captioner(cfg.caption))
    return _WORKER["encoder"], _WORKER["captioner"]


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _save_image(frame, path: Path, cfg: KeyframeConfig) -> None:
    from PIL import Image

    img = Image.fromarray(frame)
    if max(img.size) > cfg.max_side:
        img.thumbnail((cfg.max_side, cfg.max_side), Image.Resampling.BICUBIC)
    with atomic_path(path) as tmp:
        if cfg.format == "jpg":
            img.save(tmp, format="JPEG", quality=95)
        else:
            img.save(tmp, format="PNG")


def _step_entry(
    idx: int, seg: Segment, caption: str, caption_source: str, clip: str = "", keyframe: str = ""
) -> dict[str, Any]:
    """One finished step as recorded in work/videos/<id>.json (paths relative to the build folder)."""
    return {
        "source_index": idx,
        "start": seg.start,
        "end": seg.end,
        "action": seg.action,
        "caption": caption,
        "caption_source": caption_source,
        "asr": seg.asr,
        "clip": clip,
        "keyframe": keyframe,
    }


def _caption_times(start: float, end: float, n: int) -> list[float]:
    return [start + (end - start) * (k + 0.5) / n for k in range(n)]


def process_video(rec: VideoRecord, cfg: BuildConfig, out: Path, skip_bad: bool = False) -> dict[str, Any]:
    """Do the video work for one record and write its record file last; returns that record.

    Raises :class:`BadInput` for a missing or corrupt video, and for a bad step unless ``skip_bad`` (then the
    step is dropped and counted).
    """
    from PIL import Image

    from auteur.errors import VideoError
    from auteur.io import save_safetensors
    from auteur.video import cut_clip, frames_at, probe

    def video_error(e: VideoError, reason: str = "video_corrupt") -> BadInput:
        msg = str(e)
        if "outside" in msg:
            reason = "segment_outside_video"
        elif "not found" in msg or "missing" in msg.lower():
            reason = "video_missing"
        return BadInput(reason, f"{rec.source} video {rec.video_id}: {msg}")

    # 1. probe, then screen with the real durations
    try:
        if rec.source == "steps":
            for seg in rec.segments:
                assert seg.clip_file is not None
                seg.end = probe(seg.clip_file).duration
        else:
            assert rec.video_path is not None
            rec.duration = probe(rec.video_path).duration
    except VideoError as e:
        raise video_error(e) from None
    sc = screen(rec, cfg.filter)
    if sc.bad and not skip_bad:
        raise sc.bad[0]
    kept = sc.kept
    result: dict[str, Any] = {
        "format": FORMAT,
        "video_id": rec.video_id,
        "rejected_steps": dict(sc.rejected),
        "rejected_video": sc.video_rejection,
        "steps": [],
    }
    record_path = out / "work" / "videos" / f"{rec.safe_id}.json"
    if sc.video_rejection is not None:
        atomic_write_json(record_path, result)
        return result

    encoder, captioner = _models(cfg)
    kf_dir = out / "keyframes" / rec.safe_id
    clip_dir = out / "clips" / rec.safe_id
    for d in (kf_dir, clip_dir):
        clean_stale_temporaries(d)
    ext = cfg.keyframes.format

    # 2. clips, 3. keyframes, 4. captions
    keyframes = []
    try:
        times = []
        for _, seg in kept:
            times.append(seg.start + cfg.keyframes.position * seg.length)
        if rec.source == "steps":
            frames = [frames_at(seg.clip_file, [t])[0] for (_, seg), t in zip(kept, times)]
        else:
            frames = list(frames_at(rec.video_path, times))
        for n, ((idx, seg), frame) in enumerate(zip(kept, frames), start=1):
            kf_rel = f"keyframes/{rec.safe_id}/{n:03d}.{ext}"
            _save_image(frame, out / kf_rel, cfg.keyframes)
            keyframes.append(Image.fromarray(frame))
            clip_rel = ""
            if cfg.clips.cut:
                clip_rel = f"clips/{rec.safe_id}/{n:03d}.mp4"
                if rec.source == "steps":
                    with atomic_path(out / clip_rel) as tmp:
                        shutil.copyfile(seg.clip_file, tmp)
                else:
                    cut_clip(rec.video_path, seg.start, seg.end, out / clip_rel, crf=cfg.clips.crf)
            caption, caption_source = seg.caption, "source" if seg.caption else "missing"
            if captioner is not None and (not seg.caption or cfg.caption_overwrites_source):
                src = seg.clip_file if rec.source == "steps" else rec.video_path
                cap_frames = frames_at(src, _caption_times(seg.start, seg.end, cfg.caption.num_frames))
                text = captioner.caption([Image.fromarray(f) for f in cap_frames]).strip()
                if text:
                    caption, caption_source = text, f"vlm:{captioner.model_id}"
            result["steps"].append(_step_entry(idx, seg, caption, caption_source, clip_rel, kf_rel))
    except VideoError as e:
        raise video_error(e) from None

    # 5. embeddings
    emb = encoder.embed_images(keyframes)
    with atomic_path(out / "work" / "emb" / f"{rec.safe_id}.safetensors") as tmp:
        save_safetensors(
            {"embeddings": emb.contiguous()},
            str(tmp),
            metadata={"space": encoder.space.name, "dim": str(encoder.space.dim)},
        )
    result["embedding_space"] = {"name": encoder.space.name, "dim": encoder.space.dim}
    atomic_write_json(record_path, result)  # last: marks the video finished
    return result


def _process_or_bad(rec: VideoRecord, cfg: BuildConfig, out: Path, skip_bad: bool) -> dict[str, Any] | BadInput:
    try:
        return process_video(rec, cfg, out, skip_bad)
    except BadInput as b:
        return b


# ---------------------------------------------------------------------------------------------------------
# assembly


def _text_only_record(rec: VideoRecord, cfg: BuildConfig, skip_bad: bool) -> dict[str, Any]:
    sc = screen(rec, cfg.filter)
    if sc.bad and not skip_bad:
        raise sc.bad[0]
    steps = []
    if sc.video_rejection is None:
        for idx, seg in sc.kept:
            steps.append(_step_entry(idx, seg, seg.caption, "source" if seg.caption else "missing"))
    return {
        "video_id": rec.video_id,
        "rejected_steps": dict(sc.rejected),
        "rejected_video": sc.video_rejection,
        "steps": steps,
    }


def _rows(rec: VideoRecord, result: dict[str, Any], emb) -> list[dict[str, Any]]:
    rows = []
    n = len(result["steps"])
    for k, st in enumerate(result["steps"]):
        row = {
            "video_id": rec.video_id,
            "source": rec.source,
            "split": rec.split,
            "recipe_type": rec.recipe_type,
            "dish": rec.dish,
            "step_index": k + 1,
            "source_step_index": st["source_index"],
            "num_steps": n,
            "start": float(st["start"]),
            "end": float(st["end"]),
            "action": st["action"],
            "caption": st["caption"],
            "caption_source": st["caption_source"],
            "asr": st["asr"],
            "clip": st["clip"],
            "keyframe": st["keyframe"],
        }
        if emb is not None:
            row["embedding"] = emb[k].tolist()
        rows.append(row)
    return rows


def _features(dim: int | None):
    from datasets import Features, Sequence, Value

    cols = {
        "video_id": Value("string"),
        "source": Value("string"),
        "split": Value("string"),
        "recipe_type": Value("string"),
        "dish": Value("string"),
        "step_index": Value("int32"),
        "source_step_index": Value("int32"),
        "num_steps": Value("int32"),
        "start": Value("float64"),
        "end": Value("float64"),
        "action": Value("string"),
        "caption": Value("string"),
        "caption_source": Value("string"),
        "asr": Value("string"),
        "clip": Value("string"),
        "keyframe": Value("string"),
    }
    if dim is not None:
        cols["embedding"] = Sequence(Value("float32"), length=dim)
    return Features(cols)


def write_splits(out: Path, rows_by_split: dict[str, list[dict[str, Any]]], dim: int | None) -> dict[str, int]:
    """Write one ``datasets`` dataset per split into ``OUT/<split>`` (atomically).

    A split left with no rows is not written (``datasets`` cannot save and reload an empty Arrow dataset);
    its folder from an earlier build is removed, and the report still lists its counts.
    """
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    features = _features(dim)
    counts = {}
    for split, rows in rows_by_split.items():
        counts[split] = len(rows)
        if not rows:
            continue
        with atomic_dir(out / split) as tmp:
            Dataset.from_list(rows, features=features).save_to_disk(str(tmp))
    for p in out.iterdir():
        if p.is_dir() and (p / "dataset_info.json").exists() and not counts.get(p.name):
            shutil.rmtree(p)
    return counts


def _fingerprint(cfg: BuildConfig, source: str) -> str:
    return hashlib.sha256((source + "\n" + dump_config(cfg)).encode()).hexdigest()[:16]


def _check_fingerprint(out: Path, fp: str, force: bool) -> None:
    path = out / "work" / "fingerprint.json"
    if force and (out / "work").exists():
        shutil.rmtree(out / "work")
        for d in ("keyframes", "clips"):
            shutil.rmtree(out / d, ignore_errors=True)
    if path.exists():
        old = json.loads(path.read_text()).get("fingerprint")
        if old != fp:
            raise CookgenError(
                f"{out} holds a build made with another source or config; pass --force to rebuild it "
                "from scratch, or choose another --out"
            )
    else:
        atomic_write_json(path, {"fingerprint": fp})


@dataclass
class BuildReport:
    """What a build did: counts before and after filtering per split, every rejection by reason."""

    source: str
    inputs: dict[str, str]
    shard: str
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    rejected_steps: dict[str, int] = field(default_factory=dict)
    rejected_videos: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    captions: dict[str, int] = field(default_factory=dict)
    embedding_space: dict[str, Any] | None = None
    videos_processed: int = 0
    videos_resumed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build(
    cfg: BuildConfig,
    source: SourceResult,
    out: str | Path,
    source_name: str,
    inputs: dict[str, str] | None = None,
    options: BuildOptions | None = None,
) -> BuildReport:
    """Build CookGen splits from ``source`` into ``out``; see the module docstring. Returns the report.

    One build per ``out`` at a time (a second one fails in one line: :func:`auteur.io.writer_lock`). A build that
    fails before any video is done leaves no ``out`` behind when it created it (a killed or failed build with
    finished videos keeps them: the next run resumes)."""
    out = Path(out)
    opts = options or BuildOptions()
    if source.bad and not opts.skip_bad:  # bad items the source met while reading: before --out is touched
        raise source.bad[0]
    if not source.records and not source.bad:
        left = ", ".join(f"{k} {v}" for k, v in source.excluded.items())
        raise CookgenError(f"the {source_name} source holds no videos to build{f' ({left} left out)' if left else ''}")
    created = not out.exists()
    with writer_lock(out):
        try:
            return _build(cfg, source, out, source_name, inputs, options)
        except BaseException:
            if created and out.is_dir() and not _holds_work(out):
                shutil.rmtree(out, ignore_errors=True)
            raise


def _holds_work(out: Path) -> bool:
    """Whether a build folder holds anything worth keeping: a finished video, or finished splits."""
    return (out / MANIFEST).exists() or any((out / "work" / "videos").glob("*.json"))


def _build(
    cfg: BuildConfig,
    source: SourceResult,
    out: Path,
    source_name: str,
    inputs: dict[str, str] | None,
    options: BuildOptions | None,
) -> BuildReport:
    opts = options or BuildOptions()
    t0 = time.perf_counter()
    out = ensure_writable_dir(out)
    clean_stale_temporaries(out)
    i_shard, n_shards = opts.shard
    report = BuildReport(source=source_name, inputs=inputs or {}, shard=f"{i_shard}/{n_shards}")
    report.excluded = dict(source.excluded)

    # bad items the source met while reading (without --skip-bad, build() refused them already)
    bad_videos: Counter = Counter(b.reason for b in source.bad)

    records = [r for r in source.records if n_shards == 1 or shard_of(r.video_id, n_shards) == i_shard]
    if n_shards > 1:
        report.excluded["other_shards"] = len(source.records) - len(records)
    seen: set[str] = set()
    for r in records:
        if r.video_id in seen:
            raise CookgenError(f"video id {r.video_id} appears twice in the {source_name} source")
        seen.add(r.video_id)
    for r in records:
        s = report.splits.setdefault(r.split, {"videos_before": 0, "steps_before": 0, "videos": 0, "steps": 0})
        s["videos_before"] += 1
        s["steps_before"] += len(r.segments)

    video_work = any(r.video_path or any(s.clip_file for s in r.segments) for r in records)
    rejected_steps: Counter = Counter()
    results: dict[str, dict[str, Any]] = {}
    if not video_work:
        for r in records:
            results[r.video_id] = _text_only_record(r, cfg, opts.skip_bad)
    else:
        _check_fingerprint(out, _fingerprint(cfg, source_name), opts.force)
        todo = []
        for r in records:
            path = out / "work" / "videos" / f"{r.safe_id}.json"
            if path.exists():
                results[r.video_id] = json.loads(path.read_text())
                report.videos_resumed += 1
            else:
                if r.video_path is not None and not opts.skip_bad:  # bad segments need no decoding to be found
                    bad = screen(r, cfg.filter).bad
                    if bad:
                        raise bad[0]
                todo.append(r)
        if todo and opts.workers == 1:
            _models(cfg)  # load (and so check) the encoder and captioner before any video work
        bar = tqdm(total=len(todo), desc=f"cookgen {source_name}: videos", unit="video", disable=not opts.progress)
        if opts.workers > 1 and len(todo) > 1:
            threads = max(1, (os.cpu_count() or 1) // opts.workers)
            import multiprocessing as mp

            with ProcessPoolExecutor(
                opts.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
            ) as pool:
                futures = {pool.submit(_process_or_bad, r, cfg, out, opts.skip_bad): r for r in todo}
                outcomes = []
                from concurrent.futures import as_completed

                for fut in as_completed(futures):
                    outcomes.append((futures[fut], fut.result()))
                    bar.update()
                    if isinstance(outcomes[-1][1], BadInput) and not opts.skip_bad:
                        for f in futures:
                            f.cancel()
                        raise outcomes[-1][1]
        else:
            outcomes = []
            for r in todo:
                res = _process_or_bad(r, cfg, out, opts.skip_bad)
                if isinstance(res, BadInput) and not opts.skip_bad:
                    raise res
                outcomes.append((r, res))
                bar.update()
        bar.close()
        for r, res in outcomes:
            if isinstance(res, BadInput):
                bad_videos[res.reason] += 1
            else:
                results[r.video_id] = res
                report.videos_processed += 1

    # assembly
    import torch
    from safetensors.torch import load_file

    rows_by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in report.splits}
    space = None
    captions: Counter = Counter()
    for r in records:
        res = results.get(r.video_id)
        if res is None:
            continue
        rejected_steps.update(res["rejected_steps"])
        if res["rejected_video"]:
            bad_videos[res["rejected_video"]] += 1
            continue
        emb = None
        if res.get("embedding_space"):
            if space is None:
                space = res["embedding_space"]
            elif space != res["embedding_space"]:
                raise CookgenError(
                    f"video {r.video_id} was embedded in {res['embedding_space']['name']} but others in "
                    f"{space['name']}: visual spaces cannot be mixed; rebuild with --force"
                )
            emb = load_file(str(out / "work" / "emb" / f"{r.safe_id}.safetensors"))["embeddings"].to(torch.float32)
        rows = _rows(r, res, emb)
        for row in rows:
            captions[row["caption_source"].split(":")[0]] += 1
        rows_by_split[r.split].extend(rows)
        report.splits[r.split]["videos"] += 1
        report.splits[r.split]["steps"] += len(rows)
    report.rejected_steps = dict(sorted(rejected_steps.items()))
    report.rejected_videos = dict(sorted(bad_videos.items()))
    report.captions = dict(sorted(captions.items()))
    report.embedding_space = space
    write_splits(out, rows_by_split, space["dim"] if space else None)
    report.seconds = round(time.perf_counter() - t0, 3)
    save_config(cfg, out)
    atomic_write_json(out / REPORT, report.to_json())
    atomic_write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "source": source_name,
            "splits": {s: v["steps"] for s, v in report.splits.items()},
            "embedding_space": space,
            "captioner": cfg.caption.backend if cfg.caption.backend != "none" else None,
            "fingerprint": _fingerprint(cfg, source_name),
            "shard": report.shard,
        },
    )
    return report
