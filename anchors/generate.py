"""Joint story-frame generation: a flow-matching Euler sampler over all story frames at once, written as a Plan.

StoryAnchors (Wang et al., 2025) §2.1 and §4.3: all N story frames are one latent video that the
transformer denoises together; frames given by the user (editing: keep some frames and regenerate the
others around them; continuation: keep the first k) enter as condition latents with mask 1. At every
sampler step the given frames' entries of the running latents are reset to the given latents noised to the
current noise level along their own fixed noise, which is the trajectory training shows the model
(``x_s = (1 - s) x0 + s e`` for every frame); at the last level (s = 0) they are the given latents exactly.

The output is a Plan folder (:mod:`auteur.plan`, the same schema the director writes): one step per story
frame (action and caption: its event's text), a PNG keyframe each, optionally their embeddings in the
configured visual space, and provenance (model, preset, checkpoint, seed, the caption and conditions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from anchors.captions import Story, multi_event_caption
from anchors.config import AnchorsConfig, AnchorsError, GenerateConfig
from anchors.data import to_tensor
from anchors.model import Anchors, check_num_frames

log = logging.getLogger(__name__)
LATENTS = "latents.safetensors"  # the story frames' latents [C, F, h, w] (for exact continuation checks)


@dataclass
class Generation:
    """A generated story: ``latents`` [C, F, h, w], ``frames`` [F, 3, H, W] in [-1, 1], given frames (1-based)."""

    latents: torch.Tensor
    frames: torch.Tensor
    given: list[int]
    caption: str
    conditions: dict[str, float]

    def images(self) -> list[Image.Image]:
        arr = ((self.frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]


def _keep(latents: torch.Tensor, given: torch.Tensor, gmask: torch.Tensor, noise: torch.Tensor, s: float):
    """Reset the given frames of ``latents`` [1, C, F, h, w] to the given latents at noise level ``s``."""
    target = given if s == 0 else (1 - s) * given + s * noise
    return torch.where(gmask, target, latents)


@torch.no_grad()
def generate(
    anchors: Anchors,
    story: Story,
    num_frames: int,
    gcfg: GenerateConfig,
    given: dict[int, Image.Image] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Generation:
    """Generate ``num_frames`` story frames jointly; ``given`` maps 1-based frame positions to images to keep.

    The story's events must already span ``num_frames`` frames (:func:`anchors.captions.assign_frames`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tqdm.auto import tqdm

    given = given or {}
    net, cfg = anchors.net, anchors.cfg
    check_num_frames(num_frames, cfg, net.patch_size[0])
    if len(given) >= num_frames:
        raise AnchorsError(f"{len(given)} condition frames leave nothing to generate among {num_frames} story frames")
    bad = [k for k in given if not 1 <= k <= num_frames]
    if bad:
        raise AnchorsError(f"condition frame {bad[0]} is outside the story's frames 1..{num_frames}")
    device = next(net.parameters()).device
    net.eval()

    # 1. prompt and conditions
    text_caption = multi_event_caption(story)
    text = anchors.text([text_caption]).to(device)
    uncond = anchors.text([""]).to(device) if gcfg.guidance_scale > 1 else None
    cond_values = {
        "fps": gcfg.fps,
        "frame_interval": gcfg.frame_interval,
        "motion": gcfg.motion,
        "width": float(cfg.width),
        "height": float(cfg.height),
        "num_frames": float(num_frames),
    }
    conditions = torch.tensor([list(cond_values.values())], device=device)

    # 2. condition latents and mask
    c = net.latent_channels
    f = anchors.spatial_factor
    shape = (1, c, num_frames, cfg.height // f, cfg.width // f)
    given_latents = torch.zeros(shape, device=device)
    mask = torch.zeros(1, num_frames, device=device)
    if given:
        pos = sorted(given)
        frames = torch.stack([to_tensor(given[k], cfg.height, cfg.width) for k in pos])[None].to(device)
        enc = anchors.encode_frames(frames)
        for j, k in enumerate(pos):
            given_latents[:, :, k - 1] = enc[:, :, j]
            mask[:, k - 1] = 1
    gmask = (mask != 0)[:, None, :, None, None].expand(shape)

    # 3. noise and the sampler
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=g).to(device)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=gcfg.shift)
    scheduler.set_timesteps(gcfg.steps, device=device)
    sigmas = scheduler.sigmas.tolist()
    latents = _keep(noise.clone(), given_latents, gmask, noise, sigmas[0])

    # 4. denoise all frames jointly
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="anchors generate", disable=not progress)):
        ts = t.expand(1).to(device)
        v = net(latents, given_latents, mask, ts, text, conditions)
        if uncond is not None:
            v_u = net(latents, given_latents, mask, ts, uncond, conditions)
            v = v_u + gcfg.guidance_scale * (v - v_u)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        latents = _keep(latents, given_latents, gmask, noise, sigmas[i + 1])

    # 5. decode
    images = anchors.decode_latents(latents)[0]
    return Generation(latents[0], images, sorted(given), text_caption, cond_values)


