"""``renderer``: keyframes for a plan, renderer training.

renderer render PLAN_DIR [--preset default|tiny|paper|PATH] [--context 1|2|3] [--size WxH] [--seed S]
                [--bank BANK] [--checkpoint RUN/final] [--force] [key=value ...]
renderer train --preset tiny|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
torchrun --nproc_per_node N -m renderer train --preset paper flux.model=... data=... out=...   # several processes
renderer presets

Frame banks for the retrieval back-end are built by ``cookgen bank CLIPS_DIR --out BANK`` (format:
:mod:`auteur.bank`).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from auteur.cliutil import (
    ArgumentParser,
    UsageError,
    add_override_option,
    add_overrides,
    examples,
    parse_with_overrides,
    run_cli,
    setup_logging,
)
from auteur.config import list_presets, load_config
from auteur.training import is_main_process
from renderer.config import PRESETS, RenderConfig

log = logging.getLogger(__name__)


DEMOS = "../shared/data/videoauteur_demos"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="renderer",
        description="Render a plan's keyframes (FLUX.1 Fill or retrieval from a frame bank); train the renderer.",
        epilog=examples(
            "renderer render runs/tuna/plan --bank runs/bank",
            "renderer presets",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `renderer COMMAND --help` shows its options",
    )

    r = sub.add_parser(
        "render",
        help="render the keyframes of a plan folder",
        description="Render one keyframe per step of a plan folder into PLAN_DIR/keyframes (resumable). The default\n"
        "preset retrieves real frames from a frame bank (`cookgen bank`); flux presets generate them.",
        epilog=examples(
            f"cookgen bank {DEMOS} --out runs/bank",
            'director plan "how to cook a tuna sandwich" --out runs/tuna/plan',
            "renderer render runs/tuna/plan --bank runs/bank --context 2",
        ),
    )
    r.add_argument("plan", type=Path, help="a plan folder (director plan --out)")
    r.add_argument(
        "--preset",
        default="default",
        help="default (retrieval), tiny, paper, or a YAML (`renderer presets`; default: default)",
    )
    r.add_argument("--context", type=int, help="reference keyframes on the canvas: 1, 2 or 3")
    r.add_argument("--size", metavar="WxH", help="panel size WxH, e.g. 512x512 (default from the preset)")
    r.add_argument("--seed", type=int, help="sampling seed (default from the preset)")
    r.add_argument("--bank", help="frame bank folder (retrieval backend; `cookgen bank CLIPS_DIR --out BANK`)")
    r.add_argument("--checkpoint", help="a `renderer train` checkpoint, RUN/final (flux backend)")
    r.add_argument("--force", action="store_true", help="re-render steps that already have a keyframe")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overrides(r, "retrieval.consistency=0.3")

    t = sub.add_parser(
        "train",
        help="train LoRA + embedding adapter on CookGen keyframe sequences",
        description="Train the FLUX.1 Fill renderer's LoRA and embedding adapter on CookGen builds (resumable).\n"
        "Several processes: torchrun --nproc_per_node N -m renderer train ...",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos-tiny --split train --preset tiny",
            "renderer train --preset tiny data=runs/demos-tiny out=runs/renderer-tiny train.max_steps=2",
        ),
    )
    t.add_argument(
        "--preset",
        "--config",
        dest="preset",
        default="tiny",
        metavar="PRESET",
        help="tiny, paper, or a YAML (default: tiny); --config: old spelling",
    )
    add_override_option(t, "--out", "out", metavar="RUN_DIR", help="run folder (another spelling of out=RUN_DIR)")
    add_override_option(
        t, "--seed", "seed", type=int, help="training seed (another spelling of seed=S; default from the preset)"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overrides(t, "train.max_steps=100", note="data=COOKGEN_DIR[,DIR] and out=RUN_DIR (or --out) are required")

    sub.add_parser(
        "presets",
        help="list the presets",
        description="List the names of the renderer presets (for --preset).",
        epilog=examples("renderer presets"),
    )
    return p


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--size must be WxH (e.g. 512x512), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _render(args) -> int:
    from renderer.render import check_context, kept_line, render_plan

    cfg = load_config(RenderConfig, args.preset, args.overrides, preset_dir=PRESETS)
    if args.context is not None:
        check_context(args.context)
        cfg.context = args.context
    if args.size is not None:
        cfg.width, cfg.height = _size(args.size)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.bank is not None:
        cfg.retrieval.bank = args.bank
    if args.checkpoint is not None:
        cfg.checkpoint = args.checkpoint
    result = render_plan(cfg, args.plan, preset=args.preset, force=args.force, progress=not args.no_progress)
    kind = "retrieved" if cfg.backend == "retrieval" else "rendered"
    kept = kept_line(len(result.skipped), len(result.replaced), result.made_by)
    print(f"{len(result.rendered)} keyframes {kind}, {kept} -> {result.folder / 'keyframes'}")
    if cfg.backend == "retrieval":
        print("note: keyframes are real frames RETRIEVED from the frame bank (retrieval renderer), not generated")
    return 0


def _train(args) -> int:
    from renderer.train import train

    cfg = load_config(RenderConfig, args.preset, args.overrides, preset_dir=PRESETS)
    final = train(cfg, progress=not args.no_progress)
    if is_main_process():  # under torchrun / accelerate launch the main process reports
        print(f"trained renderer -> {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging()
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()  # e.g. the truncation notice for long tiled prompts
        transformers_logging.set_verbosity_error()
        if getattr(args, "no_progress", False):  # the libraries' own bars too (loading weights)
            diffusers_logging.disable_progress_bar()
            transformers_logging.disable_progress_bar()
        if args.command == "render":
            return _render(args)
        if args.command == "train":
            return _train(args)
        print("\n".join(list_presets(PRESETS)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
