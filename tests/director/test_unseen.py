"""The unseen-dish evaluation: the shipped split, the leakage check, the baselines and the calibration row."""

from __future__ import annotations

from pathlib import Path

import pytest

from director.evaluate import EvalError, EvalVideo, SentenceEncoder, make_query
from director.unseen import (
    NearestDish,
    NearestDishRetrieval,
    NearestDishTypical,
    UnseenSplit,
    annotated_dishes,
    calibration,
    check_not_trained_on,
    choose_unseen,
    read_split,
    split_videos,
)

DEFAULT = Path(__file__).resolve().parents[2] / "director" / "checkpoints" / "default"


def test_the_shipped_split_is_the_seeded_choice_spread_over_the_cuisines(youcook2_annotations: Path) -> None:
    split = read_split()
    dishes = annotated_dishes(youcook2_annotations)
    assert len(dishes) == 89
    assert split == choose_unseen(dishes, split.fraction, split.seed)  # the file is what the script writes
    assert len(split.names) == 18 and len(set(split.names)) == 18
    groups = {r[:1] for r in split.recipe_types}
    assert groups == {"1", "2", "3", "4"}  # no cuisine held out whole, none left out
    for g in groups:
        in_group = [r for r in dishes if r[:1] == g]
        held = [r for r in split.recipe_types if r[:1] == g]
        assert 0 < len(held) < len(in_group)


def test_every_video_of_a_held_out_dish_is_evaluated_and_none_is_retrieved_from(youcook2_annotations: Path) -> None:
    split = read_split()
    unseen, seen_train = split_videos(youcook2_annotations, youcook2_annotations.parent / "label_foodtype.csv", split)
    assert {v.dish for v in unseen} == set(split.names)
    assert not {v.dish for v in seen_train} & set(split.names)
    assert len(unseen) > 2 * len(split.names)  # training and validation videos of each held-out dish


def test_a_checkpoint_trained_on_held_out_dishes_is_refused(tmp_path: Path) -> None:
    split = UnseenSplit(("999",), ("tuna melt",), 0, 0.2)
    with pytest.raises(EvalError, match="records no training queries"):
        check_not_trained_on(tmp_path, split)
    # the shipped default was trained on all 89 dishes, so on every held-out one
    with pytest.raises(EvalError, match="was trained on 18 held-out dishes"):
        check_not_trained_on(DEFAULT, read_split())
    (tmp_path / "train_queries.json").write_text('["how to make toast"]')
    check_not_trained_on(tmp_path, split)  # never saw the tuna melt: accepted


def _video(vid: str, dish: str, steps: list[str]) -> EvalVideo:
    return EvalVideo(vid, dish, make_query(dish), steps)


def test_nearest_dish_baselines_read_the_name_not_the_answer() -> None:
    enc = SentenceEncoder()
    seen = [
        _video("a1", "shepherd's pie", ["brown the lamb", "add the vegetables", "top with mashed potato", "bake"]),
        _video("a2", "shepherd's pie", ["brown the lamb", "add stock", "top with mashed potato", "bake"]),
        _video("a3", "shepherd's pie", ["fry the onion", "top with potato"]),
        _video("b1", "miso soup", ["heat dashi", "add miso", "add tofu"]),
    ]
    nearest = NearestDish(seen, enc)
    assert nearest("cottage pie") == "shepherd's pie" and nearest("ramen soup") == "miso soup"
    retrieved = NearestDishRetrieval(nearest)("how to make cottage pie")
    assert retrieved in [v.steps for v in seen[:3]]
    typical = NearestDishTypical(nearest)("how to make cottage pie")
    assert typical == seen[0].steps or typical == seen[1].steps  # the medoid, not the odd one out


