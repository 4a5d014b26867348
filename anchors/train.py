"""``anchors train``: the StoryAnchors progressive training on CookGen story-frame sequences, resumable.

    anchors train --preset tiny|stage1-global|stage2-multievent|stage3-continuation|PATH
                  data=COOKGEN_DIR[,DIR] out=RUN_DIR [key=value ...]
    torchrun --nproc_per_node 8 -m anchors train --preset stage1-global data=... out=... [train.strategy=fsdp]

Objective (rectified flow / flow matching, as Wan and Step-Video-T2V): for clean story-frame latents
``x0`` and noise ``e``, ``x_s = (1 - s) x0 + s e`` with ``s`` logit-normal, the transformer predicts the
velocity ``e - x0``; the mean squared error is taken over the latents of the *generated* frames only
(mask 0): the given frames are inputs, not targets (StoryAnchors §2.1). Each sample gets its own
condition frames, drawn by the stage (``train.stage``, see :class:`anchors.config.TrainConfig`):

1. ``global``: global caption, nothing given;
2. ``multievent``: multi-event captions, a random subset of frames given with probability ``p_condition``;
3. ``continuation``: multi-event captions, the first k frames given with probability ``p_condition``.

Stages chain with ``train.init_from=PREVIOUS_RUN/final``.

The loop is the shared one (:func:`auteur.training.fit`: processes, learning-rate schedule per optimizer step,
bf16 autocast with fp32 trainable weights, DDP or FSDP2, checkpoints, logs); this module supplies anchors' data,
loss and checkpoint files (:class:`AnchorsTask`):

- **latent cache**: the VAE and the text encoder are frozen, so each sample's story-frame latents, the
  prompt embedding of its caption (the stage's format) and its conditions are encoded once into a
  :class:`auteur.latent_cache.LatentCache` on disk (``dataset.cache_dir``, default ``RUN/latents``), with the
  empty caption's embedding (caption dropout). The processes split the encoding (each its share, then a
  barrier); a killed run, a resumed one or another run on the same cache folder encodes only what is missing.
  Training reads a batch's entries back from disk onto the device; the encoders are freed before training.
- **per-sample draws**: each sample's condition mask, caption dropout, noise level and noise come from a
  generator seeded by ``(seed, step, place in the step's global batch)`` on the process's device, never from a
  global RNG, so a sample gets the same draws whatever the number of processes, and a resume replays them.
- **checkpoints**: every ``train.save_every`` steps ``RUN/checkpoints/step-NNNNNN`` holds anchors' checkpoint
  (``model.safetensors``: the story transformer's whole state, ``anchors.json``, ``config.yaml``) plus the
  skeleton's optimizer, RNG and step files; ``resume=auto`` continues from the newest one, and on CPU a
  resumed run ends bit-identical to an uninterrupted one with the same number of processes (tested). The final
  model is ``RUN/final``, which ``anchors generate --preset`` takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from anchors.captions import caption
from anchors.config import AnchorsConfig, AnchorsError
from anchors.data import StorySample, load_story_samples
from anchors.model import FORMAT, META, WEIGHTS, StoryTransformer, build_anchors, check_num_frames, frame_limits
from auteur import training
from auteur.latent_cache import LatentCache
from auteur.training import SimulatedKill as SimulatedKill  # re-exported: tests catch `anchors.train.SimulatedKill`

log = logging.getLogger(__name__)

CACHE_FORMAT = "anchors-latents/1"
#: the latent-cache entry of the empty caption's prompt embedding (caption dropout)
EMPTY_CAPTION = "<the empty caption>"


def condition_mask(
    num_frames: int, stage: str, p_condition: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A [F] mask (1 = given) for one sample, drawn from ``generator`` (on its device; the global torch RNG
    when None); at least one frame is generated."""
    device = generator.device if generator is not None else None
    mask = torch.zeros(num_frames, device=device)
    if stage == "global" or num_frames < 2 or float(torch.rand((), generator=generator, device=device)) >= p_condition:
        return mask
    if stage == "continuation":
        k = int(torch.randint(1, num_frames, (), generator=generator, device=device))
        mask[:k] = 1
        return mask
    mask = (torch.rand(num_frames, generator=generator, device=device) < 0.5).float()
    if mask.all():
        mask[int(torch.randint(0, num_frames, (), generator=generator, device=device))] = 0
    return mask


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the generated frames only, per sample, then the mean over the batch: ``pred``, ``target``
    [B, C, F, h, w], ``mask`` [B, F] (0 = generate). Every sample weighs the same however many of its frames
    are given, so a batch split over N processes (DDP averages their gradients) has the loss of the whole."""
    gen = (mask == 0).to(pred.dtype)[:, None, :, None, None]
    per_frame = pred[0, :, 0].numel()
    sq = ((pred - target) ** 2 * gen).flatten(1).sum(1)  # [B]
    return (sq / (gen.flatten(1).sum(1) * per_frame).clamp_min(1)).mean()


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
    ``net`` may be the DDP- or FSDP-wrapped story transformer (its hooks run: gradients are synchronised)."""
    b = latents.shape[0]
    if sigma is None:
        sigma = torch.sigmoid(torch.randn(b, device=latents.device))  # logit-normal, as SD3 / Wan training
    if noise is None:
        noise = torch.randn_like(latents)
    s = sigma.view(b, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    pred = net(noisy, latents, mask, sigma * 1000, text, conditions)
    return masked_mse(pred, noise - latents, mask)


def draw_generator(seed: int, step: int, position: int, device: torch.device) -> torch.Generator:
    """The generator of one sample's draws at optimizer step ``step`` (0-based): ``position`` is its place among
    the step's samples over all processes and micro-batches, so the draws do not depend on who trains it."""
    digest = hashlib.sha256(f"anchors/{seed}/{step}/{position}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def caption_mode(stage: str) -> str:
    """The caption format a stage trains on: ``global`` (stage 1) or ``multievent``."""
    return "global" if stage == "global" else "multievent"


def trim_text(states: torch.Tensor) -> torch.Tensor:
    """A prompt embedding [L, D] without the all-zero rows past the prompt (the text encoder zeroes them): [n, D],
    n >= 1. :func:`pad_text` restores it exactly; a cache entry is then a few times smaller (Wan: L = 512)."""
    nonzero = (states != 0).any(dim=-1).nonzero()
    n = int(nonzero.max()) + 1 if len(nonzero) else 1
    return states[:n]


def pad_text(states: torch.Tensor, length: int) -> torch.Tensor:
    """[n, D] -> [length, D], zeros appended."""
    return torch.nn.functional.pad(states, (0, 0, 0, length - states.shape[0]))


def cache_settings(cfg: AnchorsConfig, text_dtype: torch.dtype) -> dict[str, Any]:
    """What the latent cache's entries depend on (its folder's fingerprint): the encoders, the story-frame sampling,
    the frame size, the caption format and style, and the dtypes. Which samples exist does not enter (each is an
    entry of its own, keyed by :attr:`anchors.data.StorySample.key`)."""
    from auteur.config import to_dict

    m, d = cfg.model, cfg.dataset
    if m.kind == "wan":
        encoders: dict[str, Any] = {"kind": "wan", "pretrained": str(Path(m.pretrained).expanduser().resolve())}
    else:  # the tiny encoders are random weights made from these
        encoders = {"kind": "tiny", "seed": m.seed, "vae": to_dict(m.vae), "text": to_dict(m.text)}
    return {
        "format": CACHE_FORMAT,
        "encoders": encoders,
        "text_tokens": m.text.max_tokens,
        "frames": {
            "num_frames": d.num_frames,
            "interval_seconds": d.interval_seconds,
            "max_frames_per_step": d.max_frames_per_step,
            "default_fps": d.default_fps,
        },
        "size": [m.height, m.width],
        "caption": caption_mode(cfg.train.stage),
        "style": d.style,
        "dtype": {"vae": "float32", "text": str(text_dtype).removeprefix("torch.")},
    }


def write_checkpoint(folder: Path, state: dict[str, torch.Tensor], cfg: AnchorsConfig, model_id: str, **meta) -> None:
    """Write an anchors checkpoint into the existing folder ``folder``: the story transformer's ``state``
    (``model.safetensors``), ``anchors.json`` (format, base model, model config, ``meta``) and ``config.yaml``."""
    from safetensors.torch import save_file

    from auteur.config import save_config, to_dict

    save_file({k: v.detach().cpu().contiguous() for k, v in sorted(state.items())}, str(folder / WEIGHTS))
    info = {"format": FORMAT, "model_id": model_id, "model": to_dict(cfg.model), **meta}
    (folder / META).write_text(json.dumps(info, indent=2) + "\n")
    save_config(cfg, folder)


def _process() -> tuple[int, int]:
    """(rank, world size) of this process (0, 1 without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(device: torch.device) -> None:
    """Wait for every process (none without a process group); NCCL is told this process's GPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if device.type == "cuda" and torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(
                device_ids=[torch.cuda.current_device() if device.index is None else device.index]
            )
        else:
            torch.distributed.barrier()


class AnchorsTask(training.TrainTask):
    """Anchors' part of the shared training loop (:func:`auteur.training.fit`): story-frame sequences of
    CookGen builds through a latent cache, the flow-matching loss, checkpoints in anchors' format."""

    name = "anchors train"
    error = AnchorsError
    metrics = ("loss",)
    trainable_only = False  # model.safetensors holds the story transformer's whole state (strictly loaded)

    def __init__(self, cfg: AnchorsConfig, run: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.samples: list[StorySample] = load_story_samples(
            cfg.data, cfg.dataset.train_split, cfg.dataset, cfg.model.height, cfg.model.width
        )
        if not self.samples:
            raise AnchorsError(
                f"the {cfg.dataset.train_split!r} splits of {', '.join(cfg.data)} hold no video with "
                f"{cfg.dataset.num_frames} story frames (dataset.num_frames)"
            )
        self.text_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.cache = LatentCache(cfg.dataset.cache_dir or run / "latents", cache_settings(cfg, self.text_dtype))
        self.net: StoryTransformer | None = None
        self.model_id = ""
        self.empty: torch.Tensor | None = None  # the empty caption's prompt embedding [L, D] on the device
        self.encoded: list[int] = []  # entries each process encoded into the cache in this run
        self._micro = 0

    # -- the model and the cache

    def build(self, device: torch.device) -> torch.nn.Module:
        cfg = self.cfg
        anchors = build_anchors(cfg.model, text_dtype=self.text_dtype)
        if cfg.train.init_from:
            from anchors.model import load_weights

            load_weights(anchors.net, cfg.train.init_from)
        self.model_id = anchors.model_id
        self._fill_cache(anchors, device)
        self.empty = pad_text(self.cache.get(EMPTY_CAPTION)["text"], cfg.model.text.max_tokens).to(device)
        net = anchors.net
        del anchors  # the frozen VAE and text encoder are not needed any more: everything they make is cached
        if device.type == "cuda":
            torch.cuda.empty_cache()
        self.net = net.to(device).train()
        return self.net

    def _fill_cache(self, anchors, device: torch.device) -> None:
        """Encode the samples the cache lacks, this process's share (``rank, rank + world, ...``), then wait for
        every process. Each entry: ``latents`` [C, F, h, w], ``text`` [n, D] (:func:`trim_text`), ``conditions``
        [6]; the empty caption's entry holds ``text`` only."""
        from tqdm.auto import tqdm

        cache, mode = self.cache, caption_mode(self.cfg.train.stage)
        rank, world = _process()
        keys = list(dict.fromkeys([EMPTY_CAPTION, *(s.key for s in self.samples)]))
        by_key = {s.key: s for s in self.samples}
        # the main process prepares the folder (and removes what a killed fill left half-written) before anyone
        # writes into it
        if rank == 0:
            cache.prepare()
        _barrier(device)
        todo = cache.missing(keys[rank::world])
        if todo:
            anchors.vae.to(device)
            anchors.text.encoder.to(device)

        def encode(key: str) -> dict[str, torch.Tensor]:
            if key == EMPTY_CAPTION:
                return {"text": trim_text(anchors.text([""])[0])}
            sample = by_key[key]
            frames = sample.frames()  # [F, 3, H, W]: decoded here, once
            latents = anchors.encode_frames(frames[None].to(device))[0]
            text = anchors.text([caption(sample.story, mode)])[0]
            return {"latents": latents, "text": trim_text(text), "conditions": sample.conditions(frames)}

        bar = tqdm(todo, desc="anchors: encoding", unit="sample", disable=not (self.progress and rank == 0))
        for key in bar:
            cache.put(key, encode(key))
        _barrier(device)  # every process's share is on disk
        counts = [len(todo)]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, len(todo))
            counts = [int(c) for c in gathered]
        self.encoded = counts
        missing = cache.missing(keys)
        if missing:
            raise AnchorsError(
                f"the latent cache {cache.folder} lacks {len(missing)} of {len(keys)} entries after encoding: with "
                "processes on several machines, dataset.cache_dir must be a folder they share"
            )
        log.info(
            "latent cache %s: %d of %d entries encoded now (per process: %s), the rest read back",
            cache.folder,
            sum(counts),
            len(keys),
            counts,
        )

    def fsdp_units(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        return list(self.net.transformer.blocks)  # the Wan blocks; the patch and condition embeddings: the root

    # -- data

    def num_samples(self) -> int:
        return len(self.samples)

    def global_batch(self, step: int, micro: int, batch_size: int, seed: int) -> list[int]:
        self._micro = micro  # fit asks for the micro-batch's batch() next: its draws are numbered by it
        return super().global_batch(step, micro, batch_size, seed)

    def batch(self, indices: list[int], positions: list[int], step: int, device: torch.device) -> dict:
        """This process's samples, read from the latent cache onto ``device``, with each sample's draws: ``latents``
        [b, C, F, h, w], ``text`` [b, L, D] (the empty caption's where dropped), ``conditions`` [b, 6], ``mask``
        [b, F], ``sigma`` [b], ``noise`` [b, C, F, h, w]."""
        cfg, tc = self.cfg, self.cfg.train
        entries = [self.cache.get(self.samples[i].key) for i in indices]
        length = cfg.model.text.max_tokens
        latents = torch.stack([e["latents"] for e in entries]).to(device=device, dtype=torch.float32)
        text = torch.stack([pad_text(e["text"], length) for e in entries]).to(device=device, dtype=torch.float32)
        conditions = torch.stack([e["conditions"] for e in entries]).to(device=device, dtype=torch.float32)
        masks, drops, sigmas, noises = [], [], [], []
        for pos, lat in zip(positions, latents):
            g = draw_generator(cfg.seed, step, self._micro * tc.batch_size + pos, device)
            masks.append(condition_mask(lat.shape[1], tc.stage, tc.p_condition, generator=g))
            drops.append(torch.rand((), generator=g, device=device) < tc.caption_dropout)
            sigmas.append(torch.sigmoid(torch.randn((), generator=g, device=device)))  # logit-normal
            noises.append(torch.randn(lat.shape, generator=g, device=device))
        drop = torch.stack(drops)[:, None, None]
        text = torch.where(drop, self.empty.to(text.dtype).expand_as(text), text)
        return {
            "latents": latents,
            "text": text,
            "conditions": conditions,
            "mask": torch.stack(masks),
            "sigma": torch.stack(sigmas),
            "noise": torch.stack(noises),
        }

    def forward(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": flow_matching_loss(model, **batch)}  # through the wrapper: DDP / FSDP hooks run

    # -- checkpoints

    def load_weights(self, folder: Path) -> None:
        from anchors.model import load_weights

        load_weights(self.net, folder)

    def save_weights(self, folder: Path, state: dict[str, torch.Tensor], step: int, final: bool) -> None:
        cfg = self.cfg
        meta: dict[str, Any] = {"step": step, "stage": cfg.train.stage, "init_from": cfg.train.init_from or None}
        if final:
            meta["trained_on"] = {"data": list(cfg.data), "sequences": len(self.samples), "steps": step}
            meta["latents"] = str(self.cache.folder)
        write_checkpoint(folder, state, cfg, self.model_id, **meta)


def train(cfg: AnchorsConfig, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train the story transformer as ``cfg`` says; returns the final checkpoint folder (``RUN/final``)."""
    # what the user gave is checked before anything is written
    training.check_run_request(cfg.data, cfg.out, AnchorsError, cfg.train)
    if cfg.train.init_from:
        from anchors.model import check_checkpoint

        check_checkpoint(cfg.train.init_from)
    check_num_frames(cfg.dataset.num_frames, cfg.model, *frame_limits(cfg.model))
    with training.run_dir(cfg.out) as run:
        task = AnchorsTask(cfg, run, progress=progress)
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


if __name__ == "__main__":  # `python -m anchors.train ...` (also `python -m anchors train ...`)
    from anchors.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
