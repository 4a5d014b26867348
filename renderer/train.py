"""``renderer train``: LoRA on the FLUX transformer + the embedding adapter, flow-matching loss, resumable.

    renderer train --config tiny|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    accelerate launch -m renderer.train --config paper data=... out=...

Data: CookGen builds (their ``train`` split: keyframe, caption, action and embedding per step). A sample is a
step t >= 2 of a video with a context of k previous keyframes, k drawn uniformly from 1..min(max_context, t-1)
per sample (VideoAuteur §5.2: 1–3 frames): the canvas tiles keyframes t-k..t-1 and keyframe t, the mask covers
panel t, the prompt tiles the k+1 captions, and z_t goes through the adapter.

Loss: rectified flow matching as in diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py``: x_sigma =
(1 - sigma) x_0 + sigma * noise, the transformer (fed noisy latents ‖ masked-image latents ‖ packed mask, as
FluxFillPipeline does) predicts noise - x_0, MSE. sigma is drawn logit-normal (``train.weighting``) or uniform.
Every draw (sample order, k, noise, sigma) is a function of (seed, step), the LoRA init is seeded, and the global
RNG states (python, numpy, torch; what LoRA dropout draws from) are saved and restored, so a resumed run replays
the same batches and on CPU reaches bit-identical weights to an uninterrupted one (tested);
``RUN/checkpoints/step-NNNNNN`` holds LoRA, adapter, optimizer and RNG states every ``train.save_every`` steps
and ``resume=auto`` continues from the newest. The final checkpoint is ``RUN/final`` (``renderer render
--checkpoint RUN/final``).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from auteur import training
from auteur.builds import build_space
from auteur.config import save_config
from auteur.io import atomic_dir
from auteur.plan import VisualSpace
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `renderer.train.SimulatedKill`
from renderer.canvas import fit_panel, make_canvas, tiled_caption
from renderer.config import RenderConfig
from renderer.errors import RendererError
from renderer.flux import (
    ADAPTER_FILE,
    LORA_FILE,
    FluxRenderer,
    check_size,
    config_size_multiple,
    save_checkpoint,
    size_multiple,
)

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """One video's steps in order: keyframe paths, captions (action when no caption) and embeddings [n, dim]."""

    keyframes: list[Path]
    captions: list[str]
    embeddings: torch.Tensor


def _manifest_space(folder: Path) -> VisualSpace:
    space = build_space(folder)
    if space is None:
        raise RendererError(f"{folder} is a text-only CookGen build: renderer training needs keyframes and embeddings")
    return space


def load_episodes(folders: list[str], split: str = "train") -> tuple[list[Episode], VisualSpace]:
    """Episodes of ``split`` of each CookGen build; all builds must share one visual space."""
    from datasets import load_from_disk

    episodes: list[Episode] = []
    space = None
    for d in folders:
        folder = Path(d)
        if not folder.is_dir():
            raise RendererError(f"training data folder not found: {folder}")
        s = _manifest_space(folder)
        if space is None:
            space = s
        space.check_same(s, what=f"embeddings of {folder}")
        if not (folder / split).is_dir():
            continue
        data = load_from_disk(str(folder / split)).to_dict()
        by_video: dict[str, list[int]] = {}
        for i, vid in enumerate(data["video_id"]):
            by_video.setdefault(vid, []).append(i)
        for rows in by_video.values():
            rows = [i for i in sorted(rows, key=lambda i: data["step_index"][i]) if data["keyframe"][i]]
            if len(rows) < 2:
                continue
            episodes.append(
                Episode(
                    keyframes=[folder / data["keyframe"][i] for i in rows],
                    captions=[data["caption"][i] or data["action"][i] for i in rows],
                    embeddings=torch.tensor([data["embedding"][i] for i in rows], dtype=torch.float32),
                )
            )
    if space is None:
        raise RendererError("no training data: give data=COOKGEN_DIR (a folder that `cookgen build` wrote)")
    return episodes, space


def make_sample(ep: Episode, t: int, k: int, width: int, height: int) -> dict[str, Any]:
    """Canvas (context keyframes t-k..t-1 and the target keyframe t), mask over panel t, tiled prompt, z_t."""
    frames = [Image.open(p).convert("RGB") for p in ep.keyframes[t - k : t + 1]]
    canvas = make_canvas(frames[:-1], 1, width, height)
    canvas.image.paste(fit_panel(frames[-1], width, height), (k * width, 0))  # the target, under the mask
    return {
        "image": canvas.image,
        "mask": canvas.mask,
        "prompt": tiled_caption(ep.captions[t - k : t + 1]),
        "z": ep.embeddings[t],
    }


