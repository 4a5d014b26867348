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

    from auteur.errors import AuteurError
    from auteur.io import atomic_dir
    from director.data import load_episodes
    from director.evaluate import medoid, rouge_l

    try:
        episodes = load_episodes(src, "train", None)
        meta = json.loads((src / "cookgen.json").read_text())
        ds = load_from_disk(str(src / "train"))
    except (AuteurError, OSError, ValueError, KeyError) as e:
        print(f"error: cannot read {src}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    by_dish: dict[str, list] = defaultdict(list)  # query "how to make <dish>" -> its training episodes
    for ep in episodes:
        by_dish[ep.query].append(ep)
    chosen = {}  # query -> video id (an episode's source is "<build folder>/<video id>")
    for query, eps in sorted(by_dish.items()):
        actions = [[a for a, _, _ in ep.steps] for ep in eps]
        chosen[query] = eps[medoid(actions, rouge_l)].source.split("/", 1)[1]
    keep = set(chosen.values())
    train = ds.filter(lambda r: r["video_id"] in keep)
    with atomic_dir(out) as tmp:
        train.save_to_disk(str(tmp / "train"))
        if (src / "val").is_dir():
            shutil.copytree(src / "val", tmp / "val")
        meta["splits"] = {"train": len(train), **({"val": meta["splits"]["val"]} if "val" in meta["splits"] else {})}
        meta["derived"] = {
            "from": str(src),
            "by": "scripts/build_typical_recipes.py",
            "rule": "per dish, the training video with the highest mean ROUGE-L against its other training videos",
            "videos": chosen,
        }
        (tmp / "cookgen.json").write_text(json.dumps(meta, indent=2) + "\n")
        if (src / "config.yaml").is_file():
            shutil.copy2(src / "config.yaml", tmp / "config.yaml")
    print(
        f"{out}: {len(keep)} typical recipes of {len(by_dish)} dishes ({len(train)} steps of {len(episodes)} videos)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
