"""``renderer render``: keyframes for every step of a plan, with a rolling context of the last k keyframes.

Each keyframe is written atomically as ``keyframes/step-NNN.png`` in the plan folder, recorded in the step
(``step.keyframe`` and ``step.meta["render"]``) and ``plan.json`` is saved after every step, so a killed render
resumes where it stopped: steps whose keyframe is recorded and present are skipped unless ``force``. Every check
a user can fail (no embeddings, another visual space, missing bank or checkpoint, bad context or size) runs before
anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur.io import atomic_path, clean_stale_temporaries
from auteur.plan import Plan, VisualSpace, load_plan, save_plan
from renderer.canvas import fit_panel
from renderer.config import RenderConfig
from renderer.errors import RendererError

log = logging.getLogger(__name__)

KEYFRAMES = "keyframes"
RETRIEVAL_LABEL = (
    "RETRIEVAL renderer: real frames retrieved from a frame bank, not generated (no FLUX weights offline)"
)
UNTRAINED_LABEL = "UNTRAINED random tiny FLUX Fill (tests only): the images mean nothing"


class SimulatedKill(RuntimeError):
    """Raised by ``render_plan(..., stop_after=N)`` after N new keyframes: a kill, for tests."""


@dataclass
class RenderResult:
    folder: Path
    rendered: list[int]
    skipped: list[int]


def _done(plan_dir: Path, step) -> bool:
    return bool(step.keyframe) and (plan_dir / step.keyframe).is_file() and "render" in step.meta


def check_context(k: int) -> None:
    if not 1 <= k <= 3:
        raise RendererError(f"--context must be 1, 2 or 3 (reference keyframes on the canvas), got {k}")


def render_plan(
    cfg: RenderConfig,
    plan_dir: str | Path,
    preset: str = "",
    force: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> RenderResult:
    """Render the keyframes of the plan in ``plan_dir`` as ``cfg`` says; see the module docstring."""
    from tqdm.auto import tqdm

    plan_dir = Path(plan_dir)
    # 1. checks, before anything is written
    check_context(cfg.context)
    if cfg.width < 1 or cfg.height < 1:
        raise RendererError(f"size must be positive, got {cfg.width}x{cfg.height}")
    plan = load_plan(plan_dir)
    if plan.embeddings is None or plan.space is None:
        raise RendererError(f"{plan_dir} has no embeddings: the renderer needs the director's visual states")
    backend = _RetrievalBackend(cfg) if cfg.backend == "retrieval" else _FluxBackend(cfg)
    backend.check(plan.space)
    clean_stale_temporaries(plan_dir / KEYFRAMES)

    # 2. the steps, in order; the rolling context is the last k keyframes before each step
    todo = {s.index for s in plan.steps if force or not _done(plan_dir, s)}
    rendered, skipped = [], [s.index for s in plan.steps if s.index not in todo]
    if not todo:
        return RenderResult(plan_dir, rendered, skipped)
    plan.provenance["renderer"] = backend.provenance(preset)
    bar = tqdm(total=len(todo), desc="render", unit="keyframe", disable=not progress)
    for i, step in enumerate(plan.steps):
        if step.index not in todo:
            continue
        ctx = [plan.steps[j] for j in range(max(0, i - cfg.context), i)]
        image, record = backend.render(plan, plan_dir, i, ctx)
        rel = f"{KEYFRAMES}/step-{step.index:03d}.png"
        with atomic_path(plan_dir / rel, suffix=".png") as tmp:
            image.save(tmp, format="PNG")
        step.keyframe = rel
        step.meta["render"] = {**record, "context_steps": [c.index for c in ctx]}
        save_plan(plan, plan_dir)
        rendered.append(step.index)
        bar.update()
        if stop_after is not None and len(rendered) >= stop_after:
            bar.close()
            raise SimulatedKill(f"stopped after {len(rendered)} keyframes")
    bar.close()
    return RenderResult(plan_dir, rendered, skipped)


class _RetrievalBackend:
    def __init__(self, cfg: RenderConfig):
        from auteur.bank import BUILD_HINT, load_bank

        self.cfg = cfg
        if not str(cfg.retrieval.bank or "").strip():
            raise RendererError(f"frame bank not found: none given; {BUILD_HINT} and pass --bank BANK")
        self.bank = load_bank(cfg.retrieval.bank)
        self.retriever = None
        self.used = torch.zeros(len(self.bank.frames), dtype=torch.bool)

    def check(self, space: VisualSpace) -> None:
        from renderer.retrieval import Retriever, bank_prefilter, normalize_rows

        self.bank.space.check_same(space, what=f"the plan's embeddings (bank {self.bank.folder})")
        # the first load of a big bank fits its exact prefilter and stores it beside the bank; later loads reuse it
        self.retriever = Retriever(normalize_rows(self.bank.embeddings), prefilter=bank_prefilter(self.bank))

    def provenance(self, preset: str) -> dict[str, Any]:
        r = self.cfg.retrieval
        return {
            "kind": "retrieval",
            "label": RETRIEVAL_LABEL,
            "preset": preset,
            "bank": str(self.bank.folder.resolve()),
            "bank_frames": len(self.bank.frames),
            "consistency": r.consistency,
            "context": self.cfg.context,
            "size": [self.cfg.width, self.cfg.height],
        }

    def _bank_index(self, step) -> int | None:
        rec = step.meta.get("render", {})
        if rec.get("kind") == "retrieved" and rec.get("bank") == str(self.bank.folder.resolve()):
            return rec.get("bank_index")
        return None

    def render(self, plan: Plan, plan_dir: Path, i: int, ctx: list) -> tuple[Image.Image, dict[str, Any]]:
        from renderer.retrieval import normalize_rows

        r = self.cfg.retrieval
        prev = [b for b in (self._bank_index(s) for s in ctx) if b is not None]
        used = None
        if not r.allow_repeats:
            used = self.used.clone()
            for s in plan.steps[:i]:
                b = self._bank_index(s)
                if b is not None:
                    used[b] = True
        q = normalize_rows(plan.embeddings[i : i + 1])[0]
        choice = self.retriever.choose(q, prev, r.consistency, used)
        frame = self.bank.frames[choice.index]
        image = fit_panel(self.bank.image(choice.index), self.cfg.width, self.cfg.height)
        record = {
            "kind": "retrieved",
            "bank": str(self.bank.folder.resolve()),
            "bank_index": choice.index,
            "source": frame["source"],
            "time": frame["time"],
            "score": round(choice.score, 6),
        }
        return image, record


class _FluxBackend:
    def __init__(self, cfg: RenderConfig):
        self.cfg = cfg
        self.meta: dict[str, Any] = {}
        if cfg.checkpoint is not None:
            from renderer.flux import read_checkpoint_meta

            self.meta = read_checkpoint_meta(cfg.checkpoint)  # a missing checkpoint fails before the model loads
        self.renderer = None

    def check(self, space: VisualSpace) -> None:
        from renderer.flux import FluxRenderer, check_size

        if self.meta:
            expected = VisualSpace(self.meta["space"]["name"], int(self.meta["space"]["dim"]))
        else:
            from auteur.vision import load_encoder

            expected = load_encoder(self.cfg.vision).space
        expected.check_same(space, what="the plan's embeddings")
        self.renderer = FluxRenderer(self.cfg, space, checkpoint=self.cfg.checkpoint)
        check_size(self.renderer.pipe, self.cfg.width, self.cfg.height)

    def provenance(self, preset: str) -> dict[str, Any]:
        trained = bool(self.meta)
        out = {
            "kind": "flux-fill",
            "preset": preset,
            "model": self.renderer.model_id,
            "checkpoint": str(Path(self.cfg.checkpoint).resolve()) if self.cfg.checkpoint else None,
            "trained": trained,
            "context": self.cfg.context,
            "size": [self.cfg.width, self.cfg.height],
            "num_inference_steps": self.cfg.flux.num_inference_steps,
            "guidance_scale": self.cfg.flux.guidance_scale,
        }
        if self.cfg.flux.kind == "tiny" and not trained:
            out["label"] = UNTRAINED_LABEL
        return out

    def render(self, plan: Plan, plan_dir: Path, i: int, ctx: list) -> tuple[Image.Image, dict[str, Any]]:
        step = plan.steps[i]
        context = [Image.open(plan_dir / s.keyframe).convert("RGB") for s in ctx if s.keyframe]
        captions = [s.caption or s.action for s in ctx if s.keyframe] + [step.caption or step.action]
        seed = self.cfg.seed + step.index
        image = self.renderer.render(context, captions, plan.embeddings[i], seed=seed)
        return image, {"kind": "rendered", "model": self.renderer.model_id, "seed": seed}
