"""``director``: plan a recipe, train the director, evaluate it.

    director plan "how to cook a tuna sandwich" [--preset default|tiny|PATH] [--steps N] [--out DIR] [--seed S]
                  [--temperature T] [--json] [--no-captions] [key=value ...]
    director plan --continue PLAN_DIR --from-step K [--preset ...] [--out DIR]
    director train --preset tiny|default|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node N -m director train --preset paper data=... out=...   # several processes
    director eval --preset P --annotations youcookii_annotations_trainval.json [--labels CSV] [--split validation]
                  [--limit N] [--baselines] [--out DIR]
    director validate --preset P data=COOKGEN_DIR [--split val]   # text loss, embedding L2 / cosine (Tables 5-6)
    director presets

``--preset`` takes a preset name, a preset YAML, or a trained checkpoint folder (``RUN/final``).
"""

from __future__ import annotations

import contextlib
import json
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
from auteur.config import list_presets, load_config, save_config
from auteur.text import MAX_QUERY_CHARS
from auteur.training import is_main_process
from director.config import PRESETS, DirectorConfig

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).parent


def resolve_config(preset: str, overrides: list[str]) -> DirectorConfig:
    """A preset name or YAML, or a checkpoint folder (then the default preset with that checkpoint)."""
    path = Path(preset)
    if path.is_dir():
        if not (path / "director.json").is_file():
            raise UsageError(f"--preset {preset}: a folder must be a director checkpoint (no director.json in it)")
        cfg = load_config(DirectorConfig, "default", overrides, preset_dir=PRESETS)
        cfg.checkpoint = str(path)
        meta = json.loads((path / "director.json").read_text())
        base = meta.get("backbone")
        if base:
            from auteur.config import from_dict
            from director.backbone import BackboneConfig

            cfg.backbone = from_dict(BackboneConfig, base)
        return cfg
    cfg = load_config(DirectorConfig, preset, overrides, preset_dir=PRESETS)
    if cfg.checkpoint and cfg.checkpoint.startswith("package:"):
        cfg.checkpoint = str(PACKAGE / cfg.checkpoint.removeprefix("package:"))
    return cfg


