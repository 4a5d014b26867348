"""Would sampling several plans and choosing one beat greedy decoding on `director eval`? A probe.

    python scripts/director_sampling_probe.py [--dishes 17] [--samples 8] [--temperature 0.7]
        [--out runs/sampling-probe.jsonl] [--shared ../shared/data] [--preset default]

For ``--dishes`` validation dishes (a seeded shuffle of the 89), plans greedily and draws ``--samples`` sampled
plans (actions only, as ``director eval`` plans; seeds 1..K), cached in ``--out`` (one line per dish, so a killed
run resumes). Then prints the order-aware semantic similarity, over those dishes' validation videos, of:

- greedy (what ``director eval`` scores) and one sample;
- minimum-Bayes-risk choices (Kumar & Byrne 2004): the sample with the highest mean similarity to the other
  samples, with the eval's own metric as utility (with and without the greedy plan among the candidates) or
  with ROUGE-L;
- an oracle that picks, for each video, the sample that scores best against that video's ground truth (not a
  planner: it reads the answer; it bounds what any choice among the samples could reach);
- retrieval, the baseline the issue's goal names, on the same videos.

About 40 s per dish on 2 CPU cores (nine plans), then a minute of scoring.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dishes", type=int, default=17)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="runs/sampling-probe.jsonl")
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()
    if args.dishes < 1 or args.samples < 2 or args.temperature <= 0:
        print("error: need --dishes >= 1, --samples >= 2 and --temperature > 0", file=sys.stderr)
        return 2

    from auteur.io import atomic_write_text
    from auteur.plan import VisualSpace
    from director.checkpoint import build_director
    from director.cli import resolve_config
    from director.evaluate import (
        RetrievalBaseline,
        SentenceEncoder,
        load_eval_videos,
        medoid,
        ordered_semantic_similarity,
        rouge_l,
    )
    from director.plan import Planner

    yc = Path(args.shared) / "youcook2"
    ann, labels = yc / "youcookii_annotations_trainval.json", yc / "label_foodtype.csv"
    if not ann.is_file():
        print(f"error: {ann} not found (pass --shared)", file=sys.stderr)
        return 2
    val = load_eval_videos(ann, labels, "validation")
    by_query = defaultdict(list)
    for v in val:
        by_query[v.query].append(v)
    queries = sorted(by_query)
    random.Random(0).shuffle(queries)
    queries = queries[: args.dishes]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    if out.is_file():
        whole = []
        for line in out.read_text().splitlines():
            try:
                whole.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill cut short: that dish is planned again
                continue
        rows = {r["query"]: r for r in whole if r.get("query") in queries}
        # keep only whole lines, so that what is appended next starts on a line of its own
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in whole))
    todo = [q for q in queries if q not in rows]
    if todo:
        cfg = resolve_config(args.preset, [])
        cfg.plan.captions = False
        director, _, _ = build_director(cfg.backbone, cfg.model, VisualSpace("unset", 1), cfg.checkpoint)
        cfg.plan.temperature = 0.0
        greedy = Planner(director, cfg.plan)
        sample_cfg = copy.deepcopy(cfg.plan)
        sample_cfg.temperature = args.temperature
        sampler = Planner(director, sample_cfg)
        with out.open("a") as fh:
            for i, q in enumerate(todo, 1):
                row = {
                    "query": q,
                    "greedy": [s.action for s in greedy.plan(q, seed=0).steps],
                    "samples": [[s.action for s in sampler.plan(q, seed=k).steps] for k in range(1, args.samples + 1)],
                }
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                rows[q] = row
                print(f"[{i}/{len(todo)}] {q}", file=sys.stderr, flush=True)

    enc = SentenceEncoder()
    retrieval = RetrievalBaseline(load_eval_videos(ann, labels, "training"))

    def sem(a: list[str], b: list[str]) -> float:
        return ordered_semantic_similarity(a, b, enc)

    def mbr(candidates: list[list[str]], utility) -> list[str]:  # minimum Bayes risk: the candidates' medoid
        return candidates[medoid(candidates, utility)]

    scores: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        r = rows[q]
        samples = [s for s in r["samples"] if s]
        picks = {
            "greedy": r["greedy"],
            "one sample (seed 1)": samples[0],
            "MBR, semantic utility": mbr(samples, sem),
            "MBR, semantic utility, greedy a candidate": mbr(samples + [r["greedy"]], sem),
            "MBR, ROUGE-L utility": mbr(samples, rouge_l),
            "retrieval (same-dish training video)": retrieval(q),
        }
        for v in by_query[q]:
            for name, plan in picks.items():
                scores[name].append(sem(plan, v.steps))
            scores["oracle: best sample per video (reads the answer)"].append(max(sem(p, v.steps) for p in samples))
    n = len(scores["greedy"])
    print(f"{len(queries)} dishes, {n} validation videos, {args.samples} samples at temperature {args.temperature}")
    for name, values in scores.items():
        print(f"  {name:50s} {statistics.mean(values):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
