"""The multi-event caption format and story JSON."""

from __future__ import annotations

import pytest

from anchors.captions import assign_frames, global_caption, multi_event_caption, story_from_json
from anchors.config import AnchorsError


def test_multi_event_caption_numbers_events_with_frame_ranges():
    story = story_from_json(
        {
            "title": "Tuna sandwich",
            "subjects": "a cook; tuna",
            "style": "a cooking video",
            "events": [{"text": "Drain the tuna", "frames": 2}, {"text": "Mix it."}],
        }
    )
    assert assign_frames(story, 3) == 3
    assert multi_event_caption(story) == (
        "Subjects: a cook; tuna. Style: a cooking video. Events: (1) frames 1-2: Drain the tuna. (2) frame 3: Mix it."
    )
    assert global_caption(story) == (
        "Subjects: a cook; tuna. Style: a cooking video. Story: Tuna sandwich. Drain the tuna; Mix it."
    )
    assert story.frame_events() == [0, 0, 1]


def test_simple_list_and_even_frame_shares():
    story = story_from_json(["one", {"description": "two"}, "three"])
    assert story.title == "one" and [e.text for e in story.events] == ["one", "two", "three"]
    assert assign_frames(story, 5) == 5
    assert [e.frames for e in story.events] == [2, 2, 1]


@pytest.mark.parametrize(
    "data, frames, match",
    [
        ({"events": []}, None, "no events and no prompt"),
        ({"id": "x", "prompt": " ", "shots": [], "meta": {"style": "s"}}, None, "no events and no prompt"),
        ({"prompt": "x", "shots": "one shot"}, None, "'shots' must be a list"),
        ({"prompt": 3}, None, "'prompt' must be a string"),
        ({"prompt": "x", "shots": ["a", "b"], "meta": {"event_frames": [1]}}, None, "one entry per event"),
        ({"events": [{"text": " "}]}, None, "no text"),
        ({"events": [{"text": "a", "frames": 0}]}, None, "positive integer"),
        ({"events": ["a", "b", "c"]}, 2, "too few"),
        ({"events": [{"text": "a", "frames": 3}]}, 4, "span 3 frames"),
    ],
)
def test_bad_stories(data, frames, match):
    with pytest.raises(AnchorsError, match=match):
        assign_frames(story_from_json(data), frames)


def test_compare_prompt_items_are_stories():
    from auteur.prompts import PromptItem

    # a YouCook2 query: no shots, the prompt is the title and ONE event over all story frames (global caption)
    item = PromptItem(id="pad-thai", prompt="how to make pad thai", meta={"style": "a cooking video"}).to_json()
    story = story_from_json(item)
    assert story.title == "how to make pad thai" and [e.text for e in story.events] == ["how to make pad thai"]
    assert assign_frames(story, 6) == 6 and story.frame_events() == [0] * 6
    assert multi_event_caption(story) == "Style: a cooking video. Events: (1) frames 1-6: how to make pad thai."
    # shots are the events; the prompt is the title; subjects/style from meta unless given at the top level
    item = PromptItem(
        id="s1",
        prompt="Tuna sandwich",
        shots=["Drain the tuna.", "Close it."],
        meta={"subjects": "a cook; tuna", "style": "ignored", "event_frames": [2, None]},
    ).to_json()
    story = story_from_json({**item, "style": "a cooking video"})
    assert story.title == "Tuna sandwich" and [(e.text, e.frames) for e in story.events] == [
        ("Drain the tuna.", 2),
        ("Close it.", None),
    ]
    assert (story.subjects, story.style) == ("a cook; tuna", "a cooking video")
    assert story_from_json({"title": "T", "prompt": "P", "events": ["a"]}).title == "T"


def test_story_span_keeps_the_events_of_a_window():
    story = story_from_json({"events": [{"text": "a", "frames": 3}, {"text": "b", "frames": 2}, "c"]})
    assign_frames(story, None)
    part = story.span(2, 5)
    assert [(e.text, e.frames) for e in part.events] == [("a", 1), ("b", 2)]
    assert multi_event_caption(part) == "Events: (1) frame 1: a. (2) frames 2-3: b."
    assert [(e.text, e.frames) for e in story.span(0, 6).events] == [("a", 3), ("b", 2), ("c", 1)]
