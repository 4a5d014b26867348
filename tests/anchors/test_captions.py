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
        ({"events": []}, None, "no events"),
        ({"title": "x"}, None, "no events"),
        ({"events": [{"text": " "}]}, None, "no text"),
        ({"events": [{"text": "a", "frames": 0}]}, None, "positive integer"),
        ({"events": ["a", "b", "c"]}, 2, "too few"),
        ({"events": [{"text": "a", "frames": 3}]}, 4, "span 3 frames"),
    ],
)
def test_bad_stories(data, frames, match):
    with pytest.raises(AnchorsError, match=match):
        assign_frames(story_from_json(data), frames)
