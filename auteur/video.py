"""Video I/O with PyAV: probe, seek-and-decode frames, decode ranges, cut clips, write mp4.

Times are seconds from the start of the video stream: a frame's timestamp is
``(frame.pts - stream.start_time) * stream.time_base``, so the first frame of a normal file is at 0.0.
The frame "at" time ``t`` is the frame whose presentation interval contains ``t``: the last frame with
timestamp ``<= t`` (the first frame when ``t`` precedes it, the last frame when ``t`` is past it).
Frames are ``uint8`` RGB arrays of shape ``[H, W, 3]``.

Every problem a user can cause (missing, unreadable, corrupt or truncated file, no video stream, a time
outside the video, an empty range) raises :class:`~auteur.errors.VideoError` with one line naming the
file. Every file written goes through :func:`~auteur.io.atomic_path`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from auteur.errors import VideoError
from auteur.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe", "frames_at", "decode_range", "decode_all", "cut_clip", "write_mp4"]

#: Timestamps within this many seconds of a requested time count as equal (float rounding of ``k / fps``).
EPS = 1e-6
#: Keep decoding forward instead of seeking when the next time is at most this far ahead.
FORWARD_WINDOW_S = 2.0
#: Stream ending this long before a time that is inside the stated duration means a truncated file.
_TRUNCATION_GAP_S = 1.0


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video's first video stream.

    ``duration`` and ``fps`` are in seconds and frames per second; ``num_frames`` is the container's
    frame count, or ``round(duration * fps)`` when the container does not say, or None when unknown.
    """

    path: str
    duration: float
    fps: float
    width: int
    height: int
    num_frames: int | None
    codec: str


# ----------------------------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def _video_errors(path: str | os.PathLike, action: str) -> Iterator[None]:
    """Turn PyAV/FFmpeg and OS errors raised inside the block into a one-line VideoError naming ``path``."""
    try:
        yield
    except VideoError:
        raise
    except (av.FFmpegError, OSError, EOFError) as e:
        why = "" if action == "write" else ": corrupt, truncated or not a video"
        raise VideoError(f"cannot {action} video {path}{why} ({_one_line(e)})") from e


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"video file not found: {p}")
    if not p.is_file():
        raise VideoError(f"video path is not a file: {p}")
    return p


@contextlib.contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``path`` and yield ``(container, first video stream)``; always closes the container."""
    p = _check_file(path)
    with _video_errors(p, "read"):
        with av.open(str(p), mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {p}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield container, stream


def _stream_start(stream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def _stream_fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _count_duration(container, stream) -> float:
    """Last-resort duration: demux every packet (no decoding) and take the end of the last one."""
    start, tb = _stream_start(stream), stream.time_base
    end = None
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        stop = packet.pts + max(packet.duration or 0, 0)
        end = stop if end is None else max(end, stop)
    if end is None:
        return 0.0
    return float((end - start) * tb)


def _info(path: Path, container, stream) -> VideoInfo:
    fps = _stream_fps(stream)
    duration = None
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / av.time_base
    else:
        duration = _count_duration(container, stream)
    if fps is None:
        n = stream.frames
        if n and duration > 0:
            fps = n / duration
        else:
            raise VideoError(f"video {path} has no frame rate")
    if stream.frames and stream.frames > 0:
        num_frames = int(stream.frames)
    elif duration > 0:
        num_frames = round(duration * fps)
    else:
        num_frames = None
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise VideoError(f"video {path} has no frame size: corrupt or not a video")
    return VideoInfo(
        path=str(path),
        duration=duration,
        fps=fps,
        width=int(width),
        height=int(height),
        num_frames=num_frames,
        codec=stream.codec_context.name,
    )


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read the header of ``path`` (no decoding) and describe its first video stream."""
    p = _check_file(path)
    with _open_video(p) as (container, stream), _video_errors(p, "probe"):
        return _info(p, container, stream)


def _check_time(t: float, info: VideoInfo, what: str = "time") -> float:
    t = float(t)
    tol = 1.0 / info.fps if info.fps > 0 else 0.0
    if not math.isfinite(t) or t < -EPS or t > info.duration + tol + EPS:
        raise VideoError(f"{what} {t} s is outside the video (duration {info.duration:.2f} s): {info.path}")
    return max(t, 0.0)


def _to_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _check_not_truncated(path: Path, info: VideoInfo, t: float, last: float | None) -> None:
    """The stream ended with its last frame at ``last``: raise if that is well before ``t`` (capped at the
    stated duration), which means the file was cut short or its tail is unreadable."""
    gap = max(_TRUNCATION_GAP_S, 4.0 / info.fps)
    if last is None or min(t, info.duration) - last > gap:
        where = "no frames" if last is None else f"frames end at {last:.2f} s"
        raise VideoError(f"video {path} is truncated or corrupt: {where} but its duration is {info.duration:.2f} s")


