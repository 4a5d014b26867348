"""Builds with videos: keyframes, clips, embeddings, resume after a kill, bad videos, workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from PIL import Image

from auteur.video import probe
from tests.conftest import REPO, shared_path
from tests.cookgen.conftest import run, synthetic_video, write_youcook2, yc_video, youcook2_with_video

DISHES = ("Interleaved/Corn_Dog", "Language_Centric/BLT_Sandwich")


@pytest.fixture
def two_dishes(tmp_path: Path) -> Path:
    """Two real demo dishes (18 step clips), copied so tests may damage them."""
    root = tmp_path / "demos"
    for d in DISHES:
        shutil.copytree(shared_path("videoauteur_demos", d), root / d)
    return root


def test_steps_build_of_real_demo_clips(two_dishes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, text, err = run(
        [
            "build",
            "steps",
            "--root",
            str(two_dishes),
            "--out",
            str(out),
            "--split",
            "train",
            "--config",
            "tiny",
            "--no-progress",
            "--json",
        ],
        capsys,
    )
    assert rc == 0, err
    report = json.loads(text)
    ds = load_from_disk(str(out / "train"))
    assert ds.num_rows == 18 == report["splits"]["train"]["steps"]
    assert report["embedding_space"]["name"].startswith("open_clip-random/")  # the tiny preset says it is random
    emb = torch.tensor(ds["embedding"])
    assert emb.shape == (18, report["embedding_space"]["dim"]) and torch.isfinite(emb).all()
    assert len({tuple(r) for r in emb.tolist()}) == 18  # a distinct keyframe per step
    for row in ds:
        kf = out / row["keyframe"]
        assert kf.is_file() and Image.open(kf).size == (128, 128)  # tiny preset: keyframes.max_side 128
        assert probe(out / row["clip"]).duration == pytest.approx(row["end"] - row["start"], abs=0.05)
        assert row["caption_source"] == "source" and len(row["caption"].split()) > 10
    corn = [r for r in ds if r["video_id"] == "Interleaved/Corn_Dog"]
    assert corn[0]["action"] == "Pour liquid mixture into a glass bowl." and corn[-1]["step_index"] == 10
    assert not list(out.rglob(".*.tmp-*"))  # no temporaries left behind


@pytest.mark.slow
def test_default_preset_embeds_every_demo_step(tmp_path: Path, capsys) -> None:
    """The real offline default (EfficientNet-Lite0 ImageNet weights) on all demo clips."""
    root = shared_path("videoauteur_demos")
    rc, text, err = run(
        [
            "build",
            "steps",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--split",
            "train",
            "--no-progress",
            "--json",
            "clips.cut=false",
        ],
        capsys,
    )
    assert rc == 0, err
    report = json.loads(text)
    ds = load_from_disk(str(tmp_path / "o" / "train"))
    assert ds.num_rows == 43 and report["embedding_space"] == {
        "name": "efficientnet-lite0/imagenet/avgpool",
        "dim": 1280,
    }


def test_keyframes_are_taken_at_the_configured_time(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, _, err = run(youcook2_with_video(tmp_path) + ["--out", out, "keyframes.format=png"], capsys)
    assert rc == 0, err
    ds = load_from_disk(str(out / "train"))
    # middle of [2, 6] is 4 s -> frame 24 (grey 58); middle of [10, 18] is 14 s -> frame 84 (grey 178)
    levels = [np.asarray(Image.open(out / k)).mean() for k in ds["keyframe"]]
    assert levels == pytest.approx([58, 178], abs=3)
    clip = probe(out / ds["clip"][1])
    assert clip.duration == pytest.approx(8.0, abs=0.2) and clip.width == 64


def test_bad_videos_exit_2_or_are_counted(tmp_path: Path, capsys) -> None:
    vids = tmp_path / "videos"
    synthetic_video(vids / "good.mp4")
    (vids / "corrupt.mp4").write_bytes(os.urandom(4000))
    db = {
        "good": yc_video("training", "1", [(1, 5, "a"), (6, 9, "b")], 20.0),
        "corrupt": yc_video("training", "1", [(1, 5, "a"), (6, 9, "b")], 20.0),
        "missing": yc_video("training", "1", [(1, 5, "a"), (6, 9, "b")], 20.0),
        # the annotation claims 300 s but the file holds 20 s: the segment lies outside the real video
        "short": yc_video("training", "1", [(1, 5, "a"), (100, 109, "b")], 300.0),
    }
    synthetic_video(vids / "short.mp4")
    ann = write_youcook2(tmp_path / "a.json", db)
    base = ["build", "youcook2", "--annotations", str(ann), "--videos", str(vids), "--config", "tiny", "--no-progress"]
    rc, _, err = run(base + ["--out", str(tmp_path / "o1")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "missing" in err
    assert not (tmp_path / "o1").exists()  # failed before any video was done: no folder left behind
    del db["missing"]
    write_youcook2(ann, db)
    rc, _, err = run(base + ["--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "corrupt" in err and "Traceback" not in err
    assert not (tmp_path / "o2" / "train").exists()
    db["missing"] = db["good"]
    write_youcook2(ann, db)
    rc, text, err = run(base + ["--out", str(tmp_path / "o3"), "--skip-bad", "--json"], capsys)
    assert rc == 0, err
    report = json.loads(text)
    assert report["rejected_videos"] == {"too_few_clips": 1, "video_corrupt": 1, "video_missing": 1}
    assert report["rejected_steps"] == {"segment_outside_video": 1}  # "short" lost its bad step, then its video
    assert set(load_from_disk(str(tmp_path / "o3" / "train"))["video_id"]) == {"good"}


def _build_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cookgen.cli",
        "build",
        "steps",
        "--root",
        str(root),
        "--out",
        str(out),
        "--split",
        "train",
        "--config",
        "tiny",
        "--no-progress",
        *extra,
    ]


def test_resume_after_kill_matches_uninterrupted_build(two_dishes: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(_build_cmd(two_dishes, ref), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_build_cmd(two_dishes, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill it in the middle of the video work: after some keyframes of a video exist but before the end
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "keyframes").rglob("*.jpg"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train").exists() and not (out / "report.json").exists()  # no split half-written
    done_before = len(list((out / "work" / "videos").glob("*.json"))) if (out / "work" / "videos").exists() else 0
    assert done_before < 2
    res = subprocess.run(_build_cmd(two_dishes, out, "--json"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["videos_resumed"] == done_before and report["videos_processed"] == 2 - done_before
    a = load_from_disk(str(ref / "train")).to_list()
    b = load_from_disk(str(out / "train")).to_list()
    assert a == b  # same rows, same embeddings
    assert not list(out.rglob(".*.tmp-*"))
    # a finished build reruns without redoing any video
    res = subprocess.run(_build_cmd(two_dishes, out, "--json"), env=env, capture_output=True, text=True)
    assert json.loads(res.stdout)["videos_resumed"] == 2
    # the same folder with another config is refused, not silently mixed
    res = subprocess.run(
        _build_cmd(two_dishes, out, "keyframes.position=0.1"), env=env, capture_output=True, text=True
    )
    assert res.returncode == 2 and "--force" in res.stderr


def test_workers_give_the_same_dataset(two_dishes: Path, tmp_path: Path, capsys) -> None:
    base = ["build", "steps", "--root", str(two_dishes), "--split", "train", "--config", "tiny", "--no-progress"]
    assert run(base + ["--out", str(tmp_path / "w1")], capsys)[0] == 0
    assert run(base + ["--out", str(tmp_path / "w2"), "--workers", "2"], capsys)[0] == 0
    a = load_from_disk(str(tmp_path / "w1" / "train")).to_list()
    b = load_from_disk(str(tmp_path / "w2" / "train")).to_list()
    # workers run torch with fewer threads each, so float sums may round differently (~1e-7); all else is equal
    ea, eb = (torch.tensor([r.pop("embedding") for r in rows]) for rows in (a, b))
    assert a == b
    torch.testing.assert_close(ea, eb, rtol=1e-5, atol=1e-6)


def test_captioner_fills_missing_captions_and_says_so(tmp_path: Path, capsys) -> None:
    """A VLM captioner (here the tiny RANDOM Qwen2-VL: the mechanics, not the words) captions each clip."""
    from cookgen.caption import build_tiny_qwen2_vl

    model = build_tiny_qwen2_vl(tmp_path / "tiny-qwen2-vl")
    base = youcook2_with_video(tmp_path)
    out = tmp_path / "out"
    rc, text, err = run(
        base
        + ["--out", out, "--json", "clips.cut=false", "caption.backend=qwen2_vl", f"caption.model_path={model}"]
        + ["caption.num_frames=2", "caption.max_new_tokens=8"],
        capsys,
    )
    assert rc == 0, err
    ds = load_from_disk(str(out / "train"))
    assert ds["caption_source"] == ["vlm:qwen2_vl:tiny-qwen2-vl"] * 2
    assert all(c.strip() for c in ds["caption"]) and ds["clip"] == ["", ""]
    assert json.loads(text)["captions"] == {"vlm": 2}
    bad_model = ["caption.backend=qwen2_vl", f"caption.model_path={tmp_path / 'nope'}"]
    rc, _, err = run(base + ["--out", tmp_path / "o2", *bad_model], capsys)
    assert rc == 2 and err.count("\n") == 1 and "nope" in err


def test_howto100m_build_with_videos(tmp_path: Path, capsys) -> None:
    from tests.cookgen.conftest import write_howto100m

    files = write_howto100m(tmp_path)
    vids = tmp_path / "videos"
    synthetic_video(vids / "cook1.mp4", seconds=24)
    rc, text, err = run(
        [
            "build",
            "howto100m",
            "--captions",
            str(files["captions"]),
            "--categories",
            str(files["categories"]),
            "--actions",
            str(files["actions"]),
            "--videos",
            str(vids),
            "--out",
            str(tmp_path / "o"),
            "--config",
            "tiny",
            "--no-progress",
            "--skip-bad",
            "--json",
            "split.val_fraction=0",
        ],
        capsys,
    )
    assert rc == 0, err
    report = json.loads(text)
    assert report["rejected_videos"] == {"video_missing": 1}  # cook2 has no file
    assert report["excluded"] == {"no_matching_clip": 1, "not_cooking": 1}
    ds = load_from_disk(str(tmp_path / "o" / "train"))
    assert ds["action"] == ["Chop the onion finely.", "Fry the onion until golden."]
    assert ds["asr"] == ["chop the onion", "fry it"] and (ds["start"], ds["end"]) == ([6.0, 14.0], [14.0, 22.0])
    assert all((tmp_path / "o" / k).is_file() for k in list(ds["keyframe"]) + list(ds["clip"]))
