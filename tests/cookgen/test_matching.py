from __future__ import annotations

from dataclasses import dataclass

import pytest

from cookgen.matching import is_match, match_actions_to_clips, temporal_iou


@dataclass
class T:
    start: float
    end: float
    name: str = ""


def test_iou_hand_values() -> None:
    assert temporal_iou(0, 10, 0, 10) == 1.0
    assert temporal_iou(0, 10, 5, 15) == pytest.approx(5 / 15)
    assert temporal_iou(0, 10, 10, 20) == 0.0  # touching, no overlap
    assert temporal_iou(0, 10, 2, 4) == pytest.approx(0.2)
    assert temporal_iou(3, 3, 0, 10) == 0.0  # empty range


@pytest.mark.parametrize(
    ("action", "clip", "expected", "why"),
    [
        ((0, 10), (0, 10), True, "identical: IoU 1"),
        ((0, 10), (4, 13), True, "IoU 6/13 < 0.5, but start diff 4 < 5, clip ends later, IoU > 0.25"),
        ((0, 10), (5, 13), False, "start diff exactly 5 is not < 5 and IoU 5/13 <= 0.5"),
        ((0, 10), (4.9, 13), True, "start diff 4.9 < 5"),
        ((2, 12), (0, 12), True, "ends together, but IoU 10/12 > 0.5"),
        ((0, 10), (3, 10), True, "ends together; IoU 0.7 > 0.5 rescues it"),
        ((0, 10), (4, 10), True, "IoU 0.6 > 0.5"),
        ((0, 10), (4.5, 10), True, "IoU 0.55 > 0.5"),
        ((0, 8), (-4, 8), True, "IoU 8/12 > 0.5"),
        ((0, 10), (0, 40), False, "start diff 0, ends later, but IoU exactly 0.25 is not > 0.25"),
        ((0, 10), (0, 39), True, "IoU 10/39 > 0.25"),
        ((0, 10), (-1, 9), True, "clip ends before the action but IoU 9/11 > 0.5"),
        ((0, 10), (-4, 6), False, "clip ends before the action and IoU 6/14 <= 0.5"),
        ((0, 10), (2.5, 12.5), True, "IoU 7.5/12.5 = 0.6"),
        ((0, 10), (3.3, 13.3), True, "start diff 3.3, ends later, IoU 6.7/13.3 ~0.504"),
        ((0, 10), (4, 14), True, "start diff 4, ends later, IoU 6/14 ~0.43 > 0.25"),
        ((0, 4), (3, 9), False, "start diff 3, ends later, IoU 1/9 < 0.25"),
        ((0, 10), (20, 30), False, "disjoint"),
    ],
)
def test_rule_edge_cases(action, clip, expected, why) -> None:
    assert is_match(T(*action), T(*clip)) is expected, why


def test_iou_exactly_half_is_not_strong() -> None:
    # IoU exactly 0.5 and the clip ends before the action: only the strong clause could apply, and it is strict
    assert temporal_iou(0, 10, -5, 5) == pytest.approx(1 / 3)
    assert temporal_iou(0, 10, 0, 20) == 0.5
    assert is_match(T(0, 10), T(0, 20)) is True  # passes the first clause (diff 0, ends later, 0.5 > 0.25)
    assert is_match(T(0, 10), T(5, 10)) is False  # IoU 0.5 exactly, clip ends with the action, diff 5


def test_best_clip_wins_and_unmatched_reported() -> None:
    clips = [T(0, 6, "a"), T(5, 12, "b"), T(30, 40, "c")]
    actions = [T(5.5, 11, "x"), T(1, 6, "y"), T(50, 60, "z")]
    pairs, unmatched = match_actions_to_clips(actions, clips)
    assert [(a.name, c.name) for a, c in pairs] == [("x", "b"), ("y", "a")]
    assert [a.name for a in unmatched] == ["z"]