# ------------------------------------------------------------------------------------------------ cursor


class _Cursor:
    """A decode position in an open video: seeks to keyframes and decodes forward, one frame of look-ahead.

    ``prev`` is the last decoded frame with timestamp ``<= `` the last requested time, ``nxt`` the frame after
    it (None at the end of the stream). Frames are ``(timestamp_s, av.VideoFrame)``.
    """

    def __init__(self, path: Path, container, stream, info: VideoInfo):
        self.path, self.container, self.stream, self.info = path, container, stream, info
        self.tb = stream.time_base
        self.start = _stream_start(stream)
        self.gen: Iterator[tuple[float, object]] | None = None
        self.prev: tuple[float, object] | None = None
        self.nxt: tuple[float, object] | None = None
        self.anchor: tuple[int, int] | None = None  # (pts, dts) of the keyframe decoding last started from
        self.seeks = 0
        self.decoded = 0

    def _keyframe_before(self, t: float) -> float | None:
        """Time of the last keyframe at or before ``t`` from the demuxer's index, None when there is no index.

        mp4 indexes by decode time, a frame or two early: good enough to decide whether seeking pays off.
        """
        try:
            entries = self.stream.index_entries
            i = entries.search_timestamp(self._pts_of(t), backward=True, any_frame=False)
            return self.time_of(entries[i].timestamp) if i >= 0 else None
        except (AttributeError, IndexError, av.FFmpegError):  # older PyAV or a format without an index
            return None

    def time_of(self, pts: int) -> float:
        return float((pts - self.start) * self.tb)

    def _pts_of(self, t: float) -> int:
        return self.start + math.floor(Fraction(t) / self.tb)

    def _decode_from(self, offset: int | None) -> Iterator[tuple[float, object]]:
        """Seek backward to the keyframe at or before ``offset`` (stream ticks; None: stay) and decode on.

        Packets before the first keyframe after the seek are skipped, and so are frames that precede that
        keyframe (open-GOP leading pictures that need the previous GOP), so every frame yielded has the
        same pixels as when decoding the whole stream from its start.
        """
        if offset is not None:
            self._seek(offset)
        self.anchor = None
        for packet in self.container.demux(self.stream):
            if self.anchor is None:
                if packet.pts is None or not packet.is_keyframe:
                    continue
                dts = packet.dts if packet.dts is not None else packet.pts
                self.anchor = (packet.pts, dts)
            for frame in packet.decode():
                if frame.pts is None:
                    raise VideoError(f"video {self.path} has frames without timestamps")
                if frame.pts < self.anchor[0]:
                    continue
                self.decoded += 1
                yield self.time_of(frame.pts), frame

    def _seek(self, offset: int) -> None:
        """Backward keyframe seek; an offset before the start of the stream (refused by some demuxers, e.g.
        AVI) is retried at the earliest timestamp the stream has."""
        self.seeks += 1
        try:
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError:
            earliest = self.start
            with contextlib.suppress(IndexError, AttributeError, av.FFmpegError):
                earliest = min(earliest, self.stream.index_entries[0].timestamp)
            if offset <= earliest:
                self.container.seek(earliest, stream=self.stream, backward=True, any_frame=False)
            else:
                raise

    def _restart(self, gen: Iterator[tuple[float, object]]) -> None:
        if self.gen is not None:
            self.gen.close()
        self.gen, self.prev = gen, None
        self.nxt = next(gen, None)

    def seek(self, t: float) -> None:
        """Restart decoding at the last keyframe whose frames reach back to ``t`` (or the first keyframe).

        A backward seek usually lands right; when the keyframe found presents after ``t`` (mp4 indexes by
        decode time, B-frames shift presentation) or nothing decodable follows it, step back further.
        """
        target = self._pts_of(t)
        offset = target
        last_anchor = None
        for attempt in range(8):
            self._restart(self._decode_from(offset))
            anchor = self.anchor
            if self.nxt is not None and (self.nxt[0] <= t + EPS or anchor == last_anchor):
                return  # right frame range, or already on the first keyframe (t precedes the first frame)
            last_anchor = anchor
            offset = target - (self._pts_of(float(4**attempt)) - self.start)
            if anchor is not None:
                offset = min(offset, min(anchor) - 1)
        # Last resort: from the very beginning of the file.
        self._restart(self._decode_from(self.start - (1 << 40)))
        if self.nxt is None:
            raise VideoError(f"no decodable frame in video {self.path}: corrupt or truncated")

    def _should_seek(self, t: float) -> bool:
        if self.gen is None:
            return True
        if self.nxt is None:  # at the end: a later time gives the last frame
            return False
        pos = self.nxt[0]
        if t - pos <= FORWARD_WINDOW_S:
            return False
        # Seek only to a keyframe ahead of here; the one at or before t may be behind us (a long GOP).
        key = self._keyframe_before(t)
        return key is None or key > pos

    def advance(self, t: float) -> object:
        """The frame at ``t`` (``t`` must not precede the previous request unless :meth:`seek` ran)."""
        if self._should_seek(t):
            self.seek(t)
        while self.nxt is not None and self.nxt[0] <= t + EPS:
            self.prev = self.nxt
            self.nxt = next(self.gen, None)
        if self.nxt is None:
            self._check_not_truncated(t)
        if self.prev is None:  # t precedes the first frame
            return self.nxt[1]
        return self.prev[1]

    def _check_not_truncated(self, t: float) -> None:
        _check_not_truncated(self.path, self.info, t, self.prev[0] if self.prev is not None else None)

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None


