"""Degenerate text never reaches a plan: non-words, numbered fields, verbatim-repeated actions (the planner's
checks, on the tiny director; the real plans that showed them are checked in test_default.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from director.plan import Planner
from director.words import WordCheck, load_lexicon
from tests.director.test_director import tiny_director


def test_the_lexicon_holds_english_and_cooking_words_but_not_the_non_words_seen() -> None:
    words = set(load_lexicon())
    assert 90_000 < len(words) < 100_000
    assert {"the", "warm", "caramelized", "sauteed", "tahini", "ramen", "scallions", "utensils"} <= words
    assert not {"theut", "theutween", "theutfumigatonglun", "utfumig"} & words


@pytest.mark.parametrize(
    "text, piece, ok",
    [
        (" The", "ut", False),  # the pad thai caption: "Theut..." starts no word
        (" Theut", "ween", False),
        (" The", " warm", True),
        (" a cook", "'s", True),
        (" hand", "-poured", True),
        (" carameli", "zed", True),
        (" the", " BLT", True),  # a word of the query
        (" the pancakz", "\n", False),  # ending the field on an unfinished non-word
        ("", "5", True),  # numbers are not words: never checked
    ],
)
def test_the_word_check(text: str, piece: str, ok: bool) -> None:
    assert WordCheck(["how to make a BLT"]).allows(text, piece) is ok


def _token(planner: Planner, text: str) -> int:
    ids = planner._ids(text)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_the_planner_passes_over_a_non_word_piece_and_a_leading_number() -> None:
    director, _, cfg = tiny_director()
    planner = Planner(director, cfg.plan)
    planner.words = WordCheck(["how to make pancakes"])
    gen = torch.Generator().manual_seed(0)
    q, space, five, a = (_token(planner, t) for t in ("q", " ", "5", "A"))
    logits = torch.full((len(planner.tok),), -10.0)
    logits[q], logits[space] = 5.0, 4.0
    written = planner._ids(" The")
    assert planner._sample(logits, gen, [], written) == space  # "Theq" starts no word: the next likeliest
    planner.words = None
    assert planner._sample(logits, gen, [], written) == q  # the check off: the likeliest
    logits[five], logits[a] = 6.0, 5.5
    assert planner._sample(logits, gen, [], []) == a  # a field never starts with a number ("5. A close-up")
    assert planner._sample(logits, gen, [], written) == five  # later in a field, numbers are fine
    assert planner._sample(logits, gen, [], None) == five  # not a text field: no checks


def test_a_verbatim_repeated_action_is_planned_again_or_ends_the_plan() -> None:
    director, _, cfg = tiny_director()
    loose = Planner(director, replace(cfg.plan, retry_repeated_actions=0, word_check=False))
    repeats = [s.action for s in loose.plan("how to make pancakes", steps=5, seed=0).steps]
    assert len(set(repeats)) < len(repeats)  # the tiny random director repeats itself without the retry
    strict = Planner(director, replace(cfg.plan, retry_repeated_actions=8, word_check=False))
    result = strict.plan("how to make pancakes", steps=5, seed=0)
    actions = [s.action.strip().lower() for s in result.steps]
    assert len(set(actions)) == len(actions) and result.stats["repeat_retries"] > 0
    # when the director decides the length, a repeat it cannot avoid ends the plan (it is looping)
    ending = Planner(director, replace(cfg.plan, retry_repeated_actions=0, word_check=False, max_steps=6))
    auto = ending.plan("how to make pancakes", seed=0)
    assert auto.ended_by_model and auto.stats["ended_on_repeat"] == 1 and len(auto.steps) < 6
