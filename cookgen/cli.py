"""``cookgen``: build the CookGen dataset, print its statistics, merge shards, build frame banks.

    cookgen build youcook2 --annotations youcookii_annotations_trainval.json [--labels label_foodtype.csv]
                           [--videos DIR] --out DIR [--config tiny|default|paper|PATH] [key=value ...]
    cookgen build howto100m --captions caption.json [--categories HowTo100M_v1.csv] [--actions refined.csv]
                            [--videos DIR] --out DIR
    cookgen build steps --root DIR --out DIR [--split train]
    cookgen stats DIR [--json]
    cookgen merge SHARD_DIR [SHARD_DIR ...] --out DIR
    cookgen bank CLIPS_DIR --out BANK [--config tiny|default|paper|PATH] [--interval S] [--no-progress] [key=value ...]
    cookgen presets

Common build options: ``--skip-bad`` (count bad items by reason instead of stopping), ``--workers N``,
``--shard i/n``, ``--force`` (rebuild an output folder made with another config).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from auteur.cliutil import ArgumentParser, UsageError, parse_with_overrides, run_cli, setup_logging
from auteur.config import list_presets, load_config

PRESETS = Path(__file__).parent / "presets"


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= i < n")
    return i, n


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="cookgen", description="Build the CookGen long-narrative cooking dataset.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    b = sub.add_parser("build", help="build CookGen splits from a source")
    srcs = b.add_subparsers(dest="source", required=True, parser_class=ArgumentParser, metavar="SOURCE")
    common = ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder (resumable: rerun the same command)")
    common.add_argument("--config", default="default", help="preset name (tiny, default, paper) or YAML path")
    common.add_argument("--skip-bad", action="store_true", help="count bad items by reason instead of stopping")
    common.add_argument("--workers", type=int, default=1, help="parallel worker processes for video work")
    common.add_argument("--shard", type=_shard, default=(0, 1), help="build only shard i of n (i/n)")
    common.add_argument("--force", action="store_true", help="discard an earlier build in --out made otherwise")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--json", action="store_true", help="print the build report as JSON")
    common.add_argument("-v", "--verbose", action="store_true")
    common.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. filter.min_clip_seconds=2"
    )

    y = srcs.add_parser("youcook2", parents=[common], help="official YouCook2 annotations")
    y.add_argument("--annotations", required=True, type=Path, help="youcookii_annotations_trainval.json")
    y.add_argument("--labels", type=Path, help="label_foodtype.csv (dish names)")
    y.add_argument("--videos", type=Path, help="folder with <video_id>.<mp4|mkv|webm> (searched recursively)")

    h = srcs.add_parser("howto100m", parents=[common], help="HowTo100M ASR captions (+ refined actions)")
    h.add_argument("--captions", required=True, type=Path, help="caption.json (ASR start/end/text per video)")
    h.add_argument("--categories", type=Path, help="HowTo100M_v1.csv, to keep cooking videos only")
    h.add_argument("--actions", type=Path, help="HowToCaption-style refined actions CSV (video_id,start,end,text)")
    h.add_argument("--videos", type=Path, help="folder with <video_id>.<mp4|mkv|webm> (searched recursively)")

    s = srcs.add_parser("steps", parents=[common], help="folders of one clip per step + actions/captions YAML")
    s.add_argument("--root", required=True, type=Path, help="folder holding dish folders (any depth)")
    s.add_argument("--split", help="put every dish in this split (default: hashed train/val)")

    st = sub.add_parser("stats", help="print Table 1 statistics of a build")
    st.add_argument("dir", type=Path)
    st.add_argument("--json", action="store_true")

    m = sub.add_parser("merge", help="merge the outputs of sharded builds")
    m.add_argument("shards", nargs="+", type=Path)
    m.add_argument("--out", required=True, type=Path)

    bk = sub.add_parser("bank", help="a frame bank (sampled, embedded frames) for the retrieval renderer")
    bk.add_argument("clips", type=Path, help="a folder of clips (any depth)")
    bk.add_argument("--out", required=True, type=Path, help="bank folder (resumable: rerun the same command)")
    bk.add_argument("--config", default="default", help="preset (tiny, default, paper) or YAML: its vision space")
    bk.add_argument("--interval", type=float, help="seconds between sampled frames (default 1)")
    bk.add_argument("--no-progress", action="store_true", help="no progress bar")
    bk.add_argument("-v", "--verbose", action="store_true")
    bk.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_side=256")

    sub.add_parser("presets", help="list the config presets")
    return p


def _build(args) -> int:
    from cookgen.build import BuildConfig, BuildOptions, build
    from cookgen.sources import read_howto100m, read_steps, read_youcook2

    cfg = load_config(BuildConfig, args.config, args.overrides, preset_dir=PRESETS)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    inputs: dict[str, str] = {}
    if args.source == "youcook2":
        source = read_youcook2(args.annotations, args.labels, args.videos)
        inputs = {
            "annotations": str(args.annotations),
            "labels": str(args.labels or ""),
            "videos": str(args.videos or ""),
        }
    elif args.source == "howto100m":
        source = read_howto100m(
            args.captions,
            args.categories,
            args.actions,
            args.videos,
            cooking_categories=cfg.howto100m.cooking_categories,
            val_fraction=cfg.split.val_fraction,
            max_start_diff=cfg.match.max_start_diff,
            min_iou=cfg.match.min_iou,
            strong_iou=cfg.match.strong_iou,
        )
        inputs = {k: str(getattr(args, k) or "") for k in ("captions", "categories", "actions", "videos")}
    else:
        source = read_steps(args.root, split=args.split, val_fraction=cfg.split.val_fraction)
        inputs = {"root": str(args.root)}
    opts = BuildOptions(
        skip_bad=args.skip_bad, workers=args.workers, shard=args.shard, force=args.force, progress=not args.no_progress
    )
    report = build(cfg, source, args.out, args.source, inputs=inputs, options=opts)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(f"CookGen build from {args.source} -> {args.out}  ({report.seconds:.2f} s, shard {report.shard})")
    for split, c in report.splits.items():
        print(
            f"  {split:5s}: {c['videos_before']} videos / {c['steps_before']} steps before filtering; "
            f"{c['videos']} / {c['steps']} kept"
        )
    for key in ("rejected_steps", "rejected_videos", "excluded", "captions"):
        val = getattr(report, key)
        if val:
            print(f"  {key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in val.items()))
    space = report.embedding_space
    print(f"  embeddings: {space['name']} (dim {space['dim']})" if space else "  embeddings: none (text-only build)")
    if report.videos_resumed:
        print(f"  resumed: {report.videos_resumed} videos were already done")
    return 0


def _bank(args) -> int:
    from auteur.bank import load_bank
    from cookgen.bank import build_bank, load_bank_config

    cfg = load_bank_config(args.config, args.overrides)
    if args.interval is not None:
        cfg.interval = args.interval
    out = build_bank(cfg, args.clips, args.out, progress=not args.no_progress)
    bank = load_bank(out)
    clips, space = len({f["source"] for f in bank.frames}), bank.space
    print(f"frame bank: {len(bank.frames)} frames from {clips} clips in {space.name} (dim {space.dim}) -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging(getattr(args, "verbose", False))
        if args.command == "build":
            return _build(args)
        if args.command == "bank":
            return _bank(args)
        if args.command == "stats":
            from cookgen.stats import compute_stats, format_stats, stats_json

            stats = compute_stats(args.dir)
            print(stats_json(stats) if args.json else format_stats(stats))
            return 0
        if args.command == "merge":
            from cookgen.merge import merge

            report = merge(args.shards, args.out)
            print(f"merged {len(args.shards)} shards -> {args.out}: " + json.dumps(report["splits"]))
            return 0
        print("\n".join(list_presets(PRESETS)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