# ------------------------------------------------------------------------------------------------ decode


def frames_at(path: str | os.PathLike, times: Sequence[float]) -> np.ndarray:
    """The frame at each of ``times`` (seconds; any order, duplicates allowed), by seeking.

    Returns ``[N, H, W, 3]`` uint8 RGB, row ``i`` for ``times[i]``. Times are visited in sorted order: each
    seeks to the keyframe at or before it, unless it is close ahead of the current decode position (within
    :data:`FORWARD_WINDOW_S`, or before the next keyframe), in which case decoding just goes on. Pixels are
    identical to decoding the whole stream and taking the last frame with timestamp ``<= t``.
    """
    p = _check_file(path)
    info = probe(p)
    ts = [_check_time(t, info) for t in times]
    if not ts:
        return np.empty((0, info.height, info.width, 3), dtype=np.uint8)
    order = sorted(range(len(ts)), key=ts.__getitem__)
    out: list[np.ndarray | None] = [None] * len(ts)
    with _open_video(p) as (container, stream), _video_errors(p, "decode"):
        cursor = _Cursor(p, container, stream, info)
        try:
            last_frame, last_rgb = None, None
            for i in order:
                frame = cursor.advance(ts[i])
                if frame is not last_frame:
                    last_frame, last_rgb = frame, _to_rgb(frame)
                out[i] = last_rgb
        finally:
            cursor.close()
    log.debug("frames_at %s: %d times, %d seeks, %d frames decoded", p.name, len(ts), cursor.seeks, cursor.decoded)
    return np.stack(out)


def _check_range(p: Path, start: float, end: float) -> VideoInfo:
    info = probe(p)
    start = float(start)
    end = float(end)
    if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
        raise VideoError(f"empty time range: start {start} s >= end {end} s in {p}")
    _check_time(start, info, "start")
    _check_time(end, info, "end")
    return info


def decode_range(path: str | os.PathLike, start: float, end: float) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame with ``start <= timestamp < end`` as ``(timestamp_s, [H, W, 3] uint8 RGB)``, in order.

    The file and times are checked at call time (VideoError); decoding is lazy and starts from the
    keyframe at or before ``start``.
    """
    p = _check_file(path)
    info = _check_range(p, start, end)
    return _range_frames(p, info, max(float(start), 0.0), float(end))


def _range_frames(p: Path, info: VideoInfo, start: float, end: float) -> Iterator[tuple[float, np.ndarray]]:
    for t, frame in _iter_from(p, info, start, end, include_before=False):
        yield t, _to_rgb(frame)


def _iter_from(p: Path, info: VideoInfo, start: float, end: float, include_before: bool):
    """Frames ``(t, av.VideoFrame)`` with ``start <= t < end``, in order, decoding from the keyframe at or
    before ``start``. With ``include_before`` the first frame yielded is the frame *at* ``start`` (the last
    one with ``t <= start``), which may begin before ``start``."""
    with _open_video(p) as (container, stream), _video_errors(p, "decode"):
        cursor = _Cursor(p, container, stream, info)
        try:
            cursor.advance(start)
            if cursor.prev is not None and (include_before or cursor.prev[0] >= start - EPS):
                yield cursor.prev
            item = cursor.nxt
            while item is not None and item[0] < end - EPS:
                cursor.prev = item
                yield item
                item = next(cursor.gen, None)
            if item is None:  # the stream ended: make sure it did not end early
                cursor._check_not_truncated(min(end, info.duration))
        finally:
            cursor.close()


def decode_all(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame, decoded sequentially from the start: ``(timestamp_s, [H, W, 3] uint8 RGB)``.

    The naive baseline: no seeking, every frame converted to RGB.
    """
    p = _check_file(path)
    return _all_frames(p, probe(p))