def _slug(text: str) -> str:
    """The plan folder's name for a query: its ASCII words, or ``plan-<hash>`` when it has none (queries of emoji or
    punctuation alone must not all land in one folder)."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]
    return slug or f"plan-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


ANN = "../shared/data/youcook2/youcookii_annotations_trainval.json"
DEMOS = "../shared/data/videoauteur_demos"
PRESET_HELP = "a preset (`director presets`), a preset YAML, or a trained checkpoint folder (RUN/final)"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="director",
        description="The VideoAuteur director: plan a recipe, train the director, evaluate it.",
        epilog=examples(
            'director plan "how to cook a tuna sandwich" --out runs/tuna/plan',
            "director presets",
        ),
    )
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=ArgumentParser,
        help="what to do; `director COMMAND --help` shows its options",
    )

    pl = sub.add_parser(
        "plan",
        help="plan a recipe: actions, captions and visual states",
        description="Plan a recipe: each step's action, caption and visual state (an embedding), into a plan folder.",
        epilog=examples(
            'director plan "how to make pad thai" --steps 6 --seed 1 --out runs/plans/pad-thai',
            "director plan --continue runs/plans/pad-thai --from-step 3 --out runs/plans/pad-thai-2",
        ),
    )
    pl.add_argument(
        "query",
        nargs="?",
        help='what to plan, e.g. "how to cook a tuna sandwich" (with --continue: default the plan\'s own)',
    )
    pl.add_argument(
        "--preset",
        help=f"{PRESET_HELP} (default: default; with --continue, the plan's own preset)",
    )
    pl.add_argument("--steps", type=int, help="number of steps (default: the model decides, within plan.max_steps)")
    pl.add_argument("--out", type=Path, help="plan folder (default: runs/plans/<query>)")
    pl.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    pl.add_argument("--temperature", type=float, help="sampling temperature (0: greedy; default from the preset)")
    pl.add_argument("--no-captions", action="store_true", help="actions and visual states only")
    pl.add_argument("--json", action="store_true", help="print plan.json instead of the readable plan")
    pl.add_argument("--quiet", action="store_true", help="print only the plan folder (no steps as they are planned)")
    pl.add_argument("--continue", dest="cont", type=Path, metavar="PLAN_DIR", help="continue an existing plan")
    pl.add_argument("--from-step", type=int, metavar="K", help="with --continue: keep steps 1..K, regenerate the rest")
    pl.add_argument("--image", type=Path, help="an initial image (the paper's initial image-text pair) to plan from")
    pl.add_argument("--image-caption", default="", help="with --image: what the initial image shows")
    add_overrides(pl, "plan.max_steps=12")

    tr = sub.add_parser(
        "train",
        help="train the director on CookGen splits",
        description="Train the director on CookGen builds (resumable: rerun the same command). Several processes:\n"
        "torchrun --nproc_per_node N -m director train ...",
        epilog=examples(
            f"cookgen build steps --root {DEMOS} --out runs/demos --split train",
            "director train --preset tiny data=runs/demos out=runs/director-tiny train.max_steps=4",
        ),
    )
    tr.add_argument(
        "--preset",
        "--config",
        dest="preset",
        default="default",
        metavar="PRESET",
        help="tiny, default, paper, an ablation, or a YAML (default: default); --config: old spelling",
    )
    add_override_option(tr, "--out", "out", metavar="RUN_DIR", help="run folder (another spelling of out=RUN_DIR)")
    add_override_option(
        tr, "--seed", "seed", type=int, help="training seed (another spelling of seed=S; default from the preset)"
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_overrides(tr, "train.max_steps=100", note="data=COOKGEN_DIR[,DIR] and out=RUN_DIR (or --out) are required")

    ev = sub.add_parser(
        "eval",
        help="score plans against YouCook2 ground truth",
        description="Plan the query of every YouCook2 video of a subset (greedy, actions only) and score the plans\n"
        "against the annotated steps: ROUGE-L, ordered semantic similarity, step-count error.",
        epilog=examples(f"director eval --preset default --annotations {ANN} --limit 3 --out runs/director-eval"),
    )
    ev.add_argument("--preset", default="default", help=f"{PRESET_HELP} (default: default)")
    ev.add_argument("--annotations", required=True, type=Path, help="youcookii_annotations_trainval.json")
    ev.add_argument("--labels", type=Path, help="label_foodtype.csv (default: beside the annotations)")
    ev.add_argument(
        "--split",
        default="validation",
        choices=["validation", "training"],
        help="YouCook2 subset (default: validation)",
    )
    ev.add_argument("--limit", type=int, help="evaluate the first N videos only")
    ev.add_argument("--baselines", action="store_true", help="also score the zero-shot and retrieval baselines")
    ev.add_argument(
        "--unseen",
        action="store_true",
        help="score the held-out dishes of director/eval/unseen_dishes.json (every video of each) instead of a "
        "split; the checkpoint must not have been trained on them; --baselines adds nearest-dish retrieval, "
        "nearest-dish typical recipe and a real-video calibration row",
    )
    ev.add_argument(
        "--seen-only",
        action="store_true",
        help="score only the --split videos of the dishes outside the held-out split (the seen-dish figure of a "
        "checkpoint trained with dataset.exclude_unseen=true)",
    )
    ev.add_argument("--skip-director", action="store_true", help="score the baselines only (with --baselines)")
    ev.add_argument(
        "--out",
        type=Path,
        default=Path("runs/director-eval"),
        help="folder for plans.jsonl and results.md (resumable; default: runs/director-eval)",
    )
    add_overrides(ev, "plan.max_steps=12")

    va = sub.add_parser(
        "validate",
        help="text loss, embedding L2 and cosine of a trained director on a split",
        description="Score a trained director on a CookGen split: text loss, embedding L2 and cosine (Tables 5-6).",
        epilog=examples(
            "director train --preset tiny data=runs/demos out=runs/director-tiny train.max_steps=4",
            "director validate --preset runs/director-tiny/final data=runs/demos --split train",
        ),
    )
    va.add_argument("--preset", default="default", help=f"{PRESET_HELP} (default: default)")
    va.add_argument("--split", help="the CookGen split to score (default: dataset.val_split, i.e. val)")
    add_overrides(va, "dataset.max_val_samples=16", note="data=COOKGEN_DIR[,DIR] is required")

    sub.add_parser(
        "presets",
        help="list the presets",
        description="List the names of the director presets (for --preset).",
        epilog=examples("director presets"),
    )
    return p


def _read_image(path: Path):
    """The ``--image`` file as an RGB PIL image; a missing or unreadable file is a usage error."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(f"--image {path}: no such image file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"--image {path}: not a readable image ({type(e).__name__})") from None


