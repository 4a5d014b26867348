"""Animatic assembly speed: seconds to make the 8-step animatic at 640x640, 24 fps, against a naive path.

    .venv/bin/python benchmarks/video_bench.py [--steps 8] [--seconds 4] [--size 640] [--images DIR | --textures]
                                               [--repeat N] [--profile] [--encoders]

Keyframes: the real photographs in ``../shared/data/images`` (cycled over the steps) when that folder exists,
else procedural multi-scale textures (labelled in the output); real pictures matter because x264's speed and
the file size depend on the detail in them.

Fast path: ``videogen generate --preset default`` on the plan (per clip: keyframes converted to yuv420 once,
frames resampled in yuv420p by numpy in a thread while x264 encodes; then the long video by stream copy).
Naive path, same process, same pictures (the same :func:`~videogen.animatic.crop_window` per frame) and the
same encoder settings, so the ratio measures synthesis and conversion: one long video written frame by frame
with PIL (``resize(box=...)`` of the keyframe, ``Image.blend`` in the crossfades) -> ``VideoFrame.from_image``
-> PyAV (which converts RGB to yuv420p with swscale). When the preset's encoder settings differ from
``auteur.video.write_mp4``'s defaults (what naive code in this project would get), the naive path is timed
with those too. Prints seconds, multiples of real time (video duration / seconds), the ratios, the file sizes
and how far apart the two videos' pictures are. CPU seconds (all threads of this process) are printed too:
on a shared machine they say more about the work done than wall time does. ``--profile`` times the fast
path's parts on one step alone; ``--encoders`` compares x264 presets and CRFs (speed, size, PSNR) on the
same synthesised frames.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from auteur.plan import Plan, Step, save_plan
from videogen.animatic import (
    crop_window,
    crossfade_weights,
    fit_image,
    keyframe_planes,
    pixel_box,
    step_frames,
    write_yuv420_mp4,
)
from videogen.config import PRESETS, VideogenConfig

DATA_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
#: the encoder settings of auteur.video.write_mp4 (the project's plain RGB writer)
WRITE_MP4_DEFAULTS = {"preset": "veryfast", "crf": 20}


def _texture(seed: int, size: int) -> Image.Image:
    """A procedural picture with detail at every scale (1/f-like octaves of smooth noise), not flat colour."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3), np.float32)
    for cells, amp in ((4, 90.0), (16, 45.0), (64, 25.0), (size // 2, 12.0)):
        small = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
        up = np.stack([np.asarray(Image.fromarray(small[..., c], mode="F").resize((size, size),
                       Image.Resampling.BICUBIC)) for c in range(3)], -1)  # fmt: skip
        acc += amp * up
    return Image.fromarray(np.clip(acc + 128, 0, 255).astype(np.uint8))


def make_plan(folder: Path, steps: int, size: int, images: Path | None) -> tuple[Path, str]:
    found = images.rglob("*") if images is not None and images.is_dir() else []
    photos = sorted(p for p in found if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    (folder / "keyframes").mkdir(parents=True)
    out = []
    for i in range(steps):
        img = Image.open(photos[i % len(photos)]).convert("RGB") if photos else _texture(i, size)
        img.save(folder / f"keyframes/{i:03d}.png")
        out.append(
            Step(index=i + 1, action=f"Step {i + 1}.", caption=f"Caption {i + 1}.", keyframe=f"keyframes/{i:03d}.png")
        )
    save_plan(Plan(query="benchmark", steps=out), folder)
    source = f"{len(photos)} photographs from {images}" if photos else "procedural multi-scale textures"
    return folder, source


def naive(folder: Path, cfg: VideogenConfig, steps: int, dst: Path, preset: str, crf: int) -> None:
    """Per-frame PIL crop-resize/blend, one RGB frame at a time into PyAV: the straightforward way."""
    a = cfg.animatic
    keys = [Image.fromarray(fit_image(Image.open(folder / f"keyframes/{i:03d}.png"), a.width, a.height))
            for i in range(steps)]  # fmt: skip
    n = round(a.step_seconds * cfg.fps)
    xf = round(a.crossfade_seconds * cfg.fps)
    with av.open(str(dst), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(cfg.fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = a.width, a.height, "yuv420p"
        s.options = {"crf": str(crf), "preset": preset}
        for i, key in enumerate(keys):
            alpha = crossfade_weights(n, xf if i + 1 < steps else 0)
            for k in range(n):
                box = pixel_box(crop_window(k / n, a.zoom, a.pan, i), a.width, a.height)
                frame = key.resize((a.width, a.height), Image.Resampling.BILINEAR, box=box)
                if alpha[k] > 0:
                    frame = Image.blend(frame, keys[i + 1], float(alpha[k]))
                c.mux(s.encode(av.VideoFrame.from_image(frame)))
        c.mux(s.encode(None))


def _frames(path: Path, every: int) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i % every == 0])


def _best(fn, repeat: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of the fastest of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def profile(folder: Path, cfg: VideogenConfig) -> None:
    """The fast path's parts on step 1 alone, one after another (no overlap): where the time goes."""
    a = cfg.animatic
    n = round(a.step_seconds * cfg.fps)
    imgs = [Image.open(folder / f"keyframes/{i:03d}.png") for i in range(2)]
    t0 = time.perf_counter()
    keys = [keyframe_planes(im, a.width, a.height) for im in imgs]
    t_fit = (time.perf_counter() - t0) / 2
    t0 = time.perf_counter()
    frames = list(step_frames(keys[0], keys[1], n, a, cfg.fps, direction=0))
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    vf = [av.VideoFrame.from_ndarray(f, format="yuv420p") for f in frames]
    t_wrap = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_yuv420_mp4(iter(frames), Path(tmp) / "x.mp4", a.width, a.height, cfg.fps, cfg.crf, cfg.encoder_preset)
        t_enc = time.perf_counter() - t0 - t_wrap
    # the naive path's conversion for comparison: RGB frames through swscale
    rgb = [f.to_ndarray(format="rgb24") for f in vf[:24]]
    t0 = time.perf_counter()
    for r in rgb:
        av.VideoFrame.from_ndarray(r, format="rgb24").reformat(format="yuv420p")
    t_sws = (time.perf_counter() - t0) / len(rgb) * n
    print(f"profile, one step ({n} frames = {n / cfg.fps:.1f} s), parts run one after another:")
    print(f"  keyframe fit + RGB->yuv420 (once per keyframe): {t_fit * 1e3:.0f} ms")
    print(f"  frame synthesis (yuv420p resample + crossfade):  {t_synth:.3f} s  ({n / t_synth:.0f} frames/s)")
    print(f"  ndarray -> VideoFrame copies:                    {t_wrap:.3f} s")
    print(
        f"  x264 {cfg.encoder_preset} crf {cfg.crf} encode + mux:           {t_enc:.3f} s  ({n / t_enc:.0f} frames/s)"
    )
    print(f"  (naive path's per-frame RGB->yuv420p swscale:   {t_sws:.3f} s for the same frames)")


ENCODER_ROWS = [("ultrafast", 23), ("superfast", 20), ("superfast", 23), ("veryfast", 20), ("veryfast", 23)]


def encoders(folder: Path, cfg: VideogenConfig) -> None:
    """x264 presets and CRFs on the same synthesised frames (two steps): speed, size, PSNR of the luma."""
    import io

    a = cfg.animatic
    n = round(a.step_seconds * cfg.fps)
    keys = [keyframe_planes(Image.open(folder / f"keyframes/{i:03d}.png"), a.width, a.height) for i in range(3)]
    frames = [f for i in range(2) for f in step_frames(keys[i], keys[i + 1], n, a, cfg.fps, direction=i)]
    secs = len(frames) / cfg.fps
    print(f"x264 on the same {len(frames)} synthesised frames ({secs:.0f} s), encode only, best of 2:")
    for preset, crf in ENCODER_ROWS:
        runs = []
        for _ in range(2):
            buf = io.BytesIO()
            vfs = [av.VideoFrame.from_ndarray(f, format="yuv420p") for f in frames]
            with av.open(buf, "w", format="mp4") as c:
                s = c.add_stream("libx264", rate=Fraction(cfg.fps).limit_denominator(1001))
                s.width, s.height, s.pix_fmt = a.width, a.height, "yuv420p"
                s.options = {"crf": str(crf), "preset": preset}
                t0 = time.perf_counter()
                for i, f in enumerate(vfs):
                    f.pts = i
                    c.mux(s.encode(f))
                c.mux(s.encode(None))
                runs.append(time.perf_counter() - t0)
        with av.open(io.BytesIO(buf.getvalue())) as c:
            dec = [f.to_ndarray(format="yuv420p")[: a.height] for f in c.decode(video=0)]
        mse = np.mean([np.mean((f[: a.height].astype(np.float32) - d) ** 2) for f, d in zip(frames, dec)])
        kb = len(buf.getvalue()) / 1e3 * a.step_seconds / secs
        print(f"  {preset:9s} crf {crf}: {min(runs):.2f} s = {secs / min(runs):5.1f}x real time, "
              f"{kb:5.0f} kB per {a.step_seconds:g} s step, PSNR-Y {10 * np.log10(255**2 / mse):.1f} dB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--images", type=Path, default=DATA_IMAGES, help="a folder of keyframe pictures")
    ap.add_argument("--textures", action="store_true", help="procedural keyframes even where photographs exist")
    ap.add_argument("--repeat", type=int, default=1, help="time each path this many times, keep the best")
    ap.add_argument("--profile", action="store_true", help="also time the fast path's parts on one step")
    ap.add_argument("--encoders", action="store_true", help="also compare x264 presets and CRFs on these frames")
    args = ap.parse_args()
    from auteur.config import load_config
    from videogen.generate import generate

    over = [f"animatic.step_seconds={args.seconds}", f"animatic.width={args.size}", f"animatic.height={args.size}"]
    cfg = load_config(VideogenConfig, "default", over, preset_dir=PRESETS)
    duration = args.steps * round(args.seconds * cfg.fps) / cfg.fps
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    what = f"{args.steps} steps x {args.seconds} s at {args.size}x{args.size}, {cfg.fps:g} fps"
    print(f"{what} ({duration:.1f} s of video), x264 {cfg.encoder_preset} crf {cfg.crf}; "
          f"{os.cpu_count()} CPUs, load average {load:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder, source = make_plan(Path(tmp) / "plan", args.steps, args.size, None if args.textures else args.images)
        print(f"keyframes: {source}")
        if args.profile:
            profile(folder, cfg)
        if args.encoders:
            encoders(folder, cfg)

        def fast_once() -> None:
            for p in [*(folder / "clips").glob("*.mp4"), folder / "video.mp4"]:
                p.unlink(missing_ok=True)  # a full remake each time, not a rerun that skips finished clips
            generate(folder, cfg, preset="default", progress=False)

        # untimed warm-up of both paths on a small 2-step plan: lazy imports and first-use setup are not counted
        small = [*over[:1], "animatic.width=64", "animatic.height=64"]
        small_cfg = load_config(VideogenConfig, "default", small, preset_dir=PRESETS)
        warm, _ = make_plan(Path(tmp) / "warm", 2, 64, None)
        generate(warm, small_cfg, preset="default", progress=False)
        naive(warm, small_cfg, 2, Path(tmp) / "warm.mp4", cfg.encoder_preset, cfg.crf)

        fast = _best(fast_once, args.repeat)
        same = Path(tmp) / "naive.mp4"
        slow = _best(lambda: naive(folder, cfg, args.steps, same, cfg.encoder_preset, cfg.crf), args.repeat)
        rows = [("videogen animatic (clips + long video)", fast, folder / "video.mp4"),
                (f"naive PIL -> PyAV, same encoder ({cfg.encoder_preset} crf {cfg.crf})", slow, same)]  # fmt: skip
        dflt = None
        if {"preset": cfg.encoder_preset, "crf": cfg.crf} != WRITE_MP4_DEFAULTS:
            d = WRITE_MP4_DEFAULTS
            other = Path(tmp) / "naive-default.mp4"
            dflt = _best(lambda: naive(folder, cfg, args.steps, other, d["preset"], d["crf"]), args.repeat)
            rows.append((f"naive PIL -> PyAV, write_mp4 defaults ({d['preset']} crf {d['crf']})", dflt, other))
        clips = sum(p.stat().st_size for p in (folder / "clips").glob("*.mp4"))
        for name, (secs, cpu), path in rows:
            print(f"{name}: {secs:.2f} s = {duration / secs:.2f}x real time (CPU {cpu:.2f} s), {path.name} "
                  f"{path.stat().st_size / 1e6:.2f} MB")  # fmt: skip
        print(f"  (videogen's per-step clips: {clips / 1e6:.2f} MB in all)")
        print(f"ratio naive / videogen, same encoder settings: {slow[0] / fast[0]:.2f} (CPU {slow[1] / fast[1]:.2f})")
        if dflt is not None:
            print(f"ratio naive / videogen, naive with write_mp4 defaults: {dflt[0] / fast[0]:.2f} "
                  f"(CPU {dflt[1] / fast[1]:.2f})")  # fmt: skip
        a, b = _frames(folder / "video.mp4", 8), _frames(same, 8)
        diff = np.abs(a.astype(np.float32) - b).mean() if a.shape == b.shape else float("nan")
        print(f"same pictures: every 8th frame of the two videos differs by {diff:.2f} / 255 on average")


if __name__ == "__main__":
    main()
