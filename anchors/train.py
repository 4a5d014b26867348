"""``anchors train``: the StoryAnchors progressive training on CookGen story-frame sequences, resumable.

    anchors train --config tiny|stage1-global|stage2-multievent|stage3-continuation|PATH
                  data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    accelerate launch -m anchors.train --config stage1-global data=... out=...

Objective (rectified flow / flow matching, as Wan and Step-Video-T2V): for clean story-frame latents
``x0`` and noise ``e``, ``x_s = (1 - s) x0 + s e`` with ``s`` logit-normal, the transformer predicts the
velocity ``e - x0``; the mean squared error is taken over the latents of the *generated* frames only
(mask 0): the given frames are inputs, not targets (StoryAnchors §2.1). Each sample gets its own
condition frames, drawn by the stage (``train.stage``, see :class:`anchors.config.TrainConfig`):

1. ``global``: global caption, nothing given;
2. ``multievent``: multi-event captions, a random subset of frames given with probability ``p_condition``;
3. ``continuation``: multi-event captions, the first k frames given with probability ``p_condition``.

Stages chain with ``train.init_from=PREVIOUS_RUN/final``. Every ``train.save_every`` steps the story
transformer, optimizer, scheduler, RNG states and the step are written to ``RUN/checkpoints/step-NNNNNN``;
``resume=auto`` continues from the newest one. Epoch order is a permutation fixed by ``(seed, epoch)`` and all
per-sample draws come from the restored RNG, so on CPU a resumed run ends bit-identical to an uninterrupted
one (tested). The VAE and text encoder are frozen: latents and prompt embeddings are computed once.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anchors.captions import caption
from anchors.config import AnchorsConfig, AnchorsError
from anchors.data import load_story_samples
from anchors.model import FORMAT, META, WEIGHTS, Anchors, StoryTransformer, build_anchors, check_num_frames
from auteur import training
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `anchors.train.SimulatedKill`
from auteur.training import epoch_order

log = logging.getLogger(__name__)


def condition_mask(num_frames: int, stage: str, p_condition: float) -> torch.Tensor:
    """A [F] mask (1 = given) for one sample, drawn from the torch RNG; at least one frame is generated."""
    mask = torch.zeros(num_frames)
    if stage == "global" or num_frames < 2 or float(torch.rand(())) >= p_condition:
        return mask
    if stage == "continuation":
        k = int(torch.randint(1, num_frames, ()))
        mask[:k] = 1
        return mask
    mask = (torch.rand(num_frames) < 0.5).float()
    if mask.all():
        mask[int(torch.randint(0, num_frames, ()))] = 0
    return mask


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the generated frames only: ``pred``, ``target`` [B, C, F, h, w], ``mask`` [B, F] (0 = generate)."""
    gen = (mask == 0).to(pred.dtype)[:, None, :, None, None]
    per_frame = pred[0, :, 0].numel()
    return ((pred - target) ** 2 * gen).sum() / (gen.sum() * per_frame).clamp_min(1)