def _embed_initial_image(image, path: Path, cfg: DirectorConfig, space):
    """The initial image's embedding (a [D] tensor) by ``cfg.vision``'s encoder, which must give the director's
    space."""
    from auteur.vision import load_encoder

    encoder = load_encoder(cfg.vision)
    space.check_same(encoder.space, what=f"the embedding of --image {path}")
    return encoder.embed_images([image])[0].float().cpu()


def _print_plan(folder: Path, note: str) -> None:
    """Print a plan folder readably (control characters of a hand-edited plan removed)."""
    from auteur.plan import load_plan

    plan = load_plan(folder)
    printer = _StepPrinter(plan.query)
    for s in plan.steps:
        printer("kept" if s.meta.get("kept") else "action", s.index, s.action)
        if s.caption:
            printer("caption", s.index, s.caption)
    print(_summary(len(plan.steps), plan.space, folder))
    if note:
        print(note)


def _summary(n: int, space, folder: Path) -> str:
    return f"\n{n} steps, visual states in {space.name} (dim {space.dim}) -> {folder}"


class _StepPrinter:
    """Prints a plan step by step as the planner writes it (``Planner.plan(on_text=...)``), flushing each line:
    the header, then ``k. action`` and ``   caption`` as each exists."""

    def __init__(self, query: str) -> None:
        self.query, self.started, self.headed = query, False, set()

    def __call__(self, kind: str, k: int, text: str) -> None:
        from auteur.text import printable

        if not self.started:
            print(f"Plan: {printable(self.query)}", flush=True)
            self.started = True
        if kind in ("action", "kept"):
            print(f"\n{k}. {printable(text)}{' (kept)' if kind == 'kept' else ''}", flush=True)
            self.headed.add(k)
        elif kind == "caption":
            if k not in self.headed:  # a caption-only plan (model.order=caption)
                print(f"\n{k}. ", flush=True)
                self.headed.add(k)
            print(f"   {printable(text)}", flush=True)


def _far_from_training(query: str, checkpoint: str, below: float) -> str:
    """A one-line note when ``query`` is far from every training query of ``checkpoint`` (all-MiniLM-L6-v2 cosine
    similarity of the nearest below ``below``); "" otherwise, or when the checkpoint records no training queries."""
    from director.checkpoint import read_train_queries

    queries = read_train_queries(checkpoint)
    if not queries:
        return ""
    from auteur.sentence import load_sentence_encoder

    enc = load_sentence_encoder()
    sims = enc.encode([query]) @ enc.encode(queries).T
    best = int(sims[0].argmax())
    if float(sims[0, best]) >= below:
        return ""
    return (
        f"note: this query is far from every recipe the director was trained on (nearest: {queries[best]!r}, "
        f"similarity {float(sims[0, best]):.2f} < {below}); it knows cooking recipes only"
    )


def _plan(args) -> int:
    with contextlib.ExitStack() as held:  # the output folder's writer lock, released however the plan ends
        return _plan_held(args, held)


