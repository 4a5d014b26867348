#!/usr/bin/env python3
"""Count degenerate text in real plans: verbatim-repeated actions, numbered captions, non-words.

    python scripts/degenerate_text.py --out runs/degenerate-before.json [--preset default] [key=value ...]

Plans "how to make <dish>" for each of the 89 YouCook2 dishes of the validation split (names from
``label_foodtype.csv``) and the 20 free-form queries of ``director/eval/free_form_queries.txt`` with the given
director (greedy), keeps every plan in ``--out`` (a JSON, resumable: queries already there are not planned
again) and prints the counts:

- **repeated actions**: a step whose action is, verbatim (case and surrounding space ignored), an earlier step's;
- **numbered captions**: a caption that starts with an enumeration (``5. A close-up ...``, ``2) ...``);
- **non-words**: words (runs of letters) of actions and captions that the English word list does not hold
  (``wordfreq``'s English list when it is installed, the measure used for the figures in docs/director.md;
  else the project's lexicon ``director/lexicon/english.txt``, which the planner's word check uses).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "youcook2"
NUMBERED = re.compile(r"^\s*\d+\s*[.)]")
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def queries(annotations: Path, labels: Path) -> list[str]:
    from director.evaluate import load_eval_videos, make_query

    dishes = sorted({v.dish for v in load_eval_videos(annotations, labels, "validation")})
    return [make_query(d) for d in dishes] + free_form()


def free_form() -> list[str]:
    """The 20 free-form queries of director/eval/free_form_queries.txt."""
    lines = [ln.strip() for ln in (ROOT / "director" / "eval" / "free_form_queries.txt").read_text().splitlines()]
    return [q for q in lines if q and not q.startswith("#")]


def word_checker():
    """A function word -> is it an English word, and the list's name."""
    try:
        from wordfreq import zipf_frequency

        return (lambda w: zipf_frequency(w, "en") > 0), "wordfreq (en)"
    except ImportError:
        from director.lexicon import load_lexicon

        lex = load_lexicon()
        return (lambda w: w.lower() in lex), "director/lexicon/english.txt"


def count(plans: dict[str, list[dict]], is_word) -> dict[str, object]:
    repeated = numbered = nonwords = words = 0
    examples: dict[str, list[str]] = {"repeated": [], "numbered": [], "nonwords": []}
    for query, steps in plans.items():
        seen: set[str] = set()
        for s in steps:
            a = s["action"].strip().lower()
            if a and a in seen:
                repeated += 1
                examples["repeated"].append(f"{query}: {s['action']}")
            seen.add(a)
            if NUMBERED.match(s["caption"]):
                numbered += 1
                examples["numbered"].append(f"{query}: {s['caption'][:60]}")
            for w in WORD.findall(f"{s['action']} {s['caption']}"):
                words += 1
                if not is_word(w):
                    nonwords += 1
                    examples["nonwords"].append(f"{query}: {w}")
    return {"plans": len(plans), "steps": sum(len(v) for v in plans.values()), "repeated_actions": repeated,
            "numbered_captions": numbered, "non_words": nonwords, "words": words,
            "examples": {k: v[:12] for k, v in examples.items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON of the plans (resumable)")
    p.add_argument("--preset", default="default")
    p.add_argument("--annotations", type=Path, default=DATA / "youcookii_annotations_trainval.json")
    p.add_argument("--labels", type=Path, default=DATA / "label_foodtype.csv")
    p.add_argument("--limit", type=int, help="the first N queries only")
    p.add_argument("--dishes", type=int, help="the first N dishes (alphabetical) and all the free-form queries")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)

    from auteur.io import atomic_write_json
    from auteur.plan import VisualSpace
    from director.checkpoint import build_director
    from director.cli import resolve_config
    from director.plan import Planner

    qs = queries(args.annotations, args.labels)[: args.limit]
    if args.dishes is not None:
        dishes = [q for q in qs if q.startswith("how to make ")][: args.dishes]
        free = queries(args.annotations, args.labels)[-len(free_form()) :]
        qs = dishes + [q for q in free if q not in dishes]
    done: dict[str, list[dict]] = json.loads(args.out.read_text())["plans"] if args.out.is_file() else {}
    todo = [q for q in qs if q not in done]
    if todo:
        cfg = resolve_config(args.preset, args.overrides)
        director, _, _ = build_director(
            cfg.backbone, cfg.model, VisualSpace("unknown", 0), cfg.checkpoint, fold_lora=cfg.plan.merge_lora
        )
        planner = Planner(director, cfg.plan)
        for i, q in enumerate(todo):
            t0 = time.perf_counter()
            r = planner.plan(q)
            done[q] = [{"action": s.action, "caption": s.caption} for s in r.steps]
            atomic_write_json(args.out, {"preset": args.preset, "overrides": args.overrides, "plans": done})
            print(f"[{i + 1}/{len(todo)}] {q}: {len(r.steps)} steps, {time.perf_counter() - t0:.1f} s", flush=True)
    is_word, name = word_checker()
    result = count({q: done[q] for q in qs}, is_word)
    print(json.dumps({"word_list": name, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
