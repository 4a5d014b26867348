"""Tests for auteur.video: probe, seeking frames_at, decode_range, cut_clip, write_mp4 and the errors.

Synthetic videos (written here) need nothing; the real-clip tests use ../shared/data/videoauteur_demos and
skip with a reason when it is absent.
"""

from __future__ import annotations

import hashlib
import logging
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from auteur import video as V
from auteur.errors import VideoError
from auteur.io import TMP_MARK

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEMOS = SHARED / "videoauteur_demos"
# Two keyframes (0 s and ~4.7 s), B-frames: seeking really matters near the end.
DEMO_640 = DEMOS / "Interleaved" / "Corn_Dog" / "1.mp4"
# 448x448 with an mp4 edit list (first decode time negative).
DEMO_448 = DEMOS / "Interleaved" / "Corn_Dog" / "10.mp4"


def demo(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real demo clip {path} missing (../shared/data not beside this checkout): real-data test skipped")
    return path


# ------------------------------------------------------------------------------------------ synthetic data


def colour(i: int) -> np.ndarray:
    """A distinct colour per frame index (0..95), channels at least 40 apart between any two indices."""
    return np.array([30 + 60 * (i % 4), 30 + 60 * ((i // 4) % 4), 20 + 40 * (i // 16)], dtype=np.uint8)


def colour_frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.broadcast_to(colour(i), (h, w, 3)).copy()


def which_frame(img: np.ndarray, n: int) -> int:
    """The index whose colour is nearest to the mean colour of ``img`` (tolerant of codec error)."""
    mean = img.reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(mean - colour(i)).sum() for i in range(n)]))


def bar_frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A gradient background with a white bar that moves 2 px per frame: every frame differs."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, (i * 7) % 256)], -1).astype(np.uint8)
    img[:, (2 * i) % w : (2 * i) % w + 4] = 255
    return img


@pytest.fixture(scope="module")
def colours_mp4(tmp_path_factory) -> Path:
    """48 frames 64x48 at 24 fps, frame i a solid colour(i), written by write_mp4."""
    path = tmp_path_factory.mktemp("syn") / "colours.mp4"
    V.write_mp4((colour_frame(i) for i in range(48)), path, fps=24)
    return path


@pytest.fixture(scope="module")
def gop_mp4(tmp_path_factory) -> Path:
    """96 frames 64x48 at 24 fps, a keyframe every 8 frames and 2 B-frames: many seek targets, faststart."""
    path = tmp_path_factory.mktemp("syn") / "gop.mp4"
    write_raw(path, [bar_frame(i) for i in range(96)], faststart=True)
    return path


def write_raw(
    path: Path, frames: list[np.ndarray], faststart: bool = False, keyint: int = 8, fmt: str = "mp4", open_gop=False
) -> None:
    """Write with PyAV directly: a short GOP with B-frames (h264, open GOP if asked), or MPEG-4 Part 2 (AVI)."""
    options = {"movflags": "faststart"} if faststart else {}
    codec = "mpeg4" if fmt == "avi" else "libx264"
    with av.open(str(path), "w", format=fmt, options=options) as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if codec == "libx264":
            params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=2:open-gop={int(open_gop)}"
            s.options = {"crf": "18", "x264-params": params}
        else:
            s.options = {"g": str(keyint), "bf": "2"}
        for i, a in enumerate(frames):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 24)
            c.mux(s.encode(f))
        c.mux(s.encode(None))


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def sequential(path: Path) -> list[tuple[float, str]]:
    """(timestamp, pixel digest) of every frame, decoding from the start without seeking."""
    return [(t, digest(a)) for t, a in V.decode_all(path)]


def pick(ref: list[tuple[float, str]], t: float) -> str:
    """The reference rule: the last frame with timestamp <= t (the first frame if none)."""
    before = [h for ts, h in ref if ts <= t + 1e-6]
    return before[-1] if before else ref[0][1]


def no_temporaries(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if TMP_MARK in p.name]


# -------------------------------------------------------------------------------------------------- probe


def test_probe_demo_clip():
    info = V.probe(demo(DEMO_640))
    assert (info.width, info.height) == (640, 640)
    assert info.fps == pytest.approx(24.0)
    assert info.duration == pytest.approx(5.04, abs=0.05)
    assert info.num_frames is not None and abs(info.num_frames - 121) <= 1
    assert info.codec == "h264"
    assert info.path == str(DEMO_640)


def test_probe_synthetic(colours_mp4):
    info = V.probe(colours_mp4)
    assert (info.width, info.height, info.codec) == (64, 48, "h264")
    assert info.fps == pytest.approx(24.0)
    assert info.duration == pytest.approx(2.0, abs=1 / 24)
    assert info.num_frames == 48


# ---------------------------------------------------------------------------------------------- frames_at


@pytest.mark.parametrize("clip", [DEMO_640, DEMO_448], ids=["640-two-keyframes", "448-edit-list"])
def test_frames_at_equals_sequential_decode_demo(clip):
    path = demo(clip)
    ref = sequential(path)
    last_t = ref[-1][0]
    rng = np.random.default_rng(0)
    times = [0.0, last_t, 4.9, 1.5, 4.75, last_t, 0.0, 2.0 + 1 / 48, 5.04]
    times += [float(t) for t in rng.uniform(0, last_t, 8)]
    times += [times[-1], ref[60][0]]  # a duplicate of a random time, an exact frame time
    rng.shuffle(times)
    got = V.frames_at(path, times)
    info = V.probe(path)
    assert got.shape == (len(times), info.height, info.width, 3) and got.dtype == np.uint8
    for t, img in zip(times, got):
        assert digest(img) == pick(ref, t), f"frame at {t} s differs from sequential decode"


def test_frames_at_equals_sequential_decode_many_keyframes(gop_mp4):
    ref = sequential(gop_mp4)
    assert len(ref) == 96
    rng = np.random.default_rng(1)
    times = [float(t) for t in rng.uniform(0, 4.0, 30)] + [ts for ts, _ in ref[::7]] + [3.99, 0.0, 4.0, 4.0 + 1 / 24]
    times += times[:5]
    rng.shuffle(times)
    got = V.frames_at(gop_mp4, times)
    for t, img in zip(times, got):
        assert digest(img) == pick(ref, t), f"frame at {t} s differs from sequential decode"


@pytest.mark.parametrize("fmt", ["matroska", "mpegts", "avi", "mp4-open-gop"])
def test_frames_at_equals_sequential_decode_other_containers(fmt, tmp_path):
    """MPEG-TS seeks land after the target (the step-back fallback runs); AVI refuses seeks before 0 and its
    first frame is at 1/24 s (a time before it gives the first frame); open GOPs have leading B-frames."""
    container = fmt.split("-")[0]
    path = tmp_path / f"gop.{container}"
    write_raw(path, [bar_frame(i) for i in range(48)], fmt=container, open_gop=fmt.endswith("open-gop"))
    ref = sequential(path)
    assert len(ref) == 48
    times = [ts + d for ts, _ in ref[::3] for d in (0.0, 0.02)] + [0.0]
    for t in times[::-1]:  # one call per time: every one seeks from scratch
        assert digest(V.frames_at(path, [t])[0]) == pick(ref, t), f"frame at {t} s differs in {fmt}"
    got = V.frames_at(path, times)
    assert [digest(a) for a in got] == [pick(ref, t) for t in times]


def test_frames_at_seeks_instead_of_decoding_everything(gop_mp4, caplog):
    caplog.set_level(logging.DEBUG, logger="auteur.video")

    def stats(times):
        caplog.clear()
        V.frames_at(gop_mp4, times)
        (msg,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frames_at")]
        seeks, decoded = re.search(r"(\d+) seeks, (\d+) frames decoded", msg).groups()
        return int(seeks), int(decoded)

    seeks, decoded = stats([3.9])  # one late frame: decode from the keyframe at 3.67 s only
    assert seeks == 1 and decoded <= 16, (seeks, decoded)
    seeks, decoded = stats([3.9, 0.1])  # far apart: two seeks, still far fewer than 96 frames
    assert seeks == 2 and decoded <= 32, (seeks, decoded)
    seeks, decoded = stats([1.0, 1.1, 1.2, 1.3])  # close together: one seek, decode forward
    assert seeks == 1, (seeks, decoded)


def test_frames_at_long_gop_decodes_forward_instead_of_seeking_back(caplog):
    """The demo clip has keyframes at 0 s and ~4.7 s only: 0.5 s then 3.5 s decodes on (a seek would go back
    to 0 s), 0.5 s then 4.9 s seeks to the second keyframe."""
    path = demo(DEMO_640)
    caplog.set_level(logging.DEBUG, logger="auteur.video")
    for times, want in [([0.5, 3.5], 1), ([0.5, 4.9], 2)]:
        caplog.clear()
        V.frames_at(path, times)
        (msg,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frames_at")]
        assert f"{want} seeks" in msg, (times, msg)


def test_frames_at_synthetic_colours(colours_mp4):
    times = [1.0, 0.0, 0.5 + 1 / 48, 1.99, 1.0, 2.0]
    got = V.frames_at(colours_mp4, times)
    assert got.shape == (6, 48, 64, 3)
    assert [which_frame(img, 48) for img in got] == [24, 0, 12, 47, 24, 47]
    for img, i in zip(got, [24, 0, 12, 47, 24, 47]):
        assert np.abs(img.astype(int) - colour(i)).mean() < 4


def test_frames_at_empty_times(colours_mp4):
    assert V.frames_at(colours_mp4, []).shape == (0, 48, 64, 3)


# ------------------------------------------------------------------------------------------- decode_range


def test_decode_range_demo_exact_frames():
    path = demo(DEMO_640)
    ref = [(t, digest(a)) for t, a in V.decode_all(path)]
    for start, end in [(1.0, 2.5), (1.01, 1.6), (4.6, 5.04), (0.0, 0.2)]:
        got = [(t, digest(a)) for t, a in V.decode_range(path, start, end)]
        want = [(t, h) for t, h in ref if start <= t < end]
        assert got == want, (start, end)
        assert all(a < b for (a, _), (b, _) in zip(got, got[1:]))


def test_decode_range_synthetic(gop_mp4, colours_mp4):
    ref = sequential(gop_mp4)
    got = [(t, digest(a)) for t, a in V.decode_range(gop_mp4, 1.5, 2.75)]
    assert got == [(t, h) for t, h in ref if 1.5 <= t < 2.75]
    assert len(got) == 30
    frames = list(V.decode_range(colours_mp4, 0.5, 1.0))
    assert [which_frame(a, 48) for _, a in frames] == list(range(12, 24))
    assert frames[0][1].shape == (48, 64, 3) and frames[0][1].dtype == np.uint8


# ------------------------------------------------------------------------------------------------ cut_clip


def test_cut_clip_demo(tmp_path):
    src = demo(DEMO_640)
    dst = tmp_path / "cut.mp4"
    assert V.cut_clip(src, 1.0, 3.0, dst) == dst
    info = V.probe(dst)
    assert (info.width, info.height, info.codec) == (640, 640, "h264")
    assert info.duration == pytest.approx(2.0, abs=2 / 24)
    assert info.num_frames == 48
    first = next(iter(V.decode_range(dst, 0.0, 0.01)))[1].astype(int)
    want = V.frames_at(src, [1.0])[0].astype(int)
    other = V.frames_at(src, [0.0])[0].astype(int)
    assert np.abs(first - want).mean() < 3
    assert np.abs(first - want).mean() < np.abs(first - other).mean()
    with av.open(str(dst)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert no_temporaries(tmp_path)


def test_cut_clip_synthetic_frame_accurate(colours_mp4, tmp_path):
    dst = V.cut_clip(colours_mp4, 0.5, 1.25, tmp_path / "a.mp4")
    frames = [a for _, a in V.decode_all(dst)]
    assert [which_frame(a, 48) for a in frames] == list(range(12, 30))
    # between frames: the first output frame is the one showing at `start`
    dst = V.cut_clip(colours_mp4, 0.52, 0.9, tmp_path / "b.mp4")
    assert which_frame(next(iter(V.decode_all(dst)))[1], 48) == 12
    # another rate: output frame k is the source frame at start + k / fps
    dst = V.cut_clip(colours_mp4, 0.5, 1.5, tmp_path / "c.mp4", fps=12)
    assert V.probe(dst).fps == pytest.approx(12.0)
    assert [which_frame(a, 48) for _, a in V.decode_all(dst)] == list(range(12, 36, 2))
    assert no_temporaries(tmp_path)


def test_cut_clip_failures_leave_nothing(colours_mp4, gop_mp4, tmp_path):
    dst = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match="outside the video"):
        V.cut_clip(colours_mp4, 1.0, 12.0, dst)
    with pytest.raises(VideoError, match="start"):
        V.cut_clip(colours_mp4, 1.5, 1.5, dst)
    # a source that fails mid-way (truncated, header intact): the half-written output is removed
    bad = tmp_path / "src" / "trunc.mp4"
    bad.parent.mkdir()
    data = gop_mp4.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoError, match="truncated"):
        V.cut_clip(bad, 0.0, 3.9, dst)
    assert not dst.exists()
    assert list(tmp_path.iterdir()) == [bad.parent]


# ----------------------------------------------------------------------------------------------- write_mp4


def test_write_mp4_round_trip(tmp_path):
    frames = [bar_frame(i) for i in range(30)]
    dst = V.write_mp4(frames, tmp_path / "rt.mp4", fps=12, crf=10)
    info = V.probe(dst)
    assert (info.width, info.height, info.num_frames) == (64, 48, 30)
    assert info.fps == pytest.approx(12.0) and info.duration == pytest.approx(2.5, abs=1 / 12)
    back = list(V.decode_all(dst))
    assert [t for t, _ in back] == pytest.approx([i / 12 for i in range(30)])
    for (_, got), want in zip(back, frames):
        err = np.abs(got.astype(int) - want.astype(int)).mean()
        assert err < 6, err
    # frames are told apart: each is closer to its own source than to its neighbour
    assert np.abs(back[5][1].astype(int) - frames[5]).mean() < np.abs(back[5][1].astype(int) - frames[6]).mean()
    assert no_temporaries(tmp_path)


def test_write_mp4_pads_odd_dims(tmp_path):
    frames = [bar_frame(i, h=47, w=63) for i in range(6)]
    dst = V.write_mp4(iter(frames), tmp_path / "odd.mp4", fps=24)
    info = V.probe(dst)
    assert (info.width, info.height) == (64, 48)
    _, first = next(iter(V.decode_all(dst)))
    assert np.abs(first[:47, :63].astype(int) - frames[0]).mean() < 6
    # the padding repeats the edge
    assert np.abs(first[47, :63].astype(int) - frames[0][46]).mean() < 12


def test_write_mp4_bad_input_leaves_nothing(tmp_path):
    dst = tmp_path / "bad.mp4"
    with pytest.raises(VideoError, match="no frames"):
        V.write_mp4([], dst, fps=24)
    with pytest.raises(VideoError, match="frame 2 has shape"):
        V.write_mp4([colour_frame(0), colour_frame(1), colour_frame(2, h=32)], dst, fps=24)
    with pytest.raises(VideoError, match="dtype"):
        V.write_mp4([colour_frame(0).astype(np.float32)], dst, fps=24)
    with pytest.raises(VideoError, match="frame rate"):
        V.write_mp4([colour_frame(0)], dst, fps=0)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------------------- errors


def one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    for call in (
        lambda: V.probe(path),
        lambda: V.frames_at(path, [0.0]),
        lambda: V.decode_range(path, 0.0, 1.0),
        lambda: V.decode_all(path),
        lambda: V.cut_clip(path, 0.0, 1.0, tmp_path / "o.mp4"),
    ):
        with pytest.raises(VideoError, match="not found") as e:
            call()
        one_line_naming(e, path)
    assert list(tmp_path.iterdir()) == []


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    for call in (lambda: V.probe(path), lambda: V.frames_at(path, [0.0]), lambda: list(V.decode_all(path))):
        with pytest.raises(VideoError) as e:
            call()
        one_line_naming(e, path)


def test_truncated_demo_clip(tmp_path):
    data = demo(DEMO_640).read_bytes()
    path = tmp_path / "trunc.mp4"
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoError) as e:
        V.probe(path)
        V.frames_at(path, [0.0, 4.9])
    one_line_naming(e, path)


def test_truncated_synthetic(colours_mp4, gop_mp4, tmp_path):
    # moov at the end (write_mp4): the header is gone, opening fails
    path = tmp_path / "trunc_end.mp4"
    data = colours_mp4.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(VideoError) as e:
        V.probe(path)
    one_line_naming(e, path)
    # moov first (faststart): the header survives, decoding past the data must fail, not return stale frames
    path = tmp_path / "trunc_start.mp4"
    data = gop_mp4.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.3)])
    assert V.probe(path).duration == pytest.approx(4.0)
    for call in (
        lambda: V.frames_at(path, [3.5]),
        lambda: list(V.decode_range(path, 0.0, 3.9)),
        lambda: list(V.decode_all(path)),
    ):
        with pytest.raises(VideoError, match="truncated") as e:
            call()
        one_line_naming(e, path)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(4):
            frame.pts = i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="no video stream") as e:
        V.probe(path)
    one_line_naming(e, path)


