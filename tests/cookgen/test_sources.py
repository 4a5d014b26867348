from __future__ import annotations

import json
from pathlib import Path

import pytest

from cookgen.records import CookgenError, hash_split, shard_of
from cookgen.sources import read_howto100m, read_steps, read_youcook2


def test_youcook2_small_file(small_youcook2) -> None:
    ann, labels = small_youcook2
    res = read_youcook2(ann, labels)
    assert not res.bad
    by_id = {r.video_id: r for r in res.records}
    assert by_id["vidA"].split == "train" and by_id["vidC"].split == "val"
    assert by_id["vidA"].dish == "BLT" and by_id["vidB"].dish == "fried chicken"
    assert [(s.start, s.end, s.action) for s in by_id["vidB"].segments] == [
        (0.0, 8.0, "coat chicken in flour"),
        (9.0, 30.0, "fry the chicken"),
    ]
    assert by_id["vidA"].duration == 300.0 and by_id["vidA"].video_path is None


def test_youcook2_full_annotations(youcook2_annotations: Path) -> None:
    res = read_youcook2(youcook2_annotations, youcook2_annotations.parent / "label_foodtype.csv")
    counts = {}
    for r in res.records:
        v, s = counts.get(r.split, (0, 0))
        counts[r.split] = (v + 1, s + len(r.segments))
    assert counts == {"train": (1333, 10337), "val": (457, 3492)}
    assert not res.bad
    assert len({r.recipe_type for r in res.records}) == 89
    assert all(r.dish for r in res.records)


def test_youcook2_malformed_items_are_bad_input(tmp_path: Path) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(
        json.dumps(
            {
                "database": {
                    "ok": {"duration": 10, "subset": "training", "recipe_type": "1", "annotations": []},
                    "x": {
                        "subset": "training",
                        "recipe_type": "1",
                        "annotations": [{"segment": [1], "sentence": "a"}],
                    },
                    "y": {"subset": "weird", "annotations": []},
                    "z": "not an object",
                }
            }
        )
    )
    res = read_youcook2(ann)
    assert [r.video_id for r in res.records] == ["ok"]
    assert sorted(b.reason for b in res.bad) == ["malformed_annotation"] * 3


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{not json", "not valid JSON"), ("[1, 2]", "'database'"), ('{"database": 3}', "'database'")],
)
def test_youcook2_bad_files(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "a.json"
    p.write_text(content)
    with pytest.raises(CookgenError, match=needle):
        read_youcook2(p)
    with pytest.raises(CookgenError, match="not found"):
        read_youcook2(tmp_path / "missing.json")


def test_a_binary_labels_file_is_one_error(small_youcook2, tmp_path: Path) -> None:
    ann, _ = small_youcook2
    labels = tmp_path / "labels.csv"
    labels.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(CookgenError, match="not a readable UTF-8 CSV"):
        read_youcook2(ann, labels)


def test_youcook2_videos_folder_is_indexed(small_youcook2, tmp_path: Path) -> None:
    ann, _ = small_youcook2
    vids = tmp_path / "videos" / "training" / "101"
    vids.mkdir(parents=True)
    (vids / "vidA.mp4").write_bytes(b"")
    (vids / "vidB.webm").write_bytes(b"")
    res = read_youcook2(ann, videos=tmp_path / "videos")
    assert sorted(r.video_id for r in res.records) == ["vidA", "vidB"]
    assert [b.reason for b in res.bad] == ["video_missing"] and "vidC" in str(res.bad[0])


def test_howto100m_with_categories_and_refined_actions(small_howto100m) -> None:
    f = small_howto100m
    res = read_howto100m(f["captions"], f["categories"], f["actions"], val_fraction=0.0)
    assert res.excluded == {"not_cooking": 1, "no_matching_clip": 1}  # car1 out; "Serve with rice" at 40 s unmatched
    by_id = {r.video_id: r for r in res.records}
    assert set(by_id) == {"cook1", "cook2"}
    cook1 = by_id["cook1"].segments
    # actions keep their refined text, take the matched ASR window's times, and carry its ASR text
    assert [(s.start, s.end, s.action, s.asr) for s in cook1] == [
        (6.0, 14.0, "Chop the onion finely.", "chop the onion"),
        (14.0, 22.0, "Fry the onion until golden.", "fry it"),
    ]
    assert by_id["cook2"].segments[1].action == "Pour the eggs into the pan, then stir."
    assert all(r.split == "train" for r in res.records)


def test_howto100m_raw_asr_without_refined_actions(small_howto100m) -> None:
    res = read_howto100m(small_howto100m["captions"])
    assert {r.video_id for r in res.records} == {"cook1", "cook2", "car1"}
    cook1 = next(r for r in res.records if r.video_id == "cook1")
    assert [s.action for s in cook1.segments] == ["hi guys", "chop the onion", "fry it"]


def test_howto100m_bad_files(tmp_path: Path, small_howto100m) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"v": {"start": [0, 1], "end": [1], "text": ["a"]}}))
    assert [b.reason for b in read_howto100m(bad).bad] == ["malformed_annotation"]
    csv = tmp_path / "cats.csv"
    csv.write_text("id,cat\n")
    with pytest.raises(CookgenError, match="lacks column"):
        read_howto100m(small_howto100m["captions"], categories=csv)


def test_steps_folder_layout(tmp_path: Path) -> None:
    dish = tmp_path / "group" / "Tuna_Sandwich"
    dish.mkdir(parents=True)
    (dish / "actions.yaml").write_text("'1': Open the can.\n'2': Mix tuna with mayo.\n'10': Serve.\n")
    (dish / "captions.yaml").write_text("'1': A close-up of a can.\n")
    for k in (1, 2, 10):
        (dish / f"{k}.mp4").write_bytes(b"")
    res = read_steps(tmp_path, split="train")
    [rec] = res.records
    assert (
        rec.video_id == "group/Tuna_Sandwich" and rec.dish == "Tuna Sandwich" and rec.safe_id == "group__Tuna_Sandwich"
    )
    assert [s.action for s in rec.segments] == ["Open the can.", "Mix tuna with mayo.", "Serve."]  # numeric order
    assert [s.caption for s in rec.segments] == ["A close-up of a can.", "", ""]
    (dish / "10.mp4").unlink()
    assert [b.reason for b in read_steps(tmp_path).bad] == ["video_missing"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CookgenError, match="no dish folders"):
        read_steps(tmp_path / "empty")
    with pytest.raises(CookgenError, match="steps root not found"):
        read_steps(tmp_path / "nope")


def test_stable_split_and_shard_assignment() -> None:
    ids = [f"video{i}" for i in range(2000)]
    val = sum(hash_split(v, 0.05) == "val" for v in ids)
    assert 60 < val < 140  # ~5 %
    assert hash_split("abc", 0.0) == "train"
    shards = [shard_of(v, 4) for v in ids]
    assert set(shards) == {0, 1, 2, 3} and shards == [shard_of(v, 4) for v in ids]