def flow_matching_loss(
    renderer: FluxRenderer, sample: dict[str, Any], generator: torch.Generator, weighting: str = "none"
) -> torch.Tensor:
    """The rectified-flow loss of one canvas sample (scalar): MSE(transformer(x_sigma ‖ cond), noise - x_0)."""
    pipe = renderer.pipe
    tr = pipe.transformer
    device, dtype = tr.device, tr.dtype
    width, height = sample["image"].size
    c = pipe.vae.config.latent_channels
    with torch.no_grad():
        image = pipe.image_processor.preprocess(sample["image"], height=height, width=width).to(device, dtype)
        mask = pipe.mask_processor.preprocess(sample["mask"], height=height, width=width).to(device, dtype)
        x0 = pipe.vae.encode(image).latent_dist.mode()
        x0 = (x0 - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        h, w = x0.shape[-2:]
        x0 = pipe._pack_latents(x0, 1, c, h, w)  # [1, h/2 * w/2, 4c]
        mask_p, masked = pipe.prepare_mask_latents(
            mask, image * (1 - mask), 1, c, 1, height, width, dtype, device, generator
        )
        cond = torch.cat([masked, mask_p], dim=-1)
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
    noise = torch.randn(x0.shape, generator=generator).to(device, dtype)
    u = torch.randn(1, generator=generator) if weighting == "logit_normal" else None
    sigma = torch.sigmoid(u) if u is not None else torch.rand(1, generator=generator)
    sigma = sigma.to(device, dtype)
    noisy = (1 - sigma) * x0 + sigma * noise
    embeds, pooled, txt_ids = renderer.encode([sample["prompt"]], sample["z"].reshape(1, 1, -1))
    guidance = None
    if tr.config.guidance_embeds:
        guidance = torch.full([1], renderer.cfg.flux.guidance_scale, device=device, dtype=torch.float32)
    pred = tr(
        hidden_states=torch.cat([noisy, cond], dim=2),
        timestep=sigma,  # FluxFillPipeline passes t / 1000 = sigma
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=embeds,
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


def sample_plan(episodes: list[Episode], cfg: RenderConfig, step: int) -> list[tuple[int, int, int, int]]:
    """(episode, t, k, noise seed) of each sample of optimizer step ``step``: a function of (seed, step) only."""
    pairs = [(e, t) for e, ep in enumerate(episodes) for t in range(1, len(ep.keyframes))]
    per_epoch = max(1, len(pairs) // cfg.train.batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(range(len(pairs)))
    random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
    rng = random.Random(cfg.seed * 7_919 + step)
    out = []
    for b in range(cfg.train.batch_size):
        e, t = pairs[order[(pos * cfg.train.batch_size + b) % len(pairs)]]
        k = rng.randint(1, min(cfg.train.max_context, t))
        out.append((e, t, k, cfg.seed * 1_000_003 + step * 1_009 + b))
    return out


def trainable_parameters(renderer: FluxRenderer) -> list[torch.nn.Parameter]:
    return [p for p in renderer.pipe.transformer.parameters() if p.requires_grad] + list(renderer.adapter.parameters())


def build_for_training(cfg: RenderConfig, space: VisualSpace) -> FluxRenderer:
    """A FluxRenderer with frozen base weights, a fresh LoRA on the transformer and a trainable adapter."""
    renderer = FluxRenderer(cfg, space)
    for m in (renderer.pipe.transformer, renderer.pipe.vae, renderer.pipe.text_encoder, renderer.pipe.text_encoder_2):
        m.requires_grad_(False)
    renderer.add_lora(seed=cfg.seed)
    renderer.adapter.requires_grad_(True)
    return renderer


def train(cfg: RenderConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train LoRA + adapter as ``cfg`` says; returns the final checkpoint folder ``RUN/final``.

    Bad input (config, data, size) is found before the run folder is made; a run folder this call made is
    removed again, while still empty, if the model fails to load.
    """
    if cfg.backend != "flux":
        raise RendererError(
            "renderer train needs a flux preset (tiny or paper); the retrieval renderer has no weights"
        )
    if not cfg.out:
        raise RendererError("no run folder: give out=RUN_DIR")
    if not 1 <= cfg.train.max_context <= 3:
        raise RendererError(f"train.max_context must be 1, 2 or 3, got {cfg.train.max_context}")
    check_size(config_size_multiple(cfg.flux), cfg.width, cfg.height)
    episodes, space = load_episodes(cfg.data)
    if not episodes:
        raise RendererError(f"the train splits of {', '.join(cfg.data)} hold no video with two keyframes or more")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with training.run_dir(cfg.out) as run:  # removed again if the model then fails to load while it is empty
        return _train_run(cfg, run, episodes, space, stop_after, progress)


def _train_run(
    cfg: RenderConfig, run: Path, episodes: list[Episode], space: VisualSpace, stop_after: int | None, progress: bool
) -> Path:
    """The body of :func:`train`, in the run folder ``run``."""
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=not torch.cuda.is_available())

    # 1. model, optimizer, resume (global RNGs seeded first: LoRA dropout draws from them; a resume restores them)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    renderer = build_for_training(cfg, space)
    check_size(size_multiple(renderer.pipe), cfg.width, cfg.height)
    params = trainable_parameters(renderer)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    step = 0
    ckpt = training.resume_checkpoint(run, cfg.resume, RendererError)
    if ckpt is not None:
        training.load_lora_state(renderer.pipe.transformer, load_file(str(ckpt / LORA_FILE)), ckpt, RendererError)
        renderer.adapter.load_state_dict(load_file(str(ckpt / ADAPTER_FILE)))
        optimizer.load_state_dict(torch.load(ckpt / training.OPTIMIZER_FILE, weights_only=False))
        if (ckpt / training.RNG_FILE).is_file():
            training.set_rng_state(torch.load(ckpt / training.RNG_FILE, weights_only=False))
        else:  # a checkpoint written before RNG states were saved: resumes, but not to the bit
            log.warning("%s holds no rng.pt: global RNG draws (LoRA dropout) will differ from an unbroken run", ckpt)
        step = training.read_step(ckpt)
        log.info("resumed from %s (step %d)", ckpt, step)
    optimizer = accelerator.prepare(optimizer)
    save_config(cfg, run)
    log.info("%d episodes; %d trainable parameters", len(episodes), sum(p.numel() for p in params))
    csv_path = run / "log.csv"
    training.start_csv_log(csv_path, ["step", "loss", "seconds"])

    def save(at: int) -> None:
        with atomic_dir(training.checkpoint_dir(run, at)) as tmp:
            save_checkpoint(renderer, tmp, {"step": at})
            # the CUDA RNG states too: LoRA dropout draws from them on a GPU
            training.write_train_state(tmp, at, optimizer, rng=training.rng_state(cuda=True))
        training.prune_checkpoints(run, keep=2)

    # 2. the loop
    renderer.pipe.transformer.train()
    renderer.adapter.train()
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="renderer train", unit="step", disable=not progress)
    t0 = time.perf_counter()
    while step < cfg.train.max_steps:
        losses = []
        optimizer.zero_grad()
        plan = sample_plan(episodes, cfg, step)
        for e, t, k, seed in plan:
            sample = make_sample(episodes[e], t, k, cfg.width, cfg.height)
            g = torch.Generator("cpu").manual_seed(seed)
            loss = flow_matching_loss(renderer, sample, g, cfg.train.weighting) / len(plan)
            accelerator.backward(loss)
            losses.append(float(loss.detach()) * len(plan))
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        step += 1
        bar.update()
        mean = sum(losses) / len(losses)
        bar.set_postfix(loss=f"{mean:.4f}")
        if training.due(step, cfg.train.log_every, cfg.train.max_steps):
            training.append_csv_row(csv_path, [step, f"{mean:.6f}", f"{time.perf_counter() - t0:.1f}"])
        training.save_or_stop(step, cfg.train.save_every, cfg.train.max_steps, save, stop_after, bar)
    bar.close()
    final = run / "final"
    with atomic_dir(final) as tmp:
        save_checkpoint(renderer, tmp, {"step": step, "trained_on": list(cfg.data)})
        save_config(cfg, tmp)
    return final


if __name__ == "__main__":  # `accelerate launch -m renderer.train ...`
    from renderer.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
