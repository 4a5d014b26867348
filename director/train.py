"""``director train``: fit the director on CookGen splits, resumable to the bit.

    director train --preset tiny|default|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node 8 -m director train --preset paper data=... out=... [train.strategy=fsdp]

The loop is the shared one (:func:`auteur.training.fit`: processes, schedule, precision, checkpoints, logs);
this module supplies the director's data, loss and checkpoint files (:class:`DirectorTask`). Every
``train.save_every`` steps ``RUN/checkpoints/step-NNNNNN`` holds the adapter, query embeddings, head and
projector, the optimizer, every process's RNG states and the step; ``resume=auto`` (the default) continues
from the newest one. The data order of each epoch is a permutation fixed by
``(seed, epoch)``, and dropout draws from the restored RNG, so on CPU a resumed run reaches bit-identical
weights to an uninterrupted one (tested). Validation (text loss, embedding L2 and cosine, the columns of the
paper's Tables 5–6) runs every ``train.eval_every`` steps; metrics go to ``RUN/log.csv`` and TensorBoard
(``RUN/tb``). The final director is ``RUN/final`` (a checkpoint folder ``director plan --preset`` takes).
"""

from __future__ import annotations

import logging
import math
import random
import sys
from pathlib import Path
from typing import Any

import torch

from auteur import training
from auteur.builds import build_space
from auteur.config import from_dict, to_dict
from auteur.plan import VisualSpace
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `director.train.SimulatedKill`
from director.backbone import DirectorError
from director.checkpoint import (
    ADAPTER,
    EXTRA,
    build_director,
    check_growable,
    load_checkpoint_into,
    read_block_fill,
    read_meta,
    read_output_vocab,
    write_checkpoint,
)
from director.config import DirectorConfig, ModelConfig
from director.data import (
    Episode,
    SequenceBuilder,
    collate,
    epoch_order,
    grouped_order,
    has_visual_targets,
    load_caption_lines,
    load_episodes,
    mean_embedding,
    windows,
)
from director.neighbours import NeighbourRecipes

log = logging.getLogger(__name__)


def resolve_space(cfg: DirectorConfig) -> VisualSpace:
    """The visual space of the training data (all builds must agree); the configured encoder's if none has one."""
    spaces = {build_space(Path(d)) for d in cfg.data} - {None}
    if len(spaces) > 1:
        names = ", ".join(sorted(s.name for s in spaces))
        raise DirectorError(
            f"the CookGen builds in data= are in different visual spaces ({names}); they cannot be mixed"
        )
    if spaces:
        return spaces.pop()
    from auteur.vision import load_encoder

    return load_encoder(cfg.vision).space


def _episodes(cfg: DirectorConfig, space: VisualSpace, split: str) -> list[Episode]:
    episodes = []
    for d in cfg.data:
        episodes += load_episodes(d, split, space)
    return without_unseen(episodes) if cfg.dataset.exclude_unseen else episodes


def without_unseen(episodes: list[Episode]) -> list[Episode]:
    """``episodes`` without the recipes of the held-out dishes (``dataset.exclude_unseen``)."""
    from director.unseen import read_split

    held = {q.lower() for q in read_split().queries()}
    kept = [e for e in episodes if e.query.strip().lower() not in held]
    log.info("dataset.exclude_unseen: %d of %d recipes left out (held-out dishes)", len(episodes) - len(kept),
             len(episodes))  # fmt: skip
    return kept


def training_queries(cfg: DirectorConfig, space: VisualSpace) -> list[str]:
    """The queries of the training split's recipes (``how to make <dish>``), sorted, each once."""
    return sorted({e.query for e in _episodes(cfg, space, cfg.dataset.train_split)})


def block_fill(cfg: DirectorConfig, space: VisualSpace) -> torch.Tensor | None:
    """What fills the image blocks of text-only steps (``dataset.fill_blocks``): the mean embedding of the
    training split's steps (zeros when none has one); None when the option is off."""
    if not cfg.dataset.fill_blocks:
        return None
    return mean_embedding(_episodes(cfg, space, cfg.dataset.train_split), space.dim)


def _load_samples(
    cfg: DirectorConfig, builder: SequenceBuilder, space: VisualSpace, split: str, fill: torch.Tensor | None
) -> list[dict]:
    episodes = _episodes(cfg, space, split)
    out = []
    for e, s in windows(episodes, cfg.dataset.context_steps, cfg.dataset.stride):
        out.append(builder.episode_window(episodes[e], s, cfg.dataset.context_steps, fill))
        first = episodes[e].steps[0]
        if cfg.dataset.initial_image and s == 0 and first[2] is not None:  # the same window, given the first image
            initial = (first[1], first[2])
            out.append(builder.episode_window(episodes[e], s, cfg.dataset.context_steps, fill, initial))
    return out


