#!/usr/bin/env python3
"""Write director/eval/unseen_dishes.json: the YouCook2 dish types held out for the unseen-dish evaluation.

    python scripts/make_unseen_split.py [--annotations ../shared/data/youcook2/youcookii_annotations_trainval.json]

A fifth of the dishes with annotated videos, the same fraction of each cuisine group (the first digit of the
recipe type), chosen by ``random.Random(0)`` (see ``director/unseen.py``). Run once; the file is part of the
repository, so every evaluation and every training that must exclude these dishes reads the same list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT = ROOT.parent / "shared" / "data" / "youcook2" / "youcookii_annotations_trainval.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", type=Path, default=DEFAULT)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from director.unseen import SPLIT_FILE, annotated_dishes, choose_unseen, write_split

    dishes = annotated_dishes(args.annotations)
    split = choose_unseen(dishes, args.fraction, args.seed)
    write_split(split)
    print(f"{len(split.names)} of {len(dishes)} dishes held out -> {SPLIT_FILE.relative_to(ROOT)}")
    for rid, name in zip(split.recipe_types, split.names):
        print(f"  {rid} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
