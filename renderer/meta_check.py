"""The renderer's paper preset at real size on the meta device: FLUX.1 Fill [dev] + our adapter, LoRA and canvas.

FLUX.1 Fill's transformer, VAE, CLIP-L and T5-XXL are built from their published configs
(``auteur/model_configs/paper_shapes.json``, section ``flux_fill``) on the meta device and put into a
``FluxFillPipeline``; ``renderer.train.build_for_training`` wraps it as for training (frozen base, a fresh LoRA,
a trainable adapter) and one training sample at the widest canvas (``train.max_context`` context panels + the
target) goes through ``renderer.train.flow_matching_loss`` and its backward graph. Checked, before the library
meets them:

- the adapter: visual-space embedding [B, G, 768] (CLIP ViT-L-14) -> tokens [B, G*M, 4096] in FLUX's T5 token
  space (``joint_attention_dim``), appended to ``prompt_embeds`` [B, 512, 4096] -> [B, 512+G*M, 4096], with
  ``txt_ids`` [512+G*M, 3];
- the Fill input: 64 noisy + 64 masked-image + 256 mask channels (16 latent channels packed 2x2; the mask's
  8x8 pixels per latent pixel packed 2x2) = ``in_channels`` 384, the prediction [B, L, 64] = the target's shape;
- the pooled CLIP embedding [B, 768] = ``pooled_projection_dim``; the panel size a multiple of 16;
- every LoRA target module exists in ``FluxTransformer2DModel``, and every trainable tensor gets a gradient.

The canvas images are real PIL images (``renderer.canvas``); only tensors from the VAE on are meta.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
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
    linear_out,
    output_check,
    published,
)
from auteur.plan import VisualSpace
from auteur.tokenizers import byte_level_tokenizer
from renderer.config import PRESETS, RenderConfig
from renderer.errors import RendererError
from renderer.flux import FluxRenderer, check_size, size_multiple

MODEL = "flux_fill"
SPACE = "clip_vit_l_14"


def paper_config(overrides: Sequence[str] = ()) -> RenderConfig:
    """The ``paper`` preset (plus ``key=value`` overrides)."""
    return load_config(RenderConfig, "paper", list(overrides), preset_dir=PRESETS)


def meta_pipeline(cfg: RenderConfig, config: dict[str, Any] | None = None):
    """A ``FluxFillPipeline`` of FLUX.1 Fill built from ``config`` (the published ``flux_fill`` section by default)
    on the meta device, in the preset's dtype. The tokenizers are the tiny presets' byte-level ones: they only
    supply token ids, and the prompts are padded to the preset's lengths (77 CLIP, ``max_sequence_length`` T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline

    config = published(MODEL) if config is None else config
    dtype = torch.bfloat16 if cfg.flux.dtype == "bf16" else torch.float32
    clip_len = config["text_encoder"]["max_position_embeddings"]
    pipe = FluxFillPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=build_on_meta(config["vae"], dtype),
        text_encoder=build_on_meta(config["text_encoder"], dtype),
        text_encoder_2=build_on_meta(config["text_encoder_2"], dtype),
        tokenizer=byte_level_tokenizer(clip_len),
        tokenizer_2=byte_level_tokenizer(cfg.flux.max_sequence_length),
        transformer=build_on_meta(config["transformer"], dtype),
    )
    pipe.model_id = f"meta/{cfg.flux.model or 'FLUX.1-Fill-dev'}"
    return pipe


def build_paper_meta(config: dict[str, Any] | None = None, overrides: Sequence[str] = ()) -> FluxRenderer:
    """The paper renderer on meta as ``renderer.train.build_for_training`` builds it around a pipeline: base
    weights frozen, a fresh LoRA (``cfg.lora``) on the transformer, the adapter trainable."""
    from renderer.train import build_for_training

    cfg = paper_config(overrides)
    space = VisualSpace("meta/open_clip/ViT-L-14", int(published(SPACE)["embed_dim"]))
    with torch.device(META):
        return build_for_training(cfg, space, pipe=meta_pipeline(cfg, config))


