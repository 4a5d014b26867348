"""How well a retrieved storyboard follows its plan (docs/renderer.md, "Keyframes that follow the plan").

    .venv/bin/python scripts/retrieval_quality.py PLAN_DIR --bank BANK [--clips CLIPS_DIR] [--json] [--quiet]

For a plan folder rendered by retrieval (``renderer render PLAN --bank BANK``) it prints, over the plan's steps:

- **distinct source clips** of the chosen frames (and distinct dishes: the clips' folders);
- **mean pairwise similarity** of the chosen frames: the mean cosine of their visual embeddings (the bank's space)
  over all pairs of steps, the largest one, and the pairs above 0.9;
- **retrieval quality**: the share of steps whose chosen frame's source step is the bank step whose text best matches
  the plan step's text (all-MiniLM-L6-v2 cosine of :func:`auteur.sentence.step_text`, action then caption, on both
  sides; ties within 1e-6 count as matches: equal texts can differ in the last bits of a matrix product), and its
  ceiling for a plan that uses each clip once (steps whose best match is one clip cannot all have it: a bipartite
  matching of steps to their best clips).

The bank's source-step texts come from the bank (``cookgen bank`` stores them) or, for a bank built before step
texts, from the ``actions.yaml`` / ``captions.yaml`` beside its clips (``--clips``, default the bank's
``clips_root``), so an older bank measures the same way. No randomness: the same plan and bank give the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TIE = 1e-6  # cosines this close to the best count as the best


def bank_step_texts(bank, clips: str | None) -> dict[str, dict[str, str]]:
    """Source clip -> its step text record, from the bank or (older banks) from the YAML beside the clips."""
    if bank.texts:
        return {t["source"]: t for t in bank.texts}
    from cookgen.bank import source_texts

    root = clips or json.loads((bank.folder / "bank.json").read_text()).get("clips_root")
    if not root or not Path(root).is_dir():
        raise SystemExit(f"bank {bank.folder} has no step texts and no clips folder to read them from: pass --clips")
    sources = sorted({f["source"] for f in bank.frames})
    return source_texts(Path(root), [Path(s) for s in sources])


def _matching(options: list[set[str]]) -> int:
    """The most steps that can sit on one of their best-matching clips with no clip used twice (bipartite
    matching, augmenting paths): the retrieval quality a plan with distinct clips can reach at most."""
    owner: dict[str, int] = {}

    def place(i: int, seen: set[str]) -> bool:
        for clip in sorted(options[i]):
            if clip in seen:
                continue
            seen.add(clip)
            if clip not in owner or place(owner[clip], seen):
                owner[clip] = i
                return True
        return False

    return sum(place(i, set()) for i in range(len(options)))


def figures(steps, chosen: list[int], bank, texts: dict[str, dict[str, str]], encoder=None) -> dict[str, Any]:
    """The figures for plan ``steps`` (objects with ``index``, ``action``, ``caption``) whose keyframes are the bank
    rows ``chosen`` (see the module docstring)."""
    import torch

    from auteur.sentence import load_sentence_encoder, step_text
    from renderer.retrieval import normalize_rows

    sources = [bank.frames[j]["source"] for j in chosen]
    unit = normalize_rows(bank.embeddings[chosen]).to(torch.float64)
    sims = [float(unit[a] @ unit[b]) for a, b in combinations(range(len(chosen)), 2)]
    enc = encoder or load_sentence_encoder()
    names = sorted(texts)
    bank_emb = enc.encode([step_text(texts[n].get("action"), texts[n].get("caption")) for n in names])
    plan_emb = enc.encode([step_text(s.action, s.caption) for s in steps])
    match = plan_emb.to(torch.float64) @ bank_emb.to(torch.float64).T  # [steps, bank steps]
    rows, hits = [], 0
    for i, s in enumerate(steps):
        best = float(match[i].max())
        best_names = [names[k] for k in range(len(names)) if float(match[i, k]) >= best - TIE]
        hit = sources[i] in best_names
        hits += hit
        rows.append(
            {
                "step": s.index,
                "action": s.action,
                "source": sources[i],
                "source_action": (texts.get(sources[i]) or {}).get("action", ""),
                "best_match": best_names[0],
                "best_action": texts[best_names[0]].get("action", ""),
                "hit": hit,
                "best_names": best_names,
            }
        )
    n = len(steps)
    ceiling = _matching([set(r["best_names"]) for r in rows])
    for r in rows:
        r.pop("best_names")
    return {
        "steps": n,
        "distinct_clips": len(set(sources)),
        "distinct_dishes": len({str(Path(x).parent) for x in sources}),
        "mean_pairwise_similarity": round(sum(sims) / len(sims), 4) if sims else None,
        "max_pairwise_similarity": round(max(sims), 4) if sims else None,
        "pairs_above_0.9": sum(x > 0.9 for x in sims),
        "retrieval_quality": round(hits / n, 4) if n else None,
        "quality_ceiling_distinct_clips": round(ceiling / n, 4) if n else None,
        "rows": rows,
    }


def measure(plan_dir: str | Path, bank, texts: dict[str, dict[str, str]], encoder=None) -> dict[str, Any]:
    """The figures for one plan folder rendered by retrieval from ``bank``."""
    from auteur.plan import load_plan

    plan = load_plan(plan_dir)
    chosen = []
    for s in plan.steps:
        rec = s.meta.get("render") or {}
        if rec.get("kind") != "retrieved":
            raise SystemExit(f"{plan_dir}: step {s.index} has no retrieved keyframe; render it with --bank first")
        chosen.append(int(rec["bank_index"]))
    out = {"plan": str(plan_dir), "bank": str(bank.folder), **figures(plan.steps, chosen, bank, texts, encoder)}
    for row, s in zip(out["rows"], plan.steps):
        row["score_parts"] = s.meta["render"].get("score_parts")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plan", type=Path, help="a plan folder rendered by retrieval")
    p.add_argument("--bank", required=True, help="the frame bank it was rendered from")
    p.add_argument("--clips", help="clips folder for the step texts of a bank built before texts (default: its root)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--quiet", action="store_true", help="the summary line only")
    a = p.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    from auteur.bank import load_bank

    transformers_logging.disable_progress_bar()
    bank = load_bank(a.bank)
    m = measure(a.plan, bank, bank_step_texts(bank, a.clips))
    if a.json:
        print(json.dumps(m, indent=2, ensure_ascii=False))
        return 0
    if not a.quiet:
        for r in m["rows"]:
            mark = "=" if r["hit"] else " "
            print(f"{r['step']:>2}. {r['action'][:38]:<38} -> {r['source']:<42} {mark} best {r['best_match']}")
    print(
        f"{m['steps']} steps: {m['distinct_clips']} distinct source clips ({m['distinct_dishes']} dishes); "
        f"mean pairwise similarity {m['mean_pairwise_similarity']} (max {m['max_pairwise_similarity']}, "
        f"{m['pairs_above_0.9']} pairs > 0.9); retrieval quality {m['retrieval_quality']:.0%} "
        f"({round(m['retrieval_quality'] * m['steps'])}/{m['steps']} steps on their best text match; at most "
        f"{m['quality_ceiling_distinct_clips']:.0%} with one clip per step)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
