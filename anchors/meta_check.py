"""The anchors paper preset at real size on the meta device: Wan 2.1 T2V 1.3B + StoryAnchors' widening.

Wan 2.1 T2V 1.3B's transformer, VAE and UMT5-XXL are built from their published configs
(``auteur/model_configs/paper_shapes.json``, section ``wan_t2v_1_3b``) on the meta device and handed to
:func:`anchors.model.build_anchors` (size and RoPE checks, widened patch embedding, condition embeddings); then
``model.max_frames`` story frames of ``model.height`` x ``model.width`` go through the model's own frame
encoder and text encoder and ``anchors.train.flow_matching_loss`` with its backward graph. Checked, before the
library meets them:

- the widened patch embedding: [B, 2C+1, F, h, w] = 16 noisy + 16 condition + 1 mask = 33 channels (Wan T2V's
  ``in_channels`` 16 in the pretrained convolution, 17 in the new zero-initialised one);
- the story latents [1, 16, F, 60, 104] for 480x832 frames (one latent frame per story frame), the velocity
  prediction of the same shape;
- the six condition embeddings [B, 1536] added to the timestep embedding ``temb`` [B, 1536] (never broadcast);
- the text: UMT5-XXL states [1, 512, 4096] = ``text_dim``; every trainable tensor gets a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from anchors.config import PRESETS, AnchorsConfig, AnchorsError
from anchors.model import CONDITION_NAMES, Anchors, TextEncoder, WidenedPatchEmbedding, build_anchors, check_num_frames
from auteur.config import load_config
from auteur.meta_check import (
    META,
    Report,
    ShapeMismatch,
    build_on_meta,
    check_gradients,
    expect,
    expect_shape,
    input_check,
    linear_in,
    linear_out,
    mask_values_unknown,
    output_check,
    published,
)
from auteur.tokenizers import byte_level_tokenizer

MODEL = "wan_t2v_1_3b"


def paper_config(overrides: Sequence[str] = ()) -> AnchorsConfig:
    """The ``paper`` preset (plus ``key=value`` overrides)."""
    return load_config(AnchorsConfig, "paper", list(overrides), preset_dir=PRESETS)


def build_paper_meta(config: dict[str, Any] | None = None, overrides: Sequence[str] = ()) -> Anchors:
    """The paper anchors model with Wan 2.1 T2V 1.3B from ``config`` (the published section by default) on meta,
    float32 as :func:`anchors.model.build_anchors` loads a local folder. The tokenizer is the tiny preset's
    byte-level one (token ids only; prompts are padded to ``model.text.max_tokens``)."""
    cfg = paper_config(overrides)
    config = published(MODEL) if config is None else config
    with torch.device(META):
        transformer = build_on_meta(config["transformer"], torch.float32)
        vae = build_on_meta(config["vae"], torch.float32)
        text = TextEncoder(byte_level_tokenizer(), build_on_meta(config["text_encoder"], torch.float32),
                           cfg.model.text.max_tokens)  # fmt: skip
        try:
            anchors = build_anchors(cfg.model, components=(transformer, vae, text, "meta/Wan2.1-T2V-1.3B"))
        except AnchorsError as e:
            raise ShapeMismatch(str(e)) from None
    return anchors


def check_structure(anchors: Anchors, report: Report) -> None:
    """Every dimension where StoryAnchors' parts meet Wan, from the built modules (nothing runs yet)."""
    cfg, net, vae = anchors.cfg, anchors.net, anchors.vae
    tr = net.transformer
    z = int(vae.config.z_dim)
    pe = tr.patch_embedding
    if not isinstance(pe, WidenedPatchEmbedding):
        raise ShapeMismatch("the transformer's patch embedding was not widened")
    expect("the pretrained patch embedding's input channels", pe.base.in_channels, z, "the VAE's z_dim")
    expect(f"the widened patch embedding's input ({pe.base.in_channels} pretrained + {pe.extra.in_channels} new)",
           pe.base.in_channels + pe.extra.in_channels, 2 * z + 1,
           f"2C+1 (noisy ‖ condition latents ‖ mask, C = {z})")  # fmt: skip
    expect("the new convolution's output width", pe.extra.out_channels, pe.base.out_channels, "the pretrained one's")
    expect("the transformer's out_channels", tr.config.out_channels, z, "the VAE's z_dim (the predicted velocity)")
    text_dim = int(tr.config.text_dim)
    expect("the text encoder's width (UMT5 d_model)", anchors.text.dim, text_dim, "Wan's text_dim")
    expect("Wan's text embedder input width", linear_in(tr.condition_embedder.text_embedder.linear_1), text_dim,
           "text_dim")  # fmt: skip
    temb = linear_out(tr.condition_embedder.time_embedder.linear_2)
    for name, mlp in net.cond_embed.mlps.items():
        expect(f"the {name} condition embedding's width", linear_out(mlp[-1]), temb,
               "the timestep embedding's width (temb) it is added to")  # fmt: skip
        expect(f"the {name} condition embedding's input", linear_in(mlp[0]), net.cond_embed.freq_dim,
               "model.cond_freq_dim")  # fmt: skip
    try:
        check_num_frames(cfg.max_frames, cfg, net.patch_size[0], net.positions)
    except AnchorsError as e:
        raise ShapeMismatch(str(e)) from None
    report.add("patch embedding input (C, C+1)", (pe.base.in_channels, pe.extra.in_channels))
    with torch.device(META):  # the converter's single convolution, on meta too
        report.add("single-conv patch embedding weight", tuple(pe.as_single_conv().weight.shape))
    report.add("temb width", temb)