def fill_channels(pipe) -> tuple[int, int, int]:
    """(noisy, masked-image, mask) channels of FLUX Fill's packed input for ``pipe``'s VAE: the latents packed
    2x2 (4 x latent_channels, twice) and the mask's ``vae_scale_factor``^2 pixels per latent pixel packed 2x2."""
    packed = 4 * int(pipe.vae.config.latent_channels)
    return packed, packed, 4 * pipe.vae_scale_factor**2


def check_structure(renderer: FluxRenderer, report: Report) -> None:
    """Every dimension where our parts meet FLUX.1 Fill, from the built modules (nothing runs yet)."""
    pipe, cfg, adapter = renderer.pipe, renderer.cfg, renderer.adapter
    tr = pipe.transformer
    joint = int(tr.config.joint_attention_dim)
    expect("the adapter's input width", adapter.dim, renderer.space.dim, f"the visual space ({renderer.space.name})")
    expect("the adapter's token width", adapter.joint_attention_dim, joint, "FLUX's joint_attention_dim")
    expect(
        "the adapter's output layer width",
        linear_out(adapter.down),
        adapter.num_tokens * joint,
        f"num_tokens ({adapter.num_tokens}) x joint_attention_dim ({joint})",
    )
    expect("FLUX's context_embedder input width", linear_in(tr.context_embedder), joint, "joint_attention_dim")
    expect("the T5 encoder's width (text_encoder_2 d_model)", pipe.text_encoder_2.config.d_model, joint,
           "FLUX's joint_attention_dim")  # fmt: skip
    pooled = int(tr.config.pooled_projection_dim)
    expect("the CLIP text encoder's pooled width", pipe.text_encoder.config.hidden_size, pooled,
           "FLUX's pooled_projection_dim")  # fmt: skip
    expect("FLUX's pooled text embedder input width", linear_in(tr.time_text_embed.text_embedder.linear_1), pooled,
           "pooled_projection_dim")  # fmt: skip
    noisy, masked, mask = fill_channels(pipe)
    expect(f"the Fill input ({noisy} noisy + {masked} masked-image + {mask} mask channels)", noisy + masked + mask,
           linear_in(tr.x_embedder), "FluxTransformer2DModel's in_channels (x_embedder input width)")  # fmt: skip
    expect("FLUX's output width (proj_out)", linear_out(tr.proj_out), noisy, "the packed latent width it predicts")
    try:
        check_size(size_multiple(pipe), cfg.width, cfg.height)
    except RendererError as e:  # the panel size
        raise ShapeMismatch(str(e)) from None
    counts = check_lora_targets(tr, list(cfg.lora.target_modules), "FluxTransformer2DModel")
    report.add("lora layers per target", str(counts))
    report.add("fill channels (noisy, masked, mask)", (noisy, masked, mask))
    report.add("in_channels", linear_in(tr.x_embedder))


def _sample(cfg: RenderConfig, folder: Path, k: int, dim: int) -> dict[str, Any]:
    """One training sample as ``renderer.train.make_sample`` builds it: k context keyframes and the target."""
    from renderer.train import Episode, make_sample

    paths = []
    for i in range(k + 1):
        path = folder / f"keyframe-{i}.png"
        Image.new("RGB", (cfg.width, cfg.height), (40 * i, 90, 140)).save(path)
        paths.append(path)
    captions = [f"Step {i + 1}: the cook slices the bread." for i in range(k + 1)]
    ep = Episode(keyframes=paths, captions=captions, embeddings=torch.zeros(k + 1, dim))
    return make_sample(ep, k, k, cfg.width, cfg.height)