def test_times_outside_video(colours_mp4):
    with pytest.raises(VideoError, match=re.escape("time 12.0 s is outside the video (duration 2.00 s)")) as e:
        V.frames_at(colours_mp4, [0.5, 12.0])
    one_line_naming(e, colours_mp4)
    with pytest.raises(VideoError, match="outside the video"):
        V.frames_at(colours_mp4, [-0.5])
    with pytest.raises(VideoError, match="outside the video"):
        V.frames_at(colours_mp4, [float("nan")])
    with pytest.raises(VideoError, match="outside the video"):
        V.decode_range(colours_mp4, 1.0, 3.0)
    # within one frame of the end is allowed and gives the last frame
    assert which_frame(V.frames_at(colours_mp4, [2.0 + 0.5 / 24])[0], 48) == 47


def test_outside_time_demo():
    path = demo(DEMO_640)
    with pytest.raises(VideoError, match=re.escape("time 12.0 s is outside the video (duration 5.04 s)")):
        V.frames_at(path, [12.0])


def test_empty_range(colours_mp4):
    for start, end in [(1.0, 1.0), (1.5, 0.5)]:
        with pytest.raises(VideoError, match="start") as e:
            V.decode_range(colours_mp4, start, end)
        one_line_naming(e, colours_mp4)
