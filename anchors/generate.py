"""Joint story-frame generation: a flow-matching Euler sampler over all story frames at once, written as a Plan.

StoryAnchors (Wang et al., 2025) §2.1 and §4.3: all N story frames are one latent video that the
transformer denoises together; frames given by the user (editing: keep some frames and regenerate the
others around them; continuation: keep the first k) enter as condition latents with mask 1. At every
sampler step the given frames' entries of the running latents are reset to the given latents noised to the
current noise level along their own fixed noise, which is the trajectory training shows the model
(``x_s = (1 - s) x0 + s e`` for every frame); at the last level (s = 0) they are the given latents exactly.

Long stories (more frames than ``generate.window``, by default ``model.max_frames``) are extended by
continuation (§4.3): the first window of frames is generated jointly as above; each next window is
conditioned on the last ``generate.overlap`` frames of the one before (their latents kept exactly, as given
frames are) and captioned with the events of its own frames, numbered from its first frame. The last window
is shorter when the story ends sooner (it reaches further back when the temporal patch size needs it). The
windows are stitched into one story, one step per story frame; the plan's provenance records them.

The output is a Plan folder (:mod:`auteur.plan`, the same schema the director writes): one step per story
frame (action and caption: its event's text), a PNG keyframe each (for the given frames, the given images
themselves, pixel for pixel, not their re-decoded latents), optionally their embeddings in the configured
visual space, and provenance (model, preset, checkpoint, seed, the caption, conditions and windows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from anchors.captions import Story, multi_event_caption
from anchors.config import AnchorsConfig, AnchorsError, GenerateConfig, ModelConfig
from anchors.data import to_tensor
from anchors.model import Anchors, check_num_frames

log = logging.getLogger(__name__)
LATENTS = "latents.safetensors"  # the story frames' latents [C, F, h, w] (for exact continuation checks)


@dataclass
class Generation:
    """A generated story: ``latents`` [C, F, h, w], decoded ``frames`` [F, 3, H, W] in [-1, 1], the given
    frames (1-based) and their original images, and the windows ``[start, end)`` (0-based) generated jointly."""

    latents: torch.Tensor
    frames: torch.Tensor
    given: list[int]
    caption: str
    conditions: dict[str, float]
    kept: dict[int, Image.Image] = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)
    window_captions: list[str] = field(default_factory=list)
    overlap: int = 0

    def images(self) -> list[Image.Image]:
        """One image per story frame: the decoded frames, and the given frames' original images."""
        arr = ((self.frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [self.kept[i].convert("RGB") if i in self.kept else Image.fromarray(a) for i, a in enumerate(arr, 1)]

    def window_record(self) -> dict[str, Any]:
        """The windows for the plan's provenance (frames 1-based, inclusive)."""
        return {
            "count": len(self.windows),
            "overlap": self.overlap,
            "spans": [[a + 1, b] for a, b in self.windows],
            "captions": self.window_captions,
        }


def story_windows(
    n: int, mcfg: ModelConfig, gcfg: GenerateConfig, patch_t: int, positions: int | None = None
) -> list[tuple[int, int]]:
    """The frame spans ``[start, end)`` (0-based) generated jointly, in order, for a story of ``n`` frames:
    one span when ``n`` fits in a window, else windows of ``generate.window`` frames (0: ``model.max_frames``),
    each starting ``generate.overlap`` frames before the previous one ends. AnchorsError when a window's
    frame count is one the model cannot take (:func:`anchors.model.check_num_frames`) or the overlap is bad."""
    size = gcfg.window or mcfg.max_frames
    if n <= size:
        check_num_frames(n, mcfg, patch_t, positions)
        return [(0, n)]
    check_num_frames(size, mcfg, patch_t, positions)
    if not 1 <= gcfg.overlap < size:
        raise AnchorsError(
            f"{n} story frames are generated in windows of {size}: generate.overlap={gcfg.overlap} must be at "
            f"least 1 and less than the window"
        )
    spans = [(0, size)]
    while spans[-1][1] < n:
        start = spans[-1][1] - gcfg.overlap
        end = min(start + size, n)
        start -= -(end - start) % patch_t  # a short last window reaches back to a multiple of the patch size
        spans.append((start, end))
    return spans


def _keep(latents: torch.Tensor, given: torch.Tensor, gmask: torch.Tensor, noise: torch.Tensor, s: float):
    """Reset the given frames of ``latents`` [1, C, F, h, w] to the given latents at noise level ``s``."""
    target = given if s == 0 else (1 - s) * given + s * noise
    return torch.where(gmask, target, latents)


def _sample(
    anchors: Anchors,
    text_caption: str,
    given_latents: torch.Tensor,
    given: torch.Tensor,
    gcfg: GenerateConfig,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Denoise one window's frames jointly. ``given_latents`` [1, C, F, h, w] holds the latents of the frames
    ``given`` [F] (bool) marks; returns the window's latents [1, C, F, h, w] (the given frames' exactly as
    given) and the condition values used."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tqdm.auto import tqdm

    net, cfg = anchors.net, anchors.cfg
    device = given_latents.device
    shape = tuple(given_latents.shape)

    # 1. prompt and conditions
    text = anchors.text([text_caption]).to(device)
    uncond = anchors.text([""]).to(device) if gcfg.guidance_scale > 1 else None
    cond_values = {
        "fps": gcfg.fps,
        "frame_interval": gcfg.frame_interval,
        "motion": gcfg.motion,
        "width": float(cfg.width),
        "height": float(cfg.height),
        "num_frames": float(shape[2]),
    }
    conditions = torch.tensor([list(cond_values.values())], device=device)

    # 2. the mask of given frames
    mask = given.to(device=device, dtype=torch.float32)[None]
    gmask = (mask != 0)[:, None, :, None, None].expand(shape)

    # 3. noise and the sampler
    noise = torch.randn(shape, generator=generator).to(device)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=gcfg.shift)
    scheduler.set_timesteps(gcfg.steps, device=device)
    sigmas = scheduler.sigmas.tolist()
    latents = _keep(noise.clone(), given_latents, gmask, noise, sigmas[0])

    # 4. denoise all frames of the window jointly
    for i, t in enumerate(tqdm(scheduler.timesteps, desc=desc, disable=not progress)):
        ts = t.expand(1).to(device)
        v = net(latents, given_latents, mask, ts, text, conditions)
        if uncond is not None:
            v_u = net(latents, given_latents, mask, ts, uncond, conditions)
            v = v_u + gcfg.guidance_scale * (v - v_u)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        latents = _keep(latents, given_latents, gmask, noise, sigmas[i + 1])
    return latents, cond_values


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
    """Generate ``num_frames`` story frames; ``given`` maps 1-based frame positions to images to keep.

    The frames are generated jointly, or window after window for a story longer than a window (see the
    module docstring). The story's events must already span ``num_frames`` frames
    (:func:`anchors.captions.assign_frames`)."""
    given = given or {}
    net, cfg = anchors.net, anchors.cfg
    windows = story_windows(num_frames, cfg, gcfg, net.patch_size[0], net.positions)
    if len(given) >= num_frames:
        raise AnchorsError(f"{len(given)} condition frames leave nothing to generate among {num_frames} story frames")
    bad = [k for k in given if not 1 <= k <= num_frames]
    if bad:
        raise AnchorsError(f"condition frame {bad[0]} is outside the story's frames 1..{num_frames}")
    device = next(net.parameters()).device
    net.eval()

    # 1. the story's latents, the given frames' encoded (kept exactly from here on)
    f = anchors.spatial_factor
    latents = torch.zeros(1, net.latent_channels, num_frames, cfg.height // f, cfg.width // f, device=device)
    known = torch.zeros(num_frames, dtype=torch.bool)
    if given:
        pos = sorted(given)
        frames = torch.stack([to_tensor(given[k], cfg.height, cfg.width) for k in pos])[None].to(device)
        latents[:, :, [k - 1 for k in pos]] = anchors.encode_frames(frames)
        known[[k - 1 for k in pos]] = True

    # 2. each window jointly, conditioned on its given frames and on those the window before generated
    generator = torch.Generator(device="cpu").manual_seed(seed)
    captions, conditions = [], {}
    for w, (start, end) in enumerate(windows, start=1):
        text_caption = multi_event_caption(story.span(start, end))
        captions.append(text_caption)
        if known[start:end].all():
            continue  # every frame of this window is given
        desc = "anchors generate" if len(windows) == 1 else f"anchors generate, window {w}/{len(windows)}"
        out, values = _sample(
            anchors, text_caption, latents[:, :, start:end], known[start:end], gcfg, generator, desc, progress
        )
        latents[:, :, start:end] = out
        known[start:end] = True
        conditions = conditions or values

    # 3. decode (a window's worth of frames at a time: each frame is decoded alone anyway)
    size = windows[0][1]
    images = torch.cat([anchors.decode_latents(latents[:, :, a : a + size])[0] for a in range(0, num_frames, size)])
    return Generation(
        latents=latents[0],
        frames=images,
        given=sorted(given),
        caption=multi_event_caption(story),
        conditions=conditions,
        kept=dict(given),
        windows=windows,
        window_captions=captions,
        overlap=gcfg.overlap if len(windows) > 1 else 0,
    )


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
        try:
            with Image.open(folder / kf) as im:
                out[k] = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise AnchorsError(f"--condition: step {k} of {folder}: cannot read its keyframe {kf}: {e}") from None
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
            provenance={
                **provenance,
                "caption": gen.caption,
                "conditions": gen.conditions,
                "windows": gen.window_record(),
            },
            meta={"generator": "anchors", "subjects": story.subjects, "style": story.style},
        )
        save_plan(plan, tmp)
        save_config(cfg, tmp)
        save_file({"latents": gen.latents.detach().cpu().contiguous()}, str(tmp / LATENTS))
    return out
