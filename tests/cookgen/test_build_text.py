"""Text-only builds (no videos): records, filters, splits on disk, report, stats, bad input, shards, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from cookgen.stats import compute_stats
from tests.cookgen.conftest import run, write_youcook2, yc_video


def test_small_youcook2_build(small_youcook2, tmp_path: Path, capsys) -> None:
    ann, labels = small_youcook2
    out = tmp_path / "out"
    rc, text, _ = run(
        ["build", "youcook2", "--annotations", str(ann), "--labels", str(labels), "--out", str(out)], capsys
    )
    assert rc == 0, text
    train = load_from_disk(str(out / "train"))
    assert train.num_rows == 5 and set(train["video_id"]) == {"vidA", "vidB"}
    row = train[0]
    assert row["action"] == "spread butter on bread" and row["dish"] == "BLT" and row["step_index"] == 1
    assert row["num_steps"] == 3 and row["caption"] == "" and row["caption_source"] == "missing"
    assert "embedding" not in train.column_names  # no videos: no keyframes, no embeddings, nothing invented
    val = load_from_disk(str(out / "val"))
    # vidC: the 190 s step exceeds max_clip_seconds (120), leaving 2 steps, still >= min_clips_per_video
    assert val["action"] == ["toast bread", "eat"] and val["source_step_index"] == [1, 3]
    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["val"] == {"videos_before": 1, "steps_before": 3, "videos": 1, "steps": 2}
    assert report["rejected_steps"] == {"clip_too_long": 1}
    assert (out / "config.yaml").exists() and json.loads((out / "cookgen.json").read_text())["embedding_space"] is None
    stats = compute_stats(out)
    assert stats["train"]["videos"] == 2 and stats["train"]["clips"] == 5
    assert stats["train"]["mean_clip_seconds"] == pytest.approx((10 + 15 + 4 + 8 + 21) / 5, abs=0.01)
    assert stats["train"]["words_per_action"] == pytest.approx((4 + 2 + 1 + 4 + 3) / 5)
    assert stats["train"]["captions_missing"] == 5


def test_filters_are_config_and_counted(small_youcook2, tmp_path: Path, capsys) -> None:
    ann, _ = small_youcook2
    out = tmp_path / "out"
    rc, text, _ = run(
        [
            "build",
            "youcook2",
            "--annotations",
            str(ann),
            "--out",
            str(out),
            "--json",
            "filter.min_clip_seconds=5",
            "filter.min_clips_per_video=3",
        ],
        capsys,
    )
    assert rc == 0
    report = json.loads(text)
    # vidA: 3 steps, the 4 s one too short -> 2 left -> video dropped; vidB: 2 steps -> dropped;
    # vidC: 4 s and 190 s steps dropped -> 1 left -> dropped
    assert report["rejected_steps"] == {"clip_too_long": 1, "clip_too_short": 3}
    assert report["rejected_videos"] == {"too_few_clips": 3}
    assert not (out / "train").exists() and not (out / "val").exists()  # empty splits are not written


def test_full_youcook2_text_build(youcook2_annotations: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "yc"
    rc, text, _ = run(
        ["build", "youcook2", "--annotations", str(youcook2_annotations), "--out", str(out), "--json"], capsys
    )
    assert rc == 0
    report = json.loads(text)
    assert report["splits"]["train"]["videos_before"] == 1333 and report["splits"]["train"]["steps_before"] == 10337
    assert report["splits"]["val"]["videos_before"] == 457 and report["splits"]["val"]["steps_before"] == 3492
    kept = report["splits"]["train"]["steps"] + report["splits"]["val"]["steps"]
    assert report["rejected_videos"] == {}  # every video keeps >= 2 steps under the default filters
    assert kept + sum(report["rejected_steps"].values()) == 10337 + 3492  # every step kept or counted
    assert load_from_disk(str(out / "train")).num_rows == report["splits"]["train"]["steps"]


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ([(1, 5, "ok"), (6, 9, "  ")], "empty sentence"),
        ([(1, 5, "ok"), (9, 6, "backwards")], "not a time range"),
        ([(1, 5, "ok"), (290, 400, "too late")], "ends after the video"),
        ([(-3, 5, "negative"), (6, 9, "ok")], "not a time range"),
    ],
)
def test_bad_segments_exit_2_or_are_counted(tmp_path: Path, capsys, segments, reason) -> None:
    ann = write_youcook2(
        tmp_path / "a.json",
        {"v1": yc_video("training", "1", segments), "v2": yc_video("training", "1", [(1, 5, "a"), (6, 9, "b")])},
    )
    out = tmp_path / "out"
    rc, _, err = run(["build", "youcook2", "--annotations", str(ann), "--out", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and reason in err and "v1" in err
    assert not (out / "train").exists() and not (out / "report.json").exists()  # nothing written
    rc, text, _ = run(
        [
            "build",
            "youcook2",
            "--annotations",
            str(ann),
            "--out",
            str(out),
            "--skip-bad",
            "--json",
            "filter.min_clips_per_video=1",
        ],
        capsys,
    )
    assert rc == 0
    report = json.loads(text)
    assert sum(report["rejected_steps"].values()) == 1
    assert load_from_disk(str(out / "train")).num_rows == 3  # the good step of v1 and both of v2


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["build", "youcook2", "--annotations", "{ann_bad}", "--out", "{out}"], "not valid JSON"),
        (["build", "youcook2", "--annotations", "{missing}", "--out", "{out}"], "not found"),
        (["build", "vimeo", "--out", "{out}"], "invalid choice: 'vimeo'"),
        (
            ["build", "youcook2", "--annotations", "{ann}", "--out", "{out}", "--config", "huge"],
            "unknown preset 'huge'",
        ),
        (["build", "youcook2", "--annotations", "{ann}", "--out", "{out}", "filter.min_clip=3"], "filter.min_clip"),
        (["build", "youcook2", "--annotations", "{ann}", "--out", "{out}", "--shard", "4/4"], "--shard"),
        (
            ["build", "youcook2", "--annotations", "{ann}", "--out", "{out}", "--videos", "{missing}"],
            "videos folder not found",
        ),
        (["stats", "{missing}"], "not a CookGen build"),
        (["build", "steps", "--root", "{missing}", "--out", "{out}"], "steps root not found"),
        (["build", "howto100m", "--captions", "{ann_bad}", "--out", "{out}"], "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2(small_youcook2, tmp_path: Path, capsys, argv, needle) -> None:
    ann, _ = small_youcook2
    bad = tmp_path / "bad.json"
    bad.write_text('{"database": {"v": ')
    subs = {"ann": ann, "ann_bad": bad, "missing": tmp_path / "nope", "out": tmp_path / "out"}
    rc, out, err = run([a.format(**subs) for a in argv], capsys)
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "train").exists()


def test_shards_partition_and_merge(small_youcook2, tmp_path: Path, capsys) -> None:
    ann, labels = small_youcook2
    base = ["build", "youcook2", "--annotations", str(ann), "--labels", str(labels)]
    assert run(base + ["--out", str(tmp_path / "full")], capsys)[0] == 0
    for i in range(3):
        assert run(base + ["--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"], capsys)[0] == 0
    ids = [
        set(load_from_disk(str(tmp_path / f"s{i}" / "train"))["video_id"])
        if (tmp_path / f"s{i}" / "train").exists()
        else set()
        for i in range(3)
    ]
    assert sum(map(len, ids)) == 2 and not (ids[0] & ids[1] or ids[1] & ids[2] or ids[0] & ids[2])
    rc, text, err = run(["merge", *(str(tmp_path / f"s{i}") for i in range(3)), "--out", str(tmp_path / "m")], capsys)
    assert rc == 0, err
    for split in ("train", "val"):
        full = load_from_disk(str(tmp_path / "full" / split)).sort(["video_id", "step_index"]).to_list()
        merged = load_from_disk(str(tmp_path / "m" / split)).sort(["video_id", "step_index"]).to_list()
        assert merged == full
    full_r = json.loads((tmp_path / "full" / "report.json").read_text())
    merged_r = json.loads((tmp_path / "m" / "report.json").read_text())
    assert merged_r["splits"] == full_r["splits"] and merged_r["rejected_steps"] == full_r["rejected_steps"]
    # the same shard twice, or two different configs, cannot merge
    rc, _, err = run(["merge", str(tmp_path / "s0"), str(tmp_path / "s0"), "--out", str(tmp_path / "m2")], capsys)
    assert rc == 2 and "twice" in err
    assert (
        run(base + ["--out", str(tmp_path / "other"), "--shard", "1/3", "filter.min_clip_seconds=2"], capsys)[0] == 0
    )
    rc, _, err = run(["merge", str(tmp_path / "s0"), str(tmp_path / "other"), "--out", str(tmp_path / "m3")], capsys)
    assert rc == 2 and "another source or config" in err
