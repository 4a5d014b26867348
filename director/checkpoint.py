"""Director checkpoints: what is trained, in a folder, and how to rebuild a director from it.

A checkpoint folder holds only what training changes (a few MB, never the base LM):

- ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter in peft's format;
- ``director_extra.safetensors``: the image-block (query) embeddings, the regression head, the projector;
- ``director.json``: the base model id it was trained on, the visual space, the model config, provenance;
- ``output_vocab.json``: the token ids of the texts it was trained to write (for ``plan.output_vocab``);
- ``block_fill.safetensors``: what filled the image blocks of its text-only training steps
  (``dataset.fill_blocks``), so that ``director validate`` scores any data in the format it was trained on;
- ``train_queries.json``: the queries of its training recipes (``how to make <dish>``), which ``director plan``
  compares a query with to say when it is far from everything the director learned.

:func:`build_director` loads the base LM (:mod:`director.backbone`), checks it is the one the checkpoint was
trained on, and applies the checkpoint. A mismatch (another base model, another visual space) is an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from auteur.config import from_dict, to_dict
from auteur.io import atomic_dir, atomic_write_json
from auteur.plan import VisualSpace
from director.backbone import Backbone, BackboneConfig, DirectorError, load_backbone
from director.model import Director, ModelConfig, foldable
from director.neighbours import NeighbourRecipes

log = logging.getLogger(__name__)

FORMAT = "director/1"
META = "director.json"
EXTRA = "director_extra.safetensors"
ADAPTER = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OUTPUT_VOCAB = "output_vocab.json"
BLOCK_FILL = "block_fill.safetensors"
TRAIN_QUERIES = "train_queries.json"


def save_checkpoint(
    director: Director,
    folder: str | Path,
    base_model_id: str,
    space: VisualSpace,
    output_vocab: Iterable[int] | None = None,
    block_fill: torch.Tensor | None = None,
    state: dict[str, torch.Tensor] | None = None,
    **meta: Any,
) -> Path:
    """Write the trained parts of ``director`` into ``folder`` (atomically, replacing it); see
    :func:`write_checkpoint`."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_checkpoint(director, tmp, base_model_id, space, output_vocab, block_fill, state, **meta)
    return folder


def write_checkpoint(
    director: Director,
    folder: Path,
    base_model_id: str,
    space: VisualSpace,
    output_vocab: Iterable[int] | None = None,
    block_fill: torch.Tensor | None = None,
    state: dict[str, torch.Tensor] | None = None,
    train_queries: Iterable[str] | None = None,
    **meta: Any,
) -> None:
    """Write the checkpoint files into the existing folder ``folder``: ``train_queries``, its training recipes'
    queries (``train_queries.json``); ``output_vocab``, the token ids of its
    training labels (``output_vocab.json``); ``block_fill``, the fill of its text-only steps' image blocks
    (``block_fill.safetensors``); ``state``, the trained tensors by their names in the director (a full state
    that training gathered from every process and shard) instead of the director's own parameters."""
    if director.cfg.lora.enabled:
        lm_state = None if state is None else {k[len("lm.") :]: v for k, v in state.items() if k.startswith("lm.")}
        director.lm.save_pretrained(str(folder), save_embedding_layers=False, state_dict=lm_state)
        (folder / "README.md").unlink(missing_ok=True)
        _sort_adapter_config(folder)
    if state is None:
        extra = director.extra_state()
    else:
        extra = {k: v for k, v in state.items() if k == "image_embeds" or k.startswith(("head.", "projector."))}
    save_file({k: v.detach().contiguous().cpu() for k, v in sorted(extra.items())}, str(folder / EXTRA))
    info = {
        "format": FORMAT,
        "base_model_id": base_model_id,
        "space": space.to_json(),
        "model": to_dict(director.cfg),
        **meta,
    }
    (folder / META).write_text(json.dumps(info, indent=2) + "\n")
    if output_vocab is not None:
        write_output_vocab(folder, output_vocab)
    if block_fill is not None:
        write_block_fill(folder, block_fill)
    if train_queries is not None:
        atomic_write_json(folder / TRAIN_QUERIES, sorted(set(train_queries)))
    if director.neighbours is not None:
        director.neighbours.save(folder)


def _sort_adapter_config(folder: Path) -> None:
    """peft writes ``target_modules`` from a set (its order changes between processes): sort it, so that two
    identical trainings write identical files."""
    path = folder / ADAPTER_CONFIG
    settings = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
        atomic_write_json(path, settings)


def read_train_queries(folder: str | Path) -> list[str] | None:
    """The training queries a checkpoint records (``train_queries.json``); None when it has none."""
    path = Path(folder) / TRAIN_QUERIES
    if not path.is_file():
        return None
    try:
        queries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DirectorError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise DirectorError(f"{path} must hold a list of strings")
    return queries


def write_block_fill(folder: str | Path, fill: torch.Tensor) -> None:
    """Record what filled the image blocks of the text-only training steps (a [dim] embedding)."""
    save_file({"fill": fill.detach().float().contiguous().cpu()}, str(Path(folder) / BLOCK_FILL))


def read_block_fill(folder: str | Path, dim: int) -> torch.Tensor | None:
    """The checkpoint's block fill ([dim]); None when it has none (trained without ``dataset.fill_blocks``, or
    before checkpoints recorded it)."""
    path = Path(folder) / BLOCK_FILL
    if not path.is_file():
        return None
    try:
        fill = load_file(str(path))["fill"]
    except Exception as e:  # safetensors raises several types for a damaged file
        raise DirectorError(f"{path} is not a valid block fill: {e}") from None
    if fill.shape != (dim,):
        raise DirectorError(f"{path} holds a fill of shape {tuple(fill.shape)}, not ({dim},) of the visual space")
    return fill