def _all_frames(p: Path, info: VideoInfo) -> Iterator[tuple[float, np.ndarray]]:
    with _open_video(p) as (container, stream), _video_errors(p, "decode"):
        start, tb = _stream_start(stream), stream.time_base
        last = None
        for frame in container.decode(stream):
            if frame.pts is None:
                raise VideoError(f"video {p} has frames without timestamps")
            last = float((frame.pts - start) * tb)
            yield last, _to_rgb(frame)
        _check_not_truncated(p, info, info.duration, last)


# ------------------------------------------------------------------------------------------------ encode


def _as_rate(fps: float, dst: Path) -> Fraction:
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise VideoError(f"frame rate must be a number, got {fps!r}, writing {dst}") from None
    if not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"frame rate must be > 0, got {fps}, writing {dst}")
    return Fraction(fps).limit_denominator(1001)


def _check_frame(arr: np.ndarray, i: int, shape: tuple[int, ...] | None, dst: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise VideoError(f"frame {i} has shape {arr.shape}, expected [H, W, 3], writing {dst}")
    if arr.dtype != np.uint8:
        raise VideoError(f"frame {i} has dtype {arr.dtype}, expected uint8, writing {dst}")
    if shape is not None and arr.shape != shape:
        raise VideoError(f"frame {i} has shape {arr.shape} but frame 0 has {shape}, writing {dst}")
    return arr


def _pad_even(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


def write_mp4(
    frames: Iterable[np.ndarray], dst: str | os.PathLike, fps: float, crf: int = 20, preset: str = "veryfast"
) -> Path:
    """Encode ``frames`` (each ``[H, W, 3]`` uint8 RGB, all the same shape) to an H.264 yuv420p mp4 at ``dst``.

    yuv420p needs even sizes: an odd height or width is padded by one row/column repeating the edge
    (so a 63x47 input gives a 64x48 video). ``crf`` is x264's quality (0-51, lower is better). The file is
    written atomically; on any error nothing is left at ``dst``. Returns ``Path(dst)``.
    """
    dst = Path(dst)
    rate = _as_rate(fps, dst)
    if not 0 <= int(crf) <= 51:
        raise VideoError(f"crf must be in 0..51, got {crf}, writing {dst}")
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise VideoError(f"no frames to write to {dst}")
    shape = _check_frame(first, 0, None, dst).shape
    height, width = shape[0] + shape[0] % 2, shape[1] + shape[1] % 2
    if (height, width) != shape[:2]:
        log.info("padding %dx%d frames to even size %dx%d for %s", shape[1], shape[0], width, height, dst)
    n = 0
    with atomic_path(dst, suffix=".mp4") as tmp, _video_errors(dst, "write"):
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(int(crf)), "preset": str(preset)}
            tb = Fraction(1) / rate
            arr = first
            while arr is not None:
                arr = _check_frame(arr, n, shape, dst)
                frame = av.VideoFrame.from_ndarray(_pad_even(arr), format="rgb24")
                frame.pts, frame.time_base = n, tb
                container.mux(stream.encode(frame))
                n += 1
                arr = next(it, None)
            container.mux(stream.encode(None))
    log.debug("wrote %d frames %dx%d at %s fps to %s", n, width, height, float(rate), dst)
    return dst


def cut_clip(
    src: str | os.PathLike,
    start: float,
    end: float,
    dst: str | os.PathLike,
    fps: float | None = None,
    crf: int = 20,
) -> Path:
    """Re-encode ``[start, end)`` of ``src`` to an H.264 yuv420p mp4 at ``dst`` (frame-accurate, atomic).

    The output has ``ceil((end - start) * fps)`` frames at ``fps`` (default: the source rate); output frame
    ``k`` is the source frame at ``start + k / fps``, so the first frame is the frame at ``start``.
    Returns ``Path(dst)``.
    """
    p = _check_file(src)
    dst = Path(dst)
    info = _check_range(p, start, end)
    start = max(float(start), 0.0)
    end = float(end)
    out_fps = float(fps) if fps is not None else info.fps
    rate = _as_rate(out_fps, dst)
    n_out = max(1, math.ceil((end - start) * rate - EPS))

    def sampled() -> Iterator[np.ndarray]:
        source = _iter_from(p, info, start, end, include_before=True)
        try:
            cur = next(source)
            nxt = next(source, None)
            for k in range(n_out):
                t = start + float(k / rate)
                while nxt is not None and nxt[0] <= t + EPS:
                    cur, nxt = nxt, next(source, None)
                yield _to_rgb(cur[1])
        finally:
            source.close()

    out = write_mp4(sampled(), dst, fps=float(rate), crf=crf)
    log.debug("cut %s [%.3f, %.3f) -> %s (%d frames)", p.name, start, end, dst, n_out)
    return out
