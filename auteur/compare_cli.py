"""The ``auteur compare`` and ``auteur export`` subcommands (registered in :mod:`auteur.cli`)."""

from __future__ import annotations

from pathlib import Path

from auteur.cliutil import ArgumentParser


def add_parsers(sub) -> None:
    """Add ``compare`` and ``export`` to the ``auteur`` subparsers."""
    c = sub.add_parser("compare", help="run systems on a prompt set and compare them")
    c.add_argument("--prompts", required=True, help="prompts file (FILE[#SUBSET]); see auteur.prompts")
    c.add_argument("--systems", required=True, nargs="+", help="NAME=COMMAND_OR_SYSTEM[,NAME=...]")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--format", default=None, help="force the prompts format")
    c.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    c.add_argument("--config", default=None, help="a YAML of CompareConfig keys")
    c.add_argument("--judge", default=None, help="openai (endpoint from AUTEUR_JUDGE_*) or local:PATH")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    e = sub.add_parser("export", help="export a comparison's keyframes for an external benchmark")
    e.add_argument("target", choices=["vistorybench"])
    e.add_argument("run_dir", type=Path)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--mode", default="base")
    e.add_argument("--lang", default="en")
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
    for k, v in sorted(res.skipped.items()):
        print(f"skipped {k}: {v}")
    return 0


__all__ = ["add_parsers", "run", "ArgumentParser"]
