"""``videogen train``: LoRA on the Wan transformer plus the embedding projector, with the regularisers.

    videogen train --preset tiny|paper|ablation-*|PATH data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node 8 -m videogen train --preset paper wan.model_id=WAN_DIR data=... out=...

Data: CookGen builds (``cookgen build``): each step row with a clip, a keyframe and an embedding is a sample:
``train.frames`` frames spread over the clip, the keyframe as the first-frame condition, the caption as the
prompt, and the embedding, corrupted with ``z' = S(M(z + eps))`` (VideoAuteur §4.3, Table 7;
:mod:`videogen.regularize`), projected to image tokens. Loss: flow matching (rectified flow, as Wan is
trained): ``x_t = (1 - s) x_0 + s eps``, the transformer predicts ``eps - x_0``, MSE.

The loop is the shared one (:func:`auteur.training.fit`: processes, schedule, precision, checkpoints, logs);
this module supplies videogen's part (:class:`VideogenTask`):

- **encoded once**: the VAE and the UMT5 text encoder are frozen, so each sample's clip latents, first-frame
  condition latents and prompt embedding are encoded once into a :class:`~auteur.latent_cache.LatentCache`
  (``train.cache_dir``, by default ``RUN/cache``; its subfolder names the model, frames, size and dtype) before
  training starts, every process encoding its share. A killed encoding resumes; a resumed or repeated run
  encodes nothing and does not even load the encoders, which are freed before training either way. Memory
  holds only what names each sample (its files, caption and embedding), never pixels: batches are read back
  from the cache one at a time;
- **draws per sample**: a sample's noise, time and regulariser draws come from a CPU generator seeded by
  ``(seed, step, micro-batch, position in the global batch)`` and are moved to the device, so they are the same
  whatever the number of processes (and whatever the device); LoRA dropout draws from the global RNGs, which
  every checkpoint saves per process;
- **precision**: ``precision=bf16`` holds the frozen transformer weights and the text encoder in bf16 (the VAE
  in fp32) and the trainable LoRA and projector in fp32, the forward under bf16 autocast.

Every ``train.save_every`` steps ``RUN/checkpoints/step-NNNNNN`` holds ``lora.safetensors``,
``projector.safetensors`` and ``videogen.json`` (a checkpoint ``videogen generate --checkpoint`` takes), the
optimizer, every process's RNG state and the step; ``resume=auto`` continues from the newest, to the bit on
CPU (tested with ``lora.dropout`` > 0, killed and resumed under two processes). ``RUN/final`` is the trained
checkpoint.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from auteur import training
from auteur.builds import build_space, read_videos
from auteur.config import to_dict
from auteur.latent_cache import LatentCache
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
    check_text_tokens,
    encode_prompts,
    read_checkpoint_meta,
    write_videogen_files,
)

log = logging.getLogger(__name__)

#: the version of what the latent cache holds per sample (part of its settings: a new layout gets a new folder)
CACHE_FORMAT = "videogen-latents/1"
#: the columns of a CookGen split that a sample needs
COLUMNS = ("clip", "keyframe", "embedding", "caption", "action")
#: how long a process waits for the others to finish encoding (a whole CookGen build at 81x480x832 takes hours;
#: torch.distributed's default 10-30 minutes would end a run whose processes got uneven shares)
ENCODE_TIMEOUT = timedelta(days=2)


# -- data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity (the embedding is an array)
class Sample:
    """What names one training sample, never its pixels (a whole CookGen build fits in memory this way)."""

    key: str  # its key in the latent cache: the files' paths, sizes and times and the caption (a change re-encodes)
    build: Path  # the CookGen build folder
    clip: Path  # the step's clip (absolute, inside the build)
    keyframe: Path  # the first-frame condition
    caption: str  # the prompt
    embedding: np.ndarray  # [D] float32: the step's visual state


def _file_id(path: Path, what: str) -> str:
    """``path`` with its size and modification time: a clip rewritten in place gets another cache key."""
    try:
        st = path.stat()
    except OSError:
        raise VideogenError(f"{what} {path} is listed in its CookGen build but missing") from None
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def load_samples(cfg: VideogenConfig) -> tuple[list[Sample], VisualSpace]:
    """The step rows of the ``cfg.split`` splits of the CookGen builds in ``cfg.data`` that have a clip, a
    keyframe and an embedding, as :class:`Sample` (names, caption and embedding; nothing is decoded), and the
    builds' visual space."""
    samples: list[Sample] = []
    spaces = set()
    for d in cfg.data:
        root = Path(d).resolve()
        space = build_space(root)
        if space is None:
            raise VideogenError(f"{d} is a text-only CookGen build: videogen needs clips and embeddings")
        spaces.add(space)
        if not (root / cfg.split).is_dir():
            raise VideogenError(f"{d} has no '{cfg.split}' split")
        for rows in read_videos(root, cfg.split, list(COLUMNS)):  # file paths: absolute, inside the build
            for r in rows:
                clip_path, key_path, emb = r["clip"], r["keyframe"], r["embedding"]
                if not clip_path or not key_path or emb is None:
                    continue
                if len(emb) != space.dim:
                    raise VideogenError(f"{d}: an embedding of {len(emb)} values in space {space.name} "
                                        f"(dim {space.dim})")  # fmt: skip
                text = r["caption"] or r["action"]
                ids = [_file_id(clip_path, "clip"), _file_id(key_path, "keyframe"), text]
                samples.append(Sample(json.dumps(ids), root, clip_path, key_path, text, emb))
    if len(spaces) > 1:
        raise VideogenError("the CookGen builds in data= are in different visual spaces; they cannot be mixed")
    if not samples:
        raise VideogenError(f"no steps with a clip, keyframe and embedding in the '{cfg.split}' splits of data=")
    return samples, spaces.pop()


