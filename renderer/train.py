"""``renderer train``: LoRA on the FLUX transformer + the embedding adapter, flow-matching loss, resumable.

    renderer train --preset tiny|paper|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node 8 -m renderer train --preset paper flux.model=... data=... out=...
                                                  [train.strategy=fsdp]

Data: CookGen builds (their ``train`` split: keyframe, caption, action and embedding per step). A sample is a
step t >= 2 of a video with a context of k previous keyframes, k drawn uniformly from 1..min(max_context, t-1)
per sample (VideoAuteur §5.2: 1–3 frames): the canvas tiles keyframes t-k..t-1 and keyframe t, the mask covers
panel t, the prompt tiles the k+1 captions, and z_t goes through the adapter.

Loss: rectified flow matching as in diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py``: x_sigma =
(1 - sigma) x_0 + sigma * noise, the transformer (fed noisy latents ‖ masked-image latents ‖ packed mask, as
FluxFillPipeline does) predicts noise - x_0, MSE. sigma is drawn logit-normal (``train.weighting``) or uniform.

The loop is the shared one (:func:`auteur.training.fit`: processes, schedule, precision, checkpoints, logs);
this module supplies the renderer's part (:class:`RendererTask`). The trainable module
(:class:`RendererModel`) holds the FLUX transformer (frozen, with its LoRA) and the adapter; the frozen VAE and
text encoders encode each process's samples outside it, on the same device (training never offloads to the
CPU: ``flux.cpu_offload`` is for ``renderer render``). Each optimizer step's global batch is
:func:`sample_plan`'s (episode, t, k, noise seed) per position, a function of (seed, step) only; each process
renders and encodes only its share, and the noise of a sample is seeded by its position, so 1 and N processes
draw the same noise per sample. ``flux.dtype: bf16`` is the renderer's precision: the frozen weights in bf16,
LoRA and adapter in fp32, the forward under bf16 autocast. Every draw is seeded and the RNG states of every
process are saved, so a resumed run replays the same batches and on CPU reaches bit-identical weights to an
uninterrupted one (tested, with LoRA dropout). ``RUN/checkpoints/step-NNNNNN`` holds LoRA, adapter, optimizer
and RNG states every ``train.save_every`` steps and ``resume=auto`` continues from the newest. The final
checkpoint is ``RUN/final`` (``renderer render --checkpoint RUN/final``).
"""

from __future__ import annotations

