"""Prompt-set readers: the real files in ../shared/data and small files written in the documented formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from auteur.prompts import PromptsError, read_prompts
from tests.conftest import shared_path


def test_youcook2_validation_queries_deduplicated(youcook2_annotations):
    items = read_prompts(youcook2_annotations)
    queries = [it.prompt for it in items]
    assert len(queries) == len(set(queries)) and all(q.startswith("how to make ") for q in queries)
    data = json.loads(youcook2_annotations.read_text())["database"]
    val_types = {v["recipe_type"] for v in data.values() if v["subset"] == "validation"}
    assert len(items) == len(val_types)
    assert sum(len(it.meta["videos"]) for it in items) == sum(v["subset"] == "validation" for v in data.values())


def test_consistory_foods_and_vgot():
    foods = read_prompts(f"{shared_path('story_prompts', '1prompt1story', 'consistory+.yaml')}#foods")
    assert len(foods) == 20 and foods[0].shots[0].startswith(foods[0].prompt)
    assert all(it.meta["category"] == "foods" for it in foods)
    vgot = read_prompts(shared_path("story_prompts", "vgot_chef", "image_prompt_pairs.json"))
    assert len(vgot) == 1 and len(vgot[0].shots) == 30 and "Marco" in vgot[0].prompt


def write_vistory_story(root, story_id="01"):
    """A small story in ViStoryBench's story.json format, with two reference images for one character."""
    folder = root / story_id
    (folder / "image" / "Jack").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * (i + 1), np.uint8)).save(folder / "image" / "Jack" / f"{i:02d}.jpg")
    shot = {
        "Setting Description": {"en": "A farm at dawn", "ch": "黎明的农场"},
        "Plot Correspondence": {"en": "Jack leaves home", "ch": "杰克离家"},
        "Static Shot Description": {"en": "Jack walks with a cow", "ch": "杰克牵着牛"},
        "Shot Perspective Design": {"en": "Wide shot", "ch": "远景"},
    }
    story = {
        "Story_type": {"en": "fairy tale"},
        "Characters": {"Jack": {"name": "Jack", "prompt_en": "a boy", "tag": "realistic_human"}},
        "Shots": [
            {"index": 1, **shot, "Characters Appearing": {"en": ["Jack"], "ch": ["杰克"]}},
            {"index": 2, **shot, "Characters Appearing": {"en": [], "ch": []}},
        ],
    }
    (folder / "story.json").write_text(json.dumps(story, ensure_ascii=False))
    return folder


def test_vistorybench_story_json(tmp_path):
    write_vistory_story(tmp_path, "01")
    write_vistory_story(tmp_path, "02")
    items = read_prompts(tmp_path)
    assert [it.id for it in items] == ["01", "02"]
    it = items[0]
    assert it.expected_counts == [1, 0]
    assert it.shots[0] == "A farm at dawn. Jack walks with a cow. Wide shot."
    assert len(it.references["Jack"]) == 2
    ch = read_prompts(f"{tmp_path / '01' / 'story.json'}#ch")
    assert "黎明的农场" in ch[0].shots[0]


def test_storyanchors_and_lines(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps({"format": "storyanchors", "stories": [{"id": "s1", "prompt": "a day", "events": ["a", "b"]}]})
    )
    assert read_prompts(p)[0].shots == ["a", "b"]
    # event objects keep their text (and frame counts in meta); anchors' own story format is read too
    events = [{"text": "Drain the tuna.", "frames": 2}, "Mix it with mayonnaise."]
    p.write_text(json.dumps({"stories": [{"prompt": "tuna sandwich", "events": events}]}))
    it = read_prompts(p)[0]
    assert it.shots == ["Drain the tuna.", "Mix it with mayonnaise."] and it.meta["event_frames"] == [2, None]
    a = tmp_path / "story.json"
    a.write_text(json.dumps({"title": "A tuna sandwich", "subjects": "a cook", "style": "warm", "events": events}))
    it = read_prompts(a)[0]
    assert (it.prompt, it.shots[0], it.meta["subjects"], it.meta["style"]) == (
        "A tuna sandwich",
        "Drain the tuna.",
        "a cook",
        "warm",
    )
    a.write_text(json.dumps({"title": "x", "events": [{"frames": 2}]}))
    with pytest.raises(PromptsError, match=r"events\[0\] must be a caption"):
        read_prompts(a)
    t = tmp_path / "p.txt"
    t.write_text("make tea\n\nmake toast\n")
    assert [i.prompt for i in read_prompts(t)] == ["make tea", "make toast"]


def test_unknown_or_bad_formats(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(PromptsError, match="unknown prompts format"):
        read_prompts(bad)
    with pytest.raises(PromptsError, match="not found"):
        read_prompts(tmp_path / "missing.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(PromptsError, match="JSON"):
        read_prompts(tmp_path / "y.json")


@pytest.mark.parametrize("suffix", [".txt", ".yaml", ".json"])
def test_random_bytes_are_one_error(tmp_path, suffix):
    import random

    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(bytes(random.Random(0).randrange(128, 256) for _ in range(3000)))
    with pytest.raises(PromptsError, match=f"cannot read {path}"):
        read_prompts(path)


def test_control_characters_do_not_reach_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("make \x1b[31mtoast\x07\nboil\x00 an egg\n")
    assert [it.prompt for it in read_prompts(path)] == ["make [31mtoast", "boil an egg"]
