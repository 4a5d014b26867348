"""Planning speed of the director, printed as ratios against a baseline run in the same process.

    python benchmarks/plan_bench.py [--preset default] [--steps 8] [--repeats 2]

Prints, for an N-step plan (greedy, with captions):
- start: seconds to build the director (base LM from the converted cache, adapter, head), goal <= 5 s once the
  cache exists (the first run converts the GGUF, ~20-35 s, and is reported separately);
- decode: sampled tokens per second during the plan (fp32, this machine's cores), goal >= 20 tokens/s;
- the KV-cached planner against a loop that re-encodes the whole history at every token (same plan, same
  tokens), goal >= 3x;
- the preset's prompt-lookup drafting (``plan.lookup_tokens``) against token-by-token decoding with the same
  cache: same plan, decode tokens/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--query", default="how to cook a tuna sandwich")
    args = ap.parse_args()

    import torch

    from auteur.plan import VisualSpace
    from director.backbone import load_backbone
    from director.checkpoint import build_director
    from director.cli import resolve_config
    from director.plan import Planner

    cfg = resolve_config(args.preset, [])
    t0 = time.perf_counter()
    load_backbone(cfg.backbone)  # converts the GGUF once if the cache is missing
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    director, backbone, meta = build_director(cfg.backbone, cfg.model, VisualSpace("unset", 1), cfg.checkpoint)
    start = time.perf_counter() - t0
    print(f"director ({backbone.model_id}, checkpoint {cfg.checkpoint}) on {torch.get_num_threads()} threads")
    print(f"start: {start:.2f} s with the converted cache (goal <= 5 s); first load in this process {first:.2f} s")

    import copy

    plain_cfg = copy.deepcopy(cfg.plan)
    plain_cfg.lookup_tokens = 0
    planners = {"lookup": Planner(director, cfg.plan), "plain": Planner(director, plain_cfg)}
    best = {}
    for name, use_cache in (("lookup", True), ("plain", True), ("plain", False)):
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = planners[name].plan(args.query, steps=args.steps, seed=0, use_cache=use_cache)
            runs.append((time.perf_counter() - t0, res))
        best[name, use_cache] = min(runs, key=lambda r: r[0])
    (t_fast, r_fast), (t_cache, r_cache), (t_full, r_full) = (
        best["lookup", True],
        best["plain", True],
        best["plain", False],
    )

    def text(r):
        return [(s.action, s.caption) for s in r.steps]

    tokens = r_cache.stats["decode_tokens"]
    print(
        f"{args.steps}-step plan: {tokens} sampled tokens, {r_cache.stats['context_tokens']} context tokens; "
        f"identical plans with and without the cache: {text(r_cache) == text(r_full)}; "
        f"with and without lookup drafting: {text(r_cache) == text(r_fast)}"
    )
    fast_rate = r_fast.stats["decode_tokens"] / r_fast.stats["decode_seconds"]
    plain_rate = tokens / r_cache.stats["decode_seconds"]
    print(
        f"decode: {fast_rate:.1f} tokens/s with lookup drafting (plan.lookup_tokens={cfg.plan.lookup_tokens}; "
        f"{r_fast.stats.get('accepted_draft_tokens', 0)} of {r_fast.stats.get('draft_tokens', 0)} drafted tokens "
        f"verified, {r_fast.stats.get('decode_forwards', 0)} forwards for {r_fast.stats['decode_tokens']} tokens) "
        f"vs {plain_rate:.1f} tokens/s token by token -> {fast_rate / plain_rate:.2f}x (goal >= 20 tokens/s)"
    )
    print(
        f"whole plan: KV cache {t_cache:.2f} s vs re-encoding the history at every token {t_full:.2f} s "
        f"-> {t_full / t_cache:.1f}x (goal >= 3x); with lookup drafting {t_fast:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
