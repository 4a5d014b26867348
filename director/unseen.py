"""The unseen-dish evaluation: dishes the director never saw, and the baselines it must beat on them.

``director eval`` on YouCook2's validation videos scores dishes the default was trained on (the same 89 dishes
are in both official splits), so it measures recall of 89 recipes, not planning. Here a fifth of the dish
types is held out: :data:`SPLIT_FILE` (``director/eval/unseen_dishes.json``, written once by
``scripts/make_unseen_split.py`` with a fixed seed, spread over YouCook2's four cuisine groups — the first digit
of the recipe type: 1xx American/Mexican, 2xx European/Middle Eastern, 3xx East Asian, 4xx South/Southeast
Asian). ``director eval --unseen`` plans "how to make <dish>" for each held-out dish and scores the plan against
*every* video of that dish (training and validation subsets), with the same three metrics.

A checkpoint that was trained on any held-out dish is refused (its ``train_queries.json`` says what it saw):
its score would read the answer. Baselines, computed from the seen dishes' training videos only:

- **nearest-dish retrieval**: the nearest seen dish by all-MiniLM-L6-v2 cosine of the dish *names* (not by
  recipe type or cuisine, which would read the answer), answered with one of its training videos (fixed per
  dish by a seeded shuffle, as :class:`director.evaluate.RetrievalBaseline` does);
- **nearest-dish typical recipe**: the same nearest dish, answered with its most typical training recipe (the
  ROUGE-L medoid among its training videos, as ``scripts/build_typical_recipes.py`` picks it);
- **real-video calibration**: for each held-out dish, one of its own videos (fixed by the seed) scored against
  the dish's other videos — what "as good as a real recipe of this dish" scores under these metrics. A dish
  with one video has no calibration pair and is left out of that row (the row says how many videos it covers).
- the **zero-shot** base model is :class:`director.evaluate.ZeroShotBaseline`, as in ``director eval``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from director.evaluate import (
    EvalError,
    EvalVideo,
    SentenceEncoder,
    load_eval_videos,
    make_query,
    medoid,
    ordered_semantic_similarity,
    rouge_l,
    step_count_error,
)

SPLIT_FILE = Path(__file__).parent / "eval" / "unseen_dishes.json"
SPLIT_FORMAT = "director-unseen-dishes/1"


@dataclass(frozen=True)
class UnseenSplit:
    """The held-out dish types: recipe-type ids and their names, and how they were chosen."""

    recipe_types: tuple[str, ...]
    names: tuple[str, ...]
    seed: int
    fraction: float

    def queries(self) -> list[str]:
        return [make_query(n) for n in self.names]


def choose_unseen(dishes: dict[str, str], fraction: float = 0.2, seed: int = 0) -> UnseenSplit:
    """Hold out ``fraction`` of ``dishes`` ({recipe type id: name}), the same fraction of each cuisine group
    (first digit of the id; rounded, at least one per group), chosen by ``random.Random(seed)``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rid in sorted(dishes):
        groups[rid[:1]].append(rid)
    rng = random.Random(seed)
    chosen: list[str] = []
    for g in sorted(groups):
        ids = groups[g]
        chosen += rng.sample(ids, max(1, round(fraction * len(ids))))
    chosen.sort()
    return UnseenSplit(tuple(chosen), tuple(dishes[r] for r in chosen), seed, fraction)


def write_split(split: UnseenSplit, path: Path = SPLIT_FILE) -> None:
    from auteur.io import atomic_write_json

    atomic_write_json(
        path,
        {
            "format": SPLIT_FORMAT,
            "seed": split.seed,
            "fraction": split.fraction,
            "how": "scripts/make_unseen_split.py: per cuisine group (first digit of the recipe type), "
            "round(fraction * dishes) chosen by random.Random(seed), over the dishes with annotated videos",
            "dishes": [{"recipe_type": r, "name": n} for r, n in zip(split.recipe_types, split.names)],
        },
    )


def read_split(path: Path = SPLIT_FILE) -> UnseenSplit:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != SPLIT_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        dishes = [(str(d["recipe_type"]), str(d["name"])) for d in data["dishes"]]
        return UnseenSplit(tuple(r for r, _ in dishes), tuple(n for _, n in dishes), int(data["seed"]),
                           float(data["fraction"]))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalError(f"unseen-dish split {path} is unreadable: {e}") from None


def annotated_dishes(annotations: Path) -> dict[str, str]:
    """{recipe type id: name} of the dishes with at least one annotated video (either subset)."""
    labels = annotations.parent / "label_foodtype.csv"
    names: dict[str, str] = {}
    for line in labels.read_text(encoding="utf-8").splitlines():
        rid, _, name = line.partition(",")
        if rid.strip() and name.strip():
            names[rid.strip()] = name.strip()
    data = json.loads(annotations.read_text(encoding="utf-8"))
    present = {str(v.get("recipe_type", "")).strip() for v in data["database"].values() if v.get("annotations")}
    return {r: names[r] for r in sorted(present) if r in names}


def split_videos(
    annotations: Path, labels: Path | None, split: UnseenSplit
) -> tuple[list[EvalVideo], list[EvalVideo]]:
    """(every video of the held-out dishes, both subsets; the *training* videos of the seen dishes)."""
    held = set(split.names)
    train = load_eval_videos(annotations, labels, "training")
    val = load_eval_videos(annotations, labels, "validation")
    unseen = [v for v in train + val if v.dish in held]
    seen_train = [v for v in train if v.dish not in held]
    missing = held - {v.dish for v in unseen}
    if missing:
        raise EvalError(f"held-out dishes without videos in {annotations}: {', '.join(sorted(missing))}")
    return unseen, seen_train