import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from auteur import training
from auteur.builds import build_space, read_videos
from auteur.config import save_config
from auteur.plan import VisualSpace
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `renderer.train.SimulatedKill`
from renderer.adapter import append_tokens
from renderer.canvas import fit_panel, make_canvas, tiled_caption
from renderer.config import RenderConfig
from renderer.errors import RendererError
from renderer.flux import (
    ADAPTER_FILE,
    LORA_FILE,
    FluxRenderer,
    build_pipeline,
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
        for rows in read_videos(folder, split, ["keyframe", "caption", "action", "embedding"]):
            rows = [r for r in rows if r["keyframe"]]
            if len(rows) < 2:
                continue
            episodes.append(
                Episode(
                    keyframes=[r["keyframe"] for r in rows],
                    captions=[r["caption"] or r["action"] for r in rows],
                    embeddings=torch.from_numpy(np.stack([r["embedding"] for r in rows])),
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


# --------------------------------------------------------------------------------------------- samples and loss


def encode_sample(
    pipe, sample: dict[str, Any], generator: torch.Generator, weighting: str, device: torch.device,
    max_sequence_length: int,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """One canvas sample (:func:`make_sample`) through the frozen VAE and text encoders, with its noise and sigma.

    With L = the canvas's packed latent tokens, c = the VAE's latent channels, s = its downscale factor:
    ``x0`` [1, L, 4c] (fp32, the clean latents), ``noise`` [1, L, 4c] (fp32), ``sigma`` [1] (fp32),
    ``cond`` [1, L, 4c + 4s²] (masked-image latents ‖ packed mask, the VAE's dtype), ``img_ids`` [L, 3],
    ``prompt_embeds`` [1, T, joint_attention_dim] (T5), ``pooled`` [1, pooled_projection_dim] (CLIP),
    ``z`` [1, dim]; all on ``device``. Every draw (the masked image's latent sample, the noise, sigma) comes from
    ``generator`` (a CPU generator: the same numbers on any device), in that order.
    """
    vae = pipe.vae
    dtype = vae.dtype
    width, height = sample["image"].size
    c = vae.config.latent_channels
    with torch.no_grad():
        image = pipe.image_processor.preprocess(sample["image"], height=height, width=width).to(device, dtype)
        mask = pipe.mask_processor.preprocess(sample["mask"], height=height, width=width).to(device, dtype)
        x0 = vae.encode(image).latent_dist.mode()
        x0 = (x0 - vae.config.shift_factor) * vae.config.scaling_factor
        h, w = x0.shape[-2:]
        x0 = pipe._pack_latents(x0, 1, c, h, w).float()  # [1, h/2 * w/2, 4c]
        mask_p, masked = pipe.prepare_mask_latents(
            mask, image * (1 - mask), 1, c, 1, height, width, dtype, device, generator
        )
        cond = torch.cat([masked, mask_p], dim=-1)
        img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, torch.float32)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        u = torch.randn(1, generator=generator) if weighting == "logit_normal" else None
        sigma = (torch.sigmoid(u) if u is not None else torch.rand(1, generator=generator)).to(device)
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=[sample["prompt"]], prompt_2=None, device=device, max_sequence_length=max_sequence_length
        )
    return {
        "x0": x0,
        "noise": noise,
        "sigma": sigma,
        "cond": cond,
        "img_ids": img_ids,
        "prompt_embeds": embeds,
        "pooled": pooled,
        "z": sample["z"].reshape(1, -1).float().to(device),
    }


class RendererModel(nn.Module):
    """What ``renderer train`` trains: the FLUX transformer (frozen base weights + LoRA) and the embedding adapter.

    ``forward(samples)`` is the flow-matching loss (a scalar, fp32) averaged over ``samples`` (a list of
    :func:`encode_sample` dicts: this process's share of a batch). Each sample goes through the transformer on
    its own (canvases of different context lengths differ in size), so every process makes as many transformer
    calls as it has samples: equal shares, equal calls, as FSDP's per-block collectives need. Every input is
    cast to the base weights' dtype (bf16 under bf16 autocast, what FluxFillPipeline feeds a bf16 FLUX); the
    target and the loss stay fp32.
    """

    def __init__(self, transformer: nn.Module, adapter: nn.Module, guidance_scale: float) -> None:
        super().__init__()
        self.transformer = transformer
        self.adapter = adapter
        self.guidance_scale = guidance_scale
        # the frozen weights' dtype, fixed before the trainable parameters are cast to fp32
        self.compute_dtype = next((p.dtype for p in transformer.parameters() if not p.requires_grad), torch.float32)

    def forward(self, samples: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        if not samples:
            raise ValueError("RendererModel needs at least one sample")
        return torch.stack([self.sample_loss(s) for s in samples]).mean()

    def sample_loss(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one encoded sample (a scalar, fp32); shapes as :func:`encode_sample` returns them."""
        dt = self.compute_dtype
        x0, noise, sigma = s["x0"], s["noise"], s["sigma"]  # [1, L, 4c], [1, L, 4c], [1] (fp32)
        noisy = (1 - sigma) * x0 + sigma * noise
        # z [1, dim] -> adapter tokens [1, M, C], appended to the T5 tokens [1, T, C] -> [1, T+M, C]
        tokens = self.adapter(s["z"].to(self.adapter.down.weight.dtype))
        embeds, txt_ids = append_tokens(s["prompt_embeds"], tokens)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], self.guidance_scale, device=x0.device, dtype=torch.float32)
        pred = self.transformer(
            hidden_states=torch.cat([noisy.to(dt), s["cond"].to(dt)], dim=2),
            timestep=sigma.to(dt),  # FluxFillPipeline passes t / 1000 = sigma, in the latents' dtype
            guidance=guidance,
            pooled_projections=s["pooled"].to(dt),
            encoder_hidden_states=embeds.to(dt),
            txt_ids=txt_ids.float(),
            img_ids=s["img_ids"],
            return_dict=False,
        )[0]
        return torch.nn.functional.mse_loss(pred.float(), noise - x0)


def flow_matching_loss(
    renderer: FluxRenderer, sample: dict[str, Any], generator: torch.Generator, weighting: str = "none"
) -> torch.Tensor:
    """The rectified-flow loss of one canvas sample (scalar): MSE(transformer(x_sigma ‖ cond), noise - x_0), on
    the transformer's device (the meta device too: :mod:`renderer.meta_check`)."""
    pipe = renderer.pipe
    encoded = encode_sample(
        pipe, sample, generator, weighting, pipe.transformer.device, renderer.cfg.flux.max_sequence_length
    )
    model = RendererModel(pipe.transformer, renderer.adapter, renderer.cfg.flux.guidance_scale)
    return model([encoded])


def training_pairs(episodes: list[Episode]) -> list[tuple[int, int]]:
    """(episode, t) of every target step with at least one keyframe before it (t 0-based: 1..n-1)."""
    return [(e, t) for e, ep in enumerate(episodes) for t in range(1, len(ep.keyframes))]


def sample_plan(
    episodes: list[Episode], cfg: RenderConfig, step: int, micro: int = 0
) -> list[tuple[int, int, int, int]]:
    """(episode, t, k, noise seed) at each position of micro-batch ``micro`` of optimizer step ``step``
    (``train.batch_size`` of them): a function of (seed, step, micro) only, whatever the process count.

    Batches are consecutive slices of an epoch's shuffled (episode, t) pairs (a short last slice is dropped); k
    is drawn per position from 1..min(max_context, t); the noise seed is the position's (micro-batch n of the
    run, position b)."""
    pairs = training_pairs(episodes)
    bs = cfg.train.batch_size
    n = step * cfg.train.grad_accum + micro  # the micro-batch's number in the run (= step with no accumulation)
    per_epoch = max(1, len(pairs) // bs)
    epoch, pos = divmod(n, per_epoch)
    order = list(range(len(pairs)))
    random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
    rng = random.Random(cfg.seed * 7_919 + n)
    out = []
    for b in range(bs):
        e, t = pairs[order[(pos * bs + b) % len(pairs)]]
        k = rng.randint(1, min(cfg.train.max_context, t))
        out.append((e, t, k, cfg.seed * 1_000_003 + n * 1_009 + b))
    return out


# --------------------------------------------------------------------------------------------- the model


def trainable_parameters(renderer: FluxRenderer) -> list[torch.nn.Parameter]:
    return [p for p in renderer.pipe.transformer.parameters() if p.requires_grad] + list(renderer.adapter.parameters())


def build_for_training(cfg: RenderConfig, space: VisualSpace, pipe=None) -> FluxRenderer:
    """A FluxRenderer with frozen base weights, a fresh LoRA on the transformer and a trainable adapter.

    ``pipe``: an already built pipeline (``renderer train`` builds it on its process's device); default: the
    rendering one (:func:`renderer.flux.build_pipeline`)."""
    renderer = FluxRenderer(cfg, space, pipe=pipe)
    for m in (renderer.pipe.transformer, renderer.pipe.vae, renderer.pipe.text_encoder, renderer.pipe.text_encoder_2):
        m.requires_grad_(False)
    renderer.add_lora(seed=cfg.seed)
    renderer.adapter.requires_grad_(True)
    return renderer


class RendererTask(training.TrainTask):
    """The renderer's part of the shared training loop (:func:`auteur.training.fit`): canvases of CookGen keyframe
    sequences, the flow-matching loss, checkpoints in the renderer's format (``renderer render --checkpoint``)."""

    name = "renderer train"
    error = RendererError
    metrics = ("loss",)

    def __init__(self, cfg: RenderConfig, episodes: list[Episode], space: VisualSpace) -> None:
        self.cfg = cfg
        self.episodes = episodes
        self.space = space
        self.pairs = training_pairs(episodes)
        self.renderer: FluxRenderer | None = None
        self.model: RendererModel | None = None
        self._plan: tuple[int, int, list[tuple[int, int, int, int]]] | None = None

    def build(self, device: torch.device) -> nn.Module:
        cfg = self.cfg
        training.seed_everything(cfg.seed)  # LoRA dropout draws from the global RNGs (a resume restores them)
        if cfg.flux.cpu_offload:
            log.info("flux.cpu_offload is for rendering: training keeps every component on %s", device)
        pipe = build_pipeline(cfg.flux, device=device)
        check_size(size_multiple(pipe), cfg.width, cfg.height)
        self.renderer = build_for_training(cfg, self.space, pipe=pipe)
        # LoRA and adapter in fp32 from the start (fit would cast them after load_weights): a resume then loads
        # the fp32 checkpoint without rounding it to bf16 first
        for p in trainable_parameters(self.renderer):
            p.data = p.data.float()
        if cfg.train.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        self.model = RendererModel(pipe.transformer, self.renderer.adapter, cfg.flux.guidance_scale)
        log.info("%d episodes, %d (episode, step) pairs", len(self.episodes), len(self.pairs))
        return self.model

    def fsdp_units(self, module: nn.Module) -> list[nn.Module]:
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

        return [m for m in module.modules() if isinstance(m, FluxTransformerBlock | FluxSingleTransformerBlock)]

    def num_samples(self) -> int:
        return len(self.pairs)

    def global_batch(self, step: int, micro: int, batch_size: int, seed: int) -> list[int]:
        """The (episode, t) pair indices of :func:`sample_plan`'s micro-batch; its k and noise seeds are kept for
        :meth:`batch`, which fit calls next for this micro-batch (it passes no micro-batch number itself)."""
        plan = sample_plan(self.episodes, self.cfg, step, micro)
        self._plan = (step, micro, plan)
        index = {pair: i for i, pair in enumerate(self.pairs)}
        return [index[(e, t)] for e, t, _, _ in plan]

    def batch(self, indices: list[int], positions: list[int], step: int, device: torch.device) -> list[dict]:
        """This process's canvases, rendered and encoded on ``device`` (:func:`encode_sample`), each with the
        context length and noise seed of its position in the global batch."""
        if self._plan is None or self._plan[0] != step:
            raise RuntimeError(f"renderer train: batch() of step {step} before its global_batch()")
        plan = self._plan[2]
        cfg, pipe = self.cfg, self.renderer.pipe
        out = []
        for i, p in zip(indices, positions, strict=True):
            e, t, k, seed = plan[p]
            if self.pairs[i] != (e, t):
                raise RuntimeError(f"renderer train: sample {i} is not at position {p} of step {step}'s batch")
            sample = make_sample(self.episodes[e], t, k, cfg.width, cfg.height)
            g = torch.Generator("cpu").manual_seed(seed)
            out.append(encode_sample(pipe, sample, g, cfg.train.weighting, device, cfg.flux.max_sequence_length))
        return out

    def forward(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        return {"loss": model(batch)}  # through the wrapper (DDP / FSDP hooks), not the unwrapped module

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        training.load_lora_state(self.renderer.pipe.transformer, load_file(str(folder / LORA_FILE)), folder,
                                 RendererError)  # fmt: skip
        self.renderer.adapter.load_state_dict(load_file(str(folder / ADAPTER_FILE)))

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor], step: int, final: bool) -> None:
        lora = training.peft_state(state, "transformer.")
        adapter = {k.removeprefix("adapter."): v for k, v in state.items() if k.startswith("adapter.")}
        extra: dict[str, Any] = {"step": step}
        if final:
            extra["trained_on"] = list(self.cfg.data)
        save_checkpoint(self.renderer, folder, extra, lora=lora, adapter=adapter)
        if final:
            save_config(self.cfg, folder)


def precision(cfg: RenderConfig) -> str:
    """The training precision: the renderer's dtype (``flux.dtype``)."""
    return "bf16" if cfg.flux.dtype == "bf16" else "fp32"


def train(cfg: RenderConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train LoRA + adapter as ``cfg`` says; returns the final checkpoint folder ``RUN/final``.

    Bad input (config, data, size) is found before the run folder is made; a run folder this call made is
    removed again, while still empty, if the model fails to load.
    """
    if cfg.backend != "flux":
        raise RendererError(
            "renderer train needs a flux preset (tiny or paper); the retrieval renderer has no weights"
        )
    training.check_run_request(cfg.data, cfg.out, RendererError, cfg.train)
    if not 1 <= cfg.train.max_context <= 3:
        raise RendererError(f"train.max_context must be 1, 2 or 3, got {cfg.train.max_context}")
    check_size(config_size_multiple(cfg.flux), cfg.width, cfg.height)
    episodes, space = load_episodes(cfg.data)
    if not episodes:
        raise RendererError(f"the train splits of {', '.join(cfg.data)} hold no video with two keyframes or more")
    with training.run_dir(cfg.out) as run:  # removed again if the model then fails to load while it is empty
        task = RendererTask(cfg, episodes, space)
        result = training.fit(
            task,
            cfg.train,
            run,
            seed=cfg.seed,
            precision=precision(cfg),
            resume=cfg.resume,
            config=cfg,
            stop_after=stop_after,
            progress=progress,
        )
    return result.final


if __name__ == "__main__":  # `python -m renderer.train ...` (also `python -m renderer train ...`)
    from renderer.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
