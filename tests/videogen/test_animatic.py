import av
import numpy as np
import pytest
from PIL import Image

from auteur.video import decode_all, probe
from tests.videogen.conftest import COLOURS, SMALL_ANIMATIC
from videogen.animatic import (
    Yuv420,
    _PlaneSampler,
    crop_window,
    crossfade_weights,
    keyframe_planes,
    pixel_box,
    step_frames,
    write_yuv420_mp4,
    yuv420_to_rgb,
)
from videogen.assemble import parse_vtt
from videogen.cli import main
from videogen.config import AnimaticConfig
from videogen.errors import VideogenError


def _photo(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth blocks, so resampling error is small
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def test_first_frame_is_the_keyframe_and_the_shot_moves():
    cfg = AnimaticConfig(width=48, height=48, zoom=0.1, pan=0.05)
    key = keyframe_planes(_photo(0), 48, 48)
    packed = list(step_frames(key, None, 24, cfg, fps=24))
    assert len(packed) == 24 and packed[0].shape == (72, 48) and packed[0].dtype == np.uint8  # yuv420p
    frames = [yuv420_to_rgb(f).astype(np.float32) for f in packed]  # decoded by swscale, as a player would
    ref = np.asarray(_photo(0), dtype=np.float32)
    # the first frame is the keyframe up to yuv420p's half-resolution chroma: as close as swscale's own
    # RGB -> yuv420p -> RGB round trip of the keyframe gets (this photo has strong colour detail)
    sws = av.VideoFrame.from_ndarray(np.asarray(_photo(0)), format="rgb24").reformat(format="yuv420p")
    sws = sws.to_ndarray(format="rgb24").astype(np.float32)
    assert np.abs(frames[0] - ref).mean() < np.abs(sws - ref).mean() + 0.5
    assert np.abs(frames[0] - sws).mean() < 1.5
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.abs((frames[0] - ref) @ luma).mean() < 2.0  # brightness detail is kept at full resolution
    # a slow move: the last frame differs from the first, neighbouring frames only a little
    assert np.abs(frames[-1] - frames[0]).mean() > 4 * np.abs(frames[1] - frames[0]).mean()


def test_crossfade_midpoint_is_the_blend_of_the_two_keyframes():
    cfg = AnimaticConfig(width=32, height=32, crossfade_seconds=0.5)
    a, b = (keyframe_planes(Image.new("RGB", (40, 30), c), 32, 32) for c in (COLOURS[0], COLOURS[2]))
    n = 24
    frames = np.stack([yuv420_to_rgb(f) for f in step_frames(a, b, n, cfg, fps=24)]).astype(np.float32)
    alpha = crossfade_weights(n, 12)
    assert alpha[: n - 12].max() == 0 and np.all(np.diff(alpha[n - 12 :]) > 0) and alpha[-1] < 1
    k = int(np.argmin(np.abs(alpha - 0.5)))
    expect = (1 - alpha[k]) * np.array(COLOURS[0]) + alpha[k] * np.array(COLOURS[2])
    # within 8-bit limited-range yuv420p quantisation (up to ~2 levels in green); one frame off is ~13 levels
    assert np.abs(frames[k].reshape(-1, 3).mean(0) - expect).max() < 2.5
    # before the fade: pure A (so the BT.601 planes decode back to the keyframe's colour)
    assert np.abs(frames[0].reshape(-1, 3).mean(0) - COLOURS[0]).max() < 2.5


def test_crop_windows_stay_inside_the_picture_and_start_whole():
    for d in range(4):
        assert crop_window(0.0, 0.3, 0.5, d) == (0.0, 0.0, 1.0)
        sizes = []
        for t in np.linspace(0, 1, 11):
            x0, y0, s = crop_window(float(t), zoom=0.3, pan=0.5, direction=d)
            assert 0 <= x0 and 0 <= y0 and x0 + s <= 1 + 1e-12 and y0 + s <= 1 + 1e-12
            sizes.append(s)
        assert np.all(np.diff(sizes) < 0)  # zooming in


@pytest.mark.parametrize("t", [0.37, 1.0])
def test_resampled_planes_are_pils_bilinear_resize_of_the_window(t):
    """The fast sampler gives the naive path's picture: PIL's bilinear resize of the same float box."""
    plane = np.asarray(_photo(3, 40).convert("L"), dtype=np.float32) + 0.25  # non-integer values
    window = crop_window(t, zoom=0.2, pan=0.1, direction=1)
    ours = _PlaneSampler(plane.shape)(plane, window)
    pil = Image.fromarray(plane, mode="F").resize((40, 40), Image.Resampling.BILINEAR, box=pixel_box(window, 40, 40))
    assert np.abs(ours - np.asarray(pil)).max() < 1e-3
    assert np.abs(ours - plane).mean() > 1.0  # the window really moved the picture


def test_yuv420_writer_refuses_wrong_frames_and_leaves_nothing(tmp_path):
    key = keyframe_planes(_photo(1), 32, 32)
    good = list(step_frames(key, None, 3, AnimaticConfig(width=32, height=32), fps=8))
    dst = tmp_path / "clip.mp4"
    assert write_yuv420_mp4(iter(good), dst, 32, 32, fps=8) == 3 and probe(dst).num_frames == 3
    bad = tmp_path / "bad.mp4"
    with pytest.raises(VideogenError, match="packed yuv420p"):
        write_yuv420_mp4(iter([good[0], np.zeros((32, 32, 3), np.uint8)]), bad, 32, 32, fps=8)
    with pytest.raises(VideogenError, match="even frame size"):
        Yuv420.from_rgb(np.zeros((31, 32, 3), np.uint8))
    assert not bad.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_default_preset_writes_a_labelled_animatic_with_webvtt(plan_dir, capsys):
    assert main(["generate", str(plan_dir), "--no-progress", *SMALL_ANIMATIC]) == 0
    from auteur.plan import load_plan

    plan = load_plan(plan_dir)
    assert plan.meta["video"]["animatic"] is True and "animatic" in plan.meta["video"]["label"]
    assert plan.provenance["videogen"]["animatic"] is True
    assert all(s.meta["videogen"]["animatic"] for s in plan.steps)
    info = probe(plan_dir / "video.mp4")
    assert info.num_frames == 24 and abs(info.duration - 3.0) < 1e-6 and (info.width, info.height) == (64, 64)
    # each step's first frame in the long video is its keyframe's colour; the crossfade blends into the next
    frames = [f for _, f in decode_all(plan_dir / "video.mp4")]
    for i in range(3):
        assert np.abs(frames[8 * i].reshape(-1, 3).mean(0) - COLOURS[i]).max() < 6
    alpha = crossfade_weights(8, 3)  # 0.375 s at 8 fps
    mid = (1 - alpha[6]) * np.array(COLOURS[0]) + alpha[6] * np.array(COLOURS[1])
    assert np.abs(frames[6].reshape(-1, 3).mean(0) - mid).max() < 6
    cues = parse_vtt(plan_dir / "video.vtt")
    assert [(a, b) for a, b, _ in cues] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert cues[1][2] == plan.steps[1].caption
    assert [(s.meta["videogen"]["start"], s.meta["videogen"]["end"]) for s in plan.steps] == [(0, 1), (1, 2), (2, 3)]


def test_rerun_skips_finished_clips_and_redoes_changed_ones(plan_dir, capsys):
    assert main(["generate", str(plan_dir), "--no-progress", *SMALL_ANIMATIC]) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in (plan_dir / "clips").iterdir()}
    capsys.readouterr()
    assert main(["generate", str(plan_dir), "--no-progress", *SMALL_ANIMATIC]) == 0
    assert "0 made, 3 kept" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (plan_dir / "clips").iterdir()} == mtimes
    # a new keyframe for step 3 redoes step 3 and step 2 (which fades into it), not step 1
    Image.new("RGB", (96, 64), (250, 250, 250)).save(plan_dir / "keyframes" / "003.png")
    assert main(["generate", str(plan_dir), "--no-progress", *SMALL_ANIMATIC]) == 0
    assert "2 made, 1 kept" in capsys.readouterr().out
    frames = [f for _, f in decode_all(plan_dir / "video.mp4")]
    assert frames[16].mean() > 240  # the long video was rebuilt with the new keyframe
