"""``anchors``: StoryAnchors-style joint story-frame generation and its training.

    anchors generate --story STORY.json [--frames N] [--condition PLAN_DIR:1,2] [--preset tiny|paper|PATH|CKPT]
                     --out DIR [--seed S] [key=value ...]
    anchors train --preset tiny|stage1-global|stage2-multievent|stage3-continuation|paper|PATH
                  data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node N -m anchors train --preset ... data=... out=...   # several processes
    anchors presets

``--preset`` takes a preset name, a preset YAML, or a trained checkpoint folder (``RUN/final``, whose
``config.yaml`` is used). There is no ``default`` preset: no video diffusion weights exist offline.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from anchors.config import PRESETS, AnchorsConfig, AnchorsError
from auteur.cliutil import (
    ArgumentParser,
    add_override_option,
    add_overrides,
    examples,
    parse_with_overrides,
    run_cli,
    setup_logging,
)
from auteur.config import list_presets, load_config
from auteur.training import is_main_process

log = logging.getLogger(__name__)

NO_DEFAULT = (
    "there is no 'default' preset for anchors: no video diffusion weights are available offline (none ship on "
    "PyPI); use --preset tiny (random weights, a code-path check), --preset paper with model.pretrained=PATH "
    "to a local Wan2.1 diffusers folder, or a checkpoint that `anchors train` wrote"
)


def resolve_config(preset: str, overrides: list[str]) -> AnchorsConfig:
    """A preset name or YAML, or a checkpoint folder (its saved config, with ``checkpoint`` set to it)."""
    if preset == "default":
        raise AnchorsError(NO_DEFAULT)
    path = Path(preset)
    if path.is_dir():
        from anchors.model import check_checkpoint

        check_checkpoint(path)
        cfg = load_config(AnchorsConfig, path / "config.yaml", overrides, preset_dir=PRESETS)
        cfg.checkpoint = str(path)
        return cfg
    cfg = load_config(AnchorsConfig, preset, overrides, preset_dir=PRESETS)
    if cfg.checkpoint:
        from anchors.model import check_checkpoint

        check_checkpoint(cfg.checkpoint)
    return cfg


CHEF = "../shared/data/story_prompts/vgot_chef/image_prompt_pairs.json"
DEMOS = "../shared/data/videoauteur_demos"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="anchors",
        description="StoryAnchors-style bidirectional story-frame generation and its training.",
        epilog=examples(
            f"anchors generate --story {CHEF} --preset tiny --out runs/anchors-chef",
            "anchors presets",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `anchors COMMAND --help` shows its options",
    )

    g = sub.add_parser(
        "generate",
        help="generate a story's frames jointly, as a Plan folder",
        description="Generate a story's frames jointly (in windows when longer than the model's), as a plan folder.\n"
        "There is no default preset: --preset tiny (random weights), paper (model.pretrained=PATH) or a checkpoint.",
        epilog=examples(
            f"anchors generate --story {CHEF} --preset tiny --out runs/anchors-chef",
            f"anchors generate --story {CHEF} --preset tiny --out runs/anchors-chef-2 \\",
            "    --condition runs/anchors-chef:1,2 --seed 1",
        ),
    )
    g.add_argument("--story", required=True, type=Path, help="story JSON (see the README section on anchors)")
    g.add_argument(
        "--frames",
        type=int,
        help="number of story frames (default: the story's, else generate.num_frames); more than a window: in windows",
    )
    g.add_argument("--condition", metavar="PLAN_DIR:K[,K]", help="keep these frames of a plan folder (1-based)")
    g.add_argument(
        "--preset",
        default="default",
        help="tiny, paper, a stage, a YAML, or a checkpoint folder RUN/final (`anchors presets`; no default exists)",
    )
    g.add_argument("--out", required=True, type=Path, help="plan folder to write")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_overrides(g, "generate.steps=4")

    t = sub.add_parser(
        "train",
        help="train the story transformer on CookGen story-frame sequences",
        description="Train the story transformer on CookGen story-frame sequences (resumable). Several processes:\n"
        "torchrun --nproc_per_node N -m anchors train ...",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos-tiny --split train --preset tiny",
            "anchors train --preset tiny data=runs/demos-tiny out=runs/anchors-tiny train.max_steps=10",
        ),
    )
    t.add_argument(
        "--preset",
        "--config",
        dest="preset",
        default="tiny",
        metavar="PRESET",
        help="tiny, a stage, paper, or a YAML (default: tiny); --config: old spelling",
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
        description="List the names of the anchors presets (for --preset).",
        epilog=examples("anchors presets"),
    )
    return p


def _generate(args) -> int:
    from anchors.captions import assign_frames, load_story
    from anchors.generate import condition_images, parse_condition, story_windows
    from anchors.model import frame_limits
    from auteur.io import check_writable_place, writer_lock
    from auteur.plan import check_plan_out

    # 1. everything the user gave is checked before a model is built or a file written
    check_plan_out(args.out)
    check_writable_place(args.out)  # a busy or unwritable --out fails now; the lock is taken after the checks
    cfg = resolve_config(args.preset, args.overrides)
    story = load_story(args.story)
    if args.frames is not None:
        n = assign_frames(story, args.frames)
    elif any(e.frames for e in story.events):
        n = assign_frames(story, None)
    else:
        n = assign_frames(story, max(cfg.generate.num_frames, len(story.events)))
    story_windows(n, cfg.model, cfg.generate, *frame_limits(cfg.model))
    given = {}
    cond_from = None
    if args.condition:
        cond_from, frames = parse_condition(args.condition)
        if len(frames) > n:
            raise AnchorsError(f"--condition gives {len(frames)} frames but the story has only {n} story frames")
        if len(frames) == n:
            raise AnchorsError(f"--condition gives all {n} story frames: nothing is left to generate")
        if max(frames) > n:
            raise AnchorsError(f"--condition frame {max(frames)} is outside the story's frames 1..{n}")
        given = condition_images(cond_from, frames)

    # 2. model, generation, plan (one writer per --out)
    with writer_lock(args.out):
        return _generate_held(args, cfg, story, n, given, cond_from)


def _generate_held(args, cfg: AnchorsConfig, story, n: int, given: dict, cond_from) -> int:
    """``anchors generate`` once its input is checked, with the --out writer lock held."""
    import torch

    from anchors.generate import generate, write_plan
    from anchors.model import build_anchors

    anchors = build_anchors(cfg.model, checkpoint=cfg.checkpoint)
    if torch.cuda.is_available():
        anchors.to("cuda")
    t0 = time.perf_counter()
    gen = generate(anchors, story, n, cfg.generate, given=given, seed=args.seed, progress=True)
    seconds = time.perf_counter() - t0
    trained = cfg.checkpoint is not None
    provenance = {
        "generator": "anchors",
        "preset": args.preset,
        "seed": args.seed,
        "models": {"anchors_base": anchors.model_id, "anchors_checkpoint": cfg.checkpoint, "anchors_trained": trained},
        "given_frames": gen.given,
        "condition_plan": str(cond_from) if cond_from else None,
        "generate_seconds": round(seconds, 3),
    }
    out = write_plan(gen, story, args.out, cfg, provenance)
    windows = f" in {len(gen.windows)} windows (overlap {gen.overlap})" if len(gen.windows) > 1 else ""
    print(f"{n} story frames ({len(gen.given)} given){windows} in {seconds:.2f} s -> {out}")
    if not trained and cfg.model.kind == "tiny":
        print("note: an UNTRAINED tiny model (random weights) made these frames; they show the code path only")
    return 0


def _train(args) -> int:
    from anchors.train import train

    if args.preset == "default":
        raise AnchorsError(NO_DEFAULT)
    cfg = load_config(AnchorsConfig, args.preset, args.overrides, preset_dir=PRESETS)
    final = train(cfg, progress=not args.no_progress)
    if not is_main_process():
        return 0  # under torchrun / accelerate launch the main process reports
    print(f"trained anchors ({cfg.train.stage} stage) -> {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        if args.command == "generate":
            return _generate(args)
        if args.command == "train":
            return _train(args)
        print("\n".join(list_presets(PRESETS)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
