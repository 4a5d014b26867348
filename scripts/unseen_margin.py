"""How sure is a director's margin over the nearest-dish baselines on the unseen-dish split?

    python scripts/unseen_margin.py runs/eval-unseen-plain [runs/eval-unseen-x ...] \
        [--annotations ../shared/data/youcook2/youcookii_annotations_trainval.json] [--resamples 10000]

Reads the director plans that ``director eval --unseen --out DIR`` stored (``DIR/plans.jsonl``), rebuilds the two
deterministic baselines (a training video of the nearest seen dish; the nearest seen dish's typical recipe) on the
same videos, scores every video with ``director eval``'s order-aware semantic similarity, and prints, per eval
folder, the mean over the held-out videos and a 95 % interval of the director's margin over each baseline by a
paired bootstrap over the 18 held-out *dishes* (videos of a dish share one plan, so the dish is the unit that
varies; resampled with ``random.Random(0)``). Trains nothing and plans nothing with a model.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bootstrap(per_dish: dict[str, list[float]], resamples: int) -> tuple[float, float]:
    """95 % interval of the mean over videos when the dishes are resampled with replacement."""
    rng = random.Random(0)
    dishes = sorted(per_dish)
    means = []
    for _ in range(resamples):
        pick = [rng.choice(dishes) for _ in dishes]
        vals = [x for d in pick for x in per_dish[d]]
        means.append(sum(vals) / len(vals))
    means.sort()
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("evals", nargs="+", type=Path, help="folders written by director eval --unseen --out")
    p.add_argument(
        "--annotations", type=Path, default=Path("../shared/data/youcook2/youcookii_annotations_trainval.json")
    )
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    args = p.parse_args()
    if not args.annotations.is_file():
        print(f"error: {args.annotations} does not exist", file=sys.stderr)
        return 2
    if args.resamples < 40:
        print(f"error: --resamples must be at least 40, not {args.resamples}", file=sys.stderr)
        return 2
    for folder in args.evals:
        if not (folder / "plans.jsonl").is_file():
            print(
                f"error: {folder / 'plans.jsonl'} does not exist (director eval --unseen --out {folder})",
                file=sys.stderr,
            )
            return 2
    from auteur.sentence import SentenceEncoder
    from director.evaluate import ordered_semantic_similarity, read_cache
    from director.unseen import NearestDish, NearestDishRetrieval, NearestDishTypical, read_split, split_videos

    labels = args.annotations.parent / "label_foodtype.csv"
    videos, seen_train = split_videos(args.annotations, labels if labels.is_file() else None, read_split())
    enc = SentenceEncoder()
    nearest = NearestDish(seen_train, enc)
    baselines = {
        "nearest-dish retrieval": NearestDishRetrieval(nearest),
        "nearest typical recipe": NearestDishTypical(nearest),
    }
    base_plans = {name: {q: b(q) for q in sorted({v.query for v in videos})} for name, b in baselines.items()}
    base_scores = {
        name: {v.video_id: ordered_semantic_similarity(plans[v.query], v.steps, enc) for v in videos}
        for name, plans in base_plans.items()
    }
    for name, s in base_scores.items():
        print(f"{name}: {sum(s.values()) / len(s):.4f} over {len(s)} videos")
    for folder in args.evals:
        plans = {
            vid: steps
            for (planner, vid), (_, steps) in read_cache(folder / "plans.jsonl").items()
            if planner == "director"
        }
        missing = [v.video_id for v in videos if v.video_id not in plans]
        if missing:
            print(f"error: {folder} has no director plan for {len(missing)} held-out videos", file=sys.stderr)
            return 2
        own = {v.video_id: ordered_semantic_similarity(plans[v.video_id], v.steps, enc) for v in videos}
        print(f"{folder}: director {sum(own.values()) / len(own):.4f}")
        for name, s in base_scores.items():
            per_dish: dict[str, list[float]] = defaultdict(list)
            for v in videos:
                per_dish[v.dish].append(own[v.video_id] - s[v.video_id])
            diffs = [x for xs in per_dish.values() for x in xs]
            lo, hi = bootstrap(per_dish, args.resamples)
            wins = sum(sum(xs) > 0 for xs in per_dish.values())
            print(f"  margin over {name}: {sum(diffs) / len(diffs):+.4f} (95 % over dishes {lo:+.4f} .. {hi:+.4f}); "
                  f"ahead on {wins} of {len(per_dish)} dishes")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
