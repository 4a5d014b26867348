"""Clip–action matching with the VideoAuteur paper's rule (CookGen, §3).

An action (a timed text, e.g. a refined ASR sentence) matches a clip when

    (start_diff < 5 s  and  the clip ends after the action  and  IoU > 0.25)   or   IoU > 0.5

where ``start_diff = |clip.start - action.start|`` and IoU is the temporal intersection over union. Every
comparison is strict, as the rule is written: a start difference of exactly 5 s, an IoU of exactly 0.25 or
0.5, or a clip ending at the same moment as the action does not satisfy its clause.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class Timed(Protocol):
    start: float
    end: float


A = TypeVar("A", bound=Timed)
C = TypeVar("C", bound=Timed)


def temporal_iou(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Intersection over union of two time ranges (0 for empty or disjoint ranges)."""
    inter = max(0.0, min(a_end, b_end) - max(a_start, b_start))
    union = max(a_end, b_end) - min(a_start, b_start)
    return inter / union if union > 0 and inter > 0 else 0.0


def is_match(
    action: Timed, clip: Timed, max_start_diff: float = 5.0, min_iou: float = 0.25, strong_iou: float = 0.5
) -> bool:
    """Whether ``clip`` matches ``action`` under the paper's rule (see the module docstring)."""
    iou = temporal_iou(action.start, action.end, clip.start, clip.end)
    if iou > strong_iou:
        return True
    return abs(clip.start - action.start) < max_start_diff and clip.end > action.end and iou > min_iou


def match_actions_to_clips(
    actions: list[A],
    clips: list[C],
    max_start_diff: float = 5.0,
    min_iou: float = 0.25,
    strong_iou: float = 0.5,
) -> tuple[list[tuple[A, C]], list[A]]:
    """Pair each action with its best matching clip (highest IoU among those that pass the rule).

    Returns ``(pairs, unmatched)``: pairs in action order, and the actions no clip matched. A clip may serve
    several actions (an ASR window often narrates more than one step).
    """
    pairs, unmatched = [], []
    for action in actions:
        best, best_iou = None, -1.0
        for clip in clips:
            if is_match(action, clip, max_start_diff, min_iou, strong_iou):
                iou = temporal_iou(action.start, action.end, clip.start, clip.end)
                if iou > best_iou:
                    best, best_iou = clip, iou
        if best is None:
            unmatched.append(action)
        else:
            pairs.append((action, best))
    return pairs, unmatched
