"""``director train``: fit the director on CookGen splits, resumable to the bit.

    director train --config tiny|default|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    accelerate launch --config_file director/accelerate/zero2.yaml -m director.train --config paper data=... out=...

Every ``train.save_every`` steps the trainable state is written to ``RUN/checkpoints/step-NNNNNN`` (adapter,
query embeddings, head, projector, optimizer, scheduler, RNG states and the step); ``resume=auto`` (the
default) continues from the newest one. The data order of each epoch is a permutation fixed by
``(seed, epoch)``, and dropout draws from the restored RNG, so on CPU a resumed run reaches bit-identical
weights to an uninterrupted one (tested). Validation (text loss, embedding L2 and cosine, the columns of the
paper's Tables 5–6) runs every ``train.eval_every`` steps; metrics go to ``RUN/log.csv`` and TensorBoard
(``RUN/tb``). The final director is ``RUN/final`` (a checkpoint folder ``director plan --preset`` takes).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from auteur import training
from auteur.builds import build_space
from auteur.config import from_dict, save_config, to_dict
from auteur.io import atomic_dir
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
    save_checkpoint,
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


def _lr_lambda(cfg: DirectorConfig):
    warm, total = cfg.train.warmup_steps, cfg.train.max_steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _episodes(cfg: DirectorConfig, space: VisualSpace, split: str) -> list[Episode]:
    episodes = []
    for d in cfg.data:
        episodes += load_episodes(d, split, space)
    return episodes


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
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens)
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


def train(cfg: DirectorConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train a director as ``cfg`` says; returns the final checkpoint folder (``RUN/final``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    training.check_run_request(cfg.data, cfg.out, DirectorError)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run = training.prepare_run_dir(cfg.out)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if cfg.precision == "bf16" else "no",
        gradient_accumulation_steps=cfg.train.grad_accum,
    )
    main_proc = accelerator.is_main_process

    # 1. model and data
    space = resolve_space(cfg)
    director, backbone, _ = build_director(cfg.backbone, cfg.model, space, checkpoint=None, seed=cfg.seed)
    if cfg.train.init_from:
        init = read_meta(cfg.train.init_from)
        if init["base_model_id"] != backbone.model_id:
            raise DirectorError(
                f"train.init_from {cfg.train.init_from} was trained on {init['base_model_id']}, "
                f"not on the configured backbone {backbone.model_id}"
            )
        VisualSpace(init["space"]["name"], int(init["space"]["dim"])).check_same(space, "the data's visual states")
        check_growable(from_dict(ModelConfig, init["model"]), cfg.model, cfg.train.init_from)
        load_checkpoint_into(director, cfg.train.init_from, partial_adapter=True)
    builder = SequenceBuilder(backbone.tokenizer, director.image_block_ids(), cfg.model.order, cfg.dataset.max_tokens)
    fill = block_fill(cfg, space)
    train_samples = training_samples(cfg, builder, space, fill)
    output_vocab = label_vocabulary(train_samples)
    if cfg.train.init_from:  # what the starting checkpoint learned to write, it can still write
        output_vocab |= set(read_output_vocab(cfg.train.init_from) or [])
    val_all = _load_samples(cfg, builder, space, cfg.dataset.val_split, fill)
    # windows with visual states first: they are few, and the embedding metrics need them
    val_samples = ([s for s in val_all if has_visual_targets(s)] + [s for s in val_all if not has_visual_targets(s)])[
        : cfg.dataset.max_val_samples
    ]
    pad_id = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0

    # 2. optimizer, schedule, and the state to resume
    director.train()
    params = director.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    step = 0
    ckpt = training.resume_checkpoint(run, cfg.resume, DirectorError)
    if ckpt is not None:
        load_checkpoint_into(director, ckpt)
        optimizer.load_state_dict(torch.load(ckpt / training.OPTIMIZER_FILE, weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / training.SCHEDULER_FILE, weights_only=False))
        training.set_rng_state(torch.load(ckpt / training.RNG_FILE, weights_only=False))
        step = training.read_step(ckpt)
        log.info("resumed from %s (step %d)", ckpt, step)
    model, optimizer, scheduler = accelerator.prepare(director, optimizer, scheduler)
    if main_proc:
        save_config(cfg, run)
    n_trainable = sum(p.numel() for p in params)
    log.info(
        "%d training samples, %d validation; %d trainable parameters",
        len(train_samples),
        len(val_samples),
        n_trainable,
    )

    writer = None
    if main_proc:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tb"))
        except ImportError:  # tensorboard is optional at run time; the CSV log is always written
            log.warning("tensorboard not installed: logging to log.csv only")
    csv_path = run / "log.csv"
    fields = ["step", "split", "loss", "text_loss", "cos", "mse", "l2", "lr", "seconds"]
    if main_proc:
        training.start_csv_log(csv_path, fields)

    def log_row(row: dict[str, Any]) -> None:
        if not main_proc:
            return
        training.append_csv_row(csv_path, [row.get(k, "") for k in fields])
        if writer is not None:
            for k in ("loss", "text_loss", "cos", "mse", "l2", "lr"):
                if row.get(k, "") != "":
                    writer.add_scalar(f"{row['split']}/{k}", float(row[k]), row["step"])

    def validate() -> dict[str, float]:
        model.eval()
        metrics = validation_metrics(accelerator.unwrap_model(model), val_samples, cfg, pad_id)
        model.train()
        return metrics

    def save_weights(target: Path, at: int, **meta: Any) -> None:
        unwrapped = accelerator.unwrap_model(model)
        backbone_cfg = to_dict(cfg.backbone)
        save_checkpoint(
            unwrapped, target, backbone.model_id, space, output_vocab, fill, step=at, backbone=backbone_cfg, **meta
        )

    def save(at: int) -> None:
        if not main_proc:
            return
        target = training.checkpoint_dir(run, at)
        save_weights(target, at)
        with atomic_dir(target) as tmp:  # add the optimizer state beside the weights, in one rename
            for f in target.iterdir():
                shutil.copy2(f, tmp / f.name)
            training.write_train_state(tmp, at, optimizer, scheduler, training.rng_state())
        training.prune_checkpoints(run, keep=2)

    # 3. the loop
    per_epoch = max(1, len(train_samples) // cfg.train.batch_size)
    lengths = [len(s["input_ids"]) for s in train_samples]
    bar = tqdm(
        total=cfg.train.max_steps,
        initial=step,
        desc="director train",
        unit="step",
        disable=not (progress and main_proc),
    )
    t0 = time.perf_counter()
    while step < cfg.train.max_steps:
        epoch, pos = divmod(step * cfg.train.grad_accum, per_epoch)
        if cfg.dataset.group_by_length:
            order = grouped_order(lengths, cfg.train.batch_size, cfg.seed, epoch)
        else:
            order = epoch_order(len(train_samples), cfg.seed, epoch)
        parts: dict[str, torch.Tensor] = {}
        for micro in range(cfg.train.grad_accum):
            b = (pos + micro) % per_epoch
            idx = order[b * cfg.train.batch_size : (b + 1) * cfg.train.batch_size]
            idx = idx[accelerator.process_index :: accelerator.num_processes] or idx[:1]
            batch = {k: v.to(accelerator.device) for k, v in collate([train_samples[i] for i in idx], pad_id).items()}
            with accelerator.accumulate(model):
                parts = model(batch, cfg.loss)  # through the wrapper (DDP / FSDP hooks), not the unwrapped module
                accelerator.backward(parts["loss"])
                if accelerator.sync_gradients and cfg.train.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
        step += 1
        bar.update()
        if training.due(step, cfg.train.log_every, cfg.train.max_steps):
            row = {k: f"{float(v.detach()) if torch.is_tensor(v) else float(v):.6f}" for k, v in parts.items()}
            row.update(
                step=step,
                split="train",
                lr=f"{scheduler.get_last_lr()[0]:.3e}",
                seconds=f"{time.perf_counter() - t0:.1f}",
            )
            log_row(row)
            bar.set_postfix(loss=f"{float(parts['loss'].detach()):.3f}")
        if training.due(step, cfg.train.eval_every, cfg.train.max_steps):
            val = validate()
            if val:
                log_row({**{k: f"{v:.6f}" for k, v in val.items()}, "step": step, "split": "val"})
        training.save_or_stop(step, cfg.train.save_every, cfg.train.max_steps, save, stop_after, bar)
    bar.close()
    accelerator.wait_for_everyone()
    final = run / "final"
    if main_proc:
        val = validate()
        save_weights(
            final,
            step,
            trained_on={"data": list(cfg.data), "train_samples": len(train_samples), "steps": step},
            validation=val,
        )
    if writer is not None:
        writer.close()
    return final


def trained_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All trained tensors of a checkpoint folder (adapter and extras), for comparisons."""
    from safetensors.torch import load_file

    folder = Path(folder)
    out = {f"extra.{k}": v for k, v in load_file(str(folder / EXTRA)).items()}
    if (folder / ADAPTER).exists():
        out.update({f"adapter.{k}": v for k, v in load_file(str(folder / ADAPTER)).items()})
    return out


if __name__ == "__main__":  # `accelerate launch -m director.train ...`
    from director.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