def check_training_step(renderer: FluxRenderer, report: Report, backward: bool = True) -> None:
    """One ``flow_matching_loss`` sample at the widest canvas on meta, each transformer input checked first."""
    from renderer.train import flow_matching_loss, trainable_parameters

    cfg, pipe = renderer.cfg, renderer.pipe
    tr = pipe.transformer
    k = cfg.train.max_context
    scale = pipe.vae_scale_factor * 2  # pixels per packed token side
    tokens = ((k + 1) * cfg.width // scale) * (cfg.height // scale)
    text = cfg.flux.max_sequence_length + renderer.adapter.num_tokens
    noisy, masked, mask = fill_channels(pipe)
    joint, pooled = int(tr.config.joint_attention_dim), int(tr.config.pooled_projection_dim)

    def inputs(a: dict[str, Any]) -> None:
        hs = a["hidden_states"]
        expect_shape("FLUX's hidden_states", hs, (1, tokens, None), f"{k + 1} panels of {cfg.width}x{cfg.height}")
        expect(f"FLUX's hidden_states width ({noisy} noisy + {masked} masked-image + {mask} mask)", hs.shape[-1],
               linear_in(tr.x_embedder), "FluxTransformer2DModel's in_channels")  # fmt: skip
        expect_shape("img_ids", a["img_ids"], (tokens, 3), "one (t, y, x) id per image token")
        ehs = a["encoder_hidden_states"]
        expect_shape("prompt_embeds + adapter tokens", ehs, (1, text, joint),
                     f"[1, max_sequence_length + num_tokens, joint_attention_dim] = [1, {text}, {joint}]")  # fmt: skip
        expect_shape("txt_ids", a["txt_ids"], (text, 3), "one id per text token")
        expect_shape("pooled_projections", a["pooled_projections"], (1, pooled), "[1, pooled_projection_dim]")
        if tr.config.guidance_embeds:
            expect_shape("guidance", a["guidance"], (1,), "one guidance value per sample (guidance_embeds)")
        report.add("transformer hidden_states", hs)
        report.add("transformer encoder_hidden_states", ehs)
        report.add("transformer pooled_projections", a["pooled_projections"])

    def output(out: Any) -> None:
        pred = out[0] if isinstance(out, tuple | list) else out.sample
        expect_shape("FLUX's prediction", pred, (1, tokens, noisy), "the packed target (noise - x_0)")
        report.add("transformer prediction", pred)

    def adapter_output(out: torch.Tensor) -> None:
        expect_shape(
            "the adapter's tokens", out, (1, renderer.adapter.num_tokens, joint), "[1, G*M, joint_attention_dim]"
        )
        report.add("adapter tokens", out)

    with tempfile.TemporaryDirectory() as tmp:
        sample = _sample(cfg, Path(tmp), k, renderer.space.dim)
    report.add("canvas (W, H)", sample["image"].size)
    renderer.pipe.transformer.train()
    renderer.adapter.train()
    g = torch.Generator("cpu").manual_seed(0)
    with input_check(tr, inputs), output_check(tr, output), output_check(renderer.adapter, adapter_output):
        loss = flow_matching_loss(renderer, sample, g, cfg.train.weighting)
    report.add("loss", loss)
    if backward:
        params = trainable_parameters(renderer)
        named = {n: p for n, p in tr.named_parameters() if p.requires_grad}
        named.update({f"adapter.{n}": p for n, p in renderer.adapter.named_parameters()})
        expect("trainable parameters", len(named), len(params), "renderer.train.trainable_parameters")
        check_gradients(loss, named, "renderer")
        report.add("trainable tensors with gradients", len(named))


def check_paper_shapes(
    config: dict[str, Any] | None = None, overrides: Sequence[str] = (), backward: bool = True
) -> Report:
    """Build the paper renderer on meta (``config``: the ``flux_fill`` section, altered by tests) and check it;
    ShapeMismatch names the first dimension that does not fit."""
    report = Report("renderer (FLUX.1 Fill [dev], paper preset)")
    renderer = build_paper_meta(config, overrides)
    check_structure(renderer, report)
    check_training_step(renderer, report, backward)
    return report
