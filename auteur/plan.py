"""The Plan schema: the contract between the pipeline's stages.

A plan folder holds

- ``plan.json``: the query, the ordered steps (index, action, caption, optional keyframe and clip paths
  relative to the folder, a free-form ``meta`` mapping per step for stage records), the visual space of the
  embeddings, and provenance (preset, model ids, seed, package versions, and whatever a stage adds);
- ``embeddings.safetensors``: one row per step (tensor ``embeddings`` of shape [num_steps, dim]), with the
  visual space's name and dimension in the file's metadata.

Stages read a plan with :func:`load_plan`, add to it, and write it back with :func:`save_plan`; a user may
edit ``plan.json`` by hand between stages. ``load_plan`` validates everything and raises :class:`PlanError`
with the offending field named.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from auteur.errors import PlanError
from auteur.io import atomic_path, atomic_write_json, read_json_object

PLAN_FORMAT = "auteur.plan/1"
PLAN_FILE = "plan.json"
EMBEDDINGS_FILE = "embeddings.safetensors"


@dataclass(frozen=True)
class VisualSpace:
    """The identity of an embedding space: an encoder name and its dimension. Mixing spaces is an error."""

    name: str
    dim: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}

    def check_same(self, other: VisualSpace, what: str = "embeddings") -> None:
        """Raise PlanError unless ``other`` is the same space."""
        if self != other:
            raise PlanError(
                f"{what} are in visual space {other.name} (dim {other.dim}) but {self.name} (dim {self.dim}) "
                "is expected; embeddings from different encoders cannot be mixed"
            )


@dataclass
class Step:
    """One step of a plan: an action, then a caption of what the camera sees (1-based ``index``)."""

    index: int
    action: str
    caption: str = ""
    keyframe: str | None = None
    clip: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "action": self.action,
            "caption": self.caption,
            "keyframe": self.keyframe,
            "clip": self.clip,
            "meta": self.meta,
        }


@dataclass
class Plan:
    """A narrative plan: ``query``, ``steps`` and one embedding row per step (``embeddings``: [N, dim])."""

    query: str
    steps: list[Step]
    embeddings: torch.Tensor | None = None
    space: VisualSpace | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise PlanError if the plan breaks the schema's invariants."""
        if not isinstance(self.query, str) or not self.query.strip():
            raise PlanError("plan query must be a non-empty string")
        for i, s in enumerate(self.steps):
            if s.index != i + 1:
                raise PlanError(f"steps[{i}].index is {s.index}; steps must be numbered 1..N in order")
        if self.embeddings is not None:
            if self.embeddings.ndim != 2:
                raise PlanError(f"embeddings must be 2-D [num_steps, dim], got shape {tuple(self.embeddings.shape)}")
            if self.embeddings.shape[0] != len(self.steps):
                raise PlanError(
                    f"plan has {len(self.steps)} steps but {self.embeddings.shape[0]} embedding rows; "
                    "there must be one row per step"
                )
            if self.space is None:
                raise PlanError("plan has embeddings but no visual space recorded")
            if self.embeddings.shape[1] != self.space.dim:
                raise PlanError(
                    f"embeddings have dim {self.embeddings.shape[1]} but visual space {self.space.name} "
                    f"has dim {self.space.dim}"
                )


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour a plan depends on (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("videoauteur", "torch", "transformers", "peft", "diffusers", "open_clip_torch", "datasets", "av"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "format": PLAN_FORMAT,
        "query": plan.query,
        "steps": [s.to_json() for s in plan.steps],
        "embedding_space": plan.space.to_json() if plan.space is not None else None,
        "provenance": plan.provenance,
        "meta": plan.meta,
    }


def save_plan(plan: Plan, folder: str | Path) -> Path:
    """Write ``plan.json`` and (if there are embeddings) ``embeddings.safetensors`` into ``folder``.

    The embeddings are written first, so a kill between the two files leaves the previous plan.json, which
    still describes a consistent folder or none at all.
    """
    from auteur.io import save_safetensors

    plan.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan.provenance.setdefault("versions", package_versions())
    if plan.embeddings is not None:
        assert plan.space is not None
        with atomic_path(folder / EMBEDDINGS_FILE) as tmp:
            save_safetensors(
                {"embeddings": plan.embeddings.detach().to("cpu", torch.float32).contiguous()},
                str(tmp),
                metadata={"space": plan.space.name, "dim": str(plan.space.dim), "format": PLAN_FORMAT},
            )
    else:
        (folder / EMBEDDINGS_FILE).unlink(missing_ok=True)
    atomic_write_json(folder / PLAN_FILE, plan_to_json(plan))
    return folder


def check_plan_out(folder: str | Path, flag: str = "--out") -> Path:
    """Refuse to replace ``folder`` unless it is absent, empty, or a plan folder (holds plan.json): commands
    that write a whole plan replace their output folder, and must never delete a user's other files."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PlanError(f"{flag} {folder} is a file, not a plan folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / PLAN_FILE).is_file():
        raise PlanError(f"{flag} {folder} exists and is not a plan folder (no {PLAN_FILE}); choose another folder")
    return folder


def _require(obj: dict[str, Any], key: str, types_: type | tuple[type, ...], where: str, optional: bool = False):
    if key not in obj:
        if optional:
            return None
        raise PlanError(f"{where}: missing field '{key}'")
    value = obj[key]
    if value is None and optional:
        return None
    if not isinstance(value, types_) or isinstance(value, bool) and types_ is int:
        names = types_.__name__ if isinstance(types_, type) else " or ".join(t.__name__ for t in types_)
        raise PlanError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def read_space(path: str | Path) -> VisualSpace:
    """The visual space recorded in a safetensors file's metadata (as written by this project)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise PlanError(f"{path} is not a readable safetensors file: {e}") from None
    if "space" not in meta or "dim" not in meta:
        raise PlanError(f"{path} does not record its visual space (metadata 'space' and 'dim')")
    return VisualSpace(meta["space"], int(meta["dim"]))


def _confined(folder: Path, relative: str | None, where: str) -> str | None:
    """``relative`` unchanged when it names a path inside the plan folder; PlanError otherwise (an absolute path,
    or ``..`` leading out): a stage opens the files a plan names, and a hand-edited or shared plan must not make it
    read ``/etc/passwd``."""
    if relative is None:
        return None
    if "\x00" in relative:
        raise PlanError(f"{where} {relative!r} holds a NUL character; no file can have that name")
    root = folder.resolve()
    target = (root / relative).resolve()
    if Path(relative).is_absolute() or (target != root and root not in target.parents):
        raise PlanError(f"{where} {relative!r} points outside the plan folder; paths in a plan are relative to it")
    return relative


def load_plan(folder: str | Path) -> Plan:
    """Read and validate a plan folder; raise PlanError naming the problem."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / PLAN_FILE
    if not path.is_file():
        raise PlanError(f"{folder} is not a plan folder: {PLAN_FILE} not found")
    data = read_json_object(path, PlanError)
    where = PLAN_FILE
    fmt = data.get("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        raise PlanError(f"{where}: unsupported format {fmt!r} (this code reads {PLAN_FORMAT})")
    query = _require(data, "query", str, where)
    raw_steps = _require(data, "steps", list, where)
    steps = []
    for i, rs in enumerate(raw_steps):
        w = f"{where}: steps[{i}]"
        if not isinstance(rs, dict):
            raise PlanError(f"{w} must be an object")
        steps.append(
            Step(
                index=_require(rs, "index", int, w),
                action=_require(rs, "action", str, w),
                caption=_require(rs, "caption", str, w, optional=True) or "",
                keyframe=_confined(folder, _require(rs, "keyframe", str, w, optional=True), f"{w}.keyframe"),
                clip=_confined(folder, _require(rs, "clip", str, w, optional=True), f"{w}.clip"),
                meta=_require(rs, "meta", dict, w, optional=True) or {},
            )
        )
    space_json = _require(data, "embedding_space", dict, where, optional=True)
    space = None
    if space_json is not None:
        space = VisualSpace(
            _require(space_json, "name", str, f"{where}: embedding_space"),
            _require(space_json, "dim", int, f"{where}: embedding_space"),
        )
    embeddings = None
    emb_path = folder / EMBEDDINGS_FILE
    if emb_path.exists():
        if space is None:
            raise PlanError(f"{emb_path} exists but {PLAN_FILE} records no embedding_space")
        space.check_same(read_space(emb_path), what=f"embeddings in {emb_path}")
        tensors = load_file(str(emb_path))
        if "embeddings" not in tensors:
            raise PlanError(f"{emb_path} has no tensor named 'embeddings'")
        embeddings = tensors["embeddings"]
        bad = (~torch.isfinite(embeddings)).any(dim=-1).nonzero().flatten().tolist() if embeddings.ndim == 2 else []
        if bad:
            raise PlanError(f"{emb_path}: the embedding of step {bad[0] + 1} holds NaN or infinite values")
    elif space is not None:
        raise PlanError(f"{PLAN_FILE} records an embedding_space but {EMBEDDINGS_FILE} is missing")
    plan = Plan(
        query=query,
        steps=steps,
        embeddings=embeddings,
        space=space,
        provenance=_require(data, "provenance", dict, where, optional=True) or {},
        meta=_require(data, "meta", dict, where, optional=True) or {},
    )
    plan.validate()
    return plan
