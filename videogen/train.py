"""``videogen train``: LoRA on the Wan transformer plus the embedding projector, with the regularisers.

    videogen train --config tiny|paper|ablation-*|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]

Data: CookGen builds (``cookgen build``): each step row gives a clip, its keyframe and its embedding. A sample
is ``train.frames`` frames spread over the clip, the keyframe as the first-frame condition, the caption as
the prompt, and the embedding, corrupted with ``z' = S(M(z + eps))`` (VideoAuteur §4.3, Table 7;
:mod:`videogen.regularize`), projected to image tokens. Loss: flow matching (rectified flow, as Wan is
trained): ``x_t = (1 - s) x_0 + s eps``, the transformer predicts ``eps - x_0``, MSE.

Every ``train.save_every`` steps ``RUN/checkpoints/step-NNNNNN`` holds the LoRA, the projector, the
optimizer and the global RNG states; ``resume=auto`` continues from the newest. All randomness of step ``k``
(sample order, noise, time, regularisers) is drawn from generators seeded by ``(seed, k)``, and LoRA dropout
draws from the global RNGs, which a resume restores, so a resumed run reaches the same weights as an
uninterrupted one (bit-identical on CPU, tested with ``lora.dropout`` > 0). ``RUN/final`` is a checkpoint
``videogen generate --checkpoint`` takes.
"""

from __future__ import annotations

import logging
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
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `videogen.train.SimulatedKill`
from videogen.config import VideogenConfig
from videogen.errors import VideogenError
from videogen.projector import EmbeddingProjector
from videogen.regularize import regularize
from videogen.wan import (
    LORA_FILE,
    PROJECTOR_FILE,
    add_lora,
    build_components,
    check_frames,
    encode_prompts,
    save_videogen_checkpoint,
)

log = logging.getLogger(__name__)


def load_samples(cfg: VideogenConfig) -> tuple[list[dict[str, Any]], VisualSpace]:
    """Rows of the ``cfg.split`` splits of the CookGen builds that have a clip, a keyframe and an embedding."""
    from datasets import load_from_disk

    from auteur.video import frames_at, probe

    samples, spaces = [], set()
    w = cfg.wan
    for d in cfg.data:
        root = Path(d)
        space = build_space(root)
        if space is None:
            raise VideogenError(f"{root} is a text-only CookGen build: videogen needs clips and embeddings")
        spaces.add(space)
        if not (root / cfg.split).is_dir():
            raise VideogenError(f"{root} has no '{cfg.split}' split")
        for row in load_from_disk(str(root / cfg.split)):
            if not row["clip"] or not row["keyframe"] or row.get("embedding") is None:
                continue
            clip = root / row["clip"]
            n = cfg.train.frames
            dur = probe(clip).duration
            frames = frames_at(clip, [dur * k / n for k in range(n)])
            video = np.stack([np.asarray(Image.fromarray(f).resize((w.width, w.height), Image.Resampling.BICUBIC))
                              for f in frames])  # fmt: skip
            with Image.open(root / row["keyframe"]) as im:
                key = np.asarray(im.convert("RGB").resize((w.width, w.height), Image.Resampling.BICUBIC))
            samples.append({
                "video": torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1,  # [3, F, H, W]
                "keyframe": torch.from_numpy(key.copy()).permute(2, 0, 1).float() / 127.5 - 1,  # [3, H, W]
                "embedding": torch.tensor(row["embedding"], dtype=torch.float32),
                "caption": row["caption"] or row["action"],
            })  # fmt: skip
    if len(spaces) > 1:
        raise VideogenError("the CookGen builds in data= are in different visual spaces; they cannot be mixed")
    if not samples:
        raise VideogenError(f"no steps with a clip, keyframe and embedding in the '{cfg.split}' splits of data=")
    return samples, spaces.pop()