def parse_condition(spec: str) -> tuple[Path, list[int]]:
    """``PLAN_DIR:1,2`` -> (plan folder, [1, 2]); AnchorsError if malformed."""
    folder, sep, idx = spec.rpartition(":")
    if not sep or not folder or not idx:
        raise AnchorsError(f"--condition {spec!r}: expected PLAN_DIR:K[,K...] (1-based frames of that plan)")
    try:
        ks = [int(x) for x in idx.split(",") if x.strip()]
    except ValueError:
        raise AnchorsError(f"--condition {spec!r}: frame numbers must be integers") from None
    if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise AnchorsError(f"--condition {spec!r}: give distinct frame numbers >= 1")
    return Path(folder), ks


def condition_images(folder: Path, frames: list[int]) -> dict[int, Image.Image]:
    """The keyframes of steps ``frames`` (1-based) of a plan folder, keyed by frame position."""
    from auteur.plan import load_plan

    plan = load_plan(folder)
    out = {}
    for k in frames:
        if k > len(plan.steps):
            raise AnchorsError(f"--condition: {folder} has {len(plan.steps)} steps, no frame {k}")
        kf = plan.steps[k - 1].keyframe
        if not kf or not (folder / kf).is_file():
            raise AnchorsError(f"--condition: step {k} of {folder} has no keyframe image")
        with Image.open(folder / kf) as im:
            out[k] = im.convert("RGB")
    return out


def write_plan(gen: Generation, story: Story, out: Path, cfg: AnchorsConfig, provenance: dict[str, Any]) -> Path:
    """Write ``gen`` as a Plan folder at ``out`` (atomically: a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    from auteur.config import save_config
    from auteur.io import atomic_dir
    from auteur.plan import Plan, Step, save_plan

    events = story.frame_events()
    images = gen.images()
    embeddings, space = None, None
    if cfg.generate.embed:
        from auteur.vision import load_encoder

        encoder = load_encoder(cfg.vision)
        embeddings, space = encoder.embed_images(images), encoder.space
    with atomic_dir(out) as tmp:
        steps = []
        for i, (img, e) in enumerate(zip(images, events), start=1):
            rel = f"keyframes/{i:03d}.png"
            (tmp / "keyframes").mkdir(exist_ok=True)
            img.save(tmp / rel, format="PNG")
            text = story.events[e].text
            steps.append(
                Step(index=i, action=text, caption=text, keyframe=rel, meta={"event": e + 1, "given": i in gen.given})
            )
        plan = Plan(
            query=story.title,
            steps=steps,
            embeddings=embeddings,
            space=space,
            provenance={**provenance, "caption": gen.caption, "conditions": gen.conditions},
            meta={"generator": "anchors", "subjects": story.subjects, "style": story.style},
        )
        save_plan(plan, tmp)
        save_config(cfg, tmp)
        save_file({"latents": gen.latents.detach().cpu().contiguous()}, str(tmp / LATENTS))
    return out