def check_not_trained_on(checkpoint: str | Path, split: UnseenSplit) -> None:
    """Refuse a checkpoint that saw a held-out dish, or that does not say what it saw."""
    from director.checkpoint import read_train_queries

    queries = read_train_queries(checkpoint)
    if queries is None:
        raise EvalError(
            f"checkpoint {checkpoint} records no training queries (train_queries.json), so it cannot show it "
            "never saw the held-out dishes"
        )
    seen = sorted(set(q.lower() for q in queries) & {q.lower() for q in split.queries()})
    if seen:
        raise EvalError(
            f"checkpoint {checkpoint} was trained on {len(seen)} held-out dishes (e.g. {seen[0]!r}): its unseen-dish "
            "score would read the answer; evaluate a checkpoint trained without them (docs/director.md)"
        )


class NearestDish:
    """The nearest seen dish to a query's dish, by MiniLM cosine of the dish names."""

    def __init__(self, seen_train: list[EvalVideo], enc: SentenceEncoder) -> None:
        self.by_dish: dict[str, list[EvalVideo]] = defaultdict(list)
        for v in seen_train:
            self.by_dish[v.dish].append(v)
        self.dishes = sorted(self.by_dish)
        if not self.dishes:
            raise EvalError("no seen-dish training videos to retrieve from")
        self.enc = enc
        self.emb = enc.encode(self.dishes)

    def __call__(self, dish: str) -> str:
        sims = self.enc.encode([dish]) @ self.emb.T
        return self.dishes[int(sims[0].argmax())]


class NearestDishRetrieval:
    """Answer with one training video of the nearest seen dish (fixed per dish by ``random.Random(seed)``)."""

    def __init__(self, nearest: NearestDish, seed: int = 0) -> None:
        self.nearest, self.seed = nearest, seed

    def __call__(self, query: str) -> list[str]:
        from director.evaluate import dish_of_query

        videos = sorted(self.nearest.by_dish[self.nearest(dish_of_query(query))], key=lambda v: v.video_id)
        random.Random(self.seed).shuffle(videos)
        return list(videos[0].steps)


class NearestDishTypical:
    """Answer with the nearest seen dish's most typical training recipe (ROUGE-L medoid)."""

    def __init__(self, nearest: NearestDish) -> None:
        self.nearest = nearest
        self._typical: dict[str, list[str]] = {}

    def __call__(self, query: str) -> list[str]:
        from director.evaluate import dish_of_query

        dish = self.nearest(dish_of_query(query))
        if dish not in self._typical:
            videos = sorted(self.nearest.by_dish[dish], key=lambda v: v.video_id)
            plans = [v.steps for v in videos]
            self._typical[dish] = list(plans[medoid(plans, rouge_l)])
        return self._typical[dish]


def calibration(videos: list[EvalVideo], enc: SentenceEncoder, seed: int = 0) -> dict[str, Any]:
    """One real video per held-out dish (fixed by the seed) scored against the dish's other videos; the means
    over those pairs, in :func:`director.evaluate.evaluate`'s format (``n``: the videos scored against)."""
    by_dish: dict[str, list[EvalVideo]] = defaultdict(list)
    for v in videos:
        by_dish[v.dish].append(v)
    pairs = []
    for dish in sorted(by_dish):
        vs = sorted(by_dish[dish], key=lambda v: v.video_id)
        if len(vs) < 2:
            continue
        random.Random(seed).shuffle(vs)
        pairs += [(vs[0].steps, other.steps) for other in vs[1:]]
    n = len(pairs)
    if not n:
        return {"rouge_l": 0.0, "semantic_sim": 0.0, "step_count_error": 0.0, "pred_steps": 0.0, "n": 0}
    return {
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / n,
        "semantic_sim": sum(ordered_semantic_similarity(p, r, enc) for p, r in pairs) / n,
        "step_count_error": sum(step_count_error(p, r) for p, r in pairs) / n,
        "pred_steps": sum(len(p) for p, _ in pairs) / n,
        "n": n,
    }


class NeighbourPromptBaseline:
    """The zero-shot base model, shown the nearest seen dish's typical recipe first (retrieval-augmented prompting,
    no training): "Here are the steps to make <neighbour>: 1. … List the steps to <query> …"; greedy, the steps
    read by :func:`director.evaluate.parse_steps`. It measures whether the untrained base model can adapt a
    neighbour's recipe — the idea a retrieval-augmented director would be trained on."""

    def __init__(self, zero_shot: Any, typical: NearestDishTypical) -> None:
        self.zs, self.typical = zero_shot, typical

    def __call__(self, query: str) -> list[str]:
        from director.evaluate import ZERO_SHOT_PROMPT, dish_of_query, parse_steps

        dish = self.typical.nearest(dish_of_query(query))
        steps = self.typical(query)
        shown = "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps))
        content = f"Here are the steps to make {dish}:\n{shown}\n\n" + ZERO_SHOT_PROMPT.format(
            query=query.strip().rstrip("?.").strip()
        )
        return parse_steps(self.zs.generate_from(content))
