"""Videogen's paper preset at real size on the meta device: Wan 2.1 I2V 14B 480P + our embedding projector.

The Wan I2V transformer, its VAE and UMT5-XXL are built from their published configs
(``auteur/model_configs/paper_shapes.json``, section ``wan_i2v_14b_480p``) on the meta device, the LoRA of the
preset is added (:func:`videogen.wan.add_lora`), and one 81-frame 480x832 clip goes through videogen's code: the
prompt (:func:`videogen.wan.encode_prompts`), the first-frame condition of its I2V pipeline (videogen's
``EmbeddingWanI2VPipeline.prepare_latents``: 4 mask + 16 latent channels, generation's input), then the training
loss ``videogen.train.FlowMatchingModel`` (projector, noisy latents ‖ mask ‖ first-frame latents, transformer,
MSE) and its backward graph. Checked, before the library meets them:

- the transformer input: 16 latent + 4 mask + 16 condition channels = ``in_channels`` 36, latents
  [1, 16, 21, 60, 104] for 81 frames of 480x832, the prediction of the target's shape;
- the text: UMT5-XXL states [1, 512, 4096] = ``text_dim``, exactly 512 tokens (the I2V attention splits image
  from text tokens at ``len - 512``);
- the image tokens: projector [1, 768] (CLIP ViT-L-14) -> ``image_embeds`` [1, 32, 1280] = ``image_dim`` of
  the image embedder (``encoder_hidden_states_image``);
- every LoRA target (``to_q`` ... ``add_k_proj``, ``add_v_proj``) exists, and LoRA and projector get gradients.

Not run: the pipeline's sampling loop (the scheduler looks its step index up by value, and the decoded video
becomes numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from auteur.config import load_config
from auteur.meta_check import (
    META,
    Report,
    ShapeMismatch,
    build_on_meta,
    check_gradients,
    check_lora_targets,
    expect,
    expect_shape,
    input_check,
    linear_in,
    mask_values_unknown,
    output_check,
    published,
)
from auteur.plan import VisualSpace
from auteur.tokenizers import byte_level_tokenizer
from videogen.config import PRESETS, VideogenConfig
from videogen.errors import VideogenError
from videogen.projector import EmbeddingProjector
from videogen.wan import WAN_TEXT_TOKENS, _pipeline_class, add_lora, check_frames, check_text_tokens, encode_prompts

MODEL = "wan_i2v_14b_480p"
SPACE = "clip_vit_l_14"


@dataclass
class MetaVideogen:
    """The paper videogen's parts on meta: config, visual space, pipeline (its components) and projector."""

    cfg: VideogenConfig
    space: VisualSpace
    pipe: Any
    projector: EmbeddingProjector

    @property
    def transformer(self):
        return self.pipe.transformer


def paper_config(overrides: Sequence[str] = ()) -> VideogenConfig:
    """The ``paper`` preset (plus ``key=value`` overrides)."""
    return load_config(VideogenConfig, "paper", list(overrides), preset_dir=PRESETS)


def build_paper_meta(config: dict[str, Any] | None = None, overrides: Sequence[str] = ()) -> MetaVideogen:
    """Wan 2.1 I2V 14B from ``config`` (the published section by default) on meta, with a projector built as
    ``WanGenerator`` and ``videogen.train.build_model`` build it (the LoRA comes with :func:`add_training_lora`).
    The text encoder in the precision's dtype, the VAE in float32, as videogen loads them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = paper_config(overrides)
    config = published(MODEL) if config is None else config
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    space = VisualSpace("meta/open_clip/ViT-L-14", int(published(SPACE)["embed_dim"]))
    with torch.device(META):
        # float32: the training module's weights (with precision bf16 its frozen ones are bf16 under bf16 autocast,
        # which the meta device does not have; the shapes are the same)
        transformer = build_on_meta(config["transformer"], torch.float32)
        image_dim = transformer.config.image_dim
        if image_dim is None:
            raise ShapeMismatch("the Wan transformer takes no image embeddings (image_dim is null: not an I2V model)")
        projector = EmbeddingProjector(space.dim, image_dim, cfg.projector.num_tokens, cfg.projector.hidden)
        pipe = _pipeline_class()(
            tokenizer=byte_level_tokenizer(),  # token ids only: UMT5's own tokenizer is not at hand
            text_encoder=build_on_meta(config["text_encoder"], dtype).eval(),
            vae=build_on_meta(config["vae"], torch.float32).eval(),
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.wan.flow_shift),
            image_processor=None,
            image_encoder=None,
        )
    return MetaVideogen(cfg=cfg, space=space, pipe=pipe, projector=projector)


def add_training_lora(parts: MetaVideogen, report: Report) -> None:
    """The preset's LoRA (:func:`videogen.wan.add_lora`); every target module must exist (``add_k_proj`` and
    ``add_v_proj`` only do in an I2V transformer's image cross-attention)."""
    with torch.device(META):
        add_lora(parts.transformer, parts.cfg.lora)
    counts = check_lora_targets(parts.transformer, list(parts.cfg.lora.target_modules), "WanTransformer3DModel")
    report.add("lora layers per target", str(counts))


