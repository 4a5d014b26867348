"""``videogen``: clips from a plan, one long video; robustness fine-tuning.

    videogen generate PLAN_DIR [--preset default|tiny|paper|PATH] [--frames N] [--fps F] [--seed S]
                      [--checkpoint RUN/final] [key=value ...]
    videogen train --preset tiny|paper|ablation-*|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node N -m videogen train --preset paper ...   # several processes (GPUs)
    videogen presets

The ``default`` preset makes an *animatic* from the keyframes (no video weights exist offline); ``tiny`` runs
the real Wan 2.1 I2V code at toy size with random weights; ``paper`` loads a local Wan 2.1 I2V checkpoint.
"""

from __future__ import annotations

import logging
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
from videogen.config import PRESETS, VideogenConfig

log = logging.getLogger(__name__)


DEMOS = "../shared/data/videoauteur_demos"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="videogen",
        description="Clips conditioned on the director's embeddings; one long video. Robustness fine-tuning.",
        epilog=examples(
            "videogen generate runs/tuna/plan",
            "videogen presets",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `videogen COMMAND --help` shows its options",
    )
    g = sub.add_parser(
        "generate",
        help="one clip per plan step, then the long video (into the plan folder)",
        description="One clip per step of a rendered plan folder, then the long video PLAN_DIR/video.mp4 "
        "(resumable).\n"
        "The default preset makes an animatic of the keyframes (no video weights exist offline).",
        epilog=examples(
            "renderer render runs/tuna/plan --bank runs/bank",
            "videogen generate runs/tuna/plan --fps 24 --frames 72",
        ),
    )
    g.add_argument("plan", type=Path, help="a plan folder with keyframes (renderer render)")
    g.add_argument(
        "--preset",
        default="default",
        help="default (animatic), tiny, paper, or a YAML (`videogen presets`; default: default)",
    )
    g.add_argument("--frames", type=int, help="frames per clip (Wan: 4k+1; animatic: instead of step_seconds)")
    g.add_argument("--fps", type=float, help="frames per second (default from the preset)")
    g.add_argument("--seed", type=int, help="sampling seed (default from the preset)")
    g.add_argument("--checkpoint", help="a trained videogen folder (RUN/final)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overrides(g, "animatic.step_seconds=3")
    t = sub.add_parser(
        "train",
        help="LoRA + projector fine-tuning with the embedding regularisers",
        description="Fine-tune Wan 2.1 I2V (LoRA + embedding projector) with the embedding regularisers on CookGen\n"
        "builds (resumable). Several processes: torchrun --nproc_per_node N -m videogen train ...",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos-tiny --split train --preset tiny",
            "videogen train --preset tiny data=runs/demos-tiny out=runs/videogen-tiny train.max_steps=2",
        ),
    )
    t.add_argument(
        "--preset",
        "--config",
        dest="preset",
        default="tiny",
        metavar="PRESET",
        help="tiny, paper, an ablation-*, or a YAML (default: tiny); --config: old spelling",
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
        description="List the names of the videogen presets (for --preset).",
        epilog=examples("videogen presets"),
    )
    return p


def _generate(args) -> int:
    from videogen.generate import generate

    cfg = load_config(VideogenConfig, args.preset, args.overrides, preset_dir=PRESETS)
    if args.fps is not None:
        cfg.fps = args.fps
    if args.seed is not None:
        cfg.seed = args.seed
    if args.checkpoint is not None:
        cfg.checkpoint = args.checkpoint
    if args.frames is not None:
        if args.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {args.frames}")
        cfg.frames = args.frames
        if cfg.backend == "animatic":
            cfg.animatic.step_seconds = args.frames / cfg.fps
    res = generate(args.plan, cfg, preset=str(args.preset), progress=not args.no_progress)
    kind = "animatic (keyframes with pan/zoom; not a generated video)" if cfg.backend == "animatic" else cfg.backend
    again = ""
    if res.replaced:
        again = f"; {len(res.replaced)} made by another preset ({'; '.join(res.made_by)}) made again"
    print(
        f"{len(res.plan.steps)} clips ({len(res.generated)} made, {len(res.skipped)} kept{again})"
        f" -> {args.plan / 'clips'}\n"
        f"video: {res.video} ({res.duration:.2f} s, {kind}); captions: {res.captions}"
    )
    if res.plan.provenance.get("videogen", {}).get("note"):
        print("note: " + res.plan.provenance["videogen"]["note"])
    return 0


def _train(args) -> int:
    from videogen.train import train

    cfg = load_config(VideogenConfig, args.preset, args.overrides, preset_dir=PRESETS)
    final = train(cfg, progress=not args.no_progress)
    if is_main_process():  # under torchrun / accelerate launch the main process reports
        print(f"trained videogen (LoRA + projector) -> {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging()
        if getattr(args, "no_progress", False):  # the libraries' own bars too (loading weights and shards)
            from diffusers.utils import logging as diffusers_logging
            from transformers.utils import logging as transformers_logging

            diffusers_logging.disable_progress_bar()
            transformers_logging.disable_progress_bar()
        if args.command == "generate":
            return _generate(args)
        if args.command == "train":
            return _train(args)
        print("\n".join(list_presets(PRESETS)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