def check_training_step(anchors: Anchors, report: Report, backward: bool = True) -> None:
    """``model.max_frames`` story frames through the frame and text encoders and one flow-matching loss on meta."""
    from anchors.train import flow_matching_loss

    cfg, net = anchors.cfg, anchors.net
    tr = net.transformer
    z, f = int(anchors.vae.config.z_dim), cfg.max_frames
    factor = anchors.spatial_factor
    latent = (1, z, f, cfg.height // factor, cfg.width // factor)
    temb = linear_out(tr.condition_embedder.time_embedder.linear_2)

    frames = torch.zeros(1, f, 3, cfg.height, cfg.width, device=META)
    latents = anchors.encode_frames(frames)
    expect_shape("the story latents", latents, latent, f"{f} story frames, one latent frame each")
    with mask_values_unknown():
        text = anchors.text(["Subjects: a cook. Events: (1) frame 1: Drain the tuna."])
    expect_shape("the prompt embeddings", text, (1, cfg.text.max_tokens, int(tr.config.text_dim)),
                 "[1, model.text.max_tokens, text_dim]")  # fmt: skip
    report.add("story latents", latents)
    report.add("prompt embeddings", text)

    def inputs(a: dict[str, Any]) -> None:
        hs = a["hidden_states"]
        expect_shape("the transformer input (noisy ‖ condition ‖ mask)", hs, (1, 2 * z + 1, *latent[2:]),
                     f"[1, 2C+1 = {2 * z + 1}, F, h, w]")  # fmt: skip
        report.add("transformer hidden_states", hs)

    def embedding(out: torch.Tensor) -> None:
        expect_shape("the condition embedding", out, (1, temb), "the timestep embedding [B, temb]")
        report.add("condition embedding (added to temb)", out)

    def output(out: Any) -> None:
        pred = out[0] if isinstance(out, tuple | list) else out.sample
        expect_shape("the velocity prediction", pred, latent, "the story latents' shape")
        report.add("velocity prediction", pred)

    conditions = torch.zeros(1, len(CONDITION_NAMES), device=META)
    mask = torch.zeros(1, f, device=META)
    net.train()
    with input_check(tr, inputs), output_check(net.cond_embed, embedding), output_check(tr, output):
        loss = flow_matching_loss(net, latents, text, conditions, mask)
    report.add("loss", loss)
    if backward:
        named = {n: p for n, p in net.named_parameters() if p.requires_grad}
        check_gradients(loss, named, "anchors")
        report.add("trainable tensors with gradients", len(named))


def check_paper_shapes(
    config: dict[str, Any] | None = None, overrides: Sequence[str] = (), backward: bool = True
) -> Report:
    """Build the paper anchors model on meta (``config``: the ``wan_t2v_1_3b`` section, altered by tests) and
    check it; ShapeMismatch names the first dimension that does not fit."""
    report = Report("anchors (StoryAnchors on Wan 2.1 T2V 1.3B, paper preset)")
    anchors = build_paper_meta(config, overrides)
    check_structure(anchors, report)
    check_training_step(anchors, report, backward)
    return report
