"""Record, in a director checkpoint, the token ids its training taught it to write (``output_vocab.json``).

    python scripts/output_vocab.py CHECKPOINT [--replace] [key=value ...]

``key=value`` are the overrides of the ``director train`` run that trained the checkpoint (``data=…``,
``dataset.*``, ``seed=…``; the default preset otherwise): the script rebuilds that run's training samples
exactly as ``director train`` does and adds the token ids of their labels to ``CHECKPOINT/output_vocab.json``
(``--replace`` starts from none). ``director train`` writes this file itself (its own labels plus those of
``train.init_from``); the script is for checkpoints trained before it did: run it once per training stage.
``plan.output_vocab: trained`` then projects only onto those rows of the output matrix (see the README, Speed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--replace", action="store_true", help="forget the ids already recorded")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()

    from auteur.config import load_config
    from auteur.errors import AuteurError
    from director.checkpoint import build_director, read_output_vocab, write_output_vocab
    from director.config import PRESETS, DirectorConfig
    from director.data import SequenceBuilder
    from director.train import label_vocabulary, resolve_space, training_samples

    try:
        cfg = load_config(DirectorConfig, "default", args.overrides, preset_dir=PRESETS)
        if not cfg.data:
            raise AuteurError("give the training run's data=DIR[,DIR] (and its dataset.* and seed overrides)")
        space = resolve_space(cfg)
        director, backbone, _ = build_director(cfg.backbone, cfg.model, space, checkpoint=args.checkpoint)
        builder = SequenceBuilder(
            backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens
        )
        ids = label_vocabulary(training_samples(cfg, builder, space, None))  # the labels do not depend on the fill
        old = set() if args.replace else set(read_output_vocab(args.checkpoint) or [])
    except AuteurError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_output_vocab(args.checkpoint, ids | old)
    print(
        f"{args.checkpoint}: {len(ids)} token ids in this run's labels, {len(ids | old)} recorded ({len(old)} before)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
