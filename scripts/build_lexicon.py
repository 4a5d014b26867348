#!/usr/bin/env python3
"""Build ``director/lexicon/english.txt.gz``: the English words the planner's word check accepts.

    pip install wordfreq==3.1.1     # not a dependency: only this script needs it
    python scripts/build_lexicon.py [--top 100000]

The list is the ``--top`` most frequent English words of wordfreq 3.1.1 (R. Speer, wordfreq; its word-frequency data
is CC-BY-SA 4.0, so this derived list is too) that are made of letters only, lowercased, plus the words of the
texts the default director learned to write (YouCook2's step sentences and the VideoAuteur demo captions in
``../shared/data``, when they are there) that wordfreq knows at all (the sentences' typos stay out). One word a
line, sorted, gzip'd (~0.3 MB).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORD = re.compile(r"[a-z]+")


def training_words() -> set[str]:
    words: set[str] = set()
    ann = DATA / "youcook2" / "youcookii_annotations_trainval.json"
    if ann.is_file():
        for video in json.loads(ann.read_text())["database"].values():
            for a in video["annotations"]:
                words |= set(WORD.findall(a["sentence"].lower()))
    demos = DATA / "videoauteur_demos"
    if (demos / "captions.csv").is_file():
        with (demos / "captions.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                words |= set(WORD.findall(row["text"].lower()))
    for path in demos.glob("*/*/*.yaml"):
        words |= set(WORD.findall(path.read_text().lower()))
    return words


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--top", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=ROOT / "director" / "lexicon" / "english.txt.gz")
    args = p.parse_args(argv)
    from wordfreq import top_n_list, zipf_frequency

    # training words beyond the top list only when wordfreq knows them: YouCook2's sentences hold typos
    # ("meausuring", "winea") that must not become words the planner may write
    words = {w for w in top_n_list("en", args.top) if WORD.fullmatch(w)}
    words |= {w for w in training_words() if zipf_frequency(w, "en") > 0}
    with gzip.open(args.out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(sorted(words)) + "\n")
    print(f"{len(words)} words -> {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