def training_samples(
    cfg: DirectorConfig, builder: SequenceBuilder, space: VisualSpace, fill: torch.Tensor | None
) -> list[dict]:
    """The training samples ``cfg`` describes: step windows of the train splits (visual windows repeated
    ``dataset.visual_repeat`` times; text-only steps' image blocks filled with ``fill``, see ``block_fill``) and
    ``dataset.caption_lines`` captions picked with ``cfg.seed``."""
    samples = _load_samples(cfg, builder, space, cfg.dataset.train_split, fill)
    if cfg.dataset.visual_repeat > 1:
        samples += [s for s in samples if has_visual_targets(s)] * (cfg.dataset.visual_repeat - 1)
    if cfg.dataset.captions_csv and cfg.dataset.caption_lines:
        lines = load_caption_lines(cfg.dataset.captions_csv)
        rng = random.Random(cfg.seed)
        picked = rng.sample(lines, min(len(lines), cfg.dataset.caption_lines))
        samples += [builder.caption_line(c) for c in picked]
    if not samples:
        raise DirectorError(
            f"the {cfg.dataset.train_split!r} splits of {', '.join(cfg.data)} hold no steps to train on"
        )
    return samples


def label_vocabulary(samples: list[dict]) -> set[int]:
    """Every token id that some sample trains the director to write (its labels)."""
    return {int(t) for s in samples for t in s["labels"] if t != -100}


