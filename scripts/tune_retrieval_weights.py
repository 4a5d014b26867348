"""Grid-search the retrieval renderer's weights on a few plans (how the ``default`` preset's were chosen).

    .venv/bin/python scripts/tune_retrieval_weights.py PLAN_DIR [PLAN_DIR ...] --bank BANK [--context 2] [--top 15]
        [--grid KEY=V1,V2 ...]

Each plan is retrieved exactly as ``renderer render`` does (the same :class:`renderer.retrieval.Retriever` calls:
context = the last k frames, no frame twice, the diversity terms skipping repeated steps), once per weight setting
of the grid below; nothing is written. Per setting it prints the mean over the plans of the figures of
``scripts/retrieval_quality.py`` (retrieval quality, distinct source clips per step, mean pairwise similarity of the
chosen frames) and the objective

    retrieval quality + distinct clips per step - mean pairwise similarity

then the best settings. Do not tune on the plan you report figures for (docs/renderer.md says which plans were used).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = {
    "text": [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0],
    "visual": [1.0],
    "consistency": [0.0, 0.25, 0.5],
    "diversity": [0.0, 0.5, 1.0, 2.0],
    "diversity_threshold": [0.5, 0.6, 0.7],
    "clip_reuse": [0.0, 0.2, 0.4, 0.8],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("plans", nargs="+", type=Path)
    p.add_argument("--bank", required=True)
    p.add_argument("--context", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2", help="replace one axis of the grid")
    a = p.parse_args(argv)
    grid = dict(GRID)
    for item in a.grid:
        key, _, values = item.partition("=")
        if key not in grid:
            raise SystemExit(f"--grid: unknown key {key!r} (known: {', '.join(grid)})")
        grid[key] = [float(v) for v in values.split(",")]

    from transformers.utils import logging as transformers_logging

    from auteur.bank import load_bank
    from auteur.plan import load_plan
    from auteur.sentence import load_sentence_encoder, step_text
    from renderer.render import step_key
    from renderer.retrieval import Retriever, Weights, normalize_rows, retrieve
    from scripts.retrieval_quality import bank_step_texts, figures

    transformers_logging.disable_progress_bar()
    bank = load_bank(a.bank)
    if not bank.has_texts:
        raise SystemExit(f"bank {a.bank} has no step texts: rebuild it with `cookgen bank CLIPS_DIR --out {a.bank}`")
    texts = bank_step_texts(bank, None)
    enc = load_sentence_encoder()
    r = Retriever(
        normalize_rows(bank.embeddings),
        texts=normalize_rows(bank.text_embeddings),
        text_of=bank.text_index(),
        clip_of=bank.clip_index(),
    )
    plans = [load_plan(d) for d in a.plans]
    step_q = [enc.encode([step_text(s.action, s.caption) for s in pl.steps]) for pl in plans]
    print(f"{len(plans)} plans ({sum(len(pl.steps) for pl in plans)} steps), bank {a.bank}, context {a.context}")
    results = []
    names = list(grid)
    for values in itertools.product(*(grid[k] for k in names)):
        cfg = dict(zip(names, values))
        if not cfg["diversity"] and cfg["diversity_threshold"] != grid["diversity_threshold"][0]:
            continue  # the threshold means nothing without the penalty
        w = Weights(**{k: cfg[k] for k in ("visual", "consistency", "text", "diversity", "clip_reuse")},
                    threshold=cfg["diversity_threshold"])  # fmt: skip
        figs = []
        for pl, tq in zip(plans, step_q):
            keys = [step_key(s.action) for s in pl.steps]
            chosen = [c.index for c in retrieve(pl.embeddings, r, a.context, w, text_queries=tq, keys=keys)]
            figs.append(figures(pl.steps, chosen, bank, texts, enc))
        mean = {k: sum(f[k] for f in figs) / len(figs) for k in ("retrieval_quality", "mean_pairwise_similarity")}
        mean["clips_per_step"] = sum(f["distinct_clips"] / f["steps"] for f in figs) / len(figs)
        mean["objective"] = mean["retrieval_quality"] + mean["clips_per_step"] - mean["mean_pairwise_similarity"]
        results.append((cfg, mean))
    results.sort(key=lambda x: -x[1]["objective"])
    head = f"{'text':>5} {'vis':>4} {'cons':>5} {'div':>4} {'tau':>4} {'clip':>5}"
    print(f"{head} | quality clips/step mean-sim objective")
    for cfg, m in results[: a.top]:
        print(
            f"{cfg['text']:>5} {cfg['visual']:>4} {cfg['consistency']:>5} {cfg['diversity']:>4} "
            f"{cfg['diversity_threshold']:>4} {cfg['clip_reuse']:>5} | {m['retrieval_quality']:7.3f} "
            f"{m['clips_per_step']:10.3f} {m['mean_pairwise_similarity']:8.3f} {m['objective']:9.3f}"
        )
    base = next((m for cfg, m in results if not cfg["text"] and not cfg["diversity"] and not cfg["clip_reuse"]
                 and cfg["consistency"] == 0.5), None)  # fmt: skip
    if base is None:
        return 0
    print(
        f"visual + consistency 0.5 only (the earlier score): quality {base['retrieval_quality']:.3f}, clips/step "
        f"{base['clips_per_step']:.3f}, mean-sim {base['mean_pairwise_similarity']:.3f}, "
        f"objective {base['objective']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
