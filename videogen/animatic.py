"""The offline default: an *animatic* assembled from the keyframes (not a generated video; labelled so).

No video-model weights exist offline, so the ``default`` preset shows the plan as an animatic: each step's
keyframe held for ``step_seconds`` with a slow zoom in and a drift (a Ken Burns move), its last
``crossfade_seconds`` blending into the next step's first frame.

Frame ``k`` of a step with ``n`` frames: ``(1 - a_k) * KB_i(k / n) + a_k * KB_{i+1}(0)`` where ``KB_i(t)`` is
keyframe ``i`` seen through the window of :func:`crop_window` (``1 - zoom * t`` of its size, shifted by
``pan * t``; the direction alternates between steps) and ``a_k`` ramps from 0 to just below 1 over the last
crossfade frames, so the next clip's first frame (``KB_{i+1}(0)``, the whole keyframe) continues the fade
without a jump.

Why it is fast (see ``benchmarks/video_bench.py``): the frames are made where the encoder wants them, in
yuv420p. Each keyframe is converted to float Y/U/V planes *once* (BT.601 limited range, chroma averaged 2x2,
as swscale reads an untagged yuv420p stream); each frame is then a separable bilinear resample of the three
planes at float (sub-pixel) window positions, two numpy gathers and lerps per plane, so no per-frame RGB
image, RGB->YUV conversion or antialiased resize. Blends are linear in YUV exactly as in RGB (the conversion
is affine). Frames are synthesised in a background thread while x264 encodes in the calling one (numpy and
PyAV both release the GIL), and are handed to PyAV as packed yuv420p arrays.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from auteur.io import atomic_path
from videogen.config import AnimaticConfig
from videogen.errors import VideogenError

log = logging.getLogger(__name__)

#: bumped when the frames this module makes change, so `generate` redoes clips made by an older version
ALGORITHM = "animatic/2 yuv420 bilinear"

# (dx, dy) drift directions, cycled over the steps so consecutive shots move differently
_DIRECTIONS = [(1.0, 0.0), (-1.0, 0.5), (0.0, 1.0), (0.5, -1.0)]

# BT.601 RGB -> (Y, Cb, Cr) in limited ("tv") range: what swscale assumes for an untagged yuv420p stream, so
# decoders (PyAV's to_ndarray, browsers) turn these planes back into the keyframe's colours
_RGB_TO_YCBCR = np.array(
    [
        [0.299 * 219 / 255, 0.587 * 219 / 255, 0.114 * 219 / 255],
        [-0.168736 * 224 / 255, -0.331264 * 224 / 255, 0.5 * 224 / 255],
        [0.5 * 224 / 255, -0.418688 * 224 / 255, -0.081312 * 224 / 255],
    ],
    dtype=np.float32,
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], dtype=np.float32)


def fit_image(img: Image.Image, width: int, height: int) -> np.ndarray:
    """Centre-crop ``img`` to the aspect ``width/height`` and resize it (PIL bicubic) to exactly that size.

    Returns [height, width, 3] uint8 RGB.
    """
    img = img.convert("RGB")
    w, h = img.size
    target = width / height
    if w / h > target:
        cw = round(h * target)
        img = img.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    elif w / h < target:
        ch = round(w / target)
        img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class Yuv420:
    """A picture as float32 planes: ``y`` [H, W], ``u`` (Cb) and ``v`` (Cr) [H/2, W/2]; H and W even."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def from_rgb(cls, rgb: np.ndarray) -> Yuv420:
        """From [H, W, 3] uint8 RGB (H, W even): BT.601 limited range, each chroma sample the mean of 2x2."""
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:
            raise VideogenError(f"yuv420p needs an even frame size, got {w}x{h}")
        r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
        m, off = _RGB_TO_YCBCR, _YCBCR_OFFSET
        y = m[0, 0] * r + m[0, 1] * g + m[0, 2] * b + off[0]
        # the conversion is linear, so averaging RGB 2x2 first gives the same chroma at a quarter of the work
        r, g, b = ((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) * 0.25 for p in (r, g, b))
        u = m[1, 0] * r + m[1, 1] * g + m[1, 2] * b + off[1]
        v = m[2, 0] * r + m[2, 1] * g + m[2, 2] * b + off[2]
        return cls(y, u, v)

    @property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.y, self.u, self.v

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the picture (the luma plane)."""
        return self.y.shape


def keyframe_planes(img: Image.Image, width: int, height: int) -> Yuv420:
    """A keyframe ready for :func:`step_frames`: fitted to ``width`` x ``height`` and converted to yuv420."""
    return Yuv420.from_rgb(fit_image(img, width, height))


def crop_window(t: float, zoom: float, pan: float, direction: int) -> tuple[float, float, float]:
    """The part of the keyframe on screen at time ``t`` (0..1 over the step) as ``(x0, y0, s)``.

    In fractions of the keyframe's width and height: columns ``x0 .. x0 + s``, rows ``y0 .. y0 + s``, where
    ``s = 1 - zoom * t`` (a slow zoom in) and the centre drifts by ``pan * t`` in the step's direction; kept
    inside the picture. At ``t = 0`` it is the whole keyframe, ``(0, 0, 1)``.
    """
    s = 1.0 - zoom * t
    dx, dy = _DIRECTIONS[direction % len(_DIRECTIONS)]
    x0 = min(max((1.0 - s) / 2 + pan * t * dx, 0.0), 1.0 - s)
    y0 = min(max((1.0 - s) / 2 + pan * t * dy, 0.0), 1.0 - s)
    return x0, y0, s


def pixel_box(window: tuple[float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """``window`` of :func:`crop_window` as a float pixel box ``(left, top, right, bottom)`` (PIL's ``box``)."""
    x0, y0, s = window
    return x0 * width, y0 * height, (x0 + s) * width, (y0 + s) * height


def _axis_taps(n: int, start: float, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis of ``n`` pixels, output and source alike: output pixel ``j`` (centre at
    ``(j + 0.5) / n``) reads the source at ``start + scale (j + 0.5) / n``; returns (i0, i1, weight of i1)."""
    p = start * n + scale * (np.arange(n) + 0.5) - 0.5  # source pixel-centre coordinate; exactly j when t = 0
    p = np.clip(p, 0.0, n - 1.0)
    i0 = np.floor(p).astype(np.intp)
    return i0, np.minimum(i0 + 1, n - 1), (p - i0).astype(np.float32)


class _PlaneSampler:
    """Resamples one float32 plane through a window, with its scratch buffers allocated once."""

    def __init__(self, shape: tuple[int, int]):
        self.rows0 = np.empty(shape, np.float32)
        self.rows1 = np.empty(shape, np.float32)
        self.cols0 = np.empty(shape, np.float32)
        self.cols1 = np.empty(shape, np.float32)

    def __call__(self, plane: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
        """``plane`` [h, w] seen through ``window``, as a float32 [h, w] (a view of a scratch buffer)."""
        h, w = plane.shape
        x0, y0, s = window
        if window == (0.0, 0.0, 1.0):  # the whole picture: no resampling
            np.copyto(self.cols1, plane)
            return self.cols1
        iy0, iy1, wy = _axis_taps(h, y0, s)
        ix0, ix1, wx = _axis_taps(w, x0, s)
        r0, r1, c0, c1 = self.rows0, self.rows1, self.cols0, self.cols1
        # vertical pass: rows i0 and i1 of each output row, lerped (in place: no allocation per frame)
        np.take(plane, iy0, axis=0, out=r0)
        np.take(plane, iy1, axis=0, out=r1)
        np.subtract(r1, r0, out=r1)
        np.multiply(r1, wy[:, None], out=r1)
        np.add(r1, r0, out=r1)
        # horizontal pass on the result
        np.take(r1, ix0, axis=1, out=c0)
        np.take(r1, ix1, axis=1, out=c1)
        np.subtract(c1, c0, out=c1)
        np.multiply(c1, wx, out=c1)
        np.add(c1, c0, out=c1)
        return c1


def crossfade_weights(n: int, xf: int) -> np.ndarray:
    """Blend weight of the next keyframe for each of ``n`` frames: 0, then ``1/(xf+1) .. xf/(xf+1)``."""
    a = np.zeros(n, dtype=np.float32)
    xf = max(0, min(xf, n - 1))
    if xf:
        a[n - xf :] = np.arange(1, xf + 1, dtype=np.float32) / (xf + 1)
    return a


def step_frames(
    key: Yuv420, nxt: Yuv420 | None, n: int, cfg: AnimaticConfig, fps: float, direction: int = 0
) -> Iterator[np.ndarray]:
    """The ``n`` frames of one step's animatic clip, each a packed yuv420p array [3H/2, W] uint8.

    (The layout ``av.VideoFrame.from_ndarray(frame, format="yuv420p")`` takes: the Y plane, then U, then V,
    each row-major.) ``key``/``nxt``: this step's and the next step's keyframes from :func:`keyframe_planes`;
    without ``nxt`` (the last step) there is no crossfade.
    """
    h, w = key.size
    xf = round(cfg.crossfade_seconds * fps) if nxt is not None else 0
    alpha = crossfade_weights(n, xf)
    samplers = [_PlaneSampler(p.shape) for p in key.planes]
    for k in range(n):
        window = crop_window(k / n, cfg.zoom, cfg.pan, direction)
        out = np.empty(h * w * 3 // 2, np.uint8)  # a new buffer per frame: the consumer may still hold the last
        views = (out[: h * w].reshape(h, w), out[h * w : h * w * 5 // 4].reshape(h // 2, w // 2),
                 out[h * w * 5 // 4 :].reshape(h // 2, w // 2))  # fmt: skip
        a = float(alpha[k])
        for i, (plane, sample, view) in enumerate(zip(key.planes, samplers, views)):
            f = sample(plane, window)
            if a > 0:  # the crossfade: lerp towards the next clip's first frame, the whole next keyframe
                target = nxt.planes[i]
                f -= target
                f *= 1.0 - a
                f += target
            f += 0.5  # round (values stay in 0..255: every step is a convex combination of keyframe samples)
            np.copyto(view, f, casting="unsafe")
        yield out.reshape(h * 3 // 2, w)


def yuv420_to_rgb(frame: np.ndarray) -> np.ndarray:
    """A packed yuv420p frame [3H/2, W] from :func:`step_frames` as [H, W, 3] uint8 RGB (via swscale)."""
    return av.VideoFrame.from_ndarray(frame, format="yuv420p").to_ndarray(format="rgb24")


def prefetched(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """Run ``frames`` in a background thread, ``depth`` frames ahead: numpy's gathers and lerps and x264
    all release the GIL, so synthesis overlaps encoding. Exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for f in frames:
                if stop.is_set():
                    return
                q.put(f)
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(timeout=0.05)


def write_yuv420_mp4(
    frames: Iterable[np.ndarray],
    dst: str | Path,
    width: int,
    height: int,
    fps: float,
    crf: int = 20,
    preset: str = "superfast",
    threads: int = 0,
) -> int:
    """Encode packed yuv420p frames ([3H/2, W] uint8, as :func:`step_frames` yields) to an H.264 mp4 at
    ``dst``, atomically (nothing is left at ``dst`` on error). ``threads``: x264 threads (0: x264 decides).
    Returns the number of frames written."""
    dst = Path(dst)
    rate = Fraction(float(fps)).limit_denominator(1001)
    tb = Fraction(1) / rate
    n = 0
    try:
        with atomic_path(dst, suffix=".mp4") as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(int(crf)), "preset": str(preset)}
            stream.codec_context.thread_count = int(threads)
            for arr in frames:
                if arr.shape != (height * 3 // 2, width) or arr.dtype != np.uint8:
                    raise VideogenError(f"frame {n} is {arr.dtype} {arr.shape}, expected uint8 "
                                        f"{(height * 3 // 2, width)} (packed yuv420p), writing {dst}")  # fmt: skip
                frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
                frame.pts, frame.time_base = n, tb
                container.mux(stream.encode(frame))
                n += 1
            if n == 0:
                raise VideogenError(f"no frames to write to {dst}")
            container.mux(stream.encode(None))
    except (av.FFmpegError, OSError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VideogenError(f"cannot write video {dst}: {why}") from None
    log.debug("wrote %d frames %dx%d at %s fps to %s", n, width, height, float(rate), dst)
    return n