def validation_metrics(director, samples: list[dict], cfg: DirectorConfig, pad_id: int) -> dict[str, float]:
    """Mean text loss, embedding L2, cosine and MSE over ``samples`` (the columns of the paper's Tables 5-6).

    Text metrics average over batches; embedding metrics over the batches that hold visual states."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    device = next(director.parameters()).device
    with torch.no_grad():
        for i in range(0, len(samples), cfg.train.batch_size):
            batch = {k: v.to(device) for k, v in collate(samples[i : i + cfg.train.batch_size], pad_id).items()}
            for k, v in director.loss(batch, cfg.loss).items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def validate_checkpoint(cfg: DirectorConfig, split: str | None = None) -> dict[str, float]:
    """Text loss, embedding L2, cosine and MSE of the trained director ``cfg.checkpoint`` on ``split`` (default:
    ``dataset.val_split``) of the CookGen builds in ``cfg.data``: every window, visual states or not."""
    if not cfg.checkpoint:
        raise DirectorError("validation needs a trained director: give --preset with a checkpoint")
    if not cfg.data:
        raise DirectorError("validation needs data=COOKGEN_DIR[,DIR]")
    space = resolve_space(cfg)
    director, backbone, meta = build_director(cfg.backbone, cfg.model, space, checkpoint=cfg.checkpoint)
    if meta and "space" in meta:
        VisualSpace(meta["space"]["name"], int(meta["space"]["dim"])).check_same(space, "the data's visual states")
    director.eval()
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens,
                              director.neighbours)  # fmt: skip
    split = split or cfg.dataset.val_split
    # the fill the checkpoint was trained with, when it recorded one (the data may hold no training split)
    stored = read_block_fill(cfg.checkpoint, space.dim) if cfg.dataset.fill_blocks else None
    samples = _load_samples(cfg, builder, space, split, stored if stored is not None else block_fill(cfg, space))
    if not samples:
        raise DirectorError(f"the {split!r} splits of {', '.join(cfg.data)} hold no steps")
    pad_id = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
    out = validation_metrics(director, samples, cfg, pad_id)
    out["windows"] = float(len(samples))
    out["visual_states"] = float(sum(sum(s["supervised"]) for s in samples))
    return out


class DirectorTask(training.TrainTask):
    """The director's part of the shared training loop (:func:`auteur.training.fit`): windows of CookGen steps,
    the loss ``text_weight·CE + α(1 − cos) + β·MSE``, checkpoints in the director's format."""

    name = "director train"
    error = DirectorError
    metrics = ("loss", "text_loss", "cos", "mse", "l2")

    def __init__(self, cfg: DirectorConfig) -> None:
        self.cfg = cfg
        self.space = resolve_space(cfg)
        self.director: Any = None

    def build(self, device: torch.device) -> torch.nn.Module:
        cfg = self.cfg
        self.director, backbone, _ = build_director(
            cfg.backbone, cfg.model, self.space, checkpoint=None, seed=cfg.seed
        )
        director = self.director
        if cfg.train.init_from:
            init = read_meta(cfg.train.init_from)
            if init["base_model_id"] != backbone.model_id:
                raise DirectorError(
                    f"train.init_from {cfg.train.init_from} was trained on {init['base_model_id']}, "
                    f"not on the configured backbone {backbone.model_id}"
                )
            VisualSpace(init["space"]["name"], int(init["space"]["dim"])).check_same(
                self.space, "the data's visual states"
            )
            check_growable(from_dict(ModelConfig, init["model"]), cfg.model, cfg.train.init_from)
            load_checkpoint_into(director, cfg.train.init_from, partial_adapter=True)
        self.model_id = backbone.model_id
        if cfg.dataset.neighbour_recipes:  # the training dishes' typical recipes, saved with every checkpoint
            director.neighbours = NeighbourRecipes.from_episodes(_episodes(cfg, self.space, cfg.dataset.train_split))
        builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order,
                                  cfg.dataset.max_tokens, director.neighbours)  # fmt: skip
        self.fill = block_fill(cfg, self.space)
        self.train_queries = training_queries(cfg, self.space)
        self.samples = training_samples(cfg, builder, self.space, self.fill)
        self.output_vocab = label_vocabulary(self.samples)
        if cfg.train.init_from:  # what the starting checkpoint learned to write, it can still write
            self.output_vocab |= set(read_output_vocab(cfg.train.init_from) or [])
        val_all = _load_samples(cfg, builder, self.space, cfg.dataset.val_split, self.fill)
        # windows with visual states first: they are few, and the embedding metrics need them
        visual_first = [s for s in val_all if has_visual_targets(s)] + [
            s for s in val_all if not has_visual_targets(s)
        ]
        self.val_samples = visual_first[: cfg.dataset.max_val_samples]
        self.pad_id = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
        self.lengths = [len(s["input_ids"]) for s in self.samples]
        director.train()
        if director.device != device:
            director.to(device)
        return director

    def fsdp_units(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        names = set(self.director._no_split_modules)
        return [m for m in module.modules() if type(m).__name__ in names]

    def num_samples(self) -> int:
        return len(self.samples)

    def global_batch(self, step: int, micro: int, batch_size: int, seed: int) -> list[int]:
        # the director's own data order (``director.data.epoch_order`` / ``grouped_order``), as the shipped default
        # was trained: epochs of ``n // batch_size`` full batches
        per_epoch = max(1, len(self.samples) // batch_size)
        epoch, pos = divmod(step * self.grad_accum, per_epoch)
        if self.cfg.dataset.group_by_length:
            order = grouped_order(self.lengths, batch_size, seed, epoch)
        else:
            order = epoch_order(len(self.samples), seed, epoch)
        b = (pos + micro) % per_epoch
        return order[b * batch_size : (b + 1) * batch_size]

    def batch(self, indices: list[int], positions: list[int], step: int, device: torch.device) -> dict:
        return {k: v.to(device) for k, v in collate([self.samples[i] for i in indices], self.pad_id).items()}

    def forward(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return model(batch, self.cfg.loss)  # through the wrapper (DDP / FSDP hooks), not the unwrapped module

    def load_weights(self, folder: Path) -> None:
        load_checkpoint_into(self.director, folder)

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor], step: int, final: bool) -> None:
        cfg = self.cfg
        meta: dict[str, Any] = {"step": step, "backbone": to_dict(cfg.backbone)}
        if final:
            meta["trained_on"] = {"data": list(cfg.data), "train_samples": len(self.samples), "steps": step}
            meta["validation"] = self.final_validation
        write_checkpoint(self.director, folder, self.model_id, self.space, self.output_vocab, self.fill, state=state,
                         train_queries=self.train_queries, **meta)  # fmt: skip

    def val_batches(self) -> int:
        return math.ceil(len(self.val_samples) / self.cfg.train.batch_size)

    def val_batch(self, i: int, device: torch.device) -> dict:
        bs = self.cfg.train.batch_size
        return {k: v.to(device) for k, v in collate(self.val_samples[i * bs : (i + 1) * bs], self.pad_id).items()}


def train(cfg: DirectorConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train a director as ``cfg`` says; returns the final checkpoint folder (``RUN/final``)."""
    training.check_run_request(cfg.data, cfg.out, DirectorError, cfg.train)
    if cfg.train.init_from:
        read_meta(cfg.train.init_from)  # a bad init_from is one line before anything is written
    with training.run_dir(cfg.out) as run:
        task = DirectorTask(cfg)
        result = training.fit(
            task,
            cfg.train,
            run,
            seed=cfg.seed,
            precision=cfg.precision,
            resume=cfg.resume,
            config=cfg,
            stop_after=stop_after,
            progress=progress,
        )
    return result.final


def trained_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All trained tensors of a checkpoint folder (adapter and extras), for comparisons."""
    from safetensors.torch import load_file

    folder = Path(folder)
    out = {f"extra.{k}": v for k, v in load_file(str(folder / EXTRA)).items()}
    if (folder / ADAPTER).exists():
        out.update({f"adapter.{k}": v for k, v in load_file(str(folder / ADAPTER)).items()})
    return out


if __name__ == "__main__":  # `python -m director.train ...` (also `python -m director train ...`)
    from director.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
