"""Retrieval-augmented planning: the nearest other dish's typical recipe, shown in the director's prompt.

A director trained with ``dataset.neighbour_recipes=true`` reads, after the query line, one line with a
neighbour's recipe::

    Recipe: how to make pad thai
    Like fried rice: heat oil in a wok; add the eggs and scramble; ...

and learns to *adapt* it to the query's dish rather than to recall one dish's recipe by heart (the idea of
retrieval-augmented generation, Lewis et al. 2020, applied to recipes). The neighbour is the training dish whose
name is nearest to the query's dish by all-MiniLM-L6-v2 cosine (:mod:`auteur.sentence`), **never the query's own
dish**: in training every recipe is shown another dish's recipe, as a dish the director never saw will be at
planning time. A dish's recipe here is its most typical training recipe (the ROUGE-L medoid of its training
videos' actions, as ``scripts/build_typical_recipes.py`` picks it), at most :data:`MAX_STEPS` steps.

The checkpoint keeps the recipes it can retrieve from (``neighbours.json``: its training dishes and their typical
recipes), so ``director plan`` builds the same prompt line without the training data.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from director.backbone import DirectorError

if TYPE_CHECKING:
    from director.data import Episode

FILE = "neighbours.json"
FORMAT = "director-neighbour-recipes/1"
MAX_STEPS = 12  # steps of a neighbour's recipe shown in the prompt (longer ones are cut)
LINE = "Like {dish}: {steps}\n"


def _dish(query: str) -> str:
    from director.evaluate import dish_of_query

    return dish_of_query(query)


class NeighbourRecipes:
    """The recipes a director retrieves from ({dish name: typical recipe's actions}) and the nearest-dish lookup."""

    def __init__(self, recipes: dict[str, list[str]], encoder_path: str | None = None) -> None:
        self.recipes = {d: [a.strip() for a in acts if a.strip()] for d, acts in sorted(recipes.items())}
        self.recipes = {d: acts for d, acts in self.recipes.items() if acts}
        if len(self.recipes) < 2:
            raise DirectorError("retrieval-augmented planning needs the recipes of at least two dishes")
        self.dishes = list(self.recipes)
        self._encoder_path = encoder_path
        self._emb = None
        self._lines: dict[str, str] = {}

    @classmethod
    def from_episodes(cls, episodes: list[Episode]) -> NeighbourRecipes:
        """Each dish's most typical recipe (ROUGE-L medoid of its recipes' actions) among ``episodes``."""
        from director.evaluate import medoid, rouge_l

        by_dish: dict[str, list[list[str]]] = defaultdict(list)
        for ep in sorted(episodes, key=lambda e: (e.query, e.source)):
            by_dish[_dish(ep.query)].append([a for a, _, _ in ep.steps])
        return cls({d: plans[medoid(plans, rouge_l)] for d, plans in by_dish.items()})

    def _encoder(self):
        from auteur.sentence import load_sentence_encoder

        return load_sentence_encoder(self._encoder_path)

    def nearest(self, query: str) -> str:
        """The dish nearest to the query's dish by MiniLM cosine of the names, other than the query's own dish."""
        enc = self._encoder()
        if self._emb is None:
            self._emb = enc.encode(self.dishes)
        dish = _dish(query)
        sims = (enc.encode([dish]) @ self._emb.T)[0]
        for i in sims.argsort(descending=True).tolist():
            if self.dishes[i].strip().lower() != dish.strip().lower():
                return self.dishes[i]
        raise AssertionError("unreachable: at least two dishes")

    def line(self, query: str) -> str:
        """The prompt line for ``query``: ``Like <neighbour>: <action>; <action>; ...`` and a newline."""
        if query not in self._lines:
            dish = self.nearest(query)
            steps = "; ".join(a.rstrip(".;") for a in self.recipes[dish][:MAX_STEPS])
            self._lines[query] = LINE.format(dish=dish, steps=steps)
        return self._lines[query]

    def save(self, folder: str | Path) -> None:
        from auteur.io import atomic_write_json

        atomic_write_json(Path(folder) / FILE, {"format": FORMAT, "max_steps": MAX_STEPS, "recipes": self.recipes})

    @classmethod
    def load(cls, folder: str | Path) -> NeighbourRecipes | None:
        """The checkpoint's recipes; None when it has none (a director trained without them)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            recipes = data["recipes"]
            if not isinstance(recipes, dict) or not all(
                isinstance(d, str) and isinstance(a, list) and all(isinstance(s, str) for s in a)
                for d, a in recipes.items()
            ):
                raise ValueError("'recipes' must map dish names to lists of actions")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DirectorError(f"{path} is unreadable: {e}") from None
        return cls(recipes)