def write_output_vocab(folder: str | Path, token_ids: Iterable[int]) -> None:
    """Record the token ids the director was trained to emit (``plan.output_vocab: trained`` reads them)."""
    ids = sorted({int(i) for i in token_ids})
    atomic_write_json(Path(folder) / OUTPUT_VOCAB, {"count": len(ids), "token_ids": ids}, indent=None)


def read_output_vocab(folder: str | Path) -> list[int] | None:
    """The token ids in ``folder``'s ``output_vocab.json``; None when the checkpoint has none."""
    path = Path(folder) / OUTPUT_VOCAB
    if not path.is_file():
        return None
    try:
        ids = json.loads(path.read_text())["token_ids"]
        return [int(i) for i in ids]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DirectorError(f"{path} is not a valid output vocabulary: {e}") from None


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        raise DirectorError(f"{folder} is not a director checkpoint ({META} not found)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DirectorError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise DirectorError(f"{path}: unsupported format {meta.get('format')!r}")
    return meta


def check_growable(old: ModelConfig, new: ModelConfig, folder: str | Path) -> None:
    """``train.init_from`` needs the same model config, except that the new run may put LoRA on more modules
    (same rank, alpha and dropout): the checkpoint's adapters are loaded and the added ones start as peft
    initialises them (B = 0, so the model computes exactly what the checkpoint computed)."""
    old_targets, new_targets = set(old.lora.target_modules), set(new.lora.target_modules)
    same_rest = replace(old, lora=replace(old.lora, target_modules=[])) == replace(
        new, lora=replace(new.lora, target_modules=[])
    )
    if not same_rest or not old_targets <= new_targets:
        raise DirectorError(
            f"train.init_from {folder} has another model config than this run "
            "(only adding LoRA target modules is allowed)"
        )


def load_checkpoint_into(
    director: Director, folder: str | Path, partial_adapter: bool = False, fold: bool = False
) -> None:
    """Apply a checkpoint's adapter and extras to a director built with the same config; with
    ``partial_adapter`` the director may have LoRA on modules the checkpoint has none for (they keep their
    initial values); with ``fold`` the director was built without LoRA and the adapter is folded into its base
    weights (:meth:`Director.fold_lora`, inference only)."""
    folder = Path(folder)
    try:
        if fold:
            director.fold_lora(load_file(str(folder / ADAPTER)), _adapter_settings(folder))
        elif director.cfg.lora.enabled:
            director.load_adapter_state(load_file(str(folder / ADAPTER)), allow_missing=partial_adapter)
        director.load_extra_state(load_file(str(folder / EXTRA)))
    except Exception as e:  # torch's load errors, safetensors' SafetensorError (a truncated file), missing keys ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch puts the useful part ("size mismatch for ...: copying a param with shape ...") on a later line
        msg = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln), lines[0] if lines else "")
        raise DirectorError(
            f"checkpoint {folder} does not fit this director ({type(e).__name__}): {msg[:400]}"
        ) from None


def _adapter_settings(folder: Path) -> dict[str, Any]:
    """The checkpoint's ``adapter_config.json`` (peft's LoRA settings); {} when absent or unreadable."""
    try:
        settings = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def check_checkpoint_files(folder: str | Path, model_cfg: ModelConfig) -> None:
    """The files a checkpoint must hold, checked before the (slow) base model loads."""
    need = [EXTRA] + ([ADAPTER] if model_cfg.lora.enabled else [])
    missing = [n for n in need if not (Path(folder) / n).is_file()]
    if missing:
        raise DirectorError(f"checkpoint {folder} is incomplete: {', '.join(missing)} not found")


def build_director(
    backbone_cfg: BackboneConfig,
    model_cfg: ModelConfig,
    space: VisualSpace,
    checkpoint: str | Path | None = None,
    backbone: Backbone | None = None,
    seed: int = 0,
    fold_lora: bool = False,
) -> tuple[Director, Backbone, dict[str, Any]]:
    """A director on ``backbone_cfg``'s LM, with ``checkpoint`` applied when given.

    With a checkpoint, its recorded model config and visual space are used, and its base model id must
    match the backbone's. ``fold_lora`` (planning with ``plan.merge_lora``): the checkpoint's LoRA adapter is
    folded into the base weights without wrapping the LM in peft (the director is inference-only, as a merged
    one is); an adapter :func:`director.model.foldable` refuses is loaded and merged through peft instead.
    Returns ``(director, backbone, checkpoint meta or {})``.
    """
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        meta = read_meta(checkpoint)
        model_cfg = from_dict(ModelConfig, meta["model"])
        space = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
        check_checkpoint_files(checkpoint, model_cfg)
    backbone = backbone or load_backbone(backbone_cfg)
    if meta and meta["base_model_id"] != backbone.model_id:
        raise DirectorError(
            f"checkpoint {checkpoint} was trained on base model {meta['base_model_id']}, "
            f"but the configured backbone is {backbone.model_id}"
        )
    fold = (
        fold_lora
        and checkpoint is not None
        and model_cfg.lora.enabled
        and not foldable(_adapter_settings(Path(checkpoint)) or {"r": None})
    )
    torch.manual_seed(seed)  # the initial values of the untrained parts are reproducible
    built_cfg = replace(model_cfg, lora=replace(model_cfg.lora, enabled=False)) if fold else model_cfg
    director = Director(backbone.model, backbone.tokenizer, built_cfg, space.dim)
    if checkpoint is not None:
        load_checkpoint_into(director, checkpoint, fold=fold)
        director.output_vocab = read_output_vocab(checkpoint)
        director.neighbours = NeighbourRecipes.load(checkpoint)
    director.eval()
    return director, backbone, meta