def condition_channels(parts: MetaVideogen) -> tuple[int, int, int]:
    """(noisy latent, mask, first-frame condition) channels of the I2V input: the VAE's ``z_dim``, one mask channel
    per frame of the VAE's temporal compression, ``z_dim``."""
    z = int(parts.pipe.vae.config.z_dim)
    return z, int(parts.pipe.vae_scale_factor_temporal), z


def check_structure(parts: MetaVideogen, report: Report) -> None:
    """Every dimension where our parts meet Wan I2V, from the built modules (nothing runs yet)."""
    cfg, tr, pipe, proj = parts.cfg, parts.transformer, parts.pipe, parts.projector
    try:
        check_frames(cfg.frames)
        check_frames(cfg.train.frames)
        check_text_tokens(cfg.wan.max_sequence_length, tr.config.image_dim)
    except VideogenError as e:
        raise ShapeMismatch(str(e)) from None
    z, mask, cond = condition_channels(parts)
    patch_in = int(getattr(tr.patch_embedding, "base_layer", tr.patch_embedding).in_channels)
    expect(f"the I2V input ({z} latent + {mask} mask + {cond} condition channels)", z + mask + cond, patch_in,
           "WanTransformer3DModel's in_channels (patch_embedding input)")  # fmt: skip
    expect("the transformer's out_channels", tr.config.out_channels, z, "the VAE's z_dim (the predicted latents)")
    text_dim = int(tr.config.text_dim)
    expect("the text encoder's width (UMT5 d_model)", pipe.text_encoder.config.d_model, text_dim, "Wan's text_dim")
    expect("Wan's text embedder input width", linear_in(tr.condition_embedder.text_embedder.linear_1), text_dim,
           "text_dim")  # fmt: skip
    image_dim = int(tr.config.image_dim)
    expect("the projector's input width", proj.in_dim, parts.space.dim, f"the visual space ({parts.space.name})")
    expect("the projector's token width (image_embeds)", proj.out_dim, image_dim, "Wan's image_dim")
    expect("Wan's image embedder input width", linear_in(tr.condition_embedder.image_embedder.ff.net[0].proj),
           image_dim, "image_dim")  # fmt: skip
    inner = int(tr.config.num_attention_heads * tr.config.attention_head_dim)
    expect("the image key/value projection input (added_kv_proj_dim)", linear_in(tr.blocks[0].attn2.add_k_proj),
           inner, "the transformer width (the image embedder's output)")  # fmt: skip
    spatial = pipe.vae_scale_factor_spatial * int(tr.config.patch_size[1])
    if cfg.wan.height % spatial or cfg.wan.width % spatial:
        raise ShapeMismatch(f"wan.height x wan.width {cfg.wan.height}x{cfg.wan.width} is not a multiple of {spatial}")
    report.add("input channels (latent, mask, condition)", (z, mask, cond))


