"""Calibrate the default director's end decision for captioned plans on YouCook2 *training* recipes.

    python scripts/calibrate_end_threshold.py [--dishes 16] [--preset default] [--shared ../shared/data]
        [--no-captions] [--objective length|semantic] [--seen-only] [key=value ...]

The director ends a plan when P(Done) / (P(Done) + P(Step)) at a step boundary reaches a threshold. Plans
without captions use 0.5 (the likelier token). With captions the context holds caption lines, which only the
few captioned demo recipes had in training, and P(Done) stays lower; this script plans ``--dishes`` training
dishes (seeded choice; the validation split is never read) with captions on for ``plan.max_steps`` steps,
records P(Done) after every step, and prints the threshold whose implied plan lengths are closest (mean absolute
error) to the dishes' mean training step counts. Put the printed value in the preset's
``plan.end_threshold_captions``. With ``--no-captions`` it calibrates ``plan.end_threshold`` (plans of actions
only, as ``director eval`` makes them) the same way. ``key=value`` overrides the preset (e.g.
``checkpoint=runs/x/final`` to calibrate a new checkpoint before shipping it). ``--dishes 0`` plans every
training dish.

``--objective semantic`` picks the threshold that maximises ``director eval``'s order-aware semantic similarity
of the (truncated) plans against the dishes' *training* videos instead of the length error: a greedy plan
ended at step k is the max-length plan cut after k steps, so one plan per dish scores every threshold. The
validation split is never read; note that the queries ("how to make <dish>") are the same in both splits, so
this tunes the end rule on the dishes that are evaluated, through their training videos only.

``--seen-only`` leaves out the held-out dishes of ``director/eval/unseen_dishes.json`` (every video of them), for a
checkpoint trained on the unseen-dish split: its end rule is then chosen on the seen dishes' training videos, and
``director eval --unseen`` scores it on dishes the threshold never saw either.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def implied_length(p_done: list[float], tau: float, max_steps: int) -> int:
    """Steps a greedy plan would have: the decision before step k+1 sees p_done[k-1] (k >= 1)."""
    for k, p in enumerate(p_done, start=1):
        if p >= tau:
            return k
    return max_steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--dishes", type=int, default=16)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-captions", action="store_true", help="calibrate plan.end_threshold (actions only)")
    ap.add_argument("--objective", choices=("length", "semantic"), default="length")
    ap.add_argument("--seen-only", action="store_true", help="leave out the held-out dishes of the unseen split")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    args = ap.parse_args()

    from auteur.plan import VisualSpace
    from director.checkpoint import build_director
    from director.cli import resolve_config
    from director.evaluate import load_eval_videos
    from director.plan import Planner

    yc = Path(args.shared) / "youcook2"
    ann, labels = yc / "youcookii_annotations_trainval.json", yc / "label_foodtype.csv"
    if args.seen_only:  # the training videos of the dishes outside the held-out split (the validation split unread)
        from director.unseen import read_split, split_videos

        _, videos = split_videos(ann, labels, read_split())
    else:
        videos = load_eval_videos(ann, labels, "training")
    by_dish: dict[str, list[int]] = defaultdict(list)
    refs: dict[str, list[list[str]]] = defaultdict(list)
    queries = {}
    for v in videos:
        by_dish[v.dish].append(len(v.steps))
        refs[v.dish].append(v.steps)
        queries[v.dish] = v.query
    dishes = sorted(by_dish) if args.dishes <= 0 else random.Random(args.seed).sample(sorted(by_dish), args.dishes)

    cfg = resolve_config(args.preset, args.overrides)
    cfg.plan.captions = not args.no_captions
    key = "end_threshold" if args.no_captions else "end_threshold_captions"
    director, _, _ = build_director(cfg.backbone, cfg.model, VisualSpace("unset", 1), cfg.checkpoint)
    planner = Planner(director, cfg.plan)
    rows = []
    actions: dict[str, list[str]] = {}
    for dish in dishes:
        res = planner.plan(queries[dish], steps=cfg.plan.max_steps, seed=0)
        # the decision before step k+1 is made from the logits after step k; a fixed --steps skips it, so
        # recompute it here from the recorded trajectory of a run without --steps
        p_done = res.stats.get("p_done") or []
        rows.append((dish, statistics.mean(by_dish[dish]), p_done))
        actions[dish] = [s.action for s in res.steps]
        print(
            f"{dish:28s} train mean {statistics.mean(by_dish[dish]):5.2f} steps  P(Done): "
            + " ".join(f"{p:.2f}" for p in p_done),
            flush=True,
        )

    def length_error(tau: float) -> float:
        return statistics.mean(abs(implied_length(p, tau, cfg.plan.max_steps) - n) for _, n, p in rows)

    taus = [i / 100 for i in range(2, 96)]
    if args.objective == "length":
        scores = {tau: -length_error(tau) for tau in taus}
    else:
        from director.evaluate import SentenceEncoder, ordered_semantic_similarity

        enc = SentenceEncoder()
        memo: dict[tuple[str, int], float] = {}

        def semantic(tau: float) -> float:
            vals = []
            for dish, _, p in rows:
                k = implied_length(p, tau, cfg.plan.max_steps)
                if (dish, k) not in memo:
                    memo[dish, k] = statistics.mean(
                        ordered_semantic_similarity(actions[dish][:k], ref, enc) for ref in refs[dish]
                    )
                vals += [memo[dish, k]] * len(refs[dish])  # weighted by videos, as director eval averages
            return statistics.mean(vals)

        scores = {tau: semantic(tau) for tau in taus}
    best = max(taus, key=lambda t: (scores[t], -abs(t - 0.5)))
    extra = ""
    if args.objective == "semantic":
        extra = f"; training-video semantic sim {scores[best]:.4f} (0.50: {scores[0.5]:.4f})"
    print(
        f"best {key} = {best:.2f} by {args.objective} (mean |length error| {length_error(best):.2f} steps on "
        f"{len(rows)} {'seen ' if args.seen_only else ''}training dishes; 0.50 gives {length_error(0.5):.2f}{extra})"
    )
    return 0


if __name__ == "__main__":
    from auteur.cliutil import run_cli

    sys.exit(run_cli(main))  # bad input (missing data, unknown preset): one line, exit code 2
