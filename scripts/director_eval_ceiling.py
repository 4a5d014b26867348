"""How far could a recipe planner go on `director eval`? Scores two reference planners next to cached plans.

    python scripts/director_eval_ceiling.py [runs/director-eval/plans.jsonl] [--shared ../shared/data]

Reads the plans that ``director eval`` cached (``OUT/plans.jsonl``) and prints, on the YouCook2 validation
videos with the same order-aware semantic similarity:

- each cached planner's score, and the director's plans cut after k steps (k = 5..8): how much the end rule
  costs;
- the *medoid* planner: for each dish, the training video whose steps are most similar (on average, with the
  same metric) to the other training videos of that dish -- the "most typical recipe" the training split holds.
  It reads only the training split, so it is a fair reference for what a planner that writes the typical
  recipe of a dish can reach; retrieval (one training video of the dish, fixed by seed) is the noisy version.

About 3-10 minutes on 2 CPU cores (the medoid compares every pair of training videos of each dish).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", nargs="?", default="runs/director-eval/plans.jsonl")
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()

    from director.evaluate import SentenceEncoder, load_eval_videos, medoid, ordered_semantic_similarity

    yc = Path(args.shared) / "youcook2"
    ann, labels = yc / "youcookii_annotations_trainval.json", yc / "label_foodtype.csv"
    for need in (Path(args.plans), ann):
        if not need.is_file():
            print(f"error: {need} not found (run director eval first / pass --shared)", file=sys.stderr)
            return 2
    val = load_eval_videos(ann, labels, "validation")
    train = load_eval_videos(ann, labels, "training")
    enc = SentenceEncoder()
    plans: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for line in Path(args.plans).read_text().splitlines():
        r = json.loads(line)
        plans[r["planner"]][r["query"]] = r["steps"]

    def score(get) -> float:
        return statistics.mean(ordered_semantic_similarity(get(v.query), v.steps, enc) for v in val)

    for name, by_query in plans.items():
        print(f"{name:40s} {score(lambda q, p=by_query: p[q]):.4f}", flush=True)
    if "director" in plans:
        d = plans["director"]
        for k in (5, 6, 7, 8):
            label = f"director, plans cut after {k} steps"
            print(f"{label:40s} {score(lambda q, k=k: d[q][:k]):.4f}", flush=True)
    by_dish = defaultdict(list)
    for v in train:
        by_dish[v.query].append(v.steps)
    typical = {}
    for q, recipes in by_dish.items():
        typical[q] = recipes[medoid(recipes, lambda a, b: ordered_semantic_similarity(a, b, enc))]
    print(f"{'medoid training video of the dish':40s} {score(lambda q: typical.get(q, [])):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