def _dtype(cfg: VideogenConfig) -> torch.dtype:
    """The dtype of the frozen transformer and text encoder, and of the cached latents and prompts."""
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def cache_settings(cfg: VideogenConfig) -> dict[str, Any]:
    """What the cached tensors depend on (their folder is named by a hash of it): the encoders, the frames and
    size each clip is encoded at, the prompt length and the dtype."""
    w = cfg.wan
    if w.source == "pretrained":
        path = Path(w.model_id).expanduser()
        model: dict[str, Any] = {"source": "pretrained",
                                 "model_id": str(path.resolve()) if path.is_dir() else w.model_id}  # fmt: skip
    else:  # the tiny encoders' sizes (their weights follow from them: built after torch.manual_seed(0))
        model = {"source": "tiny", "vae_base_dim": w.vae_base_dim, "text_dim": w.text_dim,
                 "text_layers": w.text_layers}  # fmt: skip
    return {"format": CACHE_FORMAT, "model": model, "frames": cfg.train.frames, "height": w.height,
            "width": w.width, "text_tokens": w.max_sequence_length, "dtype": str(_dtype(cfg))}  # fmt: skip


def sample_pixels(sample: Sample, frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(``frames`` frames spread evenly over the clip [F, H, W, 3], the keyframe [H, W, 3]), uint8 RGB, resized
    to ``width`` x ``height``."""
    from auteur.video import frames_at, probe

    dur = probe(sample.clip).duration
    picked = frames_at(sample.clip, [dur * k / frames for k in range(frames)])
    size = (width, height)
    video = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in picked])
    with Image.open(sample.keyframe) as im:
        key = np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC))
    return video, key


class FrozenEncoders:
    """The frozen VAE (fp32) and UMT5 text encoder (bf16 with ``precision=bf16``) on ``device``: what the latent
    cache holds for each sample (:meth:`__call__`)."""

    def __init__(self, cfg: VideogenConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        comps = build_components(cfg.wan, _dtype(cfg), parts=("tokenizer", "text_encoder", "vae"), device=device)
        self.tokenizer = comps["tokenizer"]
        self.vae = comps["vae"].requires_grad_(False).eval()
        # UMT5-XXL is ~22 GB in fp32 (a pretrained one loads in the dtype already; the tiny one is built in fp32)
        self.text_encoder = comps["text_encoder"].requires_grad_(False).eval().to(_dtype(cfg))
        z = self.vae.config.z_dim
        self.mean = torch.tensor(self.vae.config.latents_mean, device=device).view(1, z, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(self.vae.config.latents_std, device=device).view(1, z, 1, 1, 1)

    def _latents(self, video: torch.Tensor) -> torch.Tensor:
        """[1, 3, F, H, W] in [-1, 1] -> normalised latents [16, T', H/8, W/8] (the posterior's mode: no draw)."""
        return ((self.vae.encode(video).latent_dist.mode() - self.mean) * self.inv_std)[0]

    @torch.no_grad()
    def __call__(self, sample: Sample) -> dict[str, torch.Tensor]:
        """``latents`` (the clip) and ``condition`` (the keyframe followed by zeros, exactly as
        ``WanImageToVideoPipeline.prepare_latents`` builds the first-frame condition): [16, T', H/8, W/8];
        ``prompt``: the caption's embedding [n, text_dim] for its n tokens (the rest of Wan's 512 are zeros,
        added back when a batch is read). In the cache's dtype."""
        cfg, w = self.cfg, self.cfg.wan
        video, key = sample_pixels(sample, cfg.train.frames, w.width, w.height)
        video_t = torch.from_numpy(video).to(self.device).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, F, H, W]
        key_t = torch.from_numpy(key.copy()).to(self.device).permute(2, 0, 1).float() / 127.5 - 1  # [3, H, W]
        _, n, h, wd = video_t.shape
        cond_video = torch.cat([key_t[:, None], key_t.new_zeros(3, n - 1, h, wd)], dim=1)
        tokens = self.tokenizer([sample.caption], max_length=w.max_sequence_length, truncation=True)["input_ids"][0]
        prompt = encode_prompts(self.tokenizer, self.text_encoder, [sample.caption], w.max_sequence_length)[0]
        dtype = _dtype(cfg)
        return {
            "latents": self._latents(video_t[None]).to(dtype),
            "condition": self._latents(cond_video[None]).to(dtype),
            "prompt": prompt[: len(tokens)].to(dtype),
        }


