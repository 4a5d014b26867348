"""``renderer render``: keyframes for every step of a plan, with a rolling context of the last k keyframes.

Each keyframe is written atomically as ``keyframes/step-NNN.png`` in the plan folder, recorded in the step
(``step.keyframe`` and ``step.meta["render"]``) and ``plan.json`` is saved after every step, so a killed render
resumes where it stopped: steps whose keyframe is recorded, present and made by the same renderer (the record's
``renderer``: preset, back-end, model or bank, checkpoint) are skipped unless ``force``; keyframes made by another
renderer are made again. Every check a user can fail (no embeddings, another visual space, missing bank or
checkpoint, bad context or size, a plan folder that cannot be written) runs before anything is written, and the
cheap ones before any model loads; the CLI then prints one line, so models needed only for a check load quietly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur.io import atomic_path, check_writable_place, clean_stale_temporaries, ensure_writable_dir, writer_lock
from auteur.plan import Plan, VisualSpace, load_plan, save_plan
from renderer.canvas import fit_panel
from renderer.config import RenderConfig
from renderer.errors import RendererError

log = logging.getLogger(__name__)

KEYFRAMES = "keyframes"
MAX_SIDE = 4096  # a panel side; larger ones would not fit in memory (a canvas holds up to four panels)
RETRIEVAL_LABEL = (
    "RETRIEVAL renderer: real frames retrieved from a frame bank, not generated (no FLUX weights offline)"
)
UNTRAINED_LABEL = "UNTRAINED random tiny FLUX Fill (tests only): the images mean nothing"


class SimulatedKill(RuntimeError):
    """Raised by ``render_plan(..., stop_after=N)`` after N new keyframes: a kill, for tests."""


@dataclass
class RenderResult:
    """What a render did: step indices ``rendered`` (new keyframes) and ``skipped`` (kept); ``replaced`` are the
    rendered steps whose earlier keyframe another renderer had made (``made_by``: those renderers in words)."""

    folder: Path
    rendered: list[int]
    skipped: list[int]
    replaced: list[int] = field(default_factory=list)
    made_by: list[str] = field(default_factory=list)


def _has_keyframe(plan_dir: Path, step) -> bool:
    return bool(step.keyframe) and (plan_dir / step.keyframe).is_file() and "render" in step.meta


def renderer_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """What makes two renders the same renderer: the preset, the back-end, its model or bank and checkpoint
    (a subset of ``plan.provenance["renderer"]``; recorded with every keyframe as ``meta["render"]["renderer"]``)."""
    return {k: provenance[k] for k in ("preset", "kind", "model", "checkpoint", "bank") if k in provenance}


def describe_renderer(identity: dict[str, Any] | None) -> str:
    """A renderer identity in a few words, for the line that says which keyframes are made again."""
    if not identity:
        return "an unrecorded renderer"
    ckpt = identity.get("checkpoint")
    return f"preset {identity.get('preset') or '?'}" + (f" with checkpoint {ckpt}" if ckpt else "")


def kept_line(skipped: int, replaced: int, made_by: list[str]) -> str:
    """``N already there`` (keyframes kept), and how many are made again because another renderer made them."""
    line = f"{skipped} already there"
    if replaced:
        line += f"; {replaced} made by another renderer ({'; '.join(made_by)}), so made again"
    return line


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence logging (WARNING and below, every logger: open_clip logs through the root logger) for a model
    that loads only so that an input can be checked; the CLI's stderr stays the one error line."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def check_writable(plan_dir: Path) -> None:
    """The plan folder (plan.json is saved there) and its ``keyframes/`` folder, if there is one, must be
    writable; checked without creating anything (AuteurError: one line, exit 2)."""
    ensure_writable_dir(plan_dir)
    if (plan_dir / KEYFRAMES).exists():
        ensure_writable_dir(plan_dir / KEYFRAMES)


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
    # 1. checks, before anything is written; the cheap ones (bank, checkpoint, size) before any model loads
    check_context(cfg.context)
    if cfg.width < 1 or cfg.height < 1:
        raise RendererError(f"size must be positive, got {cfg.width}x{cfg.height}")
    if cfg.width > MAX_SIDE or cfg.height > MAX_SIDE:
        raise RendererError(f"size {cfg.width}x{cfg.height} is too large: at most {MAX_SIDE} a side")
    plan = load_plan(plan_dir)
    if plan.embeddings is None or plan.space is None:
        raise RendererError(f"{plan_dir} has no embeddings: the renderer needs the director's visual states")
    check_writable_place(plan_dir, flag="plan folder")  # another writer of it fails before any model loads
    backend = _RetrievalBackend(cfg) if cfg.backend == "retrieval" else _FluxBackend(cfg)
    check_writable(plan_dir)
    backend.check(plan.space)
    with writer_lock(plan_dir, flag="plan folder"):  # one writer per plan folder (renderer, videogen, director)
        clean_stale_temporaries(plan_dir / KEYFRAMES)

        # 2. what to do: steps without a keyframe, or with one that another renderer made
        provenance = backend.provenance(preset)
        identity = renderer_identity(provenance)
        todo, replaced, made_by = set(), [], []
        for s in plan.steps:
            if force or not _has_keyframe(plan_dir, s):
                todo.add(s.index)
            elif (old := s.meta["render"].get("renderer")) != identity:
                todo.add(s.index)
                replaced.append(s.index)
                if describe_renderer(old) not in made_by:
                    made_by.append(describe_renderer(old))
        rendered, skipped = [], [s.index for s in plan.steps if s.index not in todo]
        log.info("keyframes: %s", kept_line(len(skipped), len(replaced), made_by))
        if not todo:
            return RenderResult(plan_dir, rendered, skipped)
        plan.provenance["renderer"] = provenance

        # 3. the steps, in order; the rolling context is the last k keyframes before each step
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
            step.meta["render"] = {**record, "context_steps": [c.index for c in ctx], "renderer": identity}
            save_plan(plan, plan_dir)
            rendered.append(step.index)
            bar.update()
            if stop_after is not None and len(rendered) >= stop_after:
                bar.close()
                raise SimulatedKill(f"stopped after {len(rendered)} keyframes")
        bar.close()
        return RenderResult(plan_dir, rendered, skipped, replaced, made_by)


def _finite(x: float | None, digits: int = 6) -> float | None:
    """A score part for plan.json (strict JSON): rounded, None when absent or not finite."""
    return round(float(x), digits) if x is not None and math.isfinite(x) else None


def step_key(action: str) -> str:
    """Steps with equal keys are "the same step" for the diversity terms: the action, lower case, words only."""
    return " ".join(re.findall(r"[a-z0-9]+", (action or "").lower()))


class _RetrievalBackend:
    def __init__(self, cfg: RenderConfig):
        from auteur.bank import BUILD_HINT, load_bank
        from renderer.retrieval import Weights

        self.cfg = cfg
        if not str(cfg.retrieval.bank or "").strip():
            raise RendererError(f"frame bank not found: none given; {BUILD_HINT} and pass --bank BANK")
        r = cfg.retrieval
        self.weights = Weights(r.visual, r.consistency, r.text, r.diversity, r.diversity_threshold, r.clip_reuse)
        try:
            self.weights.check()
        except ValueError as e:
            raise RendererError(f"retrieval: {e}") from None
        self.bank = load_bank(cfg.retrieval.bank)
        self.retriever = None
        self.used = torch.zeros(len(self.bank.frames), dtype=torch.bool)
        self.text_note = self._text_note()
        self._text_q: torch.Tensor | None = None
        self._table: torch.Tensor | None = None

    def _text_note(self) -> str:
        """'on', or why the text term is off (said once, in one line, when the preset asks for it)."""
        from auteur.sentence import TEXT_SPACE

        if not self.bank.has_texts:
            return (
                f"off: bank {self.bank.folder} has no step texts (built before they existed, or no actions.yaml/"
                f"captions.yaml beside its clips); rerun `cookgen bank CLIPS_DIR --out {self.bank.folder}` to add them"
            )
        if self.bank.text_space != TEXT_SPACE:
            return f"off: the bank's texts are in {self.bank.text_space.name}, the renderer's in {TEXT_SPACE.name}"
        return "on" if self.weights.text else "off: weight 0"

    def check(self, space: VisualSpace) -> None:
        from renderer.retrieval import Retriever, bank_prefilter, normalize_rows

        self.bank.space.check_same(space, what=f"the plan's embeddings (bank {self.bank.folder})")
        if self.weights.text and self.text_note != "on":
            log.warning("retrieval text term %s", self.text_note)
        # the bank's texts are used whenever they are usable: with weight 0 the parts still record the text match
        usable = self.text_note in ("on", "off: weight 0")
        texts = normalize_rows(self.bank.text_embeddings) if usable else None
        # the first load of a big bank fits its exact prefilter and stores it beside the bank; later loads reuse it
        self.retriever = Retriever(
            normalize_rows(self.bank.embeddings),
            prefilter=bank_prefilter(self.bank),
            texts=texts,
            text_of=self.bank.text_index() if usable else None,
            clip_of=self.bank.clip_index(),
        )

    def provenance(self, preset: str) -> dict[str, Any]:
        r = self.cfg.retrieval
        return {
            "kind": "retrieval",
            "label": RETRIEVAL_LABEL,
            "preset": preset,
            "bank": str(self.bank.folder.resolve()),
            "bank_frames": len(self.bank.frames),
            "consistency": r.consistency,
            "weights": {
                "visual": r.visual,
                "consistency": r.consistency,
                "text": r.text,
                "diversity": r.diversity,
                "diversity_threshold": r.diversity_threshold,
                "clip_reuse": r.clip_reuse,
            },
            "text_term": self.text_note,
            "text_encoder": self.bank.text_space.name if self.bank.text_space else None,
            "context": self.cfg.context,
            "size": [self.cfg.width, self.cfg.height],
        }

    def _bank_index(self, step) -> int | None:
        rec = step.meta.get("render", {})
        if rec.get("kind") == "retrieved" and rec.get("bank") == str(self.bank.folder.resolve()):
            return rec.get("bank_index")
        return None

    def _step_texts(self, plan: Plan) -> None:
        """The plan's step texts, embedded once (MiniLM), and their score table against the bank's texts."""
        from auteur.sentence import load_sentence_encoder, step_text
        from renderer.retrieval import normalize_rows

        if self._text_q is not None or self.retriever.texts is None:
            return
        with quiet_logs():
            enc = load_sentence_encoder()
        q = enc.encode([step_text(s.action, s.caption) for s in plan.steps])
        if not bool(torch.isfinite(q).all()):
            raise RendererError("the sentence encoder gave a non-finite embedding for a step text")
        self._text_q = normalize_rows(q)
        self._table = self.retriever.text_scores(self._text_q) if self.weights.text else None

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
        # the frames of the plan's earlier steps, except those of the same step repeated
        key = step_key(plan.steps[i].action)
        avoid = [b for s in plan.steps[:i] if (b := self._bank_index(s)) is not None and step_key(s.action) != key]
        q = normalize_rows(plan.embeddings[i : i + 1])[0]  # finite: load_plan refuses NaN/Inf embeddings
        self._step_texts(plan)
        text_q = self._text_q[i] if self._text_q is not None else None
        table = self._table[i] if self._table is not None else None
        choice = self.retriever.choose(q, prev, self.weights, used, text_q, avoid, table)
        frame = self.bank.frames[choice.index]
        image = fit_panel(self.bank.image(choice.index), self.cfg.width, self.cfg.height)
        record = {
            "kind": "retrieved",
            "bank": str(self.bank.folder.resolve()),
            "bank_index": choice.index,
            "source": frame["source"],
            "time": frame["time"],
            "score": _finite(choice.score),
            "score_parts": {k: _finite(v) for k, v in (choice.parts or {}).items()},
        }
        text = self.bank.source_text(choice.index)
        if text is not None:
            record["source_action"] = text.get("action", "")
        return image, record


class _FluxBackend:
    def __init__(self, cfg: RenderConfig):
        from renderer.flux import check_size, config_size_multiple, read_checkpoint_meta

        self.cfg = cfg
        self.meta: dict[str, Any] = {}
        # a missing checkpoint and a size the model cannot take fail before any model loads
        if cfg.checkpoint is not None:
            self.meta = read_checkpoint_meta(cfg.checkpoint)
        check_size(config_size_multiple(cfg.flux), cfg.width, cfg.height)
        self.renderer = None

    def check(self, space: VisualSpace) -> None:
        from renderer.flux import FluxRenderer, check_size, size_multiple

        if self.meta:
            expected = VisualSpace(self.meta["space"]["name"], int(self.meta["space"]["dim"]))
        else:  # the untrained renderer's space is its visual encoder's: loaded (quietly) to learn its name
            from auteur.vision import load_encoder

            with quiet_logs():
                expected = load_encoder(self.cfg.vision).space
        expected.check_same(space, what="the plan's embeddings")
        self.renderer = FluxRenderer(self.cfg, space, checkpoint=self.cfg.checkpoint)
        check_size(size_multiple(self.renderer.pipe), self.cfg.width, self.cfg.height)

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
