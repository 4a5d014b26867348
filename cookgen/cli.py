"""``cookgen``: build the CookGen dataset, print its statistics, merge shards, build frame banks.

    cookgen build youcook2 --annotations youcookii_annotations_trainval.json [--labels label_foodtype.csv]
                           [--videos DIR] --out DIR [--preset tiny|default|paper|PATH] [key=value ...]
    cookgen build howto100m --captions caption.json [--categories HowTo100M_v1.csv] [--actions refined.csv]
                            [--videos DIR] --out DIR
    cookgen build steps --root DIR --out DIR [--split train]
    cookgen stats DIR [--json]
    cookgen merge SHARD_DIR [SHARD_DIR ...] --out DIR
    cookgen bank CLIPS_DIR --out BANK [--preset tiny|default|paper|PATH] [--interval S] [--no-progress] [key=value ...]
    cookgen presets

Common build options: ``--skip-bad`` (count bad items by reason instead of stopping), ``--workers N``,
``--shard i/n``, ``--force`` (rebuild an output folder made with another config).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from auteur.cliutil import (
    ArgumentParser,
    UsageError,
    add_overrides,
    examples,
    parse_with_overrides,
    run_cli,
    setup_logging,
)
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


YC2 = "../shared/data/youcook2"
ANN = f"{YC2}/youcookii_annotations_trainval.json"
DEMOS = "../shared/data/videoauteur_demos"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="cookgen",
        description="Build the CookGen long-narrative cooking dataset, print its statistics, build frame banks.",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos --split train",
            "cookgen stats runs/demos",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `cookgen COMMAND --help` shows its options",
    )

    b = sub.add_parser(
        "build",
        help="build CookGen splits from a source",
        description="Build CookGen splits (steps with keyframes, clips, captions, embeddings) from one source.",
        epilog=examples(
            f"cookgen build youcook2 --annotations {ANN} \\",
            f"    --labels {YC2}/label_foodtype.csv --out runs/cookgen-youcook2",
            f"cookgen build steps --root {DEMOS} --out runs/demos --split train",
        ),
    )
    srcs = b.add_subparsers(
        dest="source",
        required=True,
        parser_class=ArgumentParser,
        metavar="SOURCE",
        help="the source's format; `cookgen build SOURCE --help` shows its options",
    )
    common = ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder (resumable: rerun the same command)")
    common.add_argument(
        "--preset",
        "--config",
        dest="config",
        default="default",
        metavar="PRESET",
        help="preset name (tiny, default, paper; `cookgen presets`) or YAML path (default: default); "
        "--config is the old spelling",
    )
    common.add_argument("--skip-bad", action="store_true", help="count bad items by reason instead of stopping")
    common.add_argument("--workers", type=int, default=1, help="parallel worker processes for video work (default 1)")
    common.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="build only shard I of N (0-based; `cookgen merge`)",
    )
    common.add_argument("--force", action="store_true", help="discard an earlier build in --out made otherwise")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--json", action="store_true", help="print the build report as JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_overrides(common, "filter.min_clip_seconds=2")

    y = srcs.add_parser(
        "youcook2",
        parents=[common],
        help="official YouCook2 annotations",
        description="Build CookGen from the official YouCook2 annotations (text only, or with the videos).",
        epilog=examples(
            f"cookgen build youcook2 --annotations {ANN} \\",
            f"    --labels {YC2}/label_foodtype.csv --out runs/cookgen-youcook2",
        ),
    )
    y.add_argument("--annotations", required=True, type=Path, help="youcookii_annotations_trainval.json")
    y.add_argument("--labels", type=Path, help="label_foodtype.csv (dish names)")
    y.add_argument("--videos", type=Path, help="folder with <video_id>.<mp4|mkv|webm> (searched recursively)")

    h = srcs.add_parser(
        "howto100m",
        parents=[common],
        help="HowTo100M ASR captions (+ refined actions)",
        description="Build CookGen from HowTo100M's ASR captions, optionally with HowToCaption-style refined\n"
        "actions. HowTo100M is not available offline: the example's paths stand for where you keep your copy.",
        epilog=examples(
            "cookgen build howto100m --captions /data/howto100m/caption.json \\",
            "    --categories /data/howto100m/HowTo100M_v1.csv --videos /data/howto100m/videos --out runs/htm",
        ),
    )
    h.add_argument("--captions", required=True, type=Path, help="caption.json (ASR start/end/text per video)")
    h.add_argument("--categories", type=Path, help="HowTo100M_v1.csv, to keep cooking videos only")
    h.add_argument("--actions", type=Path, help="HowToCaption-style refined actions CSV (video_id,start,end,text)")
    h.add_argument("--videos", type=Path, help="folder with <video_id>.<mp4|mkv|webm> (searched recursively)")

    s = srcs.add_parser(
        "steps",
        parents=[common],
        help="folders of one clip per step + actions/captions YAML",
        description="Build CookGen from dish folders holding one clip per step (1.mp4, 2.mp4, ...) with "
        "actions.yaml and captions.yaml.",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos --split train",
            f"cookgen build steps --root {DEMOS} --out runs/demos-tiny --split train --preset tiny",
        ),
    )
    s.add_argument("--root", required=True, type=Path, help="folder holding dish folders (any depth)")
    s.add_argument("--split", help="put every dish in this split (default: hashed train/val)")

    st = sub.add_parser(
        "stats",
        help="print Table 1 statistics of a build",
        description="Print the statistics of a CookGen build (the paper's Table 1).",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos --split train",
            "cookgen stats runs/demos --json",
        ),
    )
    st.add_argument("dir", type=Path, help="a `cookgen build` output folder")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")

    m = sub.add_parser(
        "merge",
        help="merge the outputs of sharded builds",
        description="Merge the output folders of a build run in shards (`cookgen build ... --shard I/N`).",
        epilog=examples(
            f"cookgen build youcook2 --annotations {ANN} --out runs/yc-0 --shard 0/2",
            f"cookgen build youcook2 --annotations {ANN} --out runs/yc-1 --shard 1/2",
            "cookgen merge runs/yc-0 runs/yc-1 --out runs/yc",
        ),
    )
    m.add_argument("shards", nargs="+", type=Path, help="the shards' output folders (all shards of one build)")
    m.add_argument("--out", required=True, type=Path, help="the merged build's folder")

    bk = sub.add_parser(
        "bank",
        help="a frame bank (sampled, embedded frames) for the retrieval renderer",
        description="Sample frames from clips and embed them: a frame bank for `renderer render --bank`.",
        epilog=examples(
            f"cookgen bank {DEMOS} --out runs/bank",
            f"cookgen bank {DEMOS} --out runs/bank-tiny --preset tiny --interval 2 max_side=128",
        ),
    )
    bk.add_argument("clips", type=Path, help="a folder of clips (any depth)")
    bk.add_argument("--out", required=True, type=Path, help="bank folder (resumable: rerun the same command)")
    bk.add_argument(
        "--preset",
        "--config",
        dest="config",
        default="default",
        metavar="PRESET",
        help="preset (tiny, default, paper) or YAML: its vision space (default: default); --config: old spelling",
    )
    bk.add_argument("--interval", type=float, help="seconds between sampled frames (default 1)")
    bk.add_argument("--no-progress", action="store_true", help="no progress bar")
    bk.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_overrides(bk, "max_side=256", what="the bank config")

    sub.add_parser(
        "presets",
        help="list the config presets",
        description="List the names of the build presets (for --preset).",
        epilog=examples("cookgen presets"),
    )
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
    from auteur.bank import BANK_FILE, load_bank
    from cookgen.bank import build_bank, load_bank_config

    cfg = load_bank_config(args.config, args.overrides)
    if args.interval is not None:
        cfg.interval = args.interval
    out = build_bank(cfg, args.clips, args.out, progress=not args.no_progress)
    bank = load_bank(out)
    clips, space = len({f["source"] for f in bank.frames}), bank.space
    skipped = json.loads((out / BANK_FILE).read_text(encoding="utf-8")).get("skipped") or []
    line = f"frame bank: {len(bank.frames)} frames from {clips} clips in {space.name} (dim {space.dim}) -> {out}"
    if skipped:
        line += (
            f"; {len(skipped)} unreadable clip{'s' if len(skipped) > 1 else ''} skipped (listed in {out / BANK_FILE})"
        )
    print(line)
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