# -- the model -------------------------------------------------------------------------------------------------


class FlowMatchingModel(nn.Module):
    """Everything ``videogen train`` trains, in one module: the Wan transformer (its LoRA) and the embedding
    projector. :meth:`forward` is the flow-matching loss of a batch whose random draws are given, so the module
    itself draws nothing but LoRA dropout."""

    def __init__(self, transformer: nn.Module, projector: EmbeddingProjector) -> None:
        super().__init__()
        self.transformer = transformer
        self.projector = projector

    def forward(self, latents: torch.Tensor, condition: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                prompt: torch.Tensor, embedding: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
        """``latents`` (clean, ``x_0``), ``condition`` (first-frame latents) and ``noise`` (``eps``):
        [B, 16, T', h, w]; ``sigma`` [B] in [0, 1); ``prompt`` [B, 512, text_dim]; ``embedding`` [B, D] (already
        regularised). Returns ``{"loss": MSE(transformer(x_t), eps - x_0)}``."""
        x0 = latents.float()
        s = sigma.float().view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        b, _, t, h, w = x0.shape
        mask = x0.new_zeros(b, 4, t, h, w)
        mask[:, :, 0] = 1  # the 4 mask channels of latent frame 0 cover the (repeated) first frame: known
        pred = self.transformer(
            hidden_states=torch.cat([xt, mask, condition.float()], dim=1),  # 16 + 4 + 16 = Wan I2V's 36 channels
            timestep=sigma.float() * 1000,  # FlowMatchEulerDiscreteScheduler's convention: timestep = 1000 sigma
            encoder_hidden_states=prompt.float(),
            encoder_hidden_states_image=self.projector(embedding),
            return_dict=False,
        )[0]
        return {"loss": nn.functional.mse_loss(pred.float(), noise - x0)}


def _cast_like_pretrained(model: nn.Module, dtype: torch.dtype) -> None:
    """``model`` in ``dtype`` as diffusers' ``from_pretrained(dtype=...)`` loads it (its ``_keep_in_fp32_modules``
    stay fp32): the tiny transformer, built in fp32, then matches a pretrained one (for which this changes
    nothing)."""
    if dtype == torch.float32:
        return
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and not keep & set(name.split(".")):
            t.data = t.data.to(dtype)


def build_model(cfg: VideogenConfig, space: VisualSpace, device: torch.device | str = "cpu") -> FlowMatchingModel:
    """The trainable module on ``device``: the Wan transformer (frozen weights in the precision's dtype) with a
    fresh LoRA (fp32, its random A matrices seeded by ``cfg.seed``) and a fresh projector (fp32, seeded too)."""
    dtype = _dtype(cfg)
    transformer = build_components(cfg.wan, dtype, parts=("transformer",), device=torch.device(device))["transformer"]
    image_dim = transformer.config.image_dim
    if image_dim is None:
        raise VideogenError("this Wan transformer takes no image embeddings (not a Wan 2.1 I2V model)")
    check_text_tokens(cfg.wan.max_sequence_length, image_dim)
    _cast_like_pretrained(transformer, dtype)
    torch.manual_seed(cfg.seed)  # the pretrained path builds nothing from a seed: the LoRA's A matrices need one
    add_lora(transformer, cfg.lora)
    for p in transformer.parameters():  # peft gives the adapter the base layer's dtype: trainables train in fp32
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    torch.manual_seed(cfg.seed)
    projector = EmbeddingProjector(space.dim, image_dim, cfg.projector.num_tokens, cfg.projector.hidden)
    return FlowMatchingModel(transformer, projector).to(device).train()  # LoRA dropout acts in train mode


def draw_seed(seed: int, step: int, micro: int, position: int) -> int:
    """The seed of one sample's draws: a hash of the run's seed, the (0-based) optimizer step, the micro-batch and
    the sample's position in the global batch (never the process that trains it)."""
    digest = hashlib.sha256(f"videogen/{seed}/{step}/{micro}/{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# -- the task --------------------------------------------------------------------------------------------------


class VideogenTask(training.TrainTask):
    """Videogen's part of the shared training loop (:func:`auteur.training.fit`): encoded samples from the
    latent cache, per-sample draws, the flow-matching loss, checkpoints in videogen's format."""

    name = "videogen train"
    error = VideogenError
    metrics = ("loss",)

    def __init__(self, cfg: VideogenConfig, samples: list[Sample], space: VisualSpace, run: Path,
                 progress: bool = True) -> None:  # fmt: skip
        self.cfg, self.samples, self.space, self.run, self.progress = cfg, samples, space, run, progress
        root = Path(cfg.train.cache_dir) if cfg.train.cache_dir else run / "cache"
        self.cache = LatentCache(root, cache_settings(cfg))
        self.model: FlowMatchingModel | None = None
        self.micro = 0

    # building: the cache first (the encoders are freed before the transformer loads), then the model

    def build(self, device: torch.device) -> nn.Module:
        self.fill_cache(device)
        self.model = build_model(self.cfg, self.space, device)
        return self.model

    def fill_cache(self, device: torch.device) -> int:
        """Encode the samples the latent cache lacks, this process its share of them, and wait until every
        process is done; returns how many this process encoded. Under ``train.trace_samples`` each process
        appends the keys it encoded to ``RUN/trace/encoded-rank-R.jsonl``."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
        # a group of its own for the waits, with a timeout that an encoding of a whole build fits in
        group = torch.distributed.new_group(backend="gloo", timeout=ENCODE_TIMEOUT) if world > 1 else None
        missing = self.cache.missing([s.key for s in self.samples])  # listed before anyone writes (first wait)
        by_key = {s.key: s for s in self.samples}
        # loaded only when this process has samples to encode, before anything is written: a model that fails to
        # load leaves no cache folder behind
        encoders = FrozenEncoders(self.cfg, device) if missing[rank::world] else None
        waited = False
        done: list[str] = []

        def wait_once() -> None:
            """Every process passes here once, before writing: by then every process has listed what is
            missing, and the main one (LatentCache.fill's rank 0) has removed the temporaries a killed fill left,
            so it cannot remove a file another process is writing."""
            nonlocal waited
            if not waited and group is not None:
                torch.distributed.barrier(group=group)
            waited = True

        def encode(key: str) -> dict[str, torch.Tensor]:
            wait_once()
            done.append(key)
            return encoders(by_key[key])

        n = self.cache.fill(missing, encode, rank, world, progress=self.progress, desc="videogen encode")
        wait_once()  # a process with nothing to encode
        encoders = None  # freed before the transformer loads: training never runs them
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        total = torch.tensor([n], dtype=torch.int64)
        if group is not None:
            torch.distributed.all_reduce(total, group=group)  # also the wait: every sample is in the cache now
        if self.cfg.train.trace_samples:
            (self.run / "trace").mkdir(exist_ok=True)
            with (self.run / "trace" / f"encoded-rank-{rank}.jsonl").open("a") as f:
                f.write(json.dumps({"rank": rank, "world": world, "encoded": done}) + "\n")
        if rank == 0:
            log.info("latent cache %s: %d sample(s) encoded now by %d process(es), %d were cached", self.cache.folder,
                     int(total), world, len(self.samples) - int(total))  # fmt: skip
        return n

    def fsdp_units(self, module: nn.Module) -> list[nn.Module]:
        names = set(self.model.transformer._no_split_modules or [])
        return [m for m in module.modules() if type(m).__name__ in names]

    # data

    def num_samples(self) -> int:
        return len(self.samples)

    def global_batch(self, step: int, micro: int, batch_size: int, seed: int) -> list[int]:
        # fit asks for a micro-batch's indices and then for this process's batch of it: the batch's draws are
        # seeded by the micro-batch too (grad_accum > 1 repeats the positions)
        self.micro = micro
        return super().global_batch(step, micro, batch_size, seed)

    def batch(self, indices: list[int], positions: list[int], step: int, device: torch.device) -> dict:
        """Samples ``indices`` read from the latent cache with their draws, stacked and moved to ``device``: each
        sample's generator (on the CPU, :func:`draw_seed`) draws its noise, then its sigma, then the regulariser's
        noise, mask and shuffle of its embedding."""
        length = self.cfg.wan.max_sequence_length
        cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("latents", "condition", "noise", "sigma", "prompt",
                                                                "embedding")}  # fmt: skip
        for i, pos in zip(indices, positions):
            sample = self.samples[i]
            cached = self.cache.get(sample.key)
            gen = torch.Generator().manual_seed(draw_seed(self.cfg.seed, step, self.micro, pos))
            cols["latents"].append(cached["latents"])
            cols["condition"].append(cached["condition"])
            cols["noise"].append(torch.randn(cached["latents"].shape, generator=gen))
            cols["sigma"].append(torch.rand((), generator=gen))
            cols["embedding"].append(regularize(torch.from_numpy(sample.embedding), self.cfg.regularize, gen))
            prompt = cached["prompt"]  # [n, text_dim] -> [512, text_dim]: the zeros past the caption's tokens
            cols["prompt"].append(nn.functional.pad(prompt, (0, 0, 0, length - prompt.shape[0])))
        return {k: torch.stack(v).to(device, non_blocking=True) for k, v in cols.items()}

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return model(**batch)  # through the wrapper (DDP / FSDP hooks), not the unwrapped module

    # checkpoints

    def load_weights(self, folder: Path) -> None:
        from safetensors.torch import load_file

        meta = read_checkpoint_meta(folder)
        cfg = self.cfg
        for part, now in (("lora", to_dict(cfg.lora)), ("projector", to_dict(cfg.projector))):
            was = meta.get(part, {})
            changed = [k for k in now if k != "dropout" and was.get(k) != now[k]]
            if changed:
                k = changed[0]
                raise VideogenError(f"checkpoint {folder} was trained with {part}.{k}={was.get(k)!r}, this "
                                    f"run has {now[k]!r}: resume with the same settings, or another out=")  # fmt: skip
        VisualSpace(meta["space"]["name"], int(meta["space"]["dim"])).check_same(self.space, "the data's embeddings")
        training.load_lora_state(self.model.transformer, load_file(str(folder / LORA_FILE)), folder, VideogenError)
        self.model.projector.load_state_dict(load_file(str(folder / PROJECTOR_FILE)))

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor], step: int, final: bool) -> None:
        cfg = self.cfg
        lora = training.peft_state(state, "transformer.")
        projector = {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
        meta: dict[str, Any] = {"step": step, "precision": cfg.precision}
        if final:
            meta["trained_on"] = {"data": list(cfg.data), "clips": len(self.samples), "steps": step}
        write_videogen_files(folder, lora, projector, cfg, self.space, **meta)


def train(cfg: VideogenConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train as ``cfg`` says; returns the final checkpoint folder (``RUN/final``).

    Bad input (config, data: a build without clips) is found before the run folder is made; a run folder this
    call made is removed again, while still empty, if the model fails to load.
    """
    if cfg.backend != "wan":
        raise VideogenError("videogen train fine-tunes the Wan model: use a wan preset (tiny, paper, ablation-*)")
    check_frames(cfg.train.frames)
    check_text_tokens(cfg.wan.max_sequence_length, cfg.wan.image_dim)  # before a build is encoded at that length
    training.check_run_request(cfg.data, cfg.out, VideogenError, cfg.train)
    samples, space = load_samples(cfg)  # data without clips fails here, before the run folder exists
    with training.run_dir(cfg.out) as run:  # removed again if the model then fails to load while it is empty
        task = VideogenTask(cfg, samples, space, run, progress=progress)
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


if __name__ == "__main__":  # `accelerate launch -m videogen.train ...`
    from videogen.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