def test_calibration_scores_one_real_video_against_the_dishs_others() -> None:
    enc = SentenceEncoder()
    same = ["boil the water", "add the pasta", "drain"]
    videos = [_video("x1", "pasta", same), _video("x2", "pasta", same), _video("x3", "pasta", same),
              _video("y1", "toast", ["toast the bread"])]  # fmt: skip
    row = calibration(videos, enc)
    assert row["n"] == 2  # the chosen pasta video against the two others; toast has no pair
    assert row["rouge_l"] == pytest.approx(1.0) and row["semantic_sim"] == pytest.approx(1.0, abs=1e-5)
    assert row["step_count_error"] == 0


def test_training_can_leave_the_held_out_dishes_out() -> None:
    from director.data import Episode
    from director.train import without_unseen

    episodes = [Episode("how to make Kimchi", []), Episode("how to make toast", []),
                Episode("how to make samosa", [])]  # fmt: skip
    assert [e.query for e in without_unseen(episodes)] == ["how to make toast"]


def test_the_neighbour_prompt_shows_the_nearest_dishs_typical_recipe() -> None:
    from director.backbone import BackboneConfig, load_backbone
    from director.evaluate import ZeroShotBaseline
    from director.unseen import NeighbourPromptBaseline

    enc = SentenceEncoder()
    seen = [_video("a1", "shepherd's pie", ["brown the lamb", "bake"]), _video("b1", "miso soup", ["add miso"])]
    tiny = load_backbone(BackboneConfig(kind="tiny"))  # the real Llama class at toy size, random weights
    zero_shot = ZeroShotBaseline(tiny.model, tiny.tokenizer, max_new_tokens=8)
    prompts: list[str] = []
    generate = zero_shot._generate
    zero_shot._generate = lambda text: prompts.append(text) or generate(text)  # record what the model is shown
    steps = NeighbourPromptBaseline(zero_shot, NearestDishTypical(NearestDish(seen, enc)))("how to make cottage pie")
    assert isinstance(steps, list) and len(prompts) == 1
    assert "Here are the steps to make shepherd's pie:\n1. brown the lamb\n2. bake" in prompts[0]
    assert "List the steps to how to make cottage pie" in prompts[0]


def test_seen_only_scores_the_dishes_outside_the_held_out_split(youcook2_annotations: Path, tmp_path: Path) -> None:
    import json

    from director.cli import main

    out = tmp_path / "ev"
    argv = ["eval", "--preset", "tiny", "--annotations", str(youcook2_annotations), "--skip-director", "--baselines",
            "--out", str(out)]  # fmt: skip
    assert main(argv + ["--seen-only", "--unseen"]) == 2 and not out.exists()
    assert main(argv + ["--seen-only", "--limit", "20"]) == 0
    held = {q.lower() for q in read_split().queries()}
    queries = {json.loads(line)["query"].lower() for line in (out / "plans.jsonl").read_text().splitlines()}
    assert len(queries) >= 2 and not queries & held
    assert json.loads((out / "results.json").read_text())["split"] == "validation (seen dishes only)"


def test_a_resumed_evaluation_refuses_plans_of_another_end_rule(youcook2_annotations: Path, tmp_path: Path) -> None:
    """``--out`` caches plans by video: rescoring a checkpoint with another ``plan.end_threshold`` into the same
    folder must not reuse the old plans as if the new rule had made them."""
    import json

    from director.cli import main

    out = tmp_path / "ev"
    argv = ["eval", "--preset", "default", "--seen-only", "--limit", "2", "--annotations", str(youcook2_annotations),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    plans = (out / "plans.jsonl").read_text()
    first = json.loads((out / "results.json").read_text())["results"]["director"]
    assert main(argv) == 0  # the same planner resumes: every plan reused
    assert (out / "plans.jsonl").read_text() == plans
    assert main(argv + ["plan.end_threshold=0.02"]) == 2  # P(Done) >= 0.02 ends plans early: other plans
    assert (out / "plans.jsonl").read_text() == plans
    fresh = tmp_path / "ev2"
    assert main(argv[:-1] + [str(fresh), "plan.end_threshold=0.02"]) == 0
    assert json.loads((fresh / "results.json").read_text())["results"]["director"]["pred_steps"] < first["pred_steps"]