class FlowMatchingTrainer:
    """The trainable parts (LoRA'd transformer, projector) and the frozen ones (VAE, text encoder)."""

    def __init__(self, cfg: VideogenConfig, space: VisualSpace):
        self.cfg = cfg
        comps = build_components(cfg.wan)
        self.vae, self.text_encoder, self.tokenizer = comps["vae"], comps["text_encoder"], comps["tokenizer"]
        self.transformer = comps["transformer"]
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        if cfg.precision == "bf16":  # the frozen text encoder (UMT5-XXL: ~22 GB in fp32) in bf16; its outputs -> fp32
            self.text_encoder.to(torch.bfloat16)
        torch.manual_seed(cfg.seed)  # the LoRA's initial A matrices are reproducible (pretrained weights too)
        add_lora(self.transformer, cfg.lora)
        torch.manual_seed(cfg.seed)
        self.projector = EmbeddingProjector(
            space.dim, self.transformer.config.image_dim, cfg.projector.num_tokens, cfg.projector.hidden
        )
        z = self.vae.config.z_dim
        self.lat_mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1)
        self.lat_inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._latent_cache: dict[int, tuple[dict[str, Any], torch.Tensor, torch.Tensor]] = {}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad] + list(self.projector.parameters())

    def _latents(self, video: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lat = self.vae.encode(video).latent_dist.mode()
        return (lat - self.lat_mean) * self.lat_inv_std

    def _sample_latents(self, sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip latents, first-frame condition latents) of one sample, each [16, T', H/8, W/8].

        The VAE is frozen and encodes deterministically (the posterior's mode), so each sample is encoded once
        and kept (the sample itself is kept with them, so its ``id`` stays its own): training then runs only
        the transformer. The condition is the keyframe followed by zeros, exactly as
        ``WanImageToVideoPipeline.prepare_latents`` builds it.
        """
        hit = self._latent_cache.get(id(sample))
        if hit is None:
            video = sample["video"][None]  # [1, 3, F, H, W]
            _, _, n, h, w = video.shape
            key = sample["keyframe"][None, :, None]
            cond_video = torch.cat([key, key.new_zeros(1, 3, n - 1, h, w)], dim=2)
            hit = (sample, self._latents(video)[0], self._latents(cond_video)[0])
            self._latent_cache[id(sample)] = hit
        return hit[1], hit[2]

    def _prompts(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self._prompt_cache:
                self._prompt_cache[c] = encode_prompts(
                    self.tokenizer, self.text_encoder, [c], self.cfg.wan.max_sequence_length
                )[0].float()
        return torch.stack([self._prompt_cache[c] for c in captions])

    def loss(self, batch: list[dict[str, Any]], gen: torch.Generator) -> torch.Tensor:
        """Flow-matching MSE on a batch of samples; all randomness from ``gen``."""
        bsz = len(batch)
        latents = [self._sample_latents(b) for b in batch]
        x0 = torch.stack([x for x, _ in latents])  # [B, 16, T', h, w]
        cond = torch.stack([c for _, c in latents])  # the first-frame condition
        t_lat = x0.shape[2]
        mask = torch.zeros(bsz, 4, t_lat, x0.shape[3], x0.shape[4])
        mask[:, :, 0] = 1  # the 4 mask channels of latent frame 0 cover the (repeated) first frame: known
        condition = torch.cat([mask, cond], dim=1)
        # rectified flow: sigma ~ U(0, 1), timestep = 1000 sigma (FlowMatchEulerDiscreteScheduler's convention)
        eps = torch.randn(x0.shape, generator=gen)
        sigma = torch.rand(bsz, generator=gen)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        z = regularize(torch.stack([b["embedding"] for b in batch]), self.cfg.regularize, gen)
        pred = self.transformer(
            hidden_states=torch.cat([xt, condition], dim=1),
            timestep=sigma * 1000,
            encoder_hidden_states=self._prompts([b["caption"] for b in batch]),
            encoder_hidden_states_image=self.projector(z),
            return_dict=False,
        )[0]
        return torch.nn.functional.mse_loss(pred.float(), (eps - x0).float())

    def trained_state(self) -> dict[str, dict[str, torch.Tensor]]:
        from videogen.wan import lora_state

        return {"lora": lora_state(self.transformer), "projector": dict(self.projector.state_dict())}


def _step_batch(n: int, bsz: int, seed: int, step: int) -> list[int]:
    """The sample indices of ``step``: epoch permutations fixed by ``(seed, epoch)``."""
    per_epoch = max(1, n // bsz) if n >= bsz else 1
    epoch, pos = divmod(step, per_epoch)
    order = training.epoch_order(n, seed, epoch)
    idx = order[pos * bsz : (pos + 1) * bsz]
    return idx or order[:bsz]


def train(cfg: VideogenConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train as ``cfg`` says; returns the final checkpoint folder (``RUN/final``).

    Bad input (config, data: a build without clips) is found before the run folder is made; a run folder this
    call made is removed again, while still empty, if the model fails to load.
    """
    if cfg.backend != "wan":
        raise VideogenError("videogen train fine-tunes the Wan model: use a wan preset (tiny, paper, ablation-*)")
    training.check_run_request(cfg.data, cfg.out, VideogenError)
    check_frames(cfg.train.frames)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    samples, space = load_samples(cfg)  # data without clips fails here, before the run folder exists
    with training.run_dir(cfg.out) as run:  # removed again if the model then fails to load while it is empty
        return _train_run(cfg, run, samples, space, stop_after, progress)


def _train_run(cfg: VideogenConfig, run: Path, samples: list[dict[str, Any]], space: VisualSpace,
               stop_after: int | None, progress: bool) -> Path:  # fmt: skip
    """The body of :func:`train`, in the run folder ``run``."""
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if cfg.precision == "bf16" else "no")  # fmt: skip

    # 1. the model
    model = FlowMatchingTrainer(cfg, space)
    params = model.parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    # 2. resume
    step = 0
    ckpt = training.resume_checkpoint(run, cfg.resume, VideogenError)
    if ckpt is not None:
        training.load_lora_state(model.transformer, load_file(str(ckpt / LORA_FILE)), ckpt, VideogenError)
        model.projector.load_state_dict(load_file(str(ckpt / PROJECTOR_FILE)))
        optimizer.load_state_dict(torch.load(ckpt / training.OPTIMIZER_FILE, weights_only=False))
        if (ckpt / training.RNG_FILE).is_file():
            training.set_rng_state(torch.load(ckpt / training.RNG_FILE, weights_only=False))
        else:  # a checkpoint written before RNG states were saved: resumes, but not to the bit
            log.warning("%s holds no rng.pt: global RNG draws (LoRA dropout) will differ from an unbroken run", ckpt)
        step = training.read_step(ckpt)
        log.info("resumed from %s (step %d)", ckpt, step)
    model.transformer, model.projector, optimizer = accelerator.prepare(model.transformer, model.projector, optimizer)
    save_config(cfg, run)
    log.info("%d training clips; %d trainable parameters", len(samples), sum(p.numel() for p in params))

    csv_path = run / "log.csv"
    training.start_csv_log(csv_path, ["step", "loss"])

    def save(at: int) -> None:
        state = model.trained_state()
        with atomic_dir(training.checkpoint_dir(run, at)) as tmp:
            save_file(state["lora"], str(tmp / LORA_FILE))
            save_file({k: v.contiguous() for k, v in state["projector"].items()}, str(tmp / PROJECTOR_FILE))
            # the global RNG states (CUDA's too): LoRA dropout draws from them, the rest from per-step generators
            training.write_train_state(tmp, at, optimizer, rng=training.rng_state(cuda=True))
        training.prune_checkpoints(run, keep=2)

    # 3. the loop (train mode: from_pretrained returns the transformer in eval mode, where LoRA dropout is off)
    model.transformer.train()
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc="videogen train", unit="step", disable=not progress)
    while step < cfg.train.max_steps:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        batch = [samples[i] for i in _step_batch(len(samples), cfg.train.batch_size, cfg.seed, step)]
        loss = model.loss(batch, gen)
        accelerator.backward(loss)
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        bar.update()
        if training.due(step, cfg.train.log_every, cfg.train.max_steps):
            value = float(loss.detach())
            training.append_csv_row(csv_path, [step, f"{value:.6f}"])
            bar.set_postfix(loss=f"{value:.4f}")
        training.save_or_stop(step, cfg.train.save_every, cfg.train.max_steps, save, stop_after, bar)
    bar.close()
    final = run / "final"
    save_videogen_checkpoint(final, accelerator.unwrap_model(model.transformer),
                             accelerator.unwrap_model(model.projector), cfg, space, step=step,
                             trained_on={"data": list(cfg.data), "clips": len(samples)})  # fmt: skip
    return final