def check_forward(parts: MetaVideogen, report: Report, backward: bool = True) -> None:
    """One clip of ``cfg.frames`` frames on meta: the prompt, the pipeline's I2V condition (generation's input),
    then the training loss ``videogen.train.FlowMatchingModel`` on those latents, the prompt and a visual state."""
    from videogen.train import FlowMatchingModel

    cfg, tr, pipe, proj = parts.cfg, parts.transformer, parts.pipe, parts.projector
    w = cfg.wan
    z, mask, cond = condition_channels(parts)
    t_lat = (cfg.frames - 1) // pipe.vae_scale_factor_temporal + 1
    h_lat, w_lat = w.height // pipe.vae_scale_factor_spatial, w.width // pipe.vae_scale_factor_spatial
    text_dim, image_dim = int(tr.config.text_dim), int(tr.config.image_dim)

    with mask_values_unknown():
        prompt = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["A cook slices the bread on a board."],
                                w.max_sequence_length)  # fmt: skip
    expect_shape("the prompt embeddings", prompt, (1, WAN_TEXT_TOKENS, text_dim), "[1, 512, text_dim]")
    report.add("prompt_embeds", prompt)

    keyframe = Image.new("RGB", (w.width, w.height), (120, 90, 60))
    image = pipe.video_processor.preprocess(keyframe, height=w.height, width=w.width).to(META, torch.float32)
    g = torch.Generator("cpu").manual_seed(0)
    latents, condition = pipe.prepare_latents(image, 1, z, w.height, w.width, cfg.frames, torch.float32, META, g)
    expect_shape("the noisy latents", latents, (1, z, t_lat, h_lat, w_lat),
                 f"{cfg.frames} frames of {w.width}x{w.height}")  # fmt: skip
    expect_shape("the I2V condition (mask ‖ first-frame latents)", condition, (1, mask + cond, t_lat, h_lat, w_lat),
                 f"[1, {mask} + {cond}, T', h, w]")  # fmt: skip
    expect(f"the generation input ({z} latent + {mask + cond} condition channels)", z + condition.shape[1],
           tr.config.in_channels, "Wan's in_channels")  # fmt: skip
    report.add("latents", latents)
    report.add("condition (pipeline)", condition)

    def inputs(a: dict[str, Any]) -> None:
        hs, ehs, img = a["hidden_states"], a["encoder_hidden_states"], a["encoder_hidden_states_image"]
        expect(f"the transformer input channels ({z} latent + {mask} mask + {cond} condition)", hs.shape[1],
               tr.config.in_channels, "Wan's in_channels")  # fmt: skip
        expect_shape("encoder_hidden_states", ehs, (1, WAN_TEXT_TOKENS, text_dim), "[1, 512, text_dim]")
        expect_shape("encoder_hidden_states_image", img, (1, cfg.projector.num_tokens, image_dim),
                     "[1, projector.num_tokens, image_dim]")  # fmt: skip
        report.add("transformer hidden_states", hs)
        report.add("transformer encoder_hidden_states_image", img)

    def output(out: Any) -> None:
        pred = out[0] if isinstance(out, tuple | list) else out.sample
        expect_shape("the transformer's prediction", pred, tuple(latents.shape), "the latents' shape (eps - x_0)")
        report.add("transformer prediction", pred)

    # the training step: x_0 = the clip's latents, the first-frame latents (the condition's last z channels: what
    # the latent cache holds; the model adds the mask channels itself), noise, sigma, the prompt, a visual state
    model = FlowMatchingModel(tr, proj).train()
    embedding = torch.zeros(1, parts.space.dim, device=META)
    sigma = torch.full((1,), 0.5, device=META)
    with input_check(tr, inputs), output_check(tr, output):
        out = model(latents, condition[:, mask:], torch.empty_like(latents), sigma, prompt.float(), embedding)
    loss = out["loss"]
    report.add("loss", loss)
    if backward:
        named = {n: p for n, p in tr.named_parameters() if p.requires_grad}
        named.update({f"projector.{n}": p for n, p in proj.named_parameters()})
        check_gradients(loss, named, "videogen")
        report.add("trainable tensors with gradients", len(named))


def check_paper_shapes(
    config: dict[str, Any] | None = None, overrides: Sequence[str] = (), backward: bool = True
) -> Report:
    """Build the paper videogen on meta (``config``: the ``wan_i2v_14b_480p`` section, altered by tests) and check
    it; ShapeMismatch names the first dimension that does not fit."""
    report = Report("videogen (Wan 2.1 I2V 14B 480P, paper preset)")
    parts = build_paper_meta(config, overrides)
    check_structure(parts, report)
    add_training_lora(parts, report)
    check_forward(parts, report, backward)
    return report
