"""A CookGen build holding each dish's most typical training recipe (its ROUGE-L medoid), to fine-tune on.

    python scripts/build_typical_recipes.py runs/cookgen-youcook2 runs/cookgen-youcook2-typical

For every dish of ``SRC``'s train split, keeps the one video whose steps have the highest mean ROUGE-L against
the dish's other training videos (all of them for a dish with one video), and writes a CookGen build with those
videos as its train split and ``SRC``'s val split unchanged. Only the training split is read to choose: the
validation videos are never looked at. ROUGE-L (not the sentence encoder that ``director eval`` scores with)
picks the medoid, so the choice of training data does not optimise the evaluation's own encoder.

Why: ``scripts/director_eval_ceiling.py`` shows that answering each dish with its most typical training recipe
scores far above answering with a random one (retrieval), and the director trained on all recipes writes
generic steps; a last fine-tuning stage on the typical recipes teaches it the recipe a dish usually has.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    if not (src / "cookgen.json").is_file() or not (src / "train").is_dir():
        print(f"error: {src} is not a CookGen build with a train split", file=sys.stderr)
        return 2

    from datasets import load_from_disk

    from auteur.io import atomic_dir
    from director.evaluate import rouge_l

    ds = load_from_disk(str(src / "train"))
    data = ds.select_columns(["video_id", "dish", "step_index", "action"]).to_dict()
    steps: dict[str, list[tuple[int, str]]] = defaultdict(list)
    dish_of: dict[str, str] = {}
    for vid, dish, k, action in zip(data["video_id"], data["dish"], data["step_index"], data["action"]):
        steps[vid].append((k, action))
        dish_of[vid] = dish or vid
    recipes = {vid: [a for _, a in sorted(s)] for vid, s in steps.items()}
    by_dish: dict[str, list[str]] = defaultdict(list)
    for vid in sorted(recipes):
        by_dish[dish_of[vid]].append(vid)
    chosen = {}
    for dish, vids in sorted(by_dish.items()):
        if len(vids) == 1:
            chosen[dish] = vids[0]
            continue

        def typicality(v: str, vids: list[str] = vids) -> float:
            return statistics.mean(rouge_l(recipes[v], recipes[w]) for w in vids if w != v)

        chosen[dish] = max(vids, key=typicality)
    keep = set(chosen.values())
    train = ds.filter(lambda r: r["video_id"] in keep)
    with atomic_dir(out) as tmp:
        train.save_to_disk(str(tmp / "train"))
        if (src / "val").is_dir():
            shutil.copytree(src / "val", tmp / "val")
        meta = json.loads((src / "cookgen.json").read_text())
        meta["splits"] = {"train": len(train), **({"val": meta["splits"]["val"]} if "val" in meta["splits"] else {})}
        meta["derived"] = {
            "from": str(src),
            "by": "scripts/build_typical_recipes.py",
            "rule": "per dish, the training video with the highest mean ROUGE-L against its other training videos",
            "videos": {dish: vid for dish, vid in sorted(chosen.items())},
        }
        (tmp / "cookgen.json").write_text(json.dumps(meta, indent=2) + "\n")
        for name in ("config.yaml",):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    n_steps = len(train)
    print(f"{out}: {len(keep)} typical recipes of {len(by_dish)} dishes ({n_steps} steps; {len(recipes)} videos read)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