def flow_matching_loss(
    net: StoryTransformer | torch.nn.Module,
    latents: torch.Tensor,
    text: torch.Tensor,
    conditions: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The flow-matching loss of a batch: ``latents`` [B, C, F, h, w] (clean), ``text`` [B, L, D],
    ``conditions`` [B, 6], ``mask`` [B, F]; ``sigma`` [B] and ``noise`` drawn from the torch RNG if not given.
    ``net`` may be the accelerate-wrapped (DDP) story transformer, so gradients are synchronised."""
    b = latents.shape[0]
    if sigma is None:
        sigma = torch.sigmoid(torch.randn(b, device=latents.device))  # logit-normal, as SD3 / Wan training
    if noise is None:
        noise = torch.randn_like(latents)
    s = sigma.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    pred = net(noisy, latents, mask, sigma * 1000, text, conditions)
    return masked_mse(pred, noise - latents, mask)


def save_model(net: StoryTransformer, folder: Path, cfg: AnchorsConfig, model_id: str, **meta: Any) -> Path:
    """Write an anchors checkpoint (story-transformer weights, ``anchors.json``, ``config.yaml``) atomically."""
    from safetensors.torch import save_file

    from auteur.config import save_config, to_dict
    from auteur.io import atomic_dir

    with atomic_dir(folder) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS))
        info = {"format": FORMAT, "model_id": model_id, "model": to_dict(cfg.model), **meta}
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
        save_config(cfg, tmp)
    return folder


def _prepare(anchors: Anchors, cfg: AnchorsConfig, samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents [N, C, F, h, w], prompt embeddings [N, L, D] and conditions [N, 6] of all samples."""
    mode = "global" if cfg.train.stage == "global" else "multievent"
    latents = torch.cat([anchors.encode_frames(s.frames[None]) for s in samples])
    texts = torch.cat([anchors.text([caption(s.story, mode)]) for s in samples])
    conds = torch.stack([s.conditions for s in samples])
    return latents, texts, conds


def train(cfg: AnchorsConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train the story transformer as ``cfg`` says; returns the final checkpoint folder (``RUN/final``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from auteur.config import save_config

    # 1. check the request before anything is written
    training.check_run_request(cfg.data, cfg.out, AnchorsError)
    if cfg.train.init_from:
        from anchors.model import check_checkpoint

        check_checkpoint(cfg.train.init_from)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    anchors = build_anchors(cfg.model)
    check_num_frames(cfg.dataset.num_frames, cfg.model, anchors.net.patch_size[0], anchors.net.positions)
    samples = load_story_samples(cfg.data, cfg.dataset.train_split, cfg.dataset, cfg.model.height, cfg.model.width)
    if not samples:
        raise AnchorsError(
            f"the {cfg.dataset.train_split!r} splits of {', '.join(cfg.data)} hold no video with "
            f"{cfg.dataset.num_frames} story frames (dataset.num_frames)"
        )
    run = training.prepare_run_dir(cfg.out)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision="bf16" if cfg.precision == "bf16" else "no"
    )
    main_proc = accelerator.is_main_process

    # 2. model, frozen features, optimizer, and the state to resume
    if cfg.train.init_from:
        from anchors.model import load_weights

        load_weights(anchors.net, cfg.train.init_from)
    latents, texts, conds = _prepare(anchors, cfg, samples)
    empty = anchors.text([""])
    net = anchors.net
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warm = cfg.train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    step = 0
    ckpt = training.resume_checkpoint(run, cfg.resume, AnchorsError)
    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        from anchors.model import load_weights

        load_weights(net, ckpt)
        optimizer.load_state_dict(torch.load(ckpt / training.OPTIMIZER_FILE, weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / training.SCHEDULER_FILE, weights_only=False))
        training.set_rng_state(torch.load(ckpt / training.RNG_FILE, weights_only=False))
        step = training.read_step(ckpt)
        log.info("resumed from %s (step %d)", ckpt, step)
    model, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)
    dev = accelerator.device
    latents, texts, conds, empty = latents.to(dev), texts.to(dev), conds.to(dev), empty.to(dev)
    if main_proc:
        save_config(cfg, run)
    log.info(
        "%d story sequences (%s); %d trainable parameters",
        len(samples),
        cfg.train.stage,
        sum(map(torch.numel, params)),
    )

    csv_path = run / "log.csv"
    if main_proc:
        training.start_csv_log(csv_path, ["step", "loss", "lr", "seconds"])

    def save(at: int) -> None:
        if not main_proc:
            return
        target = training.checkpoint_dir(run, at)
        save_model(accelerator.unwrap_model(model), target, cfg, anchors.model_id, step=at)
        from auteur.io import atomic_dir

        with atomic_dir(target) as tmp:  # the optimizer state beside the weights, in one rename
            for f in target.iterdir():
                shutil.copy2(f, tmp / f.name)
            training.write_train_state(tmp, at, optimizer, scheduler, training.rng_state())
        training.prune_checkpoints(run, keep=2)

    # 3. the loop
    n, bs, frames = len(samples), min(cfg.train.batch_size, len(samples)), cfg.dataset.num_frames
    per_epoch = max(1, n // bs)
    bar = tqdm(
        total=cfg.train.max_steps,
        initial=step,
        desc="anchors train",
        unit="step",
        disable=not (progress and main_proc),
    )
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    while step < cfg.train.max_steps:
        epoch, pos = divmod(step, per_epoch)
        idx = epoch_order(n, cfg.seed, epoch)[pos * bs : (pos + 1) * bs]
        idx = idx[accelerator.process_index :: accelerator.num_processes] or idx[:1]
        mask = torch.stack([condition_mask(frames, cfg.train.stage, cfg.train.p_condition) for _ in idx]).to(dev)
        drop = (torch.rand(len(idx)) < cfg.train.caption_dropout).to(dev)
        text = torch.where(drop[:, None, None], empty.expand(len(idx), -1, -1), texts[idx])
        loss = flow_matching_loss(model, latents[idx], text, conds[idx], mask)
        accelerator.backward(loss)
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        loss = loss.detach()
        step += 1
        bar.update()
        if main_proc and (training.due(step, cfg.train.log_every, cfg.train.max_steps)):
            lr = f"{scheduler.get_last_lr()[0]:.3e}"
            training.append_csv_row(csv_path, [step, f"{float(loss):.6f}", lr, f"{time.perf_counter() - t0:.1f}"])
            bar.set_postfix(loss=f"{float(loss):.4f}")
        training.save_or_stop(step, cfg.train.save_every, cfg.train.max_steps, save, stop_after, bar)
    bar.close()
    accelerator.wait_for_everyone()
    final = run / "final"
    if main_proc:
        save_model(
            accelerator.unwrap_model(model),
            final,
            cfg,
            anchors.model_id,
            step=step,
            stage=cfg.train.stage,
            init_from=cfg.train.init_from or None,
            trained_on={"data": list(cfg.data), "sequences": n, "steps": step},
            last_loss=float(loss),
        )
    return final


if __name__ == "__main__":  # `accelerate launch -m anchors.train ...`
    from anchors.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
