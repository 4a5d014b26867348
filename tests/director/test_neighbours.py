"""Retrieval-augmented planning (director/neighbours.py): the nearest *other* dish's typical recipe in the prompt,
trained and planned in the same format, kept in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auteur.config import load_config
from director.backbone import DirectorError
from director.checkpoint import build_director
from director.config import PRESETS, DirectorConfig
from director.data import Episode, SequenceBuilder, prompt_text
from director.neighbours import FILE, MAX_STEPS, NeighbourRecipes
from director.plan import Planner
from director.train import train


def _ep(dish: str, actions: list[str], vid: str) -> Episode:
    return Episode(f"how to make {dish}", [(a, "", None) for a in actions], source=f"b/{vid}")


EPISODES = [
    _ep("fried rice", ["cook the rice", "fry the egg", "add the rice to the wok"], "v1"),
    _ep("fried rice", ["cook the rice", "fry the egg", "add the rice"], "v2"),
    _ep("fried rice", ["boil water"], "v3"),  # the outlier: not the medoid
    _ep("chocolate cake", ["mix flour and sugar", "bake the batter"], "v4"),
    _ep("egg fried rice", ["whisk the eggs", "fry the rice with the eggs"], "v5"),
]


def test_each_dish_keeps_its_most_typical_recipe_and_the_neighbour_is_never_the_dish_itself() -> None:
    n = NeighbourRecipes.from_episodes(EPISODES)
    assert n.dishes == ["chocolate cake", "egg fried rice", "fried rice"]
    assert n.recipes["fried rice"] == ["cook the rice", "fry the egg", "add the rice to the wok"]
    # a training dish is shown another dish, as a dish never seen will be
    assert n.nearest("how to make fried rice") == "egg fried rice"
    assert n.nearest("how to make egg fried rice") == "fried rice"
    assert n.nearest("How to make Fried Rice?") == "egg fried rice"  # the dish, however the query is written
    assert n.nearest("how to make a sponge cake") == "chocolate cake"
    line = n.line("how to make fried rice")
    assert line == "Like egg fried rice: whisk the eggs; fry the rice with the eggs\n"
    assert prompt_text("how to make fried rice", n) == "Recipe: how to make fried rice\n" + line
    assert prompt_text("how to make fried rice") == "Recipe: how to make fried rice\n"


def test_long_recipes_are_cut_and_the_file_round_trips(tmp_path: Path) -> None:
    n = NeighbourRecipes({"soup": [f"step {i}" for i in range(30)], "bread": ["knead", "bake."]})
    assert n.line("how to make bread") == "Like soup: " + "; ".join(f"step {i}" for i in range(MAX_STEPS)) + "\n"
    assert n.line("how to make soup") == "Like bread: knead; bake\n"
    n.save(tmp_path)
    back = NeighbourRecipes.load(tmp_path)
    assert back is not None and back.recipes == n.recipes
    assert NeighbourRecipes.load(tmp_path / "nowhere") is None
    (tmp_path / FILE).write_text(json.dumps({"format": "director-neighbour-recipes/1", "recipes": {"a": [1]}}))
    with pytest.raises(DirectorError, match="unreadable") as e:
        NeighbourRecipes.load(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(DirectorError, match="at least two dishes"):
        NeighbourRecipes({"soup": ["boil"]})


def test_a_retrieval_augmented_director_trains_and_plans_in_one_format(tiny_cookgen, tmp_path: Path) -> None:
    overrides = [f"data={','.join(map(str, tiny_cookgen))}", f"out={tmp_path / 'run'}", "train.max_steps=2",
                 "dataset.neighbour_recipes=true"]  # fmt: skip
    cfg = load_config(DirectorConfig, "tiny", overrides, preset_dir=PRESETS)
    final = train(cfg, progress=False)
    saved = json.loads((final / FILE).read_text())["recipes"]
    assert sorted(saved) == ["Fried Egg", "Pancakes", "Tuna Sandwich"]  # the training split's dishes only
    assert saved["Fried Egg"] == ["Heat oil in a pan.", "Crack an egg into the pan.", "Season with salt."]

    director, backbone, _ = build_director(cfg.backbone, cfg.model, None, checkpoint=final)
    assert director.neighbours is not None and director.neighbours.recipes == saved
    query = "how to make Fried Egg"
    line = director.neighbours.line(query)
    assert line.startswith("Like ") and not line.startswith("Like Fried Egg")
    # training tokenized the same prompt the planner feeds
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order,
                              cfg.dataset.max_tokens, director.neighbours)  # fmt: skip
    sample = builder.episode_window(Episode(query, [("Heat oil in a pan.", "", None)]), 0, 4)
    prompt_ids = backbone.tokenizer(prompt_text(query, director.neighbours), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert sample["input_ids"][:n] == prompt_ids and sample["labels"][:n] == [-100] * n
    fed: list[str] = []
    planner = Planner(director, cfg.plan)
    ids = planner._ids
    planner._ids = lambda text: (fed.append(text), ids(text))[1]
    planner.plan(query, steps=1)
    assert fed[0] == "Recipe: how to make Fried Egg\n" + line
    # a director trained without them plans from the plain prompt
    cfg.dataset.neighbour_recipes, cfg.out = False, str(tmp_path / "plain")
    plain, _, _ = build_director(cfg.backbone, cfg.model, None, checkpoint=train(cfg, progress=False))
    assert plain.neighbours is None and not (tmp_path / "plain" / "final" / FILE).exists()
