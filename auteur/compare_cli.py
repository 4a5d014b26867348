"""The ``auteur compare`` and ``auteur export`` subcommands (registered in :mod:`auteur.cli`)."""

from __future__ import annotations

from pathlib import Path

from auteur.cliutil import ArgumentParser, add_overrides, examples

CONSISTORY_FOODS = '"../shared/data/story_prompts/1prompt1story/consistory+.yaml#foods"'
TOY = ".venv/bin/python tests/auteur/metrics/toy_system.py {prompt} --out {out}"
COMPARE_DEMO = (  # the test systems of tests/auteur/metrics/toy_system.py: flat vs random keyframes
    f"auteur compare --prompts {CONSISTORY_FOODS} --limit 2 --out runs/compare-demo \\",
    f'    --systems "flat={TOY} --style flat" \\',
    f'              "varied={TOY} --style varied"',
)


def add_parsers(sub) -> None:
    """Add ``compare`` and ``export`` to the ``auteur`` subparsers."""
    c = sub.add_parser(
        "compare",
        help="run systems on a prompt set and compare them",
        description="Run several systems on one prompt set and score them with the same metrics (resumable:\n"
        "finished items are kept). Writes OUT/results.md, results.csv and one folder per system and item.",
        epilog=examples(
            *COMPARE_DEMO,
            "auteur compare --prompts ../shared/data/youcook2/youcookii_annotations_trainval.json --limit 3 \\",
            '    --systems "videoauteur=videoauteur:default,anchors=anchors:tiny" --out runs/compare-real',
        ),
    )
    c.add_argument(
        "--prompts",
        required=True,
        help="prompts file (FILE[#SUBSET]: YouCook2, ConsiStory+, VGoT, ...; auteur.prompts)",
    )
    c.add_argument(
        "--systems",
        required=True,
        nargs="+",
        metavar="NAME=SYSTEM",
        help="NAME=SYSTEM[,NAME=...]: videoauteur[:PRESET], anchors:PRESET_OR_CHECKPOINT, a command template "
        "with {prompt} {out} {story}, or py:module:function",
    )
    c.add_argument("--out", required=True, type=Path, help="output folder (resumable: rerun the same command)")
    c.add_argument("--format", default=None, help="force the prompts format (default: detected from the file)")
    c.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    c.add_argument(
        "--preset",
        "--config",
        dest="config",
        default=None,
        metavar="PRESET",
        help="a YAML of CompareConfig keys (metrics, timeout_s, judge, ...); --config: old spelling",
    )
    c.add_argument("--judge", default=None, help="openai (endpoint from AUTEUR_JUDGE_*) or local:PATH")
    add_overrides(c, "timeout_s=600", what="the comparison config")
    e = sub.add_parser(
        "export",
        help="export a comparison's keyframes for an external benchmark",
        description="Export the keyframes of an `auteur compare` output folder in an external benchmark's layout:\n"
        "ViStoryBench's OUT/<system>/<mode>/<lang>/<timestamp>/<story>/shot_NN.png.",
        epilog=examples(
            *COMPARE_DEMO,
            "auteur export vistorybench runs/compare-demo --out runs/vistorybench",
        ),
    )
    e.add_argument("target", choices=["vistorybench"], help="the benchmark whose layout to write")
    e.add_argument("run_dir", type=Path, help="an `auteur compare` output folder")
    e.add_argument("--out", required=True, type=Path, help="export folder")
    e.add_argument("--mode", default="base", help="ViStoryBench mode folder name (default: base)")
    e.add_argument("--lang", default="en", help="ViStoryBench language folder name (default: en)")
    e.add_argument("--timestamp", default=None, help="YYYYMMDD-HHMMSS (default: now)")


def run(args) -> int:
    """Run the parsed ``compare`` or ``export`` command."""
    if args.command == "export":
        from auteur.export import export_vistorybench

        counts = export_vistorybench(args.run_dir, args.out, args.mode, args.lang, args.timestamp)
        for s, n in counts.items():
            print(f"{s}: {n} stories -> {args.out / s / args.mode / args.lang}")
        return 0
    from auteur.compare import PRESETS, CompareConfig, compare, parse_systems
    from auteur.config import load_config
    from auteur.errors import ConfigError

    overrides = list(args.overrides)
    if args.judge:
        overrides.append(f"judge={args.judge}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    cfg = load_config(CompareConfig, args.config, overrides, preset_dir=PRESETS)
    systems = parse_systems(args.systems)
    res = compare(cfg, args.prompts, systems, args.out, fmt=args.format, limit=args.limit)
    failed = sum(r["status"] != "ok" for r in res.rows)
    print(f"{len(res.rows)} runs ({res.ran} new, {res.reused} reused, {failed} failed) -> {args.out}/results.md")
    for m in ("fid", "inception_score", "fvd"):  # set-level metrics: one value per system
        vals = [f"{s}={v[m]:.3f}" for s, v in res.set_level.items() if m in v]
        if vals:
            print(f"{m}: {', '.join(vals)}" + (f" ({res.notes[m]})" if m in res.notes else ""))
    for k, v in sorted(res.skipped.items()):
        print(f"skipped {k}: {v}")
    return 0


__all__ = ["add_parsers", "run", "ArgumentParser"]