def _plan_held(args, held: contextlib.ExitStack) -> int:
    import torch

    from auteur.io import atomic_dir, check_writable_place, writer_lock
    from auteur.plan import Plan, Step, VisualSpace, check_plan_out, load_plan, plan_to_json, save_plan
    from director.checkpoint import build_director
    from director.plan import Planner
    from director.train import resolve_space

    keep = []
    if args.cont is not None:
        if args.from_step is None:
            raise UsageError("--continue needs --from-step K (the steps to keep)")
        old = load_plan(args.cont)
        if not 0 <= args.from_step <= len(old.steps):
            raise UsageError(f"--from-step must be between 0 and {len(old.steps)} (the plan's steps)")
        if old.embeddings is None:
            raise UsageError(f"{args.cont} has no embeddings; continuation needs the visual states of the kept steps")
        query = args.query or old.query
        keep = [(s.action, s.caption, old.embeddings[i]) for i, s in enumerate(old.steps[: args.from_step])]
    else:
        if args.from_step is not None:
            raise UsageError("--from-step goes with --continue PLAN_DIR")
        query = args.query
    if query is not None:
        from auteur.text import printable

        query = printable(query).strip()  # no terminal control codes in what is printed and written
    if not query:
        raise UsageError('the query is empty: give what to plan, e.g. "how to cook a tuna sandwich"')
    if len(query) > MAX_QUERY_CHARS:
        raise UsageError(
            f"the query is {len(query)} characters long; a query names what to make in one sentence "
            f"(at most {MAX_QUERY_CHARS} characters)"
        )
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.image_caption and args.image is None:
        raise UsageError("--image-caption goes with --image PATH")
    image = _read_image(args.image) if args.image is not None else None  # before any model loads
    out = check_plan_out(args.out or Path("runs") / "plans" / _slug(query))
    if args.preset is None:  # a continued plan keeps the director that wrote it
        args.preset = (old.provenance.get("preset") if args.cont is not None else None) or "default"
    cfg = resolve_config(args.preset, args.overrides)
    if args.temperature is not None:
        cfg.plan.temperature = args.temperature
    if not cfg.plan.temperature >= 0:  # NaN too
        raise UsageError(f"--temperature must be >= 0, got {cfg.plan.temperature}")
    # a busy or unwritable place fails before the model loads; the lock itself is taken once every check passed
    check_writable_place(out)
    if args.no_captions:
        cfg.plan.captions = False
    space = VisualSpace("unknown", 0)
    if cfg.checkpoint is None:
        space = resolve_space(DirectorConfig(vision=cfg.vision))
    director, backbone, meta = build_director(
        cfg.backbone, cfg.model, space, checkpoint=cfg.checkpoint, seed=cfg.seed, fold_lora=cfg.plan.merge_lora
    )
    if meta:
        space = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
    if keep:
        old_space = load_plan(args.cont).space
        space.check_same(old_space, what=f"embeddings of {args.cont}")
    n_prompt = len(backbone.tokenizer(query, verbose=False)["input_ids"])  # no length warning before our error
    limit = getattr(backbone.model.config.get_text_config(), "max_position_embeddings", 2048)  # a VLM: its LM
    if n_prompt > limit // 4:
        raise UsageError(f"the query has {n_prompt} tokens; the model's context ({limit}) cannot hold a plan for it")
    initial = None
    if args.image is not None:  # embedded in the director's visual space by the configured encoder
        initial = (args.image_caption, _embed_initial_image(image, args.image, cfg, space))
    if args.steps is not None and len(keep) >= args.steps:
        raise UsageError(f"--steps {args.steps} leaves nothing to generate after keeping {len(keep)} steps")
    planner = Planner(director, cfg.plan)
    if args.steps is not None:
        fit = (planner.context_tokens() - n_prompt) // planner.step_tokens_min()
        if args.steps > fit:
            raise UsageError(
                f"--steps {args.steps} cannot fit: the model's context ({planner.context_tokens()} tokens) holds at "
                f"most {fit} steps of {planner.step_tokens_min()}+ tokens after this query"
            )
    held.enter_context(writer_lock(out))  # one writer per folder
    replaces = (out / "plan.json").is_file()
    streaming = not (args.json or args.quiet)
    printer = _StepPrinter(query) if streaming else None
    result = planner.plan(query, steps=args.steps, seed=args.seed, keep=keep, initial=initial, on_text=printer)
    steps = [
        Step(index=i + 1, action=s.action, caption=s.caption, meta={"kept": True} if s.kept else {})
        for i, s in enumerate(result.steps)
    ]
    trained = bool(meta)
    provenance = {
        "preset": args.preset,
        "seed": args.seed,
        "temperature": cfg.plan.temperature,
        "models": {
            "director_base": backbone.model_id,
            "director_checkpoint": cfg.checkpoint,
            "director_trained": trained,
            "visual_space": space.name,
        },
        "ended_by_model": result.ended_by_model,
        "decode_tokens_per_s": round(result.stats["decode_tokens"] / result.stats["decode_seconds"], 2)
        if result.stats["decode_seconds"]
        else None,
    }
    if args.cont is not None:
        provenance["continued_from"] = {"plan": str(args.cont), "kept_steps": len(keep)}
    if args.image is not None:
        provenance["initial_image"] = {"path": str(args.image), "caption": args.image_caption}
    plan = Plan(
        query=query,
        steps=steps,
        embeddings=torch.stack([s.embedding for s in result.steps]),
        space=space,
        provenance=provenance,
    )
    with atomic_dir(out) as tmp:
        save_plan(plan, tmp)
        save_config(cfg, tmp)
    notes = [] if trained else ["note: an UNTRAINED director (random weights; tiny preset) wrote this plan"]
    if result.stats.get("context_full"):
        notes.append(
            f"note: the plan stopped after {len(result.steps)} steps: the model's context "
            f"({planner.context_tokens()} tokens) could not hold another"
        )
    elif args.steps is None and not result.ended_by_model:
        notes.append(f"note: the plan stopped at plan.max_steps ({cfg.plan.max_steps}) before the director ended it")
    if replaces:
        notes.append(f"note: replaced the plan that was in {out}")
    if trained and cfg.plan.domain_note_below > 0:
        far = _far_from_training(query, cfg.checkpoint, cfg.plan.domain_note_below)
        if far:
            notes.append(far)
    if args.json:
        print(json.dumps(plan_to_json(load_plan(out)), indent=2, ensure_ascii=False))
    elif args.quiet:
        print(out)
    else:
        if not printer.started:  # nothing was planned (every step kept)
            _print_plan(out, "")
        else:
            print(_summary(len(plan.steps), space, out), flush=True)
    for note in notes:  # on stderr: stdout stays the plan (or its JSON)
        print(note, file=sys.stderr)
    return 0


def _train(args) -> int:
    from director.train import train

    cfg = load_config(DirectorConfig, args.preset, args.overrides, preset_dir=PRESETS)
    final = train(cfg, progress=not args.no_progress)
    if not is_main_process():
        return 0  # under torchrun / accelerate launch the main process reports
    meta = json.loads((final / "director.json").read_text())
    val = meta.get("validation") or {}
    print(f"trained director -> {final}")
    if val:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
    return 0


def _eval(args) -> int:
    from director.evaluate import run_eval

    cfg = resolve_config(args.preset, args.overrides)
    table = run_eval(cfg, args)
    print(table)
    return 0


def _validate(args) -> int:
    from director.train import validate_checkpoint

    cfg = resolve_config(args.preset, args.overrides)
    metrics = validate_checkpoint(cfg, args.split)
    print(json.dumps({k: round(v, 5) for k, v in metrics.items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = parse_with_overrides(_parser(), argv)  # key=value may also follow the options
        setup_logging()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        if args.command == "plan":
            return _plan(args)
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "validate":
            return _validate(args)
        print("\n".join(list_presets(PRESETS)))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
